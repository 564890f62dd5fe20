//! Embedding replidb in a Rust program: a database, a replication
//! configuration, and a [`ReplicationManager`] that runs one node of a
//! cluster inside your process.
//!
//! # Why a manager and not a library of functions
//!
//! A replidb node is more than a table: it is a write-ahead log, a writer
//! task doing group commit, a replication role (leader pushing its log, or
//! follower applying it), and an HTTP port that other nodes stream from.
//! The manager owns all of that. It is also what the `replidb server`
//! command runs ([`ReplicationManager::from_node_config`] +
//! [`ReplicationManager::run_until`]), so an embedded node and a node
//! started from the command line are the same code, answer the same HTTP
//! API (API.md) and export the same metrics.
//!
//! # Quick start
//!
//! ```no_run
//! use replidb_server::embed::{Database, ReplicaNode, ReplicationConfig, ReplicationManager};
//!
//! # async fn demo() -> Result<(), replidb_server::EmbedError> {
//! // A leader on :7001 that knows it will have two followers.
//! let db = Database::builder().on_disk("./data/n1").build()?;
//! let mut config = ReplicationConfig::leader(ReplicaNode::new("n1", "127.0.0.1:7001"));
//! config.followers = vec![
//!     ReplicaNode::new("n2", "127.0.0.1:7002"),
//!     ReplicaNode::new("n3", "127.0.0.1:7003"),
//! ];
//! let mut leader = ReplicationManager::new(db, config)?;
//! leader.start().await?; // serves http://127.0.0.1:7001 in the background
//!
//! // A follower in the same (or another) process.
//! let db = Database::builder().in_memory().build()?;
//! let config = ReplicationConfig::follower(
//!     ReplicaNode::new("n2", "127.0.0.1:7002"),
//!     "http://127.0.0.1:7001",
//! );
//! let mut follower = ReplicationManager::new(db, config)?;
//! follower.start().await?;
//!
//! let ack = leader.put("orders/1", b"{\"qty\":3}".to_vec()).await?;
//! follower.wait_applied(ack.lsn, std::time::Duration::from_secs(5)).await;
//! assert_eq!(follower.get("orders/1")?, Some(b"{\"qty\":3}".to_vec()));
//! println!("{:?}", follower.get_health()?); // healthy, lag_seconds, ...
//! println!("{:?}", follower.get_state()?);  // last_change_id, changes_applied, ...
//! follower.shutdown().await?;
//! leader.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! [`demo`] is a complete program (one leader and two followers in one
//! process); `cargo run -p replidb-server --example replication` runs it.
//!
//! # Mapping from seed 004's names
//!
//! - `ReplicationTiming::follower_poll_interval` is the leader's
//!   **heartbeat interval**: replidb pushes records the moment they are
//!   durable, so nobody polls; on an idle stream the leader sends a heartbeat
//!   this often, and a follower that hears nothing for 20 intervals (at
//!   least 1 s) reconnects.
//! - `request_timeout` is how long a write waits for its write concern.
//! - `ReplicationState::last_change_id` is the node's applied LSN.
//! - `Health::outbox_drift` is the records not yet applied downstream (on a
//!   leader: by its furthest-behind follower).
//!
//! # Left out
//!
//! - No in-process shortcut for replication: followers always stream over
//!   TCP from the leader's HTTP port, even within one process.
//! - Reads through [`ReplicationManager::get`] are local (`eventual` on a
//!   follower); for read-your-writes wait with
//!   [`ReplicationManager::wait_applied`] first, or use the HTTP API's
//!   `min_lsn`.

mod config;
pub mod demo;

pub use config::{Database, DatabaseBuilder, ReplicaNode, ReplicationConfig, ReplicationTiming};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use replidb_core::{Lsn, Op, WriteConcern};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, WriteOpts};
use crate::{Node, NodeConfig, Server, ServerError};

/// Why an embedding call failed, grouped by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A setting is wrong (fix the configuration).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The node could not bind, open its storage, or serve.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// [`ReplicationManager::start`] has not been called (or the manager
    /// was shut down).
    #[error("the node is not running; call start() first")]
    NotStarted,
    /// [`ReplicationManager::start`] was called twice.
    #[error("the node is already running")]
    AlreadyStarted,
    /// A write reached a follower: send it to the leader.
    #[error("this node is a follower; write to the leader at {leader}")]
    NotLeader {
        /// The leader's URL as this node knows it (may be empty).
        leader: String,
    },
    /// A key that is empty or longer than 1024 bytes.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A value larger than the node's `max_value_bytes`.
    #[error("value of {len} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The write is durable on the leader but fewer nodes than asked had it
    /// in time. It was not undone: it may still replicate, or be rolled
    /// back by a failover.
    #[error("write concern {} not met in time: lsn {} is on {} node(s)", .0.w, .0.lsn, .0.acks)]
    WriteConcernNotMet(WriteAck),
    /// The node cannot take the request now (fenced or stale leader,
    /// switchover in progress): retry, possibly elsewhere.
    #[error("unavailable ({code}): {message}")]
    Unavailable {
        /// Stable code, as in the HTTP API's errors.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// Storage failed underneath (disk error, corruption).
    #[error("storage: {0}")]
    Storage(String),
    /// A waited-for condition did not hold in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl From<ApiError> for EmbedError {
    fn from(e: ApiError) -> Self {
        if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
            EmbedError::Unavailable {
                code: e.code,
                message: e.message,
            }
        } else {
            EmbedError::Storage(format!("{}: {}", e.code, e.message))
        }
    }
}

/// A node's health, as `GET /health` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `/health` would answer 200.
    pub healthy: bool,
    /// `leader` or `follower`.
    pub role: String,
    /// Apply lag (0 on the leader).
    pub lag_seconds: f64,
    /// Unix time (seconds) of the last frame from the leader; now on a
    /// leader.
    pub last_sync: f64,
    /// Why it is unhealthy.
    pub error: Option<String>,
    /// Records not yet applied downstream.
    pub outbox_drift: u64,
}

/// A node's replication state (a subset of `GET /status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicationState {
    /// Node id.
    #[serde(rename(deserialize = "id"))]
    pub node_id: String,
    /// `leader` or `follower`.
    pub role: String,
    /// Current epoch.
    pub epoch: u64,
    /// The last change applied here (its LSN).
    #[serde(rename(deserialize = "applied_lsn"))]
    pub last_change_id: u64,
    /// Highest LSN durable here.
    pub flush_lsn: u64,
    /// Highest LSN durable on a majority (as this node knows it).
    pub commit_lsn: u64,
    /// Records applied (on a follower: from the stream since start).
    pub changes_applied: u64,
    /// Unix time (seconds) of the last frame from the leader (followers).
    #[serde(rename(deserialize = "last_sync"), default)]
    pub last_sync_ts: Option<f64>,
    /// Stream open (always true on a leader).
    pub connected: bool,
    /// Stream failures since start.
    pub error_count: u64,
    /// The most recent failure.
    pub last_error: Option<String>,
}

/// An acknowledged write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WriteAck {
    /// Its LSN.
    pub lsn: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Nodes (leader included) that have it durably.
    pub acks: usize,
    /// The write concern asked for.
    #[serde(serialize_with = "as_string")]
    pub w: WriteConcern,
}

fn as_string<S: serde::Serializer>(w: &WriteConcern, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&w.to_string())
}

/// A started node: the HTTP server task and how to stop it.
struct Running {
    node: Arc<Node>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

/// How long [`ReplicationManager::shutdown`] waits for the node's
/// background tasks to let go of its storage.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

impl Running {
    async fn finish(self) -> Result<(), EmbedError> {
        self.stop.cancel();
        let served = match self.task.await {
            Ok(r) => r.map_err(EmbedError::from),
            Err(e) => Err(EmbedError::Server(ServerError::Startup(format!(
                "server task failed: {e}"
            )))),
        };
        release(self.node).await;
        served
    }
}

/// Wait until the node's background tasks (replication sessions, the
/// writer, housekeeping) have dropped their handles, then close the table
/// here: when shutdown returns its files are unlocked, and the same process
/// can open the same directory again. (Holding the last handle ourselves
/// matters: the table's drop releases the lock, and it must not still be
/// running on another thread when we return.)
async fn release(node: Arc<Node>) {
    let deadline = tokio::time::Instant::now() + RELEASE_TIMEOUT;
    let table = node.engine.table().clone();
    drop(node);
    while Arc::strong_count(&table) > 1 {
        if tokio::time::Instant::now() > deadline {
            tracing::warn!("storage still in use {RELEASE_TIMEOUT:?} after shutdown");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Closing may flush: keep it off the async worker threads.
    let _ = tokio::task::spawn_blocking(move || drop(table)).await;
}

/// One node of a replidb cluster running inside this process; see the
/// [module documentation](self) for a quick start.
pub struct ReplicationManager {
    config: NodeConfig,
    running: Option<Running>,
    /// Keeps a temporary data directory alive while the node runs.
    _db: Option<Database>,
}

impl ReplicationManager {
    /// A node for `db` with `config`; nothing runs until
    /// [`ReplicationManager::start`].
    pub fn new(db: Database, config: ReplicationConfig) -> Result<Self, EmbedError> {
        let node_config = config.node_config(&db)?;
        Ok(ReplicationManager {
            config: node_config,
            running: None,
            _db: Some(db),
        })
    }

    /// A node from a complete [`NodeConfig`] (what `replidb server` builds
    /// from its flags and TOML file).
    pub fn from_node_config(config: NodeConfig) -> Self {
        ReplicationManager {
            config,
            running: None,
            _db: None,
        }
    }

    /// Adjust settings the seed-style configuration does not name
    /// (`health_max_lag`, `replication_delay`, `default_write_concern`,
    /// ...) before starting.
    ///
    /// ```
    /// # use replidb_server::embed::*;
    /// let db = Database::builder().in_memory().build()?;
    /// let cfg = ReplicationConfig::follower(ReplicaNode::new("n2", "127.0.0.1:0"), "127.0.0.1:7001");
    /// let manager = ReplicationManager::new(db, cfg)?
    ///     .configure(|c| c.health_max_lag = std::time::Duration::from_millis(500));
    /// assert_eq!(manager.node_config().health_max_lag.as_millis(), 500);
    /// # Ok::<(), EmbedError>(())
    /// ```
    pub fn configure(mut self, f: impl FnOnce(&mut NodeConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// The node's settings (after start, `listen` is the bound address).
    pub fn node_config(&self) -> &NodeConfig {
        match &self.running {
            Some(r) => &r.node.config,
            None => &self.config,
        }
    }

    /// Bind `self_node.address`, open storage, take the configured role and
    /// serve the HTTP API (including `/health`, `/status`, `/metrics` and
    /// the replication stream) in the background.
    pub async fn start(&mut self) -> Result<(), EmbedError> {
        if self.running.is_some() {
            return Err(EmbedError::AlreadyStarted);
        }
        let server = Server::bind(self.config.clone()).await?;
        let node = server.node().clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone().cancelled_owned()));
        self.running = Some(Running { node, stop, task });
        Ok(())
    }

    /// Start (unless started) and serve until `shutdown` resolves or the
    /// node stops by itself; then stop cleanly. `replidb server` is this.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), EmbedError> {
        if self.running.is_none() {
            self.start().await?;
        }
        let Some(mut running) = self.running.take() else {
            return Err(EmbedError::NotStarted);
        };
        tokio::select! {
            _ = shutdown => running.finish().await,
            served = &mut running.task => match served {
                Ok(r) => r.map_err(EmbedError::from),
                Err(e) => Err(EmbedError::Server(ServerError::Startup(format!("server task failed: {e}")))),
            },
        }
    }

    /// Stop serving, end replication streams and checkpoint storage.
    pub async fn shutdown(&mut self) -> Result<(), EmbedError> {
        match self.running.take() {
            Some(r) => r.finish().await,
            None => Ok(()),
        }
    }

    /// The running node (engine, role, configuration), for what this API
    /// does not cover.
    pub fn node(&self) -> Result<&Arc<Node>, EmbedError> {
        self.running
            .as_ref()
            .map(|r| &r.node)
            .ok_or(EmbedError::NotStarted)
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, EmbedError> {
        Ok(self.node()?.config.listen)
    }

    /// The URL other nodes and clients reach this node at.
    pub fn url(&self) -> Result<String, EmbedError> {
        Ok(self.node()?.config.advertise())
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.node().is_ok_and(|n| n.leader().is_some())
    }

    /// Health exactly as `GET /health` reports it (without its
    /// `role`/`max_lag_ms` filters).
    pub fn get_health(&self) -> Result<Health, EmbedError> {
        let (_, body) = crate::api::health_of(self.node()?, None, None);
        serde_json::from_value(body)
            .map_err(|e| EmbedError::Storage(format!("health document: {e}")))
    }

    /// Replication state, from the same document as `GET /status`.
    pub fn get_state(&self) -> Result<ReplicationState, EmbedError> {
        let doc = crate::api::status_of(self.node()?);
        serde_json::from_value(doc)
            .map_err(|e| EmbedError::Storage(format!("status document: {e}")))
    }

    /// Write `key` at the node's default write concern (normally `w=1`).
    /// Only the leader accepts writes ([`EmbedError::NotLeader`]).
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<WriteAck, EmbedError> {
        let (w, timeout) = self.write_defaults()?;
        self.put_with(key, value, w, timeout).await
    }

    /// Write `key` and wait up to `timeout` for `w` nodes to have it
    /// durably ([`EmbedError::WriteConcernNotMet`] otherwise).
    pub async fn put_with(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        w: WriteConcern,
        timeout: Duration,
    ) -> Result<WriteAck, EmbedError> {
        replidb_core::validate_key(key).map_err(|e| EmbedError::InvalidKey(e.to_string()))?;
        let value = value.into();
        let limit = self.node()?.config.max_value_bytes;
        if value.len() > limit {
            return Err(EmbedError::ValueTooLarge {
                len: value.len(),
                limit,
            });
        }
        let op = Op::Put {
            key: key.to_string(),
            value,
        };
        self.write(op, w, timeout).await
    }

    /// Delete `key` (a no-op if absent) at the default write concern.
    pub async fn delete(&self, key: &str) -> Result<WriteAck, EmbedError> {
        replidb_core::validate_key(key).map_err(|e| EmbedError::InvalidKey(e.to_string()))?;
        let (w, timeout) = self.write_defaults()?;
        let op = Op::Delete {
            key: key.to_string(),
        };
        self.write(op, w, timeout).await
    }

    fn write_defaults(&self) -> Result<(WriteConcern, Duration), EmbedError> {
        let c = &self.node()?.config;
        Ok((c.default_write_concern, c.default_write_timeout))
    }

    async fn write(
        &self,
        op: Op,
        w: WriteConcern,
        timeout: Duration,
    ) -> Result<WriteAck, EmbedError> {
        let node = self.node()?;
        if node.leader().is_none() {
            return Err(EmbedError::NotLeader {
                leader: node.leader_url(),
            });
        }
        let out = crate::api::propose(node, op, Vec::new(), WriteOpts { w, timeout }).await?;
        let ack = WriteAck {
            lsn: out.lsn.0,
            epoch: out.epoch,
            acks: out.acks,
            w,
        };
        if out.committed {
            Ok(ack)
        } else {
            Err(EmbedError::WriteConcernNotMet(ack))
        }
    }

    /// This node's value of `key` (a local read: possibly stale on a
    /// follower; see [`ReplicationManager::wait_applied`]).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EmbedError> {
        let table = self.node()?.engine.table();
        let v = table
            .get(key)
            .map_err(|e| EmbedError::Storage(e.to_string()))?;
        Ok(v.map(|v| v.value))
    }

    /// Wait until this node has applied `lsn` (e.g. a [`WriteAck::lsn`]);
    /// false if `timeout` passed first.
    pub async fn wait_applied(&self, lsn: u64, timeout: Duration) -> bool {
        match self.node() {
            Ok(n) => n.engine.wait_applied(Lsn(lsn), timeout).await,
            Err(_) => false,
        }
    }
}

impl Drop for ReplicationManager {
    fn drop(&mut self) {
        // Without shutdown(): at least stop serving in the background.
        if let Some(r) = &self.running {
            r.stop.cancel();
        }
    }
}
