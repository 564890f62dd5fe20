//! The service a node's HTTP listener runs: the router, with the busiest
//! routes dispatched without it.
//!
//! `GET`, `PUT` and `DELETE /v1/kv/{key}` are nearly every request a busy
//! node serves, and a profile of an eventual read showed a third of its
//! instructions in the router's layers around the handler rather than in
//! the handler: the route table's match, a boxed middleware service cloned
//! per request, the response-mapping futures, and the extractors (which
//! copy the headers). [`Api`] recognises those three by method and path
//! prefix and runs the same handlers inside the same edge (token check,
//! `X-Replidb-*` headers, metrics under the same route label); every other
//! request, `HEAD` included, goes through the router. Where the router's
//! behaviour depends on more than the method and the path (`/v1/kv/` with
//! no key, other methods), the request is left to it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{OriginalUri, RawQuery, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::future::{BoxFuture, Either};
use tower_service::Service;

use super::edge;
use super::kv::{self, KeyPath};
use crate::node::Node;

/// The path every single-key request starts with.
const KV_PREFIX: &str = "/v1/kv/";
/// The router's template for those paths: the `route` label of their
/// metrics, as when the router serves them.
const KV_ROUTE: &str = "/v1/kv/{*key}";

/// A node's HTTP service: the key-value fast path, then the router.
#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
    router: Router,
}

impl Api {
    /// `router` must be [`super::router`] of `node`.
    pub(super) fn new(node: Arc<Node>, router: Router) -> Self {
        Api { node, router }
    }
}

impl<B> Service<axum::http::Request<B>> for Api
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        <Router as Service<Request>>::Future,
        BoxFuture<'static, Result<Response, Infallible>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both ways are always ready: the router's own `poll_ready` is.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let req = req.map(Body::new);
        if is_single_key(&req) {
            Either::Right(Box::pin(single_key(self.node.clone(), req)))
        } else {
            Either::Left(self.router.call(req))
        }
    }
}

/// A request the fast path serves: `GET`, `PUT` or `DELETE` of
/// `/v1/kv/{key}` with a non-empty key (the router's `{*key}` matches
/// only those).
fn is_single_key(req: &Request) -> bool {
    matches!(*req.method(), Method::GET | Method::PUT | Method::DELETE)
        && req
            .uri()
            .path()
            .strip_prefix(KV_PREFIX)
            .is_some_and(|rest| !rest.is_empty())
}

/// Serve a single-key request as the router and its edge would.
async fn single_key(node: Arc<Node>, req: Request) -> Result<Response, Infallible> {
    let started = Instant::now();
    let mut resp = match edge::refuse_without_token(&node, &req) {
        Some(refused) => refused,
        None => {
            let mut resp = dispatch(node.clone(), req).await;
            edge::add_node_headers(&node, &mut resp);
            resp
        }
    };
    set_content_length(&mut resp);
    edge::count(&node, KV_ROUTE, &resp, started);
    Ok(resp)
}

/// Run the handler of the request's method with the parts its extractors
/// would have given it (moved, not copied).
async fn dispatch(node: Arc<Node>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let rest = parts.uri.path().get(KV_PREFIX.len()..).unwrap_or_default();
    let key = match KeyPath::decode(rest) {
        Ok(key) => key,
        Err(e) => return e.into_response(),
    };
    let query = RawQuery(parts.uri.query().map(str::to_owned));
    let uri = OriginalUri(parts.uri);
    let headers = parts.headers;
    let state = State(node);
    let answer = match parts.method {
        Method::GET => kv::get_key(state, key, query, uri, headers).await,
        Method::PUT => kv::put_key(state, key, query, uri, headers, body).await,
        // DELETE: `is_single_key` lets no other method here.
        _ => kv::delete_key(state, key, query, uri, headers).await,
    };
    answer.into_response()
}

/// `Content-Length` from a body of known size, as the router's route
/// future sets it (hyper would write the same on the wire; this keeps the
/// two ways' answers identical to any caller of the service).
fn set_content_length(resp: &mut Response) {
    use hyper::body::Body as _;
    if resp
        .headers()
        .contains_key(axum::http::header::CONTENT_LENGTH)
    {
        return;
    }
    if let Some(size) = resp.body().size_hint().exact() {
        resp.headers_mut().insert(
            axum::http::header::CONTENT_LENGTH,
            axum::http::HeaderValue::from(size),
        );
    }
}

impl crate::serve::direct::Shortcut for Api {
    fn get(
        &mut self,
        target: &str,
        headers: &[httparse::Header<'_>],
        out: &mut Vec<u8>,
    ) -> Option<bytes::Bytes> {
        local_value(&self.node, target, headers, out)
    }
}

/// The shortcut of the most frequent request: `GET /v1/kv/{key}` with no
/// query or `consistency=eventual`, on a single-leader node, answered from
/// this node's table when the key holds a plain, non-empty value — the
/// answer [`kv::get_key`] gives (`read_local` and the edge's node headers)
/// written straight into `out`. Anything else (a token that does not
/// admit the read, `X-Replidb-Min-Lsn`, a key that is absent, invalid or
/// causal, another topology) returns `None` and is served the general way,
/// which gives its error or relays it.
fn local_value(
    node: &Node,
    target: &str,
    headers: &[httparse::Header<'_>],
    out: &mut Vec<u8>,
) -> Option<bytes::Bytes> {
    if node.is_multi_leader() || node.is_leaderless() {
        return None;
    }
    let started = Instant::now();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    // Both are read locally by leader and follower alike (`read::plan`).
    if !matches!(query, None | Some("consistency=eventual")) {
        return None;
    }
    let mut authorization = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("x-replidb-min-lsn") {
            return None;
        }
        if header.name.eq_ignore_ascii_case("authorization") && authorization.is_none() {
            // As `HeaderValue::to_str`: visible ASCII only.
            authorization = Some(std::str::from_utf8(header.value).ok()?);
            if !header
                .value
                .iter()
                .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t')
            {
                return None;
            }
        }
    }
    if let Some(auth) = &node.auth {
        match crate::auth::access(&Method::GET, path, node.config.metrics_open) {
            crate::auth::Access::Open => {}
            crate::auth::Access::Needs(role) => {
                auth.authorize(authorization, role).ok().map(drop)?
            }
        }
    }
    let KeyPath(key) = KeyPath::decode(path.get(KV_PREFIX.len()..)?).ok()?;
    kv::check_key(&key).ok()?;
    let value = node.engine.table().get(&key).ok()??;
    if value.causal || value.value.is_empty() {
        return None;
    }
    // As `read_local`: never label a value older than the record that
    // wrote it.
    let served = node.engine.positions().applied_lsn.max(value.lsn);
    let now = edge::NodeHeaders::now(node);
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nx-replidb-lsn: ",
    );
    out.extend_from_slice(number.format(served.0).as_bytes());
    if let Some(id) = &now.node {
        out.extend_from_slice(b"\r\nx-replidb-node: ");
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(b"\r\nx-replidb-role: ");
    out.extend_from_slice(now.role.as_bytes());
    out.extend_from_slice(b"\r\nx-replidb-epoch: ");
    out.extend_from_slice(number.format(now.epoch).as_bytes());
    out.extend_from_slice(b"\r\nx-replidb-lag-ms: ");
    out.extend_from_slice(number.format(now.lag_ms).as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(number.format(value.value.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    edge::count_status(node, KV_ROUTE, 200, started);
    Some(bytes::Bytes::from(value.value))
}
