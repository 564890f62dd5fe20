//! [`Shared`]: the state every request handler and the health task see.
//!
//! Locks are `std::sync::Mutex`, held only to read or update a few fields
//! and never across an `.await`; the one async lock (`refresh`) coalesces
//! on-demand health rounds so a burst of failing requests triggers one
//! round, not one each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::RouterConfig;
use crate::core::{choose, ReadStrategy, RequestKind, RouterState, Target};
use crate::homes::HomeMap;
use crate::sessions::SessionMap;

/// Routing counters, as `/status` reports them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub reads_to_followers: AtomicU64,
    pub reads_to_leader: AtomicU64,
    pub writes: AtomicU64,
    /// Reads routed to a follower that the leader answered in the end
    /// (the follower fell back, or failed and the router retried).
    pub fallbacks: AtomicU64,
    /// Reads sent to the leader because the session wrote recently.
    pub sticky_hits: AtomicU64,
    /// Reads whose `min_lsn` the LSN cookie raised.
    pub cookie_waits: AtomicU64,
    /// Reads sent to the leader because no follower was eligible.
    pub no_eligible_follower: AtomicU64,
    /// Requests re-sent after a connection failure.
    pub retries: AtomicU64,
    /// 307s followed to the leader they named.
    pub redirects_followed: AtomicU64,
    /// Requests answered 503 `no_leader`.
    pub no_leader: AtomicU64,
    /// Multi-leader writes sent to the session's home node.
    pub home_writes: AtomicU64,
    /// Multi-leader writes that chose a (new) home: the session had none,
    /// or it was down.
    pub new_homes: AtomicU64,
    /// Multi-leader reads.
    pub reads_any_node: AtomicU64,
    /// Multi-leader reads sent with the session's per-origin token.
    pub min_version_reads: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn to_json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "reads_to_followers": g(&self.reads_to_followers),
            "reads_to_leader": g(&self.reads_to_leader),
            "writes": g(&self.writes),
            "fallbacks": g(&self.fallbacks),
            "sticky_hits": g(&self.sticky_hits),
            "cookie_waits": g(&self.cookie_waits),
            "no_eligible_follower": g(&self.no_eligible_follower),
            "retries": g(&self.retries),
            "redirects_followed": g(&self.redirects_followed),
            "no_leader": g(&self.no_leader),
            "home_writes": g(&self.home_writes),
            "new_homes": g(&self.new_homes),
            "reads_any_node": g(&self.reads_any_node),
            "min_version_reads": g(&self.min_version_reads),
        })
    }
}

/// State shared by the handlers and the health task.
pub(crate) struct Shared {
    pub config: RouterConfig,
    state: Mutex<RouterState>,
    sessions: Mutex<SessionMap>,
    /// Multi-leader sessions: home node and write token.
    homes: Mutex<HomeMap>,
    pub counters: Counters,
    /// Round-robin position (also the tie-breaker of least-lag).
    spin: AtomicU64,
    /// Client for proxied requests: no redirects followed (the router
    /// follows 307s itself, resending the body), no proxies.
    pub http: reqwest::Client,
    /// Client for health checks, with the short check timeout.
    pub health_http: reqwest::Client,
    /// Held while a health round runs.
    pub refresh: tokio::sync::Mutex<()>,
    /// Completed health rounds.
    pub rounds: AtomicU64,
    pub started: Instant,
}

/// How long a proxied request may take to connect: a dead node must fail
/// fast so the retry still fits in the client's patience.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Shared {
    pub fn new(config: RouterConfig) -> Result<Self, String> {
        let identity = config
            .tls
            .as_ref()
            .map(|t| (t.cert.as_path(), t.key.as_path()));
        let tls = replidb_tls::client_config_for(config.tls_ca.as_deref(), identity)
            .map_err(|e| e.to_string())?;
        let base = || {
            reqwest::Client::builder()
                .tls_backend_preconfigured((*tls).clone())
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(replidb_server::serve::CLIENT_POOL_IDLE_TIMEOUT)
                .no_proxy()
                .tcp_nodelay(true)
                .connect_timeout(CONNECT_TIMEOUT.min(config.request_timeout))
        };
        let http = base().build().map_err(|e| e.to_string())?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &config.token {
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| "the router's token has characters a header cannot carry")?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let health_http = base()
            .default_headers(headers)
            .connect_timeout(config.health_timeout)
            .timeout(config.health_timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Shared {
            state: Mutex::new(RouterState::new(&config.nodes, config.policy())),
            sessions: Mutex::new(SessionMap::new(config.sticky_window, config.max_sessions)),
            homes: Mutex::new(HomeMap::new(config.max_sessions)),
            counters: Counters::default(),
            spin: AtomicU64::new(0),
            http,
            health_http,
            refresh: tokio::sync::Mutex::new(()),
            rounds: AtomicU64::new(0),
            started: Instant::now(),
            config,
        })
    }

    /// The routing state. A poisoned lock is recovered: the state is
    /// plain data, rewritten by the next health round.
    pub fn state(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn sessions(&self) -> MutexGuard<'_, SessionMap> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn homes(&self) -> MutexGuard<'_, HomeMap> {
        self.homes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`choose`] as if node `avoid` were down (it just failed a request).
    pub fn choose_avoiding(&self, kind: &RequestKind, avoid: usize) -> Target {
        let spin = self.spin.fetch_add(1, Ordering::Relaxed);
        choose(&self.state().without(avoid), kind, Instant::now(), spin)
    }

    /// [`choose`] with this router's strategy input.
    pub fn choose(&self, kind: &RequestKind) -> Target {
        let spin = match self.config.read_strategy {
            ReadStrategy::Random => rand::random::<u64>(),
            ReadStrategy::RoundRobin | ReadStrategy::LeastLag => {
                self.spin.fetch_add(1, Ordering::Relaxed)
            }
        };
        choose(&self.state(), kind, Instant::now(), spin)
    }

    /// Name (id, else URL) and URL of node `i`.
    pub fn node(&self, i: usize) -> Option<(String, String)> {
        let st = self.state();
        st.nodes()
            .get(i)
            .map(|n| (n.name().to_string(), n.url.clone()))
    }

    /// The `/status` document.
    pub fn status_json(&self) -> Value {
        let st = self.state();
        let now = Instant::now();
        let nodes: Vec<Value> = st
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let o = n.seen.as_ref();
                json!({
                    "id": o.map(|o| o.id.clone()),
                    "url": n.url,
                    "role": o.map(|o| o.role.as_str()),
                    "epoch": o.map(|o| o.epoch),
                    "applied_lsn": o.map(|o| o.applied_lsn),
                    "lag_ms": o.map(|o| o.lag_ms),
                    "healthy": st.is_healthy(i),
                    "in_flight": n.in_flight,
                    "eligible_for_reads": st.is_eligible(i),
                    "consecutive_failures": n.consecutive_failures,
                    "last_ok_ms_ago": n.last_ok.map(|t| now.saturating_duration_since(t).as_millis() as u64),
                    "last_error": n.last_error,
                })
            })
            .collect();
        let leader = st.leader().and_then(|i| st.nodes().get(i)).map(
            |n| json!({"id": n.name(), "url": n.url, "epoch": n.seen.as_ref().map(|o| o.epoch)}),
        );
        let c = &self.config;
        json!({
            "role": "router",
            "topology": st.topology(),
            "leader": leader,
            "nodes": nodes,
            "counters": self.counters.to_json(),
            "sessions": self.sessions().len(),
            "homes": self.homes().len(),
            "health_rounds": self.rounds.load(Ordering::Relaxed),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "config": {
                "read_strategy": c.read_strategy.to_string(),
                "max_lag_ms": c.max_lag.as_millis() as u64,
                "failure_threshold": c.failure_threshold,
                "health_interval_ms": c.health_interval.as_millis() as u64,
                "sticky_window_ms": c.sticky_window.as_millis() as u64,
                "max_sessions": c.max_sessions,
                "request_timeout_ms": c.request_timeout.as_millis() as u64,
                "home": c.home,
            },
        })
    }
}
