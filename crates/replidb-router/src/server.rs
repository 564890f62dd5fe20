//! The router's HTTP server: its own `/status`, `/health` and `/metrics`,
//! and every other path through the proxy ([`crate::proxy`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::json;

use crate::config::RouterConfig;
use crate::shared::Shared;

/// Why a router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid (a usage error).
    #[error("{0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("router stopped: {0}")]
    Serve(std::io::Error),
}

/// A bound router that is not yet serving.
pub struct Router {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

impl Router {
    /// Validate `config`, bind its address, and run one health round so
    /// the first requests already know the leader.
    pub async fn bind(config: RouterConfig) -> Result<Router, StartError> {
        let config = config.validate().map_err(StartError::Config)?;
        replidb_server::metrics::handle();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let shared = Arc::new(Shared::new(config).map_err(StartError::Config)?);
        shared.refresh_now().await;
        Ok(Router { listener, shared })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The `/status` document (for embedding and tests).
    pub fn status(&self) -> serde_json::Value {
        self.shared.status_json()
    }

    /// Serve until `shutdown` resolves; health checks run meanwhile.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let checks = tokio::spawn(crate::health::run(self.shared.clone()));
        let app = app(self.shared);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        checks.abort();
        served.map_err(StartError::Serve)
    }
}

fn app(shared: Arc<Shared>) -> axum::Router {
    let dashboard = crate::dashboard::for_router(&shared);
    axum::Router::new()
        .route("/status", get(status))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(crate::proxy::handle)
        .with_state(shared)
        .merge(replidb_server::dashboard::routes(dashboard))
}

/// `GET /status`: what the router believes about every node, and its
/// routing counters.
async fn status(State(sh): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(sh.status_json())
}

/// `GET /health`: 200 while a leader is known (writes can be routed), 503
/// otherwise.
async fn health(State(sh): State<Arc<Shared>>) -> Response {
    let (leader, eligible) = {
        let st = sh.state();
        let leader = st
            .leader()
            .and_then(|i| st.nodes().get(i))
            .map(|n| n.url.clone());
        let eligible = (0..st.nodes().len()).filter(|&i| st.is_eligible(i)).count();
        (leader, eligible)
    };
    let healthy = leader.is_some();
    let body = json!({
        "healthy": healthy,
        "role": "router",
        "leader": leader,
        "eligible_followers": eligible,
        "error": (!healthy).then_some("no leader is known"),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: the process's Prometheus text.
async fn metrics() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        replidb_server::metrics::render(),
    )
        .into_response()
}
