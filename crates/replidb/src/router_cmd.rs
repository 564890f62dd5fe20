//! `replidb router`: the read/write-splitting proxy (crate
//! `replidb-router`), run until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use replidb_router::{ReadStrategy, RouterConfig, StartError};

use crate::cli::parse_duration_arg;
use crate::UsageError;

/// `replidb router` arguments (API.md "Router").
#[derive(Debug, Args)]
pub struct RouterArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Node base URLs, comma-separated (`http://` may be left out).
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// How reads pick a follower: round-robin, random or least-lag.
    #[arg(long, default_value = "least-lag", value_parser = parse_strategy)]
    pub read_strategy: ReadStrategy,
    /// A follower lagging more than this gets no reads.
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub max_lag: Duration,
    /// Failed health checks in a row that take a node out of rotation.
    #[arg(long, default_value_t = 3)]
    pub failure_threshold: u32,
    /// Period of the `/status` health checks.
    #[arg(long, default_value = "1s", value_parser = parse_duration_arg)]
    pub health_interval: Duration,
    /// How long one health check may take.
    #[arg(long, default_value = "500ms", value_parser = parse_duration_arg)]
    pub health_timeout: Duration,
    /// After a session writes, its reads go to the leader this long (0s: off).
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    pub sticky_window: Duration,
    /// Most sessions remembered for the sticky window.
    #[arg(long, default_value_t = replidb_router::config::DEFAULT_MAX_SESSIONS)]
    pub max_sessions: usize,
    /// Timeout of a proxied request (raised to its own wait_ms/timeout_ms + 2s).
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    pub request_timeout: Duration,
    /// The nodes' --max-value-bytes; request bodies are limited from it.
    #[arg(long, default_value_t = replidb_router::config::DEFAULT_MAX_VALUE_BYTES)]
    pub max_value_bytes: usize,
    /// Multi-leader: home node (id or URL) of a session that names none
    /// (X-Replidb-Home) and has none yet [default: none: the least-loaded
    /// node]
    #[arg(long)]
    pub home: Option<String>,
    /// Secret the router presents on its own requests (health checks,
    /// dashboard) to nodes with --auth-file (needs `read`); clients'
    /// Authorization headers pass through unchanged [default: none]
    #[arg(long, env = "REPLIDB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate chain: serve HTTPS (with --tls-key) [default: none:
    /// plain HTTP]
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert [default: none]
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA file that signs the nodes' certificates (https:// node URLs;
    /// with --tls-client-auth, also the clients') [default: none]
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Require clients to present a certificate signed by --tls-ca
    #[arg(long, requires = "tls_cert", requires = "tls_ca")]
    pub tls_client_auth: bool,
}

fn parse_strategy(s: &str) -> Result<ReadStrategy, String> {
    s.parse()
}

impl RouterArgs {
    fn into_config(self) -> RouterConfig {
        RouterConfig {
            read_strategy: self.read_strategy,
            max_lag: self.max_lag,
            failure_threshold: self.failure_threshold,
            health_interval: self.health_interval,
            health_timeout: self.health_timeout,
            sticky_window: self.sticky_window,
            max_sessions: self.max_sessions,
            request_timeout: self.request_timeout,
            max_value_bytes: self.max_value_bytes,
            home: self.home,
            token: self
                .token
                .filter(|t| !t.is_empty())
                .map(replidb_server::auth::Secret::new),
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(replidb_tls::TlsFiles {
                    cert,
                    key,
                    ca: self.tls_ca.clone(),
                    client_auth: self.tls_client_auth,
                }),
                _ => None,
            },
            tls_ca: self.tls_ca,
            ..RouterConfig::new(self.listen, self.nodes)
        }
    }
}

/// Run the router until a shutdown signal.
pub async fn run(args: RouterArgs) -> anyhow::Result<()> {
    crate::logging::init(crate::server_config::LogFormat::Logfmt, "info");
    let config = args.into_config();
    let router = match replidb_router::Router::bind(config).await {
        Ok(r) => r,
        Err(StartError::Config(msg)) => return Err(UsageError(msg).into()),
        Err(e) => return Err(e.into()),
    };
    let status = router.status();
    tracing::info!(
        listen = %router.local_addr().map_or_else(|| "?".into(), |a| a.to_string()),
        leader = %status["leader"]["url"].as_str().unwrap_or("none yet"),
        nodes = status["nodes"].as_array().map_or(0, Vec::len),
        "router started"
    );
    router
        .run(crate::server_cmd::shutdown_signal())
        .await
        .context("router stopped")?;
    tracing::info!("router stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    #[test]
    fn router_flags_parse_with_api_md_defaults() {
        let cli = Cli::try_parse_from([
            "replidb",
            "router",
            "--nodes",
            "http://127.0.0.1:7001,127.0.0.1:7002",
        ])
        .unwrap();
        let Command::Router(r) = cli.command else {
            panic!("not router")
        };
        assert_eq!(r.nodes.len(), 2);
        assert_eq!(r.read_strategy, replidb_router::ReadStrategy::LeastLag);
        assert_eq!(r.max_lag, std::time::Duration::from_secs(5));
        assert_eq!(r.failure_threshold, 3);
        assert_eq!(r.sticky_window, std::time::Duration::from_secs(5));
        assert_eq!(r.home, None);
        let cli =
            Cli::try_parse_from(["replidb", "router", "--nodes", "a:1", "--home", "n2"]).unwrap();
        let Command::Router(r) = cli.command else {
            panic!("not router")
        };
        assert_eq!(r.into_config().home.as_deref(), Some("n2"));
        let bad = Cli::try_parse_from([
            "replidb",
            "router",
            "--nodes",
            "a:1",
            "--read-strategy",
            "x",
        ]);
        assert_eq!(bad.unwrap_err().exit_code(), 2);
    }
}
