//! Every request's way in and out, whichever way it is dispatched (the
//! router, or the key-value fast path in [`super::service`]): the token
//! check, the `X-Replidb-*` headers, the request metrics.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{error, AppState};
use crate::node::{Node, Role};

/// Every request's way in and out through the router: time it, check its
/// token (a refused request learns nothing of the node's positions, so no
/// node headers), add the `X-Replidb-*` headers, count it.
pub(super) async fn edge(State(node): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let empty_key_route = super::ops::empty_key_route(req.uri().path());
    let resp = match refuse_without_token(&node, &req) {
        Some(refused) => refused,
        None => {
            let method = req.method().clone();
            let mut resp = next.run(req).await;
            if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
                resp = method_not_allowed(&method, resp);
            }
            add_node_headers(&node, &mut resp);
            resp
        }
    };
    let route = match &route {
        Some(p) => p.as_str(),
        None => empty_key_route.unwrap_or("unmatched"),
    };
    count(&node, route, &resp, started);
    resp
}

/// Record a request's answer under its route template (`unmatched` for
/// none), timed from `started`.
pub(super) fn count(node: &Node, route: &str, resp: &Response, started: Instant) {
    count_status(node, route, resp.status().as_u16(), started);
}

/// [`count`] of an answer by its status alone.
pub(super) fn count_status(node: &Node, route: &str, status: u16, started: Instant) {
    http_metrics(&node.config.id, route, status).record(started.elapsed().as_secs_f64());
}

/// axum answers a method a route lacks with an empty 405; give it the
/// JSON error body every other error has (`method_not_allowed`), keeping
/// its `Allow` header.
fn method_not_allowed(method: &Method, axum_answer: Response) -> Response {
    let allow = axum_answer
        .headers()
        .get(axum::http::header::ALLOW)
        .cloned();
    // axum's method router usually adds `Allow` outside this middleware,
    // so the list is often not known here yet: name it only when it is.
    let message = match allow.as_ref().and_then(|v| v.to_str().ok()) {
        Some(allowed) if !allowed.is_empty() => {
            format!("{method} is not allowed here; allowed: {allowed}")
        }
        _ => format!("{method} is not allowed here; the Allow header lists the methods that are"),
    };
    let mut resp = error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        message,
    )
    .into_response();
    if let Some(v) = allow {
        resp.headers_mut().insert(axum::http::header::ALLOW, v);
    }
    resp
}

/// With `--auth-file`, refuse a request without a token that has the role
/// its endpoint needs ([`crate::auth::access`]): 401 `unauthenticated`,
/// 403 `forbidden`.
pub(super) fn refuse_without_token(node: &Node, req: &Request) -> Option<Response> {
    let auth = node.auth.as_ref()?;
    let role = match crate::auth::access(req.method(), req.uri().path(), node.config.metrics_open) {
        crate::auth::Access::Open => return None,
        crate::auth::Access::Needs(role) => role,
    };
    // A value that is not visible ASCII is a malformed header, not a
    // missing one: it gets the "must be Bearer" answer.
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    match auth.authorize(header, role) {
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(path = %req.uri().path(), error = %e, "request refused");
            Some(error::ApiError::from(e).into_response())
        }
    }
}

/// `X-Replidb-LSN`: the position an answer reflects (API.md), built at
/// compile time (`from_static` at run time checks the name against the
/// standard headers on every call).
pub(crate) const LSN_HEADER: HeaderName = HeaderName::from_static("x-replidb-lsn");

/// Room for every header a key-value answer carries: its content type and
/// `X-Replidb-LSN`, the four other node headers, `Content-Length`, and a
/// few of a handler's own (`Location`, `Retry-After`, a causal token).
const ANSWER_HEADERS_CAPACITY: usize = 12;

/// An answer whose header map is allocated once, with room for every
/// header it will carry. A map that starts empty holds six headers and
/// is rehashed into a larger one at the seventh, which the node headers
/// and `Content-Length` always reach (under callgrind, an eventual GET's
/// `Content-Length` insert cost ~1,200 instructions with the rehash and
/// ~450 without; the larger first allocation takes back some of that).
pub(crate) fn answer(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let mut headers = axum::http::HeaderMap::with_capacity(ANSWER_HEADERS_CAPACITY);
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    *resp.headers_mut() = headers;
    resp
}

/// The `X-Replidb-*` headers' values for an answer given now.
pub(super) struct NodeHeaders {
    /// `X-Replidb-Node`, where the node's id is a valid header value.
    pub node: Option<HeaderValue>,
    /// `X-Replidb-Role`.
    pub role: &'static str,
    /// `X-Replidb-Epoch`.
    pub epoch: u64,
    /// `X-Replidb-LSN` where the handler set none: the applied LSN.
    pub applied_lsn: u64,
    /// `X-Replidb-Lag-Ms`: 0 on a leader.
    pub lag_ms: u64,
}

impl NodeHeaders {
    /// Read them from `node`.
    pub(super) fn now(node: &Node) -> NodeHeaders {
        let role = node.role();
        let pos = node.engine.positions();
        let lag_ms = match &role {
            Role::Leader(_) => 0,
            Role::Follower(f) => f.lag_ms(),
        };
        NodeHeaders {
            node: node.id_header.clone(),
            role: role.name(),
            epoch: node.engine.epoch().0,
            applied_lsn: pos.applied_lsn.0,
            lag_ms,
        }
    }
}

/// Add the `X-Replidb-*` headers a handler did not set, in this order:
/// node, role, epoch, LSN, lag (`serve::direct`'s answers write the same).
pub(super) fn add_node_headers(node: &Node, resp: &mut Response) {
    let now = NodeHeaders::now(node);
    let headers = resp.headers_mut();
    let mut set = |name: HeaderName, value: HeaderValue| {
        // One hash and probe per header, keeping a handler's own value.
        headers.entry(name).or_insert(value);
    };
    if let Some(v) = now.node {
        set(NODE_HEADER, v);
    }
    set(ROLE_HEADER, HeaderValue::from_static(now.role));
    set(EPOCH_HEADER, number_value(NumberSlot::Epoch, now.epoch));
    set(LSN_HEADER, number_value(NumberSlot::Lsn, now.applied_lsn));
    set(LAG_MS_HEADER, number_value(NumberSlot::LagMs, now.lag_ms));
}

// Names built at compile time: `from_static` at run time checks the name
// against the standard headers on every call.
/// `X-Replidb-Node`.
pub(super) const NODE_HEADER: HeaderName = HeaderName::from_static("x-replidb-node");
/// `X-Replidb-Role`.
pub(super) const ROLE_HEADER: HeaderName = HeaderName::from_static("x-replidb-role");
/// `X-Replidb-Epoch`.
pub(super) const EPOCH_HEADER: HeaderName = HeaderName::from_static("x-replidb-epoch");
/// `X-Replidb-Lag-Ms`.
pub(super) const LAG_MS_HEADER: HeaderName = HeaderName::from_static("x-replidb-lag-ms");

/// Which numeric header [`number_value`] makes.
#[derive(Clone, Copy)]
enum NumberSlot {
    Epoch = 0,
    Lsn = 1,
    LagMs = 2,
}

/// `n` as a header value, reusing the one this thread made last for the
/// same header when `n` has not changed: an epoch, an applied LSN and a
/// lag repeat across the reads between two writes, and formatting one
/// allocates (a reused one is a reference count).
fn number_value(slot: NumberSlot, n: u64) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<[Option<(u64, HeaderValue)>; 3]> =
            const { std::cell::RefCell::new([None, None, None]) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let cached = &mut last[slot as usize];
        match cached {
            Some((m, v)) if *m == n => v.clone(),
            _ => {
                let v = HeaderValue::from(n);
                *cached = Some((n, v.clone()));
                v
            }
        }
    })
}

/// The request counter and duration histogram of one node, route template
/// and status.
#[derive(Clone)]
struct RequestMetrics {
    requests: metrics::Counter,
    duration_s: metrics::Histogram,
}

impl RequestMetrics {
    fn record(&self, elapsed_s: f64) {
        self.requests.increment(1);
        self.duration_s.record(elapsed_s);
    }
}

/// Handles looked up once per (node, route, status) instead of building
/// and hashing three labels per request.
fn http_metrics(node_id: &str, route: &str, status: u16) -> RequestMetrics {
    // Node → status → route, so a lookup borrows its keys instead of
    // allocating them.
    // foldhash, not std's SipHash: these keys are ours (node ids, route
    // templates, status codes), so there is no flooding to resist, and
    // SipHash over three keys per request showed in the read path's
    // profile.
    type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
    type Cache = Map<String, Map<u16, Map<String, RequestMetrics>>>;
    static CACHE: std::sync::LazyLock<std::sync::Mutex<Cache>> =
        std::sync::LazyLock::new(Default::default);
    // A route template comes from the router (a bounded set), a status is
    // one of a few dozen: the cache stays small.
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = cache
        .get(node_id)
        .and_then(|by_status| by_status.get(&status))
        .and_then(|by_route| by_route.get(route))
    {
        return m.clone();
    }
    let id = node_id.to_string();
    let m = RequestMetrics {
        requests: metrics::counter!("replidb_http_requests_total", "node_id" => id.clone(), "route" => route.to_string(), "status" => status.to_string()),
        duration_s: metrics::histogram!("replidb_http_request_duration_seconds", "node_id" => id, "route" => route.to_string()),
    };
    cache
        .entry(node_id.to_string())
        .or_default()
        .entry(status)
        .or_default()
        .insert(route.to_string(), m.clone());
    m
}

#[cfg(test)]
mod tests {
    use super::{number_value, NumberSlot};

    #[test]
    fn a_reused_number_header_always_shows_the_current_number() {
        for n in [0, 0, 7, 7, 8, u64::MAX, 0] {
            assert_eq!(number_value(NumberSlot::Lsn, n), n.to_string().as_str());
            // Another header's cache does not leak into this one.
            let m = n.wrapping_add(1);
            assert_eq!(number_value(NumberSlot::Epoch, m), m.to_string().as_str());
        }
        assert_eq!(number_value(NumberSlot::LagMs, 3), "3");
    }
}
