//! The router's HTTP server: its own `/status`, `/health` and `/metrics`,
//! and every other path through the proxy ([`crate::proxy`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::json;

use crate::config::RouterConfig;
use crate::core::RouterState;
use crate::error::RouterError;
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
        let tls = match &self.shared.config.tls {
            Some(files) => Some(replidb_tls::TlsAcceptor::from(
                replidb_tls::server_config(files).map_err(|e| StartError::Config(e.to_string()))?,
            )),
            None => None,
        };
        let app = app(self.shared);
        let served = replidb_server::serve::serve(
            self.listener,
            app,
            replidb_server::serve::HttpLimits::default(),
            replidb_server::serve::Framing::Hyper,
            tls,
            shutdown,
        )
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

/// `GET /health[?role=leader|follower][&max_lag_ms=N]`, in the style of a
/// node's: without parameters 200 while a leader is known (writes can be
/// routed); `role=leader` the same; `role=follower` 200 only while some
/// follower is in the read rotation (healthy, lag within `--max-lag`), and
/// with `max_lag_ms` also within that lag (the leader's lag is 0, so
/// `max_lag_ms` only narrows followers). 503 with the reason otherwise;
/// 400 for a bad value or an unknown parameter.
async fn health(State(sh): State<Arc<Shared>>, RawQuery(q): RawQuery) -> Response {
    let query = match HealthQuery::parse(q.as_deref()) {
        Ok(query) => query,
        Err(e) => return e.into_response(),
    };
    let (healthy, body) = health_of(&sh.state(), &query);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The role a `/health` check asks about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HealthRole {
    Leader,
    Follower,
}

/// `/health`'s parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct HealthQuery {
    role: Option<HealthRole>,
    max_lag_ms: Option<u64>,
}

impl HealthQuery {
    const KNOWN: &'static str = "role, max_lag_ms";

    fn parse(query: Option<&str>) -> Result<HealthQuery, RouterError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| RouterError::BadBody(format!("malformed query string: {e}")))?;
        let mut q = HealthQuery::default();
        for (name, value) in pairs {
            match name.as_str() {
                "role" => {
                    q.role = Some(match value.as_str() {
                        "leader" => HealthRole::Leader,
                        "follower" => HealthRole::Follower,
                        _ => {
                            return Err(RouterError::InvalidParameter {
                                name,
                                value,
                                expected: "leader or follower",
                            })
                        }
                    })
                }
                "max_lag_ms" => {
                    q.max_lag_ms =
                        Some(
                            value
                                .trim()
                                .parse()
                                .map_err(|_| RouterError::InvalidParameter {
                                    name: name.clone(),
                                    value: value.clone(),
                                    expected: "milliseconds",
                                })?,
                        )
                }
                _ => {
                    return Err(RouterError::UnknownParameter {
                        name,
                        known: Self::KNOWN,
                    })
                }
            }
        }
        Ok(q)
    }
}

/// Whether the router is healthy for `q`, and the `/health` document.
fn health_of(st: &RouterState, q: &HealthQuery) -> (bool, serde_json::Value) {
    let leader = st
        .leader()
        .and_then(|i| st.nodes().get(i))
        .map(|n| n.url.clone());
    let within = |i: usize| {
        st.is_eligible(i)
            && q.max_lag_ms
                .is_none_or(|max| st.nodes()[i].seen.as_ref().is_some_and(|o| o.lag_ms <= max))
    };
    let eligible = (0..st.nodes().len()).filter(|&i| st.is_eligible(i)).count();
    let within_count = (0..st.nodes().len()).filter(|&i| within(i)).count();
    let error = match q.role {
        Some(HealthRole::Follower) if within_count == 0 => Some(match q.max_lag_ms {
            Some(max) if eligible > 0 => {
                format!("no follower in the read rotation lags at most {max} ms")
            }
            _ => "no follower is in the read rotation (healthy and within --max-lag)".to_string(),
        }),
        Some(HealthRole::Follower) => None,
        // Every node takes writes: healthy while any one answers.
        _ if st.causal() => (!(0..st.nodes().len()).any(|i| st.is_healthy(i)))
            .then(|| "no node answers its health checks".to_string()),
        // The leader's own lag is 0: `max_lag_ms` only narrows followers.
        _ if leader.is_none() => Some("no leader is known".to_string()),
        _ => None,
    };
    let healthy = error.is_none();
    let body = json!({
        "healthy": healthy,
        "role": "router",
        "leader": leader,
        "eligible_followers": eligible,
        "error": error,
    });
    (healthy, body)
}

/// `GET /metrics`: the process's Prometheus text.
async fn metrics() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        replidb_server::metrics::render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{NodeRole, Observation, Policy, ReadStrategy};
    use std::time::{Duration, Instant};

    fn state(follower_lag_ms: Option<u64>) -> RouterState {
        let urls = vec!["http://n1:1".to_string(), "http://n2:2".to_string()];
        let mut st = RouterState::new(
            &urls,
            Policy {
                strategy: ReadStrategy::LeastLag,
                max_lag_ms: 1000,
                failure_threshold: 3,
                sticky_window: Duration::ZERO,
            },
        );
        let obs = |id: &str, role, lag_ms| Observation {
            id: id.into(),
            role,
            epoch: 1,
            applied_lsn: 0,
            lag_ms,
            multi_leader: false,
            leaderless: false,
        };
        let now = Instant::now();
        st.record_success(0, obs("n1", NodeRole::Leader, 0), now);
        if let Some(lag) = follower_lag_ms {
            st.record_success(1, obs("n2", NodeRole::Follower, lag), now);
        }
        st
    }

    fn ok(st: &RouterState, q: &str) -> bool {
        health_of(st, &HealthQuery::parse(Some(q)).unwrap()).0
    }

    /// `role=` is honoured as on a node: leader needs a leader, follower a
    /// follower in the read rotation (within `max_lag_ms` if given).
    #[test]
    fn health_honours_role_and_max_lag() {
        let no_follower = state(None);
        assert!(ok(&no_follower, ""));
        assert!(ok(&no_follower, "role=leader"));
        assert!(ok(&no_follower, "role=leader&max_lag_ms=0"));
        assert!(!ok(&no_follower, "role=follower"));
        let lagging = state(Some(600));
        assert!(ok(&lagging, "role=follower"));
        assert!(!ok(&lagging, "role=follower&max_lag_ms=500"));
        assert!(ok(&lagging, "role=follower&max_lag_ms=600"));
        let too_far = state(Some(5000));
        assert!(!ok(&too_far, "role=follower"), "beyond --max-lag");
        let (_, body) = health_of(
            &too_far,
            &HealthQuery::parse(Some("role=follower")).unwrap(),
        );
        assert!(
            body["error"].as_str().unwrap().contains("read rotation"),
            "{body}"
        );
    }

    #[test]
    fn health_refuses_bad_parameters() {
        assert!(matches!(
            HealthQuery::parse(Some("role=primary")),
            Err(RouterError::InvalidParameter { .. })
        ));
        assert!(matches!(
            HealthQuery::parse(Some("max_lag_ms=soon")),
            Err(RouterError::InvalidParameter { .. })
        ));
        assert!(matches!(
            HealthQuery::parse(Some("rol=leader")),
            Err(RouterError::UnknownParameter { .. })
        ));
    }
}
