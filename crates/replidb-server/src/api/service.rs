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
use replidb_core::Op;
use tower_service::Service;

use super::edge;
use super::kv::{self, KeyPath};
use super::params::{Params, WRITE_PARAMS};
use super::write;
use crate::node::Node;
use crate::serve::direct::Written;

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
    Ok(match edge::refuse_without_token(&node, &req) {
        Some(mut refused) => {
            set_content_length(&mut refused);
            edge::count(&node, KV_ROUTE, &refused, started);
            refused
        }
        None => {
            let resp = dispatch(node.clone(), req).await;
            handled(&node, resp, started)
        }
    })
}

/// A handler's answer as the edge sends it: the node headers, its
/// `Content-Length`, and counted in the metrics.
fn handled(node: &Node, mut resp: Response, started: Instant) -> Response {
    edge::add_node_headers(node, &mut resp);
    set_content_length(&mut resp);
    edge::count(node, KV_ROUTE, &resp, started);
    resp
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

    fn write(
        &mut self,
        method: &Method,
        target: &str,
        headers: &[httparse::Header<'_>],
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<BoxFuture<'static, Written>> {
        leader_write(&self.node, method, target, headers, body, out)
    }
}

/// Whether `node`'s tokens (if it has any) admit `method` on `path` with
/// `headers`, as [`edge::refuse_without_token`] decides; `false` also
/// where that would read the token differently (a value that is not
/// visible ASCII), so the general way answers it.
fn token_admits(
    node: &Node,
    method: &Method,
    path: &str,
    headers: &[httparse::Header<'_>],
) -> bool {
    let Some(auth) = &node.auth else {
        return true;
    };
    let role = match crate::auth::access(method, path, node.config.metrics_open) {
        crate::auth::Access::Open => return true,
        crate::auth::Access::Needs(role) => role,
    };
    // The first `Authorization` header, as `HeaderMap::get` finds it.
    let value = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
        .map(|h| h.value);
    let token = match value {
        None => None,
        // As `HeaderValue::to_str`: visible ASCII only.
        Some(v) if v.iter().all(|&b| (0x20..0x7f).contains(&b) || b == b'\t') => {
            std::str::from_utf8(v).ok()
        }
        Some(_) => return false,
    };
    auth.authorize(token, role).is_ok()
}

/// Write a shortcut's head: the status line, `content-type`, the node
/// headers in [`edge::add_node_headers`]' order with `lsn` as
/// `X-Replidb-LSN`, and `content-length`.
fn push_head(
    out: &mut Vec<u8>,
    status_line: &[u8],
    content_type: &[u8],
    lsn: u64,
    now: &edge::NodeHeaders,
    content_length: usize,
) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(status_line);
    out.extend_from_slice(b"\r\ncontent-type: ");
    out.extend_from_slice(content_type);
    out.extend_from_slice(b"\r\nx-replidb-lsn: ");
    out.extend_from_slice(number.format(lsn).as_bytes());
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
    out.extend_from_slice(number.format(content_length).as_bytes());
    out.extend_from_slice(b"\r\n");
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
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("x-replidb-min-lsn"))
    {
        return None;
    }
    if !token_admits(node, &Method::GET, path, headers) {
        return None;
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
    push_head(
        out,
        b"HTTP/1.1 200 OK",
        b"application/octet-stream",
        served.0,
        &edge::NodeHeaders::now(node),
        value.value.len(),
    );
    edge::count_status(node, KV_ROUTE, 200, started);
    Some(bytes::Bytes::from(value.value))
}

/// The shortcut of a write: `PUT` or `DELETE /v1/kv/{key}` on the leader
/// of a single-leader node, whose token (if any) admits it, with a valid
/// key, a value within `--max-value-bytes` (a `DELETE` without a body)
/// and valid write parameters, is proposed at once, and a write whose
/// concern is met is answered without building a `Response` — the answer
/// [`kv::put_key`] and [`kv::delete_key`] give (`write_response` and the
/// edge's node headers). Any other outcome of the proposal (an error, a
/// concern not met in time) is answered by the same code as the general
/// way's. Anything else is declined (`None`) before it is proposed: a
/// follower's 307 or forward, a refused token, an invalid key or
/// parameter, a value too large, another topology.
fn leader_write(
    node: &Arc<Node>,
    method: &Method,
    target: &str,
    headers: &[httparse::Header<'_>],
    body: &[u8],
    out: &mut Vec<u8>,
) -> Option<BoxFuture<'static, Written>> {
    if node.is_multi_leader() || node.is_leaderless() || node.leader().is_none() {
        return None;
    }
    let started = Instant::now();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if !token_admits(node, method, path, headers) {
        return None;
    }
    let KeyPath(key) = KeyPath::decode(path.get(KV_PREFIX.len()..)?).ok()?;
    kv::check_key(&key).ok()?;
    let p = Params::parse(query, WRITE_PARAMS).ok()?;
    let opts = kv::write_opts(node, &p).ok()?;
    let op = match *method {
        Method::PUT => {
            kv::check_new_path_key(&key).ok()?;
            if body.len() > node.config.max_value_bytes {
                return None;
            }
            Op::Put {
                key: key.clone(),
                value: body.to_vec(),
            }
        }
        Method::DELETE if body.is_empty() => Op::Delete { key: key.clone() },
        _ => return None,
    };
    let mut head = std::mem::take(out);
    let node = node.clone();
    Some(Box::pin(async move {
        let outcome = match write::propose(&node, op, Vec::new(), opts).await {
            Ok(outcome) if outcome.committed => outcome,
            answered => {
                let resp = match answered {
                    Ok(outcome) => write::write_response(Some(&key), opts, &outcome),
                    Err(e) => e.into_response(),
                };
                return Written::Response(handled(&node, resp, started));
            }
        };
        let mut json = Vec::with_capacity(write::WRITE_BODY_BYTES_TYPICAL);
        if let Err(e) = write::write_body(&mut json, Some(&key), opts, &outcome) {
            let resp =
                super::ApiError::internal(format!("cannot encode the answer: {e}")).into_response();
            return Written::Response(handled(&node, resp, started));
        }
        push_head(
            &mut head,
            b"HTTP/1.1 200 OK",
            b"application/json",
            outcome.lsn.0,
            &edge::NodeHeaders::now(&node),
            json.len(),
        );
        edge::count_status(&node, KV_ROUTE, 200, started);
        Written::Head {
            head,
            body: bytes::Bytes::from(json),
        }
    }))
}
