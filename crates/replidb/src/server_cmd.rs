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
    tracing::info!(
        id = %config.id,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        follow = config.follow.as_deref().unwrap_or("-"),
        "starting node"
    );
    // The same API an embedding program uses: one implementation.
    replidb_server::ReplicationManager::from_node_config(config)
        .run_until(shutdown_signal())
        .await
        .context("server stopped")?;
    tracing::info!("node stopped");
    Ok(())
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
