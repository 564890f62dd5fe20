//! `replidb server`: merge flags and file, start logging, run the node until
//! Ctrl-C or SIGTERM. The node is a [`replidb_server::ReplicationManager`],
//! the embedding API, so a command-line node and an embedded one are the
//! same code.

use crate::server_config::ServerOpts;
use crate::UsageError;
use anyhow::Context as _;

/// Run one node until a shutdown signal.
pub async fn run(flags: ServerOpts) -> anyhow::Result<()> {
    let opts = match &flags.config {
        Some(path) => {
            let file = ServerOpts::from_file(path).map_err(UsageError)?;
            flags.or_file(file)
        }
        None => flags,
    };
    let format = opts.log_format().map_err(|e| UsageError(e.to_string()))?;
    let config = opts
        .into_node_config()
        .map_err(|e| UsageError(e.to_string()))?;
    crate::logging::init(format, "info");
    log_start(&config);
    // The same API an embedding program uses: one implementation.
    replidb_server::ReplicationManager::from_node_config(config)
        .run_until(shutdown_signal())
        .await
        .context("server stopped")?;
    tracing::info!("node stopped");
    Ok(())
}

/// The first lines of a node's log: the command line it was started with
/// (to start it again the same way) and every effective setting, flags,
/// file and defaults merged, as typed fields (durations in ms, sizes in
/// bytes, positions as numbers).
fn log_start(c: &replidb_server::NodeConfig) {
    let argv: Vec<String> = std::env::args()
        .map(|a| crate::output::shell_word(&a))
        .collect();
    tracing::info!(node_id = %c.id, command = %argv.join(" "), "starting node");
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    tracing::info!(
        node_id = %c.id,
        listen = %c.listen,
        advertise_url = %c.advertise(),
        resp_listen = %c.resp_listen.map_or_else(|| "-".to_string(), |a| a.to_string()),
        data_dir = %c.data_dir.display(),
        topology = c.topology.as_str(),
        follow = c.follow.as_deref().unwrap_or("-"),
        peers = %list(&c.peers),
        coordinator = match c.coordinator {
            replidb_server::CoordinatorKind::Static => "static",
            replidb_server::CoordinatorKind::Etcd => "etcd",
        },
        etcd = %list(&c.etcd_endpoints),
        cluster = %c.cluster,
        fsync = match c.fsync {
            replidb_wal::FsyncPolicy::Always => "always",
            replidb_wal::FsyncPolicy::Never => "never",
        },
        storage = %c.backend,
        table_cache_bytes = c.table_cache_bytes as u64,
        max_value_bytes = c.max_value_bytes as u64,
        default_w = %c.default_write_concern,
        default_timeout_ms = c.default_write_timeout.as_millis() as u64,
        forward_writes = c.forward_writes,
        wal_segment_bytes = c.wal_segment_bytes,
        wal_retention_bytes = c.wal_retention_bytes,
        checkpoint_interval_ms = c.checkpoint_interval.as_millis() as u64,
        "configuration"
    );
    tracing::info!(
        node_id = %c.id,
        replication_delay = %c.replication_delay,
        replication_compression = %c.replication_compression,
        backoff_base_ms = c.backoff_base.as_millis() as u64,
        backoff_max_ms = c.backoff_max.as_millis() as u64,
        heartbeat_interval_ms = c.heartbeat_interval.as_millis() as u64,
        cluster_size = c.cluster_size.map(|n| n as u64),
        health_max_lag_ms = c.health_max_lag.as_millis() as u64,
        lease_ttl_ms = c.lease_ttl.as_millis() as u64,
        max_failover_lag_records = c.max_failover_lag_records,
        conflict_policy = %c.conflict_policy.fingerprint(),
        link_delay = %c.link_delay,
        replicas = c.replicas as u64,
        strict_quorum = c.strict_quorum,
        anti_entropy_interval_ms = c.anti_entropy_interval.as_millis() as u64,
        "configuration (replication)"
    );
    tracing::info!(
        node_id = %c.id,
        auth_file = %c.auth_file.as_ref().map_or_else(|| "-".to_string(), |p| p.display().to_string()),
        // Whether a peer token is set, never the secret.
        peer_token = c.peer_token.is_some(),
        metrics_open = c.metrics_open,
        max_connections = c.http_limits.connections_max as u64,
        http_header_timeout_ms = c.http_limits.header_timeout.as_millis() as u64,
        max_header_bytes = c.http_limits.header_bytes_max as u64,
        "configuration (access and limits)"
    );
}

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM, the two ways a node is
/// asked to stop (terminal, and service managers / containers).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            // Without a SIGTERM handler the node still stops on Ctrl-C.
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown requested");
}
