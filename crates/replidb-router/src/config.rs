//! [`RouterConfig`]: every setting of a router, with API.md's defaults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::core::{Policy, ReadStrategy};

/// Most sessions the sticky map keeps by default (see `sessions.rs`).
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// The nodes' default `--max-value-bytes` (1 MiB).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;

/// How a router runs.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Address to serve on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Base URLs of the nodes (`http://host:port`), in a fixed order.
    pub nodes: Vec<String>,
    /// How reads pick a follower.
    pub read_strategy: ReadStrategy,
    /// A follower lagging more than this gets no reads.
    pub max_lag: Duration,
    /// Failed checks in a row that make a node unhealthy.
    pub failure_threshold: u32,
    /// Period of the `/status` checks.
    pub health_interval: Duration,
    /// How long one `/status` check may take.
    pub health_timeout: Duration,
    /// After a session writes, its reads go to the leader for this long
    /// (zero disables stickiness).
    pub sticky_window: Duration,
    /// Most sessions tracked for stickiness.
    pub max_sessions: usize,
    /// Timeout of a proxied request, raised to the request's own
    /// `wait_ms`/`timeout_ms` plus slack when those are longer.
    pub request_timeout: Duration,
    /// The nodes' `--max-value-bytes`; request bodies are limited from it.
    pub max_value_bytes: usize,
    /// Multi-leader: the home (node id or URL) of a session that has none
    /// yet and names none (`X-Replidb-Home`); `None` picks the node with
    /// the fewest requests in flight.
    pub home: Option<String>,
    /// The secret the router presents on its own requests (health checks)
    /// to nodes started with `--auth-file` (`--token` / `REPLIDB_TOKEN`;
    /// needs the `read` role). Clients' requests carry their own
    /// `Authorization` header, passed through unchanged.
    pub token: Option<replidb_server::auth::Secret>,
    /// Serve HTTPS with these files (`--tls-cert`, `--tls-key`; with
    /// `client_auth`, clients must present a certificate signed by `ca`).
    pub tls: Option<replidb_tls::TlsFiles>,
    /// The CA that signs the nodes' certificates, for `https://` node URLs
    /// (`--tls-ca`); the router presents `tls`'s certificate to nodes that
    /// ask for one.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl RouterConfig {
    /// A configuration for `nodes` with every default of API.md.
    pub fn new(listen: SocketAddr, nodes: Vec<String>) -> Self {
        RouterConfig {
            listen,
            nodes,
            read_strategy: ReadStrategy::LeastLag,
            max_lag: Duration::from_secs(5),
            failure_threshold: 3,
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_millis(500),
            sticky_window: Duration::from_secs(5),
            max_sessions: DEFAULT_MAX_SESSIONS,
            request_timeout: Duration::from_secs(10),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            home: None,
            token: None,
            tls: None,
            tls_ca: None,
        }
    }

    /// Check and normalise: node URLs get `http://` when they have no
    /// scheme and lose a trailing `/`; duplicates and nonsense are refused.
    pub fn validate(mut self) -> Result<Self, String> {
        if self.nodes.is_empty() {
            return Err("--nodes needs at least one node URL".into());
        }
        let mut urls = Vec::with_capacity(self.nodes.len());
        for raw in &self.nodes {
            let url = replidb_server::normalise_node_url(raw)?;
            if urls.contains(&url) {
                return Err(format!("node {url} is listed twice"));
            }
            urls.push(url);
        }
        self.nodes = urls;
        if self.failure_threshold == 0 {
            return Err("--failure-threshold must be at least 1".into());
        }
        if self.health_interval.is_zero() || self.health_timeout.is_zero() {
            return Err("--health-interval and --health-timeout must be above zero".into());
        }
        if self.request_timeout.is_zero() {
            return Err("--request-timeout must be above zero".into());
        }
        Ok(self)
    }

    /// The routing policy these settings describe.
    pub fn policy(&self) -> Policy {
        Policy {
            strategy: self.read_strategy,
            max_lag_ms: u64::try_from(self.max_lag.as_millis()).unwrap_or(u64::MAX),
            failure_threshold: self.failure_threshold,
            sticky_window: self.sticky_window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nodes: &[&str]) -> RouterConfig {
        RouterConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            nodes.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn urls_are_normalised() {
        let c = cfg(&["127.0.0.1:7001", "http://localhost:7002/"])
            .validate()
            .unwrap();
        assert_eq!(
            c.nodes,
            vec!["http://127.0.0.1:7001", "http://localhost:7002"]
        );
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(cfg(&[]).validate().is_err());
        assert!(cfg(&["http://a:1", "a:1"]).validate().is_err());
        assert!(cfg(&["ftp://a:1"]).validate().is_err());
        // https is a node URL like any other (TLS nodes, --tls-ca).
        assert!(cfg(&["https://a:1"]).validate().is_ok());
        assert!(cfg(&["http://a:1/v1"]).validate().is_err());
        let mut c = cfg(&["a:1"]);
        c.failure_threshold = 0;
        assert!(c.validate().is_err());
    }
}
