//! The embedding API's configuration: where data lives ([`Database`]) and
//! who this node is in the cluster ([`ReplicationConfig`]), turned into a
//! [`NodeConfig`] for the node.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use replidb_storage::Backend;
use replidb_wal::FsyncPolicy;
use serde::{Deserialize, Serialize};

use super::EmbedError;
use crate::NodeConfig;

/// A database's storage: backend, directory, fsync policy. Storage is
/// opened when the [`ReplicationManager`](super::ReplicationManager) starts.
///
/// ```
/// use replidb_server::embed::Database;
/// // Memory table, WAL in a temporary directory removed on drop.
/// let scratch = Database::builder().in_memory().build()?;
/// assert!(scratch.data_dir().exists());
/// // redb table and WAL under a directory of your choice (kept).
/// let durable = Database::builder().on_disk(std::env::temp_dir().join("replidb-doc-n1"));
/// # let _ = durable;
/// # Ok::<(), replidb_server::EmbedError>(())
/// ```
#[derive(Debug)]
pub struct Database {
    backend: Backend,
    fsync: FsyncPolicy,
    dir: PathBuf,
    /// Owns the directory when the builder made a temporary one.
    _temp: Option<tempfile::TempDir>,
}

impl Database {
    /// Start describing a database (in-memory unless told otherwise).
    pub fn builder() -> DatabaseBuilder {
        DatabaseBuilder::default()
    }

    /// Where the WAL (and, on disk, the table) lives.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The table backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// Builds a [`Database`]; see [`Database::builder`].
#[derive(Debug, Default)]
pub struct DatabaseBuilder {
    backend: Option<Backend>,
    dir: Option<PathBuf>,
    fsync: Option<FsyncPolicy>,
}

impl DatabaseBuilder {
    /// Keep the table in memory ([`Backend::Memory`], rebuilt from its
    /// checkpoint and the WAL on restart). The WAL goes to the directory
    /// given with [`DatabaseBuilder::data_dir`], or to a temporary one that
    /// is deleted with the database.
    pub fn in_memory(mut self) -> Self {
        self.backend = Some(Backend::Memory);
        self
    }

    /// Keep table (redb) and WAL under `path`, created if missing.
    pub fn on_disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.backend = Some(Backend::Redb);
        self.dir = Some(path.into());
        self
    }

    /// The data directory (WAL, metadata, table files).
    pub fn data_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.dir = Some(path.into());
        self
    }

    /// WAL fsync policy (default [`FsyncPolicy::Always`]; `Never` loses
    /// acknowledged writes on a crash and `/status` says so).
    pub fn fsync(mut self, policy: FsyncPolicy) -> Self {
        self.fsync = Some(policy);
        self
    }

    /// Create the directory (or a temporary one) and return the database.
    pub fn build(self) -> Result<Database, EmbedError> {
        let backend = self.backend.unwrap_or(Backend::Memory);
        let (dir, temp) = match self.dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(|source| EmbedError::Io {
                    path: dir.clone(),
                    source,
                })?;
                (dir, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("replidb-")
                    .tempdir()
                    .map_err(|source| EmbedError::Io {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        Ok(Database {
            backend,
            fsync: self.fsync.unwrap_or(FsyncPolicy::Always),
            dir,
            _temp: temp,
        })
    }
}

/// A cluster member: its id and the address it serves on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaNode {
    /// Node id, unique in the cluster.
    pub id: String,
    /// `host:port` (or `http://host:port`). For `self_node` this is bound;
    /// port 0 picks a free port.
    pub address: String,
}

impl ReplicaNode {
    /// `ReplicaNode::new("n1", "127.0.0.1:7001")`.
    pub fn new(id: impl Into<String>, address: impl Into<String>) -> Self {
        ReplicaNode {
            id: id.into(),
            address: address.into(),
        }
    }
}

/// Replication timings. Defaults match `replidb server`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationTiming {
    /// Leader heartbeat period on an idle stream (100 ms). replidb pushes,
    /// it does not poll: this only bounds how soon a follower notices a
    /// silent leader (after 20 intervals, at least 1 s).
    pub follower_poll_interval: Duration,
    /// First reconnect delay after a stream fails (2 s), doubling...
    pub backoff_base: Duration,
    /// ...up to this (60 s); reset after a good sync.
    pub backoff_max: Duration,
    /// How long a write waits for its write concern (5 s).
    pub request_timeout: Duration,
}

impl Default for ReplicationTiming {
    fn default() -> Self {
        ReplicationTiming {
            follower_poll_interval: Duration::from_millis(100),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Who this node is and whom it follows.
///
/// ```
/// use replidb_server::embed::{ReplicaNode, ReplicationConfig};
/// let mut follower = ReplicationConfig::follower(
///     ReplicaNode::new("n2", "127.0.0.1:7002"),
///     "127.0.0.1:7001",
/// );
/// follower.timing.backoff_base = std::time::Duration::from_millis(100);
/// assert_eq!(follower.leader_address.as_deref(), Some("127.0.0.1:7001"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// This node.
    pub self_node: ReplicaNode,
    /// The leader to follow; `None` makes this node the leader.
    pub leader_address: Option<String>,
    /// The followers a leader should expect. Their number sets the cluster
    /// size for `w=majority` (otherwise: the leader plus every follower
    /// seen); the leader learns their addresses when they connect.
    pub followers: Vec<ReplicaNode>,
    /// Timings.
    pub timing: ReplicationTiming,
}

impl ReplicationConfig {
    /// A leader with no followers declared yet.
    pub fn leader(self_node: ReplicaNode) -> Self {
        ReplicationConfig {
            self_node,
            leader_address: None,
            followers: Vec::new(),
            timing: ReplicationTiming::default(),
        }
    }

    /// A follower of `leader_address` (`host:port` or a URL).
    pub fn follower(self_node: ReplicaNode, leader_address: impl Into<String>) -> Self {
        ReplicationConfig {
            leader_address: Some(leader_address.into()),
            ..Self::leader(self_node)
        }
    }

    /// The full node configuration for `db`: every other setting at its
    /// default. Adjust it with [`ReplicationManager::configure`](super::ReplicationManager::configure).
    pub fn node_config(&self, db: &Database) -> Result<NodeConfig, EmbedError> {
        if self.self_node.id.trim().is_empty() {
            return Err(EmbedError::InvalidConfig("self_node.id is empty".into()));
        }
        let listen = resolve(&self.self_node.address)?;
        let mut c = NodeConfig::new(self.self_node.id.clone(), listen, db.dir.clone());
        c.backend = db.backend;
        c.fsync = db.fsync;
        c.follow = self.leader_address.as_deref().map(url_of);
        if !self.followers.is_empty() {
            c.cluster_size = Some(self.followers.len() + 1);
        }
        let t = &self.timing;
        if t.backoff_base.is_zero() || t.backoff_max < t.backoff_base {
            return Err(EmbedError::InvalidConfig(
                "timing: need 0 < backoff_base <= backoff_max".into(),
            ));
        }
        if t.follower_poll_interval.is_zero() {
            return Err(EmbedError::InvalidConfig(
                "timing: follower_poll_interval must be positive".into(),
            ));
        }
        c.heartbeat_interval = t.follower_poll_interval;
        c.backoff_base = t.backoff_base;
        c.backoff_max = t.backoff_max;
        c.default_write_timeout = t.request_timeout;
        Ok(c)
    }
}

/// `host:port`, `http://host:port/` → a socket address (names resolved).
fn resolve(address: &str) -> Result<SocketAddr, EmbedError> {
    let bare = address
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if let Ok(a) = bare.parse() {
        return Ok(a);
    }
    bare.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| {
            EmbedError::InvalidConfig(format!(
                "address {address:?} is not host:port (e.g. 127.0.0.1:7001)"
            ))
        })
}

/// A leader address as a URL (`http://` added when missing).
fn url_of(address: &str) -> String {
    let a = address.trim().trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}
