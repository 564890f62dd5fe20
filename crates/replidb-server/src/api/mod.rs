//! The HTTP API (API.md): key-value under `/v1`, the seed endpoints,
//! operations, the replication upgrade endpoint, the dashboard and the
//! OpenAPI document of all of them (`/openapi.json`, [`openapi`]), all on
//! one port.
//!
//! Handlers are thin: they parse and validate, then call the engine, the
//! leader (write concerns) or the read path in `read.rs`. One edge wraps
//! every route (`edge.rs`): the token check, the `X-Replidb-*` headers
//! (unless a handler or a proxied answer already set them), the request
//! metrics. The listener runs [`Api`] (`service.rs`), which serves
//! single-key requests through that edge without the router.

mod admin;
mod causal;
mod edge;
mod error;
mod kv;
mod leaderless;
pub mod openapi;
mod ops;
mod params;
mod read;
mod relay;
mod repl;
mod scan;
mod seed;
mod service;
mod write;

pub use error::{ApiError, ApiResult};
// The embedding API (`crate::embed`) reuses these, so `/health`, `/status`
// and writes have one implementation whether asked over HTTP or in-process.
pub use ops::{health_of, status_of};
pub use params::WriteOpts;
pub use write::{concern_shortfall, propose, WriteOutcome, BODY_READ_TIMEOUT};
// The Redis protocol listener (`crate::resp`) drives the same read and
// write paths.
pub use kv::TXN_OPS_MAX;
pub use params::{Params, ReadOpts, READ_PARAMS, TIMEOUT_MS_MAX};
pub use read::{confirm_strong, plan, Plan};
pub use scan::{
    SCAN_CONTINUE_HEADER, SCAN_PAGE_BYTES_DEFAULT, SCAN_PAGE_BYTES_MAX, SCAN_TRUNCATED_HEADER,
};

pub(crate) use edge::LSN_HEADER;
pub use service::Api;

use std::sync::Arc;

use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use crate::node::Node;

/// Shared handler state.
pub type AppState = Arc<Node>;

/// The node's own routes, before state and middleware. Every handler here
/// carries a `#[utoipa::path]` and is listed in [`openapi::ApiDoc`];
/// `registered_paths` and the tests check that nothing is left out.
fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/kv/{*key}",
            get(kv::get_key).put(kv::put_key).delete(kv::delete_key),
        )
        .route("/v1/kv", get(scan::scan))
        .route(
            "/v1/counter/{*key}",
            get(causal::counter_get)
                .post(causal::counter_post)
                .delete(causal::counter_delete),
        )
        .route(
            "/v1/set/{*key}",
            get(causal::set_get)
                .post(causal::set_post)
                .delete(causal::set_delete),
        )
        .route(
            "/v1/map/{*key}",
            get(causal::map_get)
                .patch(causal::map_patch)
                .delete(causal::map_delete),
        )
        .route("/v1/conflicts", get(causal::conflicts))
        .route("/v1/txn", post(kv::txn))
        .route("/write", post(seed::write))
        .route("/read", get(seed::read))
        .route("/follower-read", get(seed::follower_read))
        .route("/read-with-repair", get(seed::read_with_repair))
        .route("/write-with-quorum", post(seed::write_with_quorum))
        .route("/health", get(ops::health))
        .route("/status", get(ops::status))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/admin/promote", post(admin::promote))
        .route("/admin/forget", post(admin::forget))
        .route("/admin/follow", post(admin::follow))
        .route("/admin/fence", post(admin::fence))
        .route("/admin/switchover", post(admin::switchover))
        .route("/internal/catch-up", post(ops::catch_up))
        .route("/internal/digest", get(ops::digest))
        .route(
            "/internal/replica",
            get(leaderless::replica_get).post(leaderless::replica_put),
        )
        .route("/internal/scan", get(leaderless::replica_scan))
        .route("/internal/hint", post(leaderless::hint_put))
        .route("/internal/hints", get(leaderless::hints_for))
        .route("/internal/collect", post(leaderless::collect))
        .route("/internal/ae/leaves", get(leaderless::ae_leaves))
        .route("/internal/ae/bucket", get(leaderless::ae_bucket))
        .route(
            replidb_replication::transport::REPLICATION_PATH,
            get(repl::upgrade),
        )
}

/// Build the router for `node`: its routes and its dashboard, all behind
/// the same middleware (so `--auth-file` guards the dashboard too, as
/// [`crate::auth::access`] says it does).
pub fn router(node: Arc<Node>) -> Router {
    let dashboard = crate::dashboard::routes(crate::dashboard::Dashboard::new(
        crate::dashboard::DashboardConfig {
            seeds: vec![node.config.advertise()],
            title: format!("replidb node {}", node.config.id),
            controls: false,
            http: Some(node.http.clone()),
        },
    ));
    routes()
        .with_state(node.clone())
        .merge(dashboard)
        .fallback(ops::not_found)
        // One middleware rather than three layers: each `from_fn` layer
        // boxes and clones the inner service per request, which a profile
        // of the write path showed as ~5% of its instructions.
        .layer(middleware::from_fn_with_state(node.clone(), edge::edge))
}

/// The service a node's HTTP listener runs: [`router`], with the
/// single-key reads and writes dispatched directly ([`Api`]).
pub fn service(node: Arc<Node>) -> Api {
    Api::new(node.clone(), router(node))
}

/// Every path [`router`] serves, as OpenAPI path templates (`{*key}` is
/// written `{key}`), read from the routers themselves rather than from a
/// list kept beside them: axum can list its routes only through its
/// `Debug` output, which names each registered path in quotes. A test
/// compares this with the OpenAPI document, so a route added without
/// documentation fails it.
pub fn registered_paths() -> std::collections::BTreeSet<String> {
    let dashboard = crate::dashboard::routes(crate::dashboard::Dashboard::new(
        crate::dashboard::DashboardConfig {
            seeds: Vec::new(),
            title: String::new(),
            controls: false,
            http: None,
        },
    ));
    let mut out = std::collections::BTreeSet::new();
    for text in [format!("{:?}", routes()), format!("{dashboard:?}")] {
        // Only the path router: the fallback router that follows it holds
        // axum's own catch-all routes, which are not endpoints.
        let paths = text.split("fallback_router").next().unwrap_or_default();
        for piece in paths.split('"').skip(1).step_by(2) {
            if piece.starts_with('/') && !piece.contains("__private__") {
                out.insert(piece.replace("{*", "{"));
            }
        }
    }
    out
}
