//! `replidb server` options: flags, a TOML file, and their merge into a
//! [`NodeConfig`].
//!
//! One struct, [`ServerOpts`], is both the clap argument set and the TOML
//! schema, so a flag `--replication-delay` and a file key
//! `replication_delay` cannot drift apart. Values are kept as text until the
//! merge, so that a bad value from either source is reported with the
//! field's name (clap or serde alone would report a type, or a line).
//!
//! Precedence: a flag given on the command line wins over the file; the file
//! wins over [`NodeConfig::new`]'s defaults.

use clap::Args;
use replidb_core::{parse_duration, DurationRange, WriteConcern};
use replidb_server::{CoordinatorKind, NodeConfig, Topology};
use replidb_storage::Backend;
use replidb_wal::FsyncPolicy;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Smallest `--table-cache-bytes`: below a few hundred pages redb spends
/// its time evicting, whatever the table's size.
const TABLE_CACHE_BYTES_MIN: usize = 1024 * 1024;
use std::time::Duration;

/// Every `replidb server` setting. All optional: `id`, `listen` and
/// `data_dir` are required after the merge, from either source.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOpts {
    /// Node name, unique in the cluster (required)
    #[arg(long)]
    pub id: Option<String>,
    /// Address to serve HTTP on, HOST:PORT (required)
    #[arg(long)]
    pub listen: Option<String>,
    /// Address to serve the Redis protocol on, HOST:PORT [default: none]
    #[arg(long)]
    pub resp_listen: Option<String>,
    /// Directory for the WAL, the table and metadata (required)
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Leader URL to follow; without it (static coordinator) this node
    /// leads [default: none]
    #[arg(long)]
    pub follow: Option<String>,
    /// Who decides leadership: static or etcd [default: static]
    #[arg(long)]
    pub coordinator: Option<String>,
    /// etcd endpoints, comma-separated [default: none]
    #[arg(long)]
    #[serde(default, deserialize_with = "string_or_list")]
    pub etcd: Option<String>,
    /// Cluster name (the etcd key prefix) [default: replidb]
    #[arg(long)]
    pub cluster: Option<String>,
    /// TOML file with any of these settings, in snake_case [default: none]
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// WAL fsync policy: always (group commit) or never (experiments
    /// only) [default: always]
    #[arg(long)]
    pub fsync: Option<String>,
    /// On a follower, delay applying by DUR or a random DUR..DUR [default: 0ms]
    #[arg(long)]
    pub replication_delay: Option<String>,
    /// Compress replication batches and snapshot chunks this node sends:
    /// none, lz4 or zstd. Negotiated per stream: a follower or peer that
    /// cannot decode it (an older node) gets plain frames [default: lz4]
    #[arg(long)]
    pub replication_compression: Option<String>,
    /// How nodes share writes: single-leader, multi-leader or leaderless
    /// [default: single-leader]
    #[arg(long)]
    pub topology: Option<String>,
    /// Multi-leader: every other member's URL, comma-separated [default: none]
    #[arg(long)]
    pub peers: Option<String>,
    /// Conflict policies per key prefix: 'PREFIX=lww|siblings,...' (`*` is
    /// every key). Every node must use the same [default: *=lww]
    #[arg(long)]
    pub conflict_policy: Option<String>,
    /// Multi-leader: delay applying a peer's writes by DUR or DUR..DUR
    /// (regions far apart; demonstrations and tests) [default: 0ms]
    #[arg(long)]
    pub link_delay: Option<String>,
    /// Leaderless: how many nodes hold each key (capped at the cluster
    /// size) [default: 3]
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Leaderless: no hinted handoff; a write counts only the key's own
    /// replicas [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub strict_quorum: Option<bool>,
    /// Leaderless: how often replicas compare hash trees [default: 10s]
    #[arg(long)]
    pub anti_entropy_interval: Option<String>,
    /// Token file (TOML: `[[token]]` name, sha256, roles); with it every
    /// endpoint but /health needs `Authorization: Bearer SECRET`. SIGHUP
    /// reloads it [default: none: no authentication]
    #[arg(long)]
    pub auth_file: Option<PathBuf>,
    /// File whose first line is the secret this node presents to other
    /// nodes (replication, /internal, admin calls, forwarded writes)
    /// [default: none]
    #[arg(long)]
    pub peer_token_file: Option<PathBuf>,
    /// Serve /metrics without a token even when --auth-file is set
    /// [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub metrics_open: Option<bool>,
    /// PEM certificate chain: serve HTTPS (with --tls-key)
    /// [default: none: plain HTTP]
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert [default: none]
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: verify https:// peers and etcd with them (and
    /// client certificates with --tls-client-auth) [default: none: https://
    /// peers are refused]
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Require clients (other nodes) to present a certificate signed by
    /// --tls-ca (mutual TLS) [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub tls_client_auth: Option<bool>,
    /// Most HTTP connections served at once; one more is answered 503
    /// and closed [default: 4096]
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Time for a request's headers to arrive, and for an idle keep-alive
    /// connection to stay open [default: 60s]
    #[arg(long)]
    pub http_header_timeout: Option<String>,
    /// Largest request line plus headers, in bytes (at least 8192); larger
    /// is answered 431 [default: 65536]
    #[arg(long)]
    pub max_header_bytes: Option<usize>,
    /// Table backend: memory or redb [default: redb]
    #[arg(long)]
    pub storage: Option<String>,
    /// Largest value accepted, in bytes [default: 1048576]
    #[arg(long)]
    pub max_value_bytes: Option<usize>,
    /// Bytes of keys and values after which a scan page (`GET /v1/kv`)
    /// ends even if it holds fewer than `limit` entries; it is then marked
    /// `X-Replidb-Scan-Truncated: bytes` (1..=67108864) [default: 16777216]
    #[arg(long)]
    pub scan_page_bytes: Option<usize>,
    /// Limit of the redb table's page cache, in bytes (at least 1048576);
    /// most of a node's memory with a large table [default: 268435456]
    #[arg(long)]
    pub table_cache_bytes: Option<usize>,
    /// Write concern of requests that name none [default: 1]
    #[arg(long)]
    pub default_w: Option<String>,
    /// Write-concern timeout of requests that name none [default: 5s]
    #[arg(long)]
    pub default_timeout: Option<String>,
    /// Forward writes reaching a follower to the leader instead of a 307
    /// [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub forward_writes: Option<bool>,
    /// First reconnect delay of a follower's stream [default: 2s]
    #[arg(long)]
    pub backoff_base: Option<String>,
    /// Largest reconnect delay of a follower's stream [default: 60s]
    #[arg(long)]
    pub backoff_max: Option<String>,
    /// Leader heartbeat period on an idle stream [default: 100ms]
    #[arg(long)]
    pub heartbeat_interval: Option<String>,
    /// WAL segment size in bytes [default: 67108864]
    #[arg(long)]
    pub wal_segment_bytes: Option<u64>,
    /// Most WAL kept for lagging followers, in bytes [default: 1073741824]
    #[arg(long)]
    pub wal_retention_bytes: Option<u64>,
    /// How often the table is checkpointed [default: 10s]
    #[arg(long)]
    pub checkpoint_interval: Option<String>,
    /// Voting members for w=majority [default: none: the leader and the
    /// followers it has seen]
    #[arg(long)]
    pub cluster_size: Option<usize>,
    /// A follower disconnected or lagging longer than this is unhealthy
    /// [default: 10s]
    #[arg(long)]
    pub health_max_lag: Option<String>,
    /// URL others reach this node at [default: none: http://LISTEN]
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// etcd session lease TTL (etcd may raise it to its minimum) [default: 1s]
    #[arg(long)]
    pub lease_ttl: Option<String>,
    /// Failover candidates further behind the longest log than this many
    /// records are not eligible [default: 1000000]
    #[arg(long)]
    pub max_failover_lag: Option<u64>,
    /// Log format on stderr: logfmt or json [default: logfmt]
    #[arg(long)]
    pub log_format: Option<String>,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `key=value` text lines.
    #[default]
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// A setting that is missing or does not parse, named as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// snake_case field name (the TOML key; the flag is the kebab-case form).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = self.field.replace('_', "-");
        write!(f, "{} (--{flag}): {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Copy every field from `$file` that `$flags` lacks.
macro_rules! fill_from {
    ($flags:ident, $file:ident; $($field:ident),* $(,)?) => {
        $( if $flags.$field.is_none() { $flags.$field = $file.$field; } )*
    };
}

impl ServerOpts {
    /// Read and parse a TOML settings file.
    pub fn from_file(path: &Path) -> Result<ServerOpts, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parse TOML text; unknown keys are refused so a typo is not ignored.
    pub fn from_toml(text: &str) -> Result<ServerOpts, String> {
        // toml's own rendering spans several lines (a source excerpt); the
        // CLI prints errors on one line, so keep the line number and message.
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = one_line(e.message());
            match line {
                Some(l) => format!("line {l}: {message}"),
                None => message,
            }
        })
    }

    /// These flags, completed by `file` where a flag was not given.
    pub fn or_file(mut self, file: ServerOpts) -> ServerOpts {
        let flags = &mut self;
        fill_from!(flags, file;
            id, listen, data_dir, follow, coordinator, etcd, cluster, fsync,
            replication_delay, replication_compression, topology, peers, conflict_policy, link_delay,
            replicas, strict_quorum, anti_entropy_interval,
            storage, max_value_bytes, scan_page_bytes, table_cache_bytes, default_w, default_timeout,
            forward_writes, backoff_base, backoff_max, heartbeat_interval,
            wal_segment_bytes, wal_retention_bytes, checkpoint_interval, cluster_size,
            health_max_lag, advertise_url, log_format, lease_ttl, max_failover_lag,
            resp_listen, auth_file, peer_token_file, metrics_open,
            max_connections, http_header_timeout, max_header_bytes,
            tls_cert, tls_key, tls_ca, tls_client_auth,
        );
        self
    }

    /// The chosen log format.
    pub fn log_format(&self) -> Result<LogFormat, ConfigError> {
        match self.log_format.as_deref() {
            None | Some("logfmt") | Some("text") => Ok(LogFormat::Logfmt),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(ConfigError {
                field: "log_format",
                message: format!("unknown log format {other:?}: expected logfmt or json"),
            }),
        }
    }

    /// Build the node's configuration, validating every value.
    pub fn into_node_config(self) -> Result<NodeConfig, ConfigError> {
        let id = required("id", self.id)?;
        if id.trim().is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        let listen = parse_listen(&required("listen", self.listen)?)?;
        let data_dir = required("data_dir", self.data_dir)?;
        let mut c = NodeConfig::new(id, listen, data_dir);

        if let Some(addr) = self.resp_listen {
            c.resp_listen =
                Some(parse_listen(&addr).map_err(|e| invalid("resp_listen", e.message))?);
        }
        c.follow = self
            .follow
            .map(|u| replidb_server::normalise_node_url(&u))
            .transpose()
            .map_err(|e| invalid("follow", e))?;
        c.advertise_url = self
            .advertise_url
            .map(|u| replidb_server::normalise_node_url(&u))
            .transpose()
            .map_err(|e| invalid("advertise_url", e))?;
        if let Some(k) = self.coordinator {
            c.coordinator = match k.as_str() {
                "static" => CoordinatorKind::Static,
                "etcd" => CoordinatorKind::Etcd,
                other => {
                    return Err(invalid(
                        "coordinator",
                        format!("unknown coordinator {other:?}: expected static or etcd"),
                    ))
                }
            };
        }
        if let Some(list) = self.etcd {
            c.etcd_endpoints = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if c.coordinator == CoordinatorKind::Etcd && c.etcd_endpoints.is_empty() {
            return Err(invalid(
                "etcd",
                "--coordinator etcd needs at least one endpoint",
            ));
        }
        if let Some(name) = self.cluster {
            c.cluster = name;
        }
        if let Some(f) = self.fsync {
            c.fsync = parse_fsync(&f)?;
        }
        if let Some(s) = self.storage {
            c.backend = parse_as::<Backend>("storage", &s)?;
        }
        if let Some(n) = self.table_cache_bytes {
            if n < TABLE_CACHE_BYTES_MIN {
                return Err(invalid(
                    "table_cache_bytes",
                    format!("{n} is below the minimum of {TABLE_CACHE_BYTES_MIN}"),
                ));
            }
            c.table_cache_bytes = n;
        }
        if let Some(n) = self.max_value_bytes {
            // Record, frame and snapshot limits are sized for values up to
            // this ceiling; a larger value could be written but never
            // replicated.
            if n > replidb_core::VALUE_BYTES_MAX {
                return Err(invalid(
                    "max_value_bytes",
                    format!("{n} exceeds the limit of {}", replidb_core::VALUE_BYTES_MAX),
                ));
            }
            c.max_value_bytes = n;
        }
        if let Some(n) = self.scan_page_bytes {
            if n == 0 || n > replidb_server::SCAN_PAGE_BYTES_MAX {
                return Err(invalid(
                    "scan_page_bytes",
                    format!("{n} is outside 1..={}", replidb_server::SCAN_PAGE_BYTES_MAX),
                ));
            }
            c.scan_page_bytes = n;
        }
        if let Some(w) = self.default_w {
            c.default_write_concern = parse_as::<WriteConcern>("default_w", &w)?;
        }
        if let Some(b) = self.forward_writes {
            c.forward_writes = b;
        }
        if let Some(r) = self.replication_delay {
            c.replication_delay = parse_as::<DurationRange>("replication_delay", &r)?;
        }
        if let Some(r) = self.replication_compression {
            c.replication_compression =
                parse_as::<replidb_replication::Codec>("replication_compression", &r)?;
        }
        if let Some(t) = self.topology {
            c.topology = parse_as::<Topology>("topology", &t)?;
        }
        if let Some(list) = self.peers {
            c.peers = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(replidb_server::normalise_node_url)
                .collect::<Result<_, _>>()
                .map_err(|e| invalid("peers", e))?;
        }
        if let Some(spec) = self.conflict_policy {
            c.conflict_policy = parse_as::<replidb_causal::PolicySet>("conflict_policy", &spec)?;
        }
        if let Some(r) = self.link_delay {
            c.link_delay = parse_as::<DurationRange>("link_delay", &r)?;
        }
        if let Some(n) = self.replicas {
            if n == 0 {
                return Err(invalid("replicas", "must be at least 1"));
            }
            c.replicas = n;
        }
        if let Some(b) = self.strict_quorum {
            c.strict_quorum = b;
        }
        set_duration(
            &mut c.anti_entropy_interval,
            "anti_entropy_interval",
            self.anti_entropy_interval,
        )?;
        if c.topology != Topology::SingleLeader {
            if c.follow.is_some() {
                return Err(invalid(
                    "follow",
                    "a multi-leader node follows nobody: give its peers with --peers",
                ));
            }
            if c.coordinator == CoordinatorKind::Etcd {
                return Err(invalid("coordinator", "multi-leader and leaderless nodes find each other through --peers (etcd discovery is not built yet)"));
            }
            if c.resp_listen.is_some() {
                // Its commands are the single leader's: plain values, and
                // read-modify-writes conditioned on one log's LSNs.
                return Err(invalid(
                    "resp_listen",
                    "the Redis protocol serves the single-leader topology only: in a multi-leader or leaderless cluster use the HTTP API",
                ));
            }
        }
        if let Some(path) = self.auth_file {
            // Checked here so a bad file stops the start with the field's
            // name; the node loads it again (and on SIGHUP).
            replidb_server::auth::Authenticator::load(&path)
                .map_err(|e| invalid("auth_file", e.to_string()))?;
            c.auth_file = Some(path);
        }
        if let Some(path) = self.peer_token_file {
            c.peer_token = Some(
                replidb_server::auth::Secret::read_file(&path)
                    .map_err(|e| invalid("peer_token_file", e))?,
            );
        }
        if let Some(b) = self.metrics_open {
            c.metrics_open = b;
        }
        c.tls_ca = self.tls_ca.clone();
        let client_auth = self.tls_client_auth.unwrap_or(false);
        match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => {
                let files = replidb_tls::TlsFiles {
                    cert,
                    key,
                    ca: self.tls_ca,
                    client_auth,
                };
                // Built here so a bad file stops the start with its name.
                replidb_tls::server_config(&files)
                    .map_err(|e| invalid("tls_cert", e.to_string()))?;
                c.tls = Some(files);
            }
            (None, None) if client_auth => {
                return Err(invalid(
                    "tls_client_auth",
                    "needs --tls-cert and --tls-key (and --tls-ca)",
                ))
            }
            (None, None) => {}
            (Some(_), None) => return Err(invalid("tls_key", "--tls-cert needs --tls-key")),
            (None, Some(_)) => return Err(invalid("tls_cert", "--tls-key needs --tls-cert")),
        }
        if let Some(n) = self.max_connections {
            if n == 0 {
                return Err(invalid("max_connections", "must be at least 1"));
            }
            c.http_limits.connections_max = n;
        }
        set_duration(
            &mut c.http_limits.header_timeout,
            "http_header_timeout",
            self.http_header_timeout,
        )?;
        if c.http_limits.header_timeout.is_zero() {
            return Err(invalid("http_header_timeout", "must be longer than 0"));
        }
        if let Some(n) = self.max_header_bytes {
            if n < replidb_server::serve::HEADER_BYTES_MIN {
                return Err(invalid(
                    "max_header_bytes",
                    format!(
                        "must be at least {}",
                        replidb_server::serve::HEADER_BYTES_MIN
                    ),
                ));
            }
            c.http_limits.header_bytes_max = n;
        }
        set_duration(
            &mut c.default_write_timeout,
            "default_timeout",
            self.default_timeout,
        )?;
        set_duration(&mut c.backoff_base, "backoff_base", self.backoff_base)?;
        set_duration(&mut c.backoff_max, "backoff_max", self.backoff_max)?;
        set_duration(
            &mut c.heartbeat_interval,
            "heartbeat_interval",
            self.heartbeat_interval,
        )?;
        set_duration(
            &mut c.checkpoint_interval,
            "checkpoint_interval",
            self.checkpoint_interval,
        )?;
        set_duration(&mut c.health_max_lag, "health_max_lag", self.health_max_lag)?;
        set_duration(&mut c.lease_ttl, "lease_ttl", self.lease_ttl)?;
        if let Some(n) = self.max_failover_lag {
            c.max_failover_lag_records = n;
        }
        if let Some(n) = self.wal_segment_bytes {
            c.wal_segment_bytes = n;
        }
        if let Some(n) = self.wal_retention_bytes {
            c.wal_retention_bytes = n;
        }
        c.cluster_size = self.cluster_size;
        validate(&c)?;
        Ok(c)
    }
}

/// Smallest WAL segment: room for the segment header and a few records.
pub const WAL_SEGMENT_BYTES_MIN: u64 = 4096;

/// Check every setting's range and the relations between settings, so a
/// bad combination is refused at start-up with the field's name instead of
/// panicking (a zero interval) or misbehaving (a heartbeat slower than the
/// lease it must keep alive) later.
pub fn validate(c: &NodeConfig) -> Result<(), ConfigError> {
    let nonzero = |field: &'static str, d: Duration| {
        if d.is_zero() {
            Err(invalid(field, "must be greater than 0"))
        } else {
            Ok(())
        }
    };
    nonzero("heartbeat_interval", c.heartbeat_interval)?;
    nonzero("backoff_base", c.backoff_base)?;
    nonzero("default_timeout", c.default_write_timeout)?;
    nonzero("checkpoint_interval", c.checkpoint_interval)?;
    nonzero("health_max_lag", c.health_max_lag)?;
    if c.lease_ttl < Duration::from_secs(1) {
        return Err(invalid(
            "lease_ttl",
            "must be at least 1s (etcd leases count whole seconds)",
        ));
    }
    if c.backoff_max < c.backoff_base {
        return Err(invalid(
            "backoff_max",
            format!(
                "{:?} is below backoff_base ({:?})",
                c.backoff_max, c.backoff_base
            ),
        ));
    }
    // The leader's heartbeats keep its followers' view of it fresh and, with
    // etcd, come well inside the lease; one slower than the lease (or than
    // the lag at which a follower counts as unhealthy) would make a healthy
    // idle cluster look dead.
    if c.heartbeat_interval >= c.lease_ttl {
        return Err(invalid(
            "heartbeat_interval",
            format!(
                "{:?} must be shorter than lease_ttl ({:?})",
                c.heartbeat_interval, c.lease_ttl
            ),
        ));
    }
    if c.heartbeat_interval >= c.health_max_lag {
        return Err(invalid(
            "heartbeat_interval",
            format!(
                "{:?} must be shorter than health_max_lag ({:?})",
                c.heartbeat_interval, c.health_max_lag
            ),
        ));
    }
    if c.max_value_bytes == 0 {
        return Err(invalid("max_value_bytes", "must be at least 1"));
    }
    if c.wal_segment_bytes < WAL_SEGMENT_BYTES_MIN {
        return Err(invalid(
            "wal_segment_bytes",
            format!("must be at least {WAL_SEGMENT_BYTES_MIN}"),
        ));
    }
    // Retention is counted in whole segments: less than one keeps nothing
    // for a follower that blinks.
    if c.wal_retention_bytes < c.wal_segment_bytes {
        return Err(invalid(
            "wal_retention_bytes",
            format!(
                "{} is below wal_segment_bytes ({})",
                c.wal_retention_bytes, c.wal_segment_bytes
            ),
        ));
    }
    if let Some(n) = c.cluster_size {
        if n == 0 {
            return Err(invalid("cluster_size", "must be at least 1"));
        }
        if let WriteConcern::Nodes(k) = c.default_write_concern {
            if k > n {
                return Err(invalid(
                    "default_w",
                    format!(
                        "{} can never acknowledge in a cluster of {n}",
                        replidb_core::text::count_s(k as u64, "node")
                    ),
                ));
            }
        }
    }
    if c.replication_delay.lo > c.replication_delay.hi {
        return Err(invalid(
            "replication_delay",
            "the range's low end is above its high end",
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        message: message.into(),
    }
}

fn required<T>(field: &'static str, v: Option<T>) -> Result<T, ConfigError> {
    v.ok_or_else(|| invalid(field, "is required (as a flag or in the config file)"))
}

fn parse_as<T: FromStr>(field: &'static str, s: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    s.parse::<T>().map_err(|e| invalid(field, e.to_string()))
}

fn set_duration(
    slot: &mut Duration,
    field: &'static str,
    v: Option<String>,
) -> Result<(), ConfigError> {
    if let Some(s) = v {
        *slot = parse_duration(&s).map_err(|e| invalid(field, e.to_string()))?;
    }
    Ok(())
}

/// `HOST:PORT`, where HOST may be a name (`localhost:7000`).
fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let bad = |why: String| invalid("listen", format!("{s:?} is not HOST:PORT ({why})"));
    s.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".into()))
}

/// `FsyncPolicy` has no `FromStr`; the two spellings API.md names.
fn parse_fsync(s: &str) -> Result<FsyncPolicy, ConfigError> {
    match s {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        other => Err(invalid(
            "fsync",
            format!("unknown fsync policy {other:?}: expected always or never"),
        )),
    }
}

/// `etcd = "a,b"` or `etcd = ["a", "b"]` in TOML.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s,
        OneOrMany::Many(v) => v.join(","),
    }))
}

/// Collapse a multi-line message into one line.
pub fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn flags(args: &[&str]) -> ServerOpts {
        let mut argv = vec!["replidb", "server"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Server(o) => *o,
            other => panic!("not server: {other:?}"),
        }
    }

    const FILE: &str = r#"
        id = "n1"
        listen = "127.0.0.1:7000"
        data_dir = "/tmp/file-dir"
        replication_delay = "100ms..500ms"
        fsync = "never"
        default_w = "majority"
        etcd = ["http://a:2379", "http://b:2379"]
        coordinator = "etcd"
        forward_writes = true
        max_value_bytes = 4096
    "#;

    /// Every option of `server --help` states its default, and each
    /// default written there is the one the node really runs with: giving
    /// all of them as flags yields the configuration of giving none.
    #[test]
    fn help_shows_the_real_defaults() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let server = cli.find_subcommand_mut("server").unwrap();
        let required = ["id", "listen", "data-dir"];
        let mut argv = vec![
            "--id".to_string(),
            "n1".into(),
            "--listen".into(),
            "127.0.0.1:7000".into(),
            "--data-dir".into(),
            "/tmp/d".into(),
        ];
        for arg in server.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if required.contains(&long) {
                assert!(help.ends_with("(required)"), "--{long}: {help}");
                continue;
            }
            let (_, default) = help
                .rsplit_once("[default: ")
                .unwrap_or_else(|| panic!("--{long} shows no default: {help}"));
            let default = default.trim_end_matches(']');
            if !default.starts_with("none") {
                argv.push(format!("--{long}={default}"));
            }
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let given = flags(&argv).into_node_config().unwrap();
        let base = NodeConfig::new("n1", "127.0.0.1:7000".parse().unwrap(), "/tmp/d");
        assert_eq!(format!("{given:?}"), format!("{base:?}"), "{argv:?}");
    }

    #[test]
    fn file_supplies_what_flags_omit() {
        let file = ServerOpts::from_toml(FILE).unwrap();
        let c = flags(&[]).or_file(file).into_node_config().unwrap();
        assert_eq!(c.id, "n1");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/file-dir"));
        assert_eq!(c.replication_delay.lo, Duration::from_millis(100));
        assert_eq!(c.replication_delay.hi, Duration::from_millis(500));
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!(c.default_write_concern, WriteConcern::Majority);
        assert_eq!(c.etcd_endpoints, vec!["http://a:2379", "http://b:2379"]);
        assert_eq!(c.coordinator, CoordinatorKind::Etcd);
        assert!(c.forward_writes);
        assert_eq!(c.max_value_bytes, 4096);
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = ServerOpts::from_toml(FILE).unwrap();
        let c = flags(&[
            "--id",
            "n2",
            "--listen",
            "127.0.0.1:7002",
            "--replication-delay",
            "1s",
            "--fsync",
            "always",
            "--forward-writes=false",
            "--etcd",
            "http://c:2379",
        ])
        .or_file(file)
        .into_node_config()
        .unwrap();
        assert_eq!(c.id, "n2");
        assert_eq!(c.listen.port(), 7002);
        assert_eq!(
            c.replication_delay,
            DurationRange::fixed(Duration::from_secs(1))
        );
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert!(!c.forward_writes);
        assert_eq!(c.etcd_endpoints, vec!["http://c:2379"]);
        // Not overridden: still from the file.
        assert_eq!(c.default_write_concern, WriteConcern::Majority);
    }

    #[test]
    fn bad_duration_names_the_field() {
        let file = ServerOpts::from_toml("heartbeat_interval = \"soon\"").unwrap();
        let err = flags(&["--id", "a", "--listen", "127.0.0.1:1", "--data-dir", "d"])
            .or_file(file)
            .into_node_config()
            .unwrap_err();
        assert_eq!(err.field, "heartbeat_interval");
        assert!(err.to_string().contains("--heartbeat-interval"), "{err}");

        let err = flags(&[
            "--id",
            "a",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "d",
            "--replication-delay",
            "500ms..100ms",
        ])
        .into_node_config()
        .unwrap_err();
        assert_eq!(err.field, "replication_delay");
    }

    /// The base flags every validation case starts from.
    fn base(extra: &[&str]) -> Result<NodeConfig, ConfigError> {
        let mut args = vec!["--id", "a", "--listen", "127.0.0.1:1", "--data-dir", "d"];
        args.extend_from_slice(extra);
        flags(&args).into_node_config()
    }

    #[test]
    fn defaults_are_valid() {
        let c = base(&[]).unwrap();
        assert_eq!(
            c.table_cache_bytes,
            replidb_storage::TABLE_CACHE_BYTES_DEFAULT
        );
        let c = base(&["--table-cache-bytes", "1048576"]).unwrap();
        assert_eq!(c.table_cache_bytes, 1 << 20);
        base(&["--coordinator", "etcd", "--etcd", "http://e:2379"]).unwrap();
    }

    #[test]
    fn zero_durations_and_sizes_are_refused() {
        for (flag, value, field) in [
            ("--heartbeat-interval", "0s", "heartbeat_interval"),
            ("--heartbeat-interval", "0ms", "heartbeat_interval"),
            ("--backoff-base", "0s", "backoff_base"),
            ("--default-timeout", "0ms", "default_timeout"),
            ("--checkpoint-interval", "0s", "checkpoint_interval"),
            ("--health-max-lag", "0s", "health_max_lag"),
            ("--max-value-bytes", "0", "max_value_bytes"),
            ("--scan-page-bytes", "0", "scan_page_bytes"),
            ("--scan-page-bytes", "67108865", "scan_page_bytes"),
            ("--table-cache-bytes", "0", "table_cache_bytes"),
            ("--table-cache-bytes", "1048575", "table_cache_bytes"),
            ("--wal-segment-bytes", "0", "wal_segment_bytes"),
            ("--wal-segment-bytes", "100", "wal_segment_bytes"),
            ("--cluster-size", "0", "cluster_size"),
            ("--lease-ttl", "500ms", "lease_ttl"),
        ] {
            let err = base(&[flag, value]).unwrap_err();
            assert_eq!(err.field, field, "{flag} {value}: {err}");
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn settings_that_contradict_each_other_are_refused() {
        let cases: &[(&[&str], &str)] = &[
            (&["--heartbeat-interval", "1s"], "heartbeat_interval"),
            (
                &[
                    "--heartbeat-interval",
                    "2s",
                    "--lease-ttl",
                    "5s",
                    "--health-max-lag",
                    "1s",
                ],
                "heartbeat_interval",
            ),
            (
                &["--backoff-base", "2s", "--backoff-max", "1s"],
                "backoff_max",
            ),
            (
                &[
                    "--wal-segment-bytes",
                    "1048576",
                    "--wal-retention-bytes",
                    "4096",
                ],
                "wal_retention_bytes",
            ),
            (&["--cluster-size", "3", "--default-w", "4"], "default_w"),
        ];
        for (args, field) in cases {
            let err = base(args).unwrap_err();
            assert_eq!(err.field, *field, "{args:?}: {err}");
        }
        // The edges that are fine.
        base(&["--heartbeat-interval", "999ms"]).unwrap();
        base(&["--backoff-base", "1s", "--backoff-max", "1s"]).unwrap();
        base(&["--cluster-size", "3", "--default-w", "3"]).unwrap();
    }

    /// Found by a new user: `--follow 127.0.0.1:7001` started, then retried
    /// "unsupported url" forever; the router and the CLI take `host:port`.
    #[test]
    fn node_urls_on_the_command_line_may_leave_out_http() {
        let c = base(&["--follow", "127.0.0.1:7001/"]).unwrap();
        assert_eq!(c.follow.as_deref(), Some("http://127.0.0.1:7001"));
        let c = base(&[
            "--topology",
            "multi-leader",
            "--peers",
            "127.0.0.1:1, https://db2:7002/",
        ])
        .unwrap();
        assert_eq!(c.peers, ["http://127.0.0.1:1", "https://db2:7002"]);
        assert_eq!(
            base(&["--follow", "ftp://x:1"]).unwrap_err().field,
            "follow"
        );
        assert_eq!(
            base(&["--topology", "leaderless", "--peers", "http://a:1/v1"])
                .unwrap_err()
                .field,
            "peers"
        );
    }

    #[test]
    fn the_redis_listener_is_single_leader_only() {
        let e = base(&[
            "--topology",
            "multi-leader",
            "--peers",
            "http://127.0.0.1:1",
            "--resp-listen",
            "127.0.0.1:6379",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("single-leader"), "{e}");
    }

    #[test]
    fn resp_listen_from_flag_or_file() {
        assert_eq!(base(&[]).unwrap().resp_listen, None);
        let c = base(&["--resp-listen", "127.0.0.1:6379"]).unwrap();
        assert_eq!(c.resp_listen, Some("127.0.0.1:6379".parse().unwrap()));
        let file = ServerOpts::from_toml("resp_listen = \"127.0.0.1:6380\"").unwrap();
        let c = flags(&["--id", "a", "--listen", "127.0.0.1:1", "--data-dir", "d"])
            .or_file(file)
            .into_node_config()
            .unwrap();
        assert_eq!(c.resp_listen, Some("127.0.0.1:6380".parse().unwrap()));
        let err = base(&["--resp-listen", "nowhere"]).unwrap_err();
        assert_eq!(err.field, "resp_listen");
    }

    #[test]
    fn missing_and_unknown_settings_are_refused() {
        let err = flags(&["--id", "a"]).into_node_config().unwrap_err();
        assert_eq!(err.field, "listen");
        let err = ServerOpts::from_toml("data-dir = \"x\"").unwrap_err();
        assert!(err.contains("data-dir"), "{err}");
        assert!(!err.contains('\n'));
        let err = flags(&[
            "--id",
            "a",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            "d",
            "--fsync",
            "sometimes",
        ])
        .into_node_config()
        .unwrap_err();
        assert_eq!(err.field, "fsync");
    }
}
