//! Settings of one node. The CLI fills this from flags and a TOML file;
//! the embedding API and tests build it directly.

use replidb_core::{DurationRange, WriteConcern};
use replidb_storage::Backend;
use replidb_wal::FsyncPolicy;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which coordinator decides who leads.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CoordinatorKind {
    /// Leader named in configuration; operators promote by hand.
    #[default]
    Static,
    /// Automatic failover through etcd leases.
    Etcd,
}

/// Everything a node needs to run.
/// How the nodes of a cluster share writes (`--topology`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Topology {
    /// One leader takes writes; followers replicate its log.
    #[default]
    SingleLeader,
    /// Every node takes writes into its own log and applies every peer's;
    /// version vectors detect conflicts, policies resolve them.
    MultiLeader,
    /// Dynamo-style: any node coordinates; each key lives on N nodes of a
    /// consistent-hash ring, written to W and read from R of them.
    Leaderless,
}

impl Topology {
    /// `single-leader` or `multi-leader`.
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::SingleLeader => "single-leader",
            Topology::MultiLeader => "multi-leader",
            Topology::Leaderless => "leaderless",
        }
    }
}

impl std::str::FromStr for Topology {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "single-leader" => Ok(Topology::SingleLeader),
            "multi-leader" => Ok(Topology::MultiLeader),
            "leaderless" => Ok(Topology::Leaderless),
            other => Err(format!(
                "unknown topology {other:?}: expected single-leader, multi-leader or leaderless"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name, unique in the cluster (`--id`).
    pub id: String,
    /// Address the HTTP server binds (`--listen`).
    pub listen: SocketAddr,
    /// Address the Redis protocol listener binds (`--resp-listen`); none
    /// by default.
    pub resp_listen: Option<SocketAddr>,
    /// URL other nodes and clients use to reach this node; defaults to
    /// `http://{listen}`.
    pub advertise_url: Option<String>,
    /// The advertised URL's port was picked by the OS (`--listen` port 0,
    /// no `--advertise-url`), so it changes at every start: a throwaway
    /// node, which no data directory can be tied to. Set by
    /// [`crate::Server::bind`].
    pub url_from_os_port: bool,
    /// Directory for the WAL, the table and metadata (`--data-dir`).
    pub data_dir: PathBuf,
    /// Leader URL to follow (`--follow`); `None` starts a leader.
    pub follow: Option<String>,
    /// Coordinator (`--coordinator`).
    pub coordinator: CoordinatorKind,
    /// etcd endpoints (`--etcd`).
    pub etcd_endpoints: Vec<String>,
    /// Cluster name, the etcd key prefix (`--cluster`).
    pub cluster: String,
    /// WAL fsync policy (`--fsync`).
    pub fsync: FsyncPolicy,
    /// Table backend (`--storage memory|redb`).
    pub backend: Backend,
    /// Limit of the redb table's page cache in bytes
    /// (`--table-cache-bytes`, [`replidb_storage::TABLE_CACHE_BYTES_DEFAULT`]).
    pub table_cache_bytes: usize,
    /// Largest value accepted (`--max-value-bytes`, default 1 MiB).
    pub max_value_bytes: usize,
    /// Bytes of keys and values that end a scan page (`--scan-page-bytes`,
    /// default [`crate::SCAN_PAGE_BYTES_DEFAULT`], at most
    /// [`crate::SCAN_PAGE_BYTES_MAX`]).
    pub scan_page_bytes: usize,
    /// Write concern when a request names none (`--default-w`).
    pub default_write_concern: WriteConcern,
    /// Write-concern timeout when a request names none (`--default-timeout`).
    pub default_write_timeout: Duration,
    /// Artificial apply delay on a follower (`--replication-delay`).
    pub replication_delay: DurationRange,
    /// Codec for the replication streams this node serves
    /// (`--replication-compression`, default lz4), used with each follower
    /// or peer that can decode it.
    pub replication_compression: replidb_replication::Codec,
    /// Forward writes that reach a follower instead of answering 307
    /// (`--forward-writes`).
    pub forward_writes: bool,
    /// First reconnect delay of a follower's stream (`--backoff-base`, 2s).
    pub backoff_base: Duration,
    /// Largest reconnect delay (`--backoff-max`, 60s).
    pub backoff_max: Duration,
    /// Leader heartbeat period on an idle stream (`--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    /// WAL segment size (`--wal-segment-bytes`, 64 MiB).
    pub wal_segment_bytes: u64,
    /// Most WAL the leader keeps for lagging followers
    /// (`--wal-retention-bytes`, 1 GiB); past it a follower needs a snapshot.
    pub wal_retention_bytes: u64,
    /// How often the table is checkpointed (`--checkpoint-interval`, 10s).
    pub checkpoint_interval: Duration,
    /// Voting members for `w=majority` (`--cluster-size`); default: the
    /// leader plus every follower it has seen.
    pub cluster_size: Option<usize>,
    /// A follower disconnected or lagging longer than this is unhealthy
    /// (`--health-max-lag`, 10s).
    pub health_max_lag: Duration,
    /// etcd session lease TTL (`--lease-ttl`, 1s; etcd raises it to its own
    /// minimum, 2s with etcd's default election timeout).
    pub lease_ttl: Duration,
    /// Candidates further behind the longest log cannot be elected
    /// (`--max-failover-lag`, in records).
    pub max_failover_lag_records: u64,
    /// `--topology`.
    pub topology: Topology,
    /// `--peers`: every other member's URL (multi-leader).
    pub peers: Vec<String>,
    /// `--conflict-policy`: policies per key prefix (the same on every node).
    pub conflict_policy: replidb_causal::PolicySet,
    /// `--link-delay`: artificial delay before applying a peer's writes
    /// (multi-leader; regions far apart).
    pub link_delay: DurationRange,
    /// Leaderless: `--replicas N`, how many nodes hold each key (capped at
    /// the cluster size).
    pub replicas: usize,
    /// Leaderless: `--strict-quorum`, no hinted handoff (a write counts
    /// only the key's own replicas).
    pub strict_quorum: bool,
    /// Leaderless: `--anti-entropy-interval`, how often replicas compare
    /// hash trees.
    pub anti_entropy_interval: Duration,
    /// `--auth-file`: the token file (see [`crate::auth`]); `None` serves
    /// everyone, as before.
    pub auth_file: Option<PathBuf>,
    /// The secret this node presents to other nodes
    /// (`--peer-token-file`): on replication streams, `/internal/*`,
    /// forwarded writes and admin calls. Never logged.
    pub peer_token: Option<crate::auth::Secret>,
    /// `--metrics-open`: `/metrics` needs no token even with auth on.
    pub metrics_open: bool,
    /// Limits of the HTTP listener (`--max-connections`,
    /// `--http-header-timeout`, `--max-header-bytes`).
    pub http_limits: crate::serve::HttpLimits,
    /// `--tls-cert`, `--tls-key` (and `--tls-ca`, `--tls-client-auth`):
    /// serve HTTPS, and present this certificate to peers that ask for one.
    pub tls: Option<replidb_tls::TlsFiles>,
    /// `--tls-ca`: the CA trusted for `https://` peers and etcd.
    pub tls_ca: Option<PathBuf>,
}

impl NodeConfig {
    /// A configuration with every default, for `id` on `listen`.
    pub fn new(id: impl Into<String>, listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            id: id.into(),
            listen,
            resp_listen: None,
            advertise_url: None,
            url_from_os_port: false,
            data_dir: data_dir.into(),
            follow: None,
            coordinator: CoordinatorKind::Static,
            etcd_endpoints: Vec::new(),
            cluster: "replidb".to_string(),
            fsync: FsyncPolicy::Always,
            backend: Backend::Redb,
            table_cache_bytes: replidb_storage::TABLE_CACHE_BYTES_DEFAULT,
            max_value_bytes: 1024 * 1024,
            scan_page_bytes: crate::SCAN_PAGE_BYTES_DEFAULT,
            default_write_concern: WriteConcern::One,
            default_write_timeout: Duration::from_millis(5000),
            replication_delay: DurationRange::default(),
            replication_compression: replidb_replication::Codec::DEFAULT,
            forward_writes: false,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            heartbeat_interval: Duration::from_millis(100),
            wal_segment_bytes: 64 * 1024 * 1024,
            wal_retention_bytes: 1024 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(10),
            cluster_size: None,
            health_max_lag: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(1),
            max_failover_lag_records: 1_000_000,
            topology: Topology::SingleLeader,
            peers: Vec::new(),
            conflict_policy: replidb_causal::PolicySet::default(),
            auth_file: None,
            peer_token: None,
            metrics_open: false,
            http_limits: crate::serve::HttpLimits::default(),
            tls: None,
            tls_ca: None,
            link_delay: DurationRange::default(),
            replicas: 3,
            strict_quorum: false,
            anti_entropy_interval: Duration::from_secs(10),
        }
    }

    /// The URL others reach this node at.
    pub fn advertise(&self) -> String {
        self.advertise_url.clone().unwrap_or_else(|| {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", self.listen)
        })
    }
}

impl NodeConfig {
    /// What this node tells peers it runs with: empty for single-leader,
    /// else the topology and the canonical conflict policies. Peers with
    /// another fingerprint are refused at the handshake.
    pub fn topology_fingerprint(&self) -> String {
        match self.topology {
            Topology::SingleLeader => String::new(),
            Topology::MultiLeader => format!("multi-leader;{}", self.conflict_policy.fingerprint()),
            Topology::Leaderless => format!("leaderless;{}", self.conflict_policy.fingerprint()),
        }
    }

    /// `--peers` without this node's own URL and without repeats. The
    /// README starts every node with the same list (itself included), so
    /// anything that counts members must count this node once.
    pub fn other_peers(&self) -> Vec<String> {
        let me = self.advertise();
        let me = me.trim_end_matches('/');
        let mut others: Vec<String> = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            let p = p.trim_end_matches('/');
            if p != me && !others.iter().any(|o| o == p) {
                others.push(p.to_string());
            }
        }
        others
    }
}

impl NodeConfig {
    /// Make this node's URL the one `--peers` names it by.
    ///
    /// Members are compared as text (voting sets, peer lists, the
    /// leaderless ring), so a node listed as `http://localhost:7001` that
    /// calls itself `http://127.0.0.1:7001` would be two members to every
    /// node: a leaderless key "replicated" on both copies would sit on one
    /// machine, and a multi-leader `w=all` would wait for an ack the node
    /// never sends itself. So a `--peers` entry whose host resolves to the
    /// address this node listens on (any address of the machine's
    /// interfaces, of the listener's family, when it listens on all of
    /// them), on its port and scheme, is this node: without
    /// `--advertise-url`, the node advertises that spelling.
    ///
    /// Only in the causal topologies, whose peer lists and ring are built
    /// from `--peers` at every start and name no member in anything
    /// persisted: a single leader keeps its voting set and its epochs'
    /// leaders by URL on disk, where a URL that changed between restarts
    /// would be a member that left and one that joined.
    ///
    /// # Errors
    /// When `--peers` names this node in two ways, or in another way than
    /// an explicit `--advertise-url`: either would leave the members'
    /// lists disagreeing.
    pub async fn settle_own_url(&mut self) -> Result<(), String> {
        if self.topology == Topology::SingleLeader {
            return Ok(());
        }
        let mine = self.advertise();
        let mine = mine.trim_end_matches('/');
        let mut candidates: Vec<&str> = Vec::new();
        for peer in &self.peers {
            let peer = peer.trim_end_matches('/');
            if peer != mine && !candidates.contains(&peer) {
                candidates.push(peer);
            }
        }
        // Resolved together, under one deadline: a start waits at most
        // that long for names, however many peers there are.
        let checks = futures::future::join_all(candidates.iter().map(|p| self.names_me(p)));
        let verdicts = tokio::time::timeout(PEER_LOOKUP_TIMEOUT, checks)
            .await
            .unwrap_or_default();
        let spellings: Vec<String> = candidates
            .iter()
            .zip(verdicts)
            .filter(|(_, me)| *me)
            .map(|(p, _)| p.to_string())
            .collect();
        let listed_as_mine = self.peers.iter().any(|p| p.trim_end_matches('/') == mine);
        match (spellings.as_slice(), &self.advertise_url) {
            ([], _) => Ok(()),
            ([one], None) if !listed_as_mine => {
                tracing::info!(url = %one, "--peers names this node so; advertising it");
                self.advertise_url = Some(one.clone());
                Ok(())
            }
            (names, Some(explicit)) => Err(format!(
                "--peers names this node as {} but --advertise-url is {explicit}; every node must know each member by one URL",
                names.join(" and ")
            )),
            (names, None) => {
                let mut all = names.to_vec();
                if listed_as_mine {
                    all.insert(0, mine.to_string());
                }
                Err(format!(
                    "--peers names this node (listening on {}) as {}; every node must know each member by one URL: list it once",
                    self.listen,
                    all.join(" and ")
                ))
            }
        }
    }

    /// Whether `url` reaches this node's HTTP listener: same scheme and
    /// port, and a host that resolves to the listen address (or, when
    /// listening on all addresses, to an address of one of this machine's
    /// interfaces, of the listener's family). A host that does not resolve
    /// is taken to be another machine.
    async fn names_me(&self, url: &str) -> bool {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return false;
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            return false;
        };
        if parsed.scheme() != scheme || port != self.listen.port() {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(addrs) = tokio::net::lookup_host((host, port)).await else {
            return false;
        };
        let listen = self.listen.ip();
        let local = if listen.is_unspecified() {
            interface_addresses()
        } else {
            Vec::new()
        };
        for ip in addrs.map(|a| a.ip()) {
            // An IPv4 wildcard listener does not serve IPv6 addresses;
            // an IPv6 one usually serves both (dual stack).
            let family_ok = listen.is_ipv6() || ip.is_ipv4();
            if ip == listen || (listen.is_unspecified() && family_ok && local.contains(&ip)) {
                return true;
            }
        }
        false
    }
}

/// How long a start waits, at most, to resolve the hosts of `--peers`
/// that could name this node.
const PEER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The addresses of this machine's interfaces (loopback included): from
/// the interface list, not from whether a socket can bind an address,
/// which `ip_nonlocal_bind` and IPVS hosts allow for addresses they do not
/// own. No list (an error): loopback only.
fn interface_addresses() -> Vec<std::net::IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(list) => list.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this machine's interfaces; only loopback addresses name this node in --peers");
            vec![
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_peers(listen: &str, peers: &[&str]) -> NodeConfig {
        let mut c = NodeConfig::new("n1", listen.parse().expect("addr"), "/tmp/x");
        c.topology = Topology::Leaderless;
        c.peers = peers.iter().map(|p| p.to_string()).collect();
        c
    }

    /// A single leader keeps members' URLs on disk: its advertised URL is
    /// never changed under it.
    #[tokio::test]
    async fn a_single_leader_keeps_its_url() {
        let mut c = config_with_peers("127.0.0.1:7001", &["http://localhost:7001"]);
        c.topology = Topology::SingleLeader;
        c.settle_own_url().await.expect("settles");
        assert_eq!(c.advertise(), "http://127.0.0.1:7001");
    }

    #[tokio::test]
    async fn a_node_named_another_way_in_its_peers_advertises_that_name() {
        let peers = ["http://localhost:7001", "http://localhost:7002"];
        let mut c = config_with_peers("127.0.0.1:7001", &peers);
        c.settle_own_url().await.expect("settles");
        assert_eq!(c.advertise(), "http://localhost:7001");
        assert_eq!(c.other_peers(), ["http://localhost:7002"]);

        // Listening on every address: a loopback spelling is this node.
        let mut c = config_with_peers("0.0.0.0:7001", &peers);
        c.settle_own_url().await.expect("settles");
        assert_eq!(c.advertise(), "http://localhost:7001");

        // Another port, or https, is another node.
        let mut c = config_with_peers("127.0.0.1:7003", &peers);
        c.settle_own_url().await.expect("settles");
        assert_eq!(c.advertise(), "http://127.0.0.1:7003");
        let mut c = config_with_peers("127.0.0.1:7001", &["https://localhost:7001"]);
        c.settle_own_url().await.expect("settles");
        assert_eq!(c.advertise(), "http://127.0.0.1:7001");

        // Named as written: nothing changes.
        let mut c = config_with_peers("127.0.0.1:7001", &["http://127.0.0.1:7001/"]);
        c.settle_own_url().await.expect("settles");
        assert_eq!(c.advertise(), "http://127.0.0.1:7001");
    }

    /// Listening on every address, a node is also itself under its
    /// machine's network address (the usual name across machines), and
    /// not under an address no interface of the machine has.
    #[tokio::test]
    async fn a_node_listening_everywhere_finds_itself_under_its_network_address() {
        let mut c = config_with_peers("0.0.0.0:7001", &["http://203.0.113.9:7001"]);
        c.settle_own_url().await.expect("settles");
        assert_eq!(c.advertise(), "http://0.0.0.0:7001", "not this machine");
        // The address of the interface with a route out, if there is one.
        let Some(ip) = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("10.255.255.255:9").and_then(|()| s.local_addr()))
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified() && !ip.is_loopback())
        else {
            return;
        };
        let me = format!("http://{ip}:7001");
        let mut c = config_with_peers("0.0.0.0:7001", &[&me, "http://203.0.113.9:7001"]);
        c.settle_own_url().await.expect("settles");
        assert_eq!(c.advertise(), me);
        let mut c = config_with_peers("0.0.0.0:7001", &[&me, "http://127.0.0.1:7001"]);
        let e = c.settle_own_url().await.expect_err("two names");
        assert!(
            e.contains(&me) && e.contains("http://127.0.0.1:7001"),
            "{e}"
        );
        assert!(!e.contains("0.0.0.0:7001 and"), "{e}");
    }

    #[tokio::test]
    async fn a_node_named_two_ways_refuses_to_start() {
        let mut c = config_with_peers(
            "127.0.0.1:7001",
            &["http://127.0.0.1:7001", "http://localhost:7001"],
        );
        let e = c.settle_own_url().await.expect_err("two names");
        assert!(e.contains("list it once"), "{e}");

        let mut c = config_with_peers("127.0.0.1:7001", &["http://localhost:7001"]);
        c.advertise_url = Some("http://10.0.0.1:7001".into());
        let e = c.settle_own_url().await.expect_err("another name");
        assert!(e.contains("--advertise-url"), "{e}");
    }

    #[test]
    fn other_peers_leaves_out_this_node_and_repeats() {
        let mut c = NodeConfig::new("n1", "127.0.0.1:7001".parse().expect("addr"), "/tmp/x");
        c.peers = [
            "http://127.0.0.1:7001",
            "http://127.0.0.1:7002/",
            "http://127.0.0.1:7003",
            "http://127.0.0.1:7002",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            c.other_peers(),
            ["http://127.0.0.1:7002", "http://127.0.0.1:7003"]
        );
    }
}

/// A node's base URL as an operator may write it: `host:port` (`http://`
/// assumed), `http://host:port` or `https://host:port`, with a trailing `/`
/// dropped. Otherwise kept as written: it names the node in voting sets,
/// peer lists and on the ring, where it is compared as text.
///
/// # Errors
/// A message naming `raw` when it is not an http(s) URL with a host, or
/// has a path or query.
pub fn normalise_node_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url =
        reqwest::Url::parse(&with_scheme).map_err(|e| format!("bad node URL {raw:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "bad node URL {raw:?}: expected http://host:port or https://host:port"
        ));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!(
            "bad node URL {raw:?}: give the node's base URL, without a path"
        ));
    }
    // Scheme and host in lower case (as the parser reads them), the port
    // as written: `HTTP://Db1:7001/` and `db1:7001` name the same node.
    let authority = with_scheme
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    Ok(format!("{}://{authority}", url.scheme()))
}

#[cfg(test)]
mod url_tests {
    use super::normalise_node_url;

    #[test]
    fn node_urls_take_a_missing_scheme_and_lose_a_trailing_slash() {
        let ok = |raw: &str| normalise_node_url(raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok("127.0.0.1:7001"), "http://127.0.0.1:7001");
        assert_eq!(ok("http://127.0.0.1:7001/"), "http://127.0.0.1:7001");
        assert_eq!(ok("https://db.example:443"), "https://db.example:443");
        assert_eq!(ok("HTTP://Db1:7001/"), "http://db1:7001");
        assert_eq!(ok("http://h:1/a/.."), "http://h:1");
        for bad in [
            "ftp://h:1",
            "http://h:1/v1/kv",
            "http://h:1/?a=1",
            "http://",
            "",
        ] {
            assert!(normalise_node_url(bad).is_err(), "{bad:?} accepted");
        }
    }
}
