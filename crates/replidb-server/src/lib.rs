//! replidb-server: one node — its HTTP API on a single port, and the
//! assembly of engine, replication role and background tasks.
//!
//! - `config`: [`NodeConfig`], every setting of a node.
//! - [`node`]: [`Node`], the running state (engine + leader or follower).
//! - [`api`]: the HTTP routes of API.md, including the replication upgrade.
//! - [`auth`]: bearer tokens with roles (`--auth-file`) and which role
//!   each endpoint needs.
//! - [`metrics`]: the Prometheus recorder and state gauges.
//! - [`embed`]: the embedding API ([`ReplicationManager`]) that the
//!   `replidb server` command is built on.
//! - [`serve`]: the HTTP listener and its limits (connections, header
//!   size and time).
//! - [`resp`]: the Redis protocol listener (`--resp-listen`), another
//!   driver of the same read and write paths.
//!
//! [`Server::bind`] binds the port and starts the node; [`Server::run`]
//! serves until a shutdown future resolves, then stops cleanly (replication
//! sessions end, the engine checkpoints).

pub mod api;
pub mod auth;
mod config;
pub mod dashboard;
pub mod embed;
pub mod identity;
pub mod leaderless;
pub mod metrics;
pub mod node;
pub mod peer_answer;
pub mod resp;
pub mod serve;
pub mod static_coord;

pub use api::{
    SCAN_CONTINUE_HEADER, SCAN_PAGE_BYTES_DEFAULT, SCAN_PAGE_BYTES_MAX, SCAN_TRUNCATED_HEADER,
};
pub use config::{normalise_node_url, CoordinatorKind, NodeConfig, Topology};
pub use embed::{
    Database, EmbedError, Health, ReplicaNode, ReplicationConfig, ReplicationManager,
    ReplicationState, ReplicationTiming,
};
pub use node::{Node, Role};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// Errors that stop a node from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A re-pointing to the leader of an epoch older than one this node
    /// has recorded (a newer one arrived while the request was on its
    /// way): refused, nothing changed.
    #[error("follow refused: epoch {asked} is older than epoch {current}, which this node has already recorded")]
    StaleEpoch {
        /// The epoch the re-pointing named.
        asked: replidb_core::Epoch,
        /// The newest epoch this node has recorded.
        current: replidb_core::Epoch,
    },
    /// A re-pointing within the epoch this node is itself standing for in
    /// a promote ([`Node::stand_for`]): one leader per epoch, as one vote
    /// per term in Raft. Temporary: it ends with that promote.
    #[error("this node is itself standing for epoch {epoch} (a promote is in progress); retry")]
    Candidate {
        /// The epoch this node stands for.
        epoch: replidb_core::Epoch,
    },
    /// A promote's candidacy ended before it could lead: a newer epoch was
    /// recorded meanwhile (another node leads, or a later promote began).
    #[error("epoch {epoch} was superseded by epoch {current} while this node stood for it; it does not lead")]
    Superseded {
        /// The epoch this node stood for.
        epoch: replidb_core::Epoch,
        /// The epoch recorded since.
        current: replidb_core::Epoch,
    },
    /// A promote of a node that leads by now (another promote of it
    /// finished first): nothing changes.
    #[error("this node already leads epoch {epoch}")]
    Leading {
        /// The epoch it leads.
        epoch: replidb_core::Epoch,
    },
    /// This node cannot lead yet: a rewind's resync is rebuilding its
    /// table (`EngineError::TableAheadOfLog`). Temporary.
    #[error("{0}")]
    Resyncing(String),
    /// Any other start-up or serving failure, with context.
    #[error("{0}")]
    Startup(String),
}

/// A bound, started node that is not yet serving HTTP.
pub struct Server {
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    /// The Redis protocol listener, when `resp_listen` is set.
    resp: Option<resp::RespListener>,
}

impl Server {
    /// Bind `config.listen` (port 0 picks a free port; the advertised URL
    /// then uses the real one) and start the node.
    pub async fn bind(mut config: NodeConfig) -> Result<Server, ServerError> {
        metrics::handle();
        if config.scan_page_bytes == 0 || config.scan_page_bytes > SCAN_PAGE_BYTES_MAX {
            return Err(ServerError::Startup(format!(
                "scan_page_bytes {} is outside 1..={SCAN_PAGE_BYTES_MAX}",
                config.scan_page_bytes
            )));
        }
        config.url_from_os_port = config.listen.port() == 0 && config.advertise_url.is_none();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|e| ServerError::Startup(e.to_string()))?;
        config.listen = local;
        config
            .settle_own_url()
            .await
            .map_err(ServerError::Startup)?;
        // Bound before the node starts, so a taken port fails start-up.
        let resp = match config.resp_listen {
            Some(addr) => Some(resp::RespListener::bind(addr).await?),
            None => None,
        };
        config.resp_listen = resp.as_ref().map(resp::RespListener::local_addr);
        metrics::register_node_metrics(&config.id);
        let node = Node::start(config).await?;
        Ok(Server {
            listener,
            node,
            resp,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.config.listen
    }

    /// The address the Redis protocol listener bound, if any.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.node.config.resp_listen
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serve until `shutdown` resolves, then stop the node.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let node = self.node.clone();
        let app = api::service(node.clone());
        let tls = match &node.config.tls {
            Some(files) => Some(replidb_tls::TlsAcceptor::from(
                replidb_tls::server_config(files)
                    .map_err(|e| ServerError::Startup(e.to_string()))?,
            )),
            None => None,
        };
        let resp = self.resp.map(|r| r.serve(node.clone(), tls.clone()));
        tracing::info!(node_id = %node.config.id, addr = %node.config.listen, role = node.role().name(), "serving");
        let stop = node.shutdown.clone();
        let stopping = node.clone();
        let served = serve::serve(
            self.listener,
            app,
            node.config.http_limits,
            serve::Framing::DirectSingleKey,
            tls,
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    _ = stop.cancelled() => {}
                }
                // End replication streams first: graceful shutdown waits
                // for open connections.
                stopping.shutdown.cancel();
                if let Some(l) = stopping.leader() {
                    l.stop();
                }
            },
        )
        .await;
        if let Some(r) = resp {
            r.stop().await;
        }
        node.stop().await;
        tracing::info!(node_id = %node.config.id, "stopped");
        served.map_err(|e| ServerError::Startup(format!("server failed: {e}")))
    }
}

/// Bind, start and serve a node until `shutdown` resolves.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Server::bind(config).await?.run(shutdown).await
}
