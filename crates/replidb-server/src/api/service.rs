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
