//! [`Node`]: one replidb process's state — engine, role, and the background
//! tasks that keep it healthy (checkpoints, metric gauges).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use replidb_coordinator::{Coordinator, EtcdCoordinator, EtcdOptions};
use replidb_core::{Clock, Epoch, Lsn, SystemClock};
use replidb_engine::{Engine, EngineOptions};
use replidb_node::{CoreMember, CoreOptions, NodeCore, RoleEvents};
use replidb_replication::{
    Follower, FollowerOptions, Leader, LeaderOptions, PeerOptions, PeerStream, TcpTransport,
    Transport,
};
use replidb_wal::WalOptions;
use tokio_util::sync::CancellationToken;

use crate::config::{CoordinatorKind, NodeConfig, Topology};
use crate::static_coord::StaticCoordinator;
use crate::ServerError;

pub use replidb_node::Role;

/// A running node: the shared role machine ([`NodeCore`], the code the
/// simulator runs too) plus what only a server has — its configuration,
/// an HTTP client for peers, and its coordinator.
pub struct Node {
    /// Settings.
    pub config: NodeConfig,
    /// Storage.
    pub engine: Arc<Engine>,
    /// Wall and monotonic clocks.
    pub clock: Arc<dyn Clock>,
    /// Transport for replication streams.
    pub transport: Arc<dyn Transport>,
    /// HTTP client for forwarding and fan-out reads.
    pub http: reqwest::Client,
    /// The role machine: leader or follower, promote, follow, step down.
    pub core: Arc<NodeCore>,
    /// Who decides leadership (`--coordinator static|etcd`); set once at
    /// start.
    coordinator: RwLock<Option<Arc<dyn Coordinator>>>,
    /// Cancels everything (shutdown).
    pub shutdown: CancellationToken,
    /// Multi-leader: this node's subscription to each peer's log.
    pub peers: std::sync::OnceLock<Vec<Arc<PeerStream>>>,
    /// Leaderless: the ring, hints and repair state.
    pub leaderless: std::sync::OnceLock<Arc<crate::leaderless::Leaderless>>,
    /// `--auth-file`'s tokens; `None` when auth is off.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// `config.id` as the `X-Replidb-Node` header every answer carries
    /// (`None` if the id is not a valid header value).
    pub id_header: Option<axum::http::HeaderValue>,
    /// Held by [`Node::follow`] from its epoch check to the re-pointing,
    /// so two re-pointings (a fence, an operator's follow, a switchover,
    /// the newer-leader probe) cannot interleave and leave the node
    /// following an older epoch's leader than the one it recorded.
    repoint: tokio::sync::Mutex<()>,
    /// The epoch this node stands for in a promote ([`Node::stand_for`]),
    /// 0 when it does not: written only under `repoint` (cleared without
    /// it when the candidacy is dropped, which only permits re-pointing).
    candidate_epoch: AtomicU64,
    /// Scans (`GET /v1/kv`) being answered, at most [`SCANS_IN_FLIGHT_MAX`]
    /// ([`Node::start_scan`]).
    scans: Arc<tokio::sync::Semaphore>,
}

/// Most scans one node answers at once, from the request until the last
/// of the answer is handed to the connection; one more is refused with
/// 503 `too_many_scans`. A page holds up to `--scan-page-bytes` of keys
/// and values (about three times that while it is rendered as JSON), and a
/// leaderless scan one such page from every member, so this, not the
/// connection limit, bounds what scans hold together.
pub const SCANS_IN_FLIGHT_MAX: usize = 8;

/// The TLS client configuration for what this node asks of others:
/// trust `--tls-ca`, present this node's own certificate (mutual TLS).
/// Without `--tls-ca`, `https://` peers are refused with a clear error.
fn outbound_tls(config: &NodeConfig) -> Result<Arc<rustls::ClientConfig>, ServerError> {
    let identity = config
        .tls
        .as_ref()
        .map(|t| (t.cert.as_path(), t.key.as_path()));
    replidb_tls::client_config_for(config.tls_ca.as_deref(), identity)
        .map_err(|e| ServerError::Startup(e.to_string()))
}

/// Reload the token file on every `SIGHUP` until shutdown. A file that no
/// longer parses is logged and the loaded tokens stay.
async fn reload_on_sighup(auth: Arc<crate::auth::Authenticator>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the auth file will not be reloaded");
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        match auth.reload() {
            Ok(n) => {
                tracing::info!(tokens = n, file = %auth.path().display(), "auth file reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "auth file not reloaded; the previous tokens stay in force")
            }
        }
    }
}

/// What the server does on role events: count failovers in metrics (the
/// core logs the rest).
struct ServerEvents;

impl RoleEvents for ServerEvents {}

impl Node {
    /// A slot to answer one scan in, held until dropped; `None` when
    /// [`SCANS_IN_FLIGHT_MAX`] are being answered already.
    pub fn start_scan(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.scans.clone().try_acquire_owned().ok()
    }

    /// Open storage and start in the configured role.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, ServerError> {
        let transport =
            TcpTransport::with_bearer(config.peer_token.as_ref().map(|s| s.expose().to_string()))
                .with_tls(Some(outbound_tls(&config)?));
        Self::start_with(config, Arc::new(SystemClock), Arc::new(transport)).await
    }

    /// [`Node::start`] with an explicit clock and transport (simulation).
    pub async fn start_with(
        config: NodeConfig,
        clock: Arc<dyn Clock>,
        transport: Arc<dyn Transport>,
    ) -> Result<Arc<Node>, ServerError> {
        let mut eopts = EngineOptions::new(config.data_dir.clone(), config.id.clone());
        eopts.wal = WalOptions {
            segment_bytes: config.wal_segment_bytes,
            fsync: config.fsync,
            ..WalOptions::default()
        };
        eopts.backend = config.backend;
        eopts.table_cache_bytes = config.table_cache_bytes;
        let engine = Engine::open(eopts, clock.clone())
            .await
            .map_err(|e| ServerError::Startup(format!("cannot open storage: {e}")))?;
        let auth = match &config.auth_file {
            Some(path) => Some(Arc::new(
                crate::auth::Authenticator::load(path)
                    .map_err(|e| ServerError::Startup(e.to_string()))?,
            )),
            None => None,
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(secret) = &config.peer_token {
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", secret.expose()))
                    .map_err(|_| {
                        ServerError::Startup(
                            "the peer token has characters a header cannot carry".into(),
                        )
                    })?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*outbound_tls(&config)?).clone())
            .default_headers(headers)
            .pool_idle_timeout(crate::serve::CLIENT_POOL_IDLE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ServerError::Startup(format!("http client: {e}")))?;
        let shutdown = CancellationToken::new();
        let core = NodeCore::new(
            core_options(&config),
            engine.clone(),
            clock.clone(),
            transport.clone(),
            Arc::new(ServerEvents),
            shutdown.clone(),
        );
        let config_id = config.id.clone();
        let node = Arc::new(Node {
            engine,
            clock,
            transport,
            http,
            core,
            coordinator: RwLock::new(None),
            shutdown,
            config,
            peers: std::sync::OnceLock::new(),
            leaderless: std::sync::OnceLock::new(),
            auth,
            id_header: axum::http::HeaderValue::from_str(&config_id).ok(),
            repoint: tokio::sync::Mutex::new(()),
            candidate_epoch: AtomicU64::new(0),
            scans: Arc::new(tokio::sync::Semaphore::new(SCANS_IN_FLIGHT_MAX)),
        });
        if let Some(auth) = &node.auth {
            tokio::spawn(reload_on_sighup(auth.clone(), node.shutdown.clone()));
        }
        match node.config.topology {
            Topology::MultiLeader => {
                node.start_multi_leader().await?;
                tokio::spawn(node.clone().housekeeping());
                return Ok(node);
            }
            Topology::Leaderless => {
                node.start_leaderless().await?;
                tokio::spawn(node.clone().housekeeping());
                return Ok(node);
            }
            // Its URL is on disk, in its peers' too: it must not change
            // once it has been in a cluster (an epoch), unless the OS
            // picks its port anew at every start anyway.
            Topology::SingleLeader if !node.config.url_from_os_port => crate::identity::settle(
                &node.config.data_dir,
                &node.config.advertise(),
                &node.config.id,
                node.engine.meta().epoch > Epoch(0),
            )?,
            Topology::SingleLeader => {}
        }
        match (&node.config.coordinator, node.config.follow.clone()) {
            (CoordinatorKind::Etcd, _) => {
                // etcd decides who leads: wait as a follower of nobody
                // until the leader key names someone (or us).
                node.become_follower(String::new());
                let mut opts = EtcdOptions::new(
                    node.config.etcd_endpoints.clone(),
                    node.config.cluster.clone(),
                );
                opts.lease_ttl = node.config.lease_ttl;
                opts.max_lag_records = node.config.max_failover_lag_records;
                opts.ca_file = node.config.tls_ca.clone();
                let member = Arc::new(CoreMember(Arc::downgrade(&node.core)));
                let coordinator = EtcdCoordinator::new(opts, member)
                    .map_err(|e| ServerError::Startup(e.to_string()))?;
                node.set_coordinator(coordinator.clone());
                tokio::spawn(coordinator.run(node.shutdown.child_token()));
            }
            (CoordinatorKind::Static, follow) => {
                node.set_coordinator(Arc::new(StaticCoordinator::new(Arc::downgrade(&node))));
                let meta = node.engine.meta();
                match static_start(&meta, &node.config.advertise(), follow) {
                    Some(url) => node.become_follower(url),
                    // A brand-new cluster: this node opens epoch 1.
                    None if meta.epoch == Epoch(0) => node.become_leader().await?,
                    // It led before it stopped, and may have been replaced
                    // meanwhile: no write until a majority acknowledges it.
                    // Its followers may be deep in a reconnect backoff, so
                    // tell them it is back (one that follows a newer epoch
                    // answers 409; that epoch's leader fences this one, or,
                    // if it no longer knows this node, the housekeeping's
                    // `seek_newer_leader` finds it).
                    None => {
                        node.core
                            .resume_leadership()
                            .await
                            .map_err(|e| ServerError::Startup(e.to_string()))?;
                        if meta.leader == node.config.advertise() {
                            node.announce_leadership(meta.epoch, node.core.voting_set().urls());
                        }
                    }
                }
            }
        }
        tokio::spawn(node.clone().housekeeping());
        Ok(node)
    }

    /// Multi-leader: lead our own log (epoch 1, for good) and subscribe to
    /// every peer's.
    async fn start_multi_leader(self: &Arc<Self>) -> Result<(), ServerError> {
        self.set_coordinator(Arc::new(StaticCoordinator::new(Arc::downgrade(self))));
        self.become_leader().await?;
        let mut opts = PeerOptions::new(self.config.id.clone(), self.config.advertise());
        opts.topology = self.config.topology_fingerprint();
        opts.delay = self.config.link_delay;
        opts.idle_timeout = (self.config.heartbeat_interval * 20).max(Duration::from_secs(1));
        opts.seed = seed_of(&self.config.id);
        opts.compression = self.config.replication_compression;
        let peers: Vec<Arc<PeerStream>> = self
            .config
            .other_peers()
            .into_iter()
            .map(|url| {
                PeerStream::new(
                    self.engine.clone(),
                    self.transport.clone(),
                    self.clock.clone(),
                    opts.clone(),
                    url,
                )
            })
            .collect();
        for p in &peers {
            tokio::spawn(p.clone().run(self.shutdown.child_token()));
        }
        tracing::info!(node_id = %self.config.id, peers = peers.len(), "multi-leader: writing locally, streaming from every peer");
        let _ = self.peers.set(peers);
        Ok(())
    }

    /// Leaderless: write into our own log (every version we coordinate gets
    /// a dot of it), and run hint delivery and anti-entropy.
    async fn start_leaderless(self: &Arc<Self>) -> Result<(), ServerError> {
        self.set_coordinator(Arc::new(StaticCoordinator::new(Arc::downgrade(self))));
        self.become_leader().await?;
        let lz = Arc::new(crate::leaderless::Leaderless::open(self)?);
        tokio::spawn(crate::leaderless::deliver_hints(self.clone(), lz.clone()));
        tokio::spawn(crate::leaderless::anti_entropy(self.clone(), lz.clone()));
        tracing::info!(
            node_id = %self.config.id,
            members = lz.ring.members().len(),
            replicas = lz.ring.replicas(),
            "leaderless: coordinating requests on the ring"
        );
        let _ = self.leaderless.set(lz);
        Ok(())
    }

    /// Whether this node runs the leaderless topology.
    pub fn is_leaderless(&self) -> bool {
        self.config.topology == Topology::Leaderless
    }

    /// The multi-leader peers (empty in single-leader mode).
    pub fn peer_streams(&self) -> &[Arc<PeerStream>] {
        self.peers.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether this node runs the multi-leader topology.
    pub fn is_multi_leader(&self) -> bool {
        self.config.topology == Topology::MultiLeader
    }

    fn set_coordinator(&self, c: Arc<dyn Coordinator>) {
        *self.coordinator.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    /// The coordinator (static or etcd).
    pub fn coordinator(&self) -> Arc<dyn Coordinator> {
        match &*self.coordinator.read().unwrap_or_else(|e| e.into_inner()) {
            Some(c) => c.clone(),
            // Only before start-up finished: nothing decides yet.
            None => Arc::new(StaticCoordinator::new(std::sync::Weak::new())),
        }
    }

    /// Become the leader of `epoch` (an election or an operator's promote).
    pub async fn promote(&self, epoch: Epoch) -> Result<(), ServerError> {
        self.core.promote(epoch).await.map_err(|e| match e {
            replidb_engine::EngineError::TableAheadOfLog { .. } => {
                ServerError::Resyncing(e.to_string())
            }
            other => ServerError::Startup(other.to_string()),
        })
    }

    /// Follow `url`, which leads `epoch`: remember the epoch first, so a
    /// stream from an older leader is refused from now on.
    ///
    /// A leader that steps down into a newer epoch also passes the news on
    /// to every member it knows (its followers and its voting set): the new
    /// leader announces itself only to the members *it* knows, and a
    /// follower that joined this leader moments before the hand-over (no
    /// heartbeat had carried it to the others yet) would otherwise keep
    /// dialling this node, which answers `421 not_leader`, and never find
    /// the new leader.
    ///
    /// `ServerError::StaleEpoch` if the node has meanwhile recorded an
    /// epoch newer than `epoch` (nothing changes).
    ///
    /// `ServerError::Candidate` if this node stands for `epoch` (or a
    /// later one) in a promote of its own: a second candidate's fence
    /// must not win it over, or two concurrent promotes that fence each
    /// other would each count the other and both lead the epoch.
    pub async fn follow(self: &Arc<Self>, url: String, epoch: Epoch) -> Result<(), ServerError> {
        let _one_at_a_time = self.repoint.lock().await;
        let current = self.engine.meta().epoch;
        if epoch < current {
            return Err(ServerError::StaleEpoch {
                asked: epoch,
                current,
            });
        }
        self.refuse_if_candidate(epoch)?;
        // One leader per epoch, as one vote per term: a node that already
        // follows a leader of this very epoch does not switch to another
        // node claiming it. Two concurrent promotes of the same epoch
        // fence every member; a member whose answer counted for the first
        // must not count for the second too, or both would hold a
        // majority. (A same-epoch announcement from the leader it already
        // follows only reconnects.)
        let meta = self.engine.meta();
        if epoch == current && !meta.leader.is_empty() && meta.leader != url {
            tracing::info!(epoch = epoch.0, follows = %meta.leader, claimant = %url, "a second node claims this epoch's leadership; keeping the first");
            return Ok(());
        }
        self.follow_locked(url, epoch).await
    }

    /// Follow `url` in whatever epoch this node has recorded when the
    /// re-pointing starts (an operator's `/admin/follow` names a node, not
    /// an epoch). `ServerError::Candidate` during a promote of its own.
    pub async fn follow_in_current_epoch(self: &Arc<Self>, url: String) -> Result<(), ServerError> {
        let _one_at_a_time = self.repoint.lock().await;
        let epoch = self.engine.meta().epoch;
        self.refuse_if_candidate(epoch)?;
        self.follow_locked(url, epoch).await
    }

    /// `Err(Candidate)` if this node stands for `epoch` or a later one.
    /// Called with `repoint` held.
    fn refuse_if_candidate(&self, epoch: Epoch) -> Result<(), ServerError> {
        match self.candidate_epoch.load(Ordering::Acquire) {
            0 => Ok(()),
            stood if epoch.0 <= stood => Err(ServerError::Candidate {
                epoch: Epoch(stood),
            }),
            _ => Ok(()),
        }
    }

    /// Stand for `epoch` in an operator's promote: record it with nobody
    /// leading it (the writer then refuses the old leader's stream, so this
    /// node's position is final), follow nobody (a fenced peer that
    /// connects meanwhile must not be sent back to the old leader), and
    /// refuse to re-point within it until the returned [`Candidacy`] leads
    /// or is dropped. Raft's candidate, which votes for itself in its term.
    ///
    /// `ServerError::StaleEpoch` if this node has meanwhile recorded
    /// `epoch` or a later one; `ServerError::Leading` if it leads by now.
    pub async fn stand_for(self: &Arc<Self>, epoch: Epoch) -> Result<Candidacy, ServerError> {
        let _one_at_a_time = self.repoint.lock().await;
        let current = self.engine.meta().epoch;
        // A second promote of this node that began before the first led:
        // standing again would demote the leader the first one made.
        if let Some(l) = self.leader() {
            return Err(ServerError::Leading { epoch: l.epoch() });
        }
        if epoch <= current {
            return Err(ServerError::StaleEpoch {
                asked: epoch,
                current,
            });
        }
        self.engine
            .adopt_history_from(epoch, self.engine.meta().history, None)
            .await
            .map_err(|e| ServerError::Startup(e.to_string()))?;
        self.become_follower(String::new());
        self.candidate_epoch.store(epoch.0, Ordering::Release);
        Ok(Candidacy {
            node: self.clone(),
            epoch,
        })
    }

    /// [`Node::follow`] once `repoint` is held.
    async fn follow_locked(self: &Arc<Self>, url: String, epoch: Epoch) -> Result<(), ServerError> {
        let relay_to = self
            .leader()
            .filter(|_| epoch > self.engine.meta().epoch)
            .map(|l| {
                let mut urls = l.peers();
                urls.extend(self.core.voting_set().urls());
                urls.sort();
                urls.dedup();
                urls.retain(|u| *u != url);
                urls
            });
        self.core
            .follow(url.clone(), epoch)
            .await
            .map_err(|e| ServerError::Startup(e.to_string()))?;
        if let Some(peers) = relay_to {
            // Retried while this node still follows `url` in `epoch`; a
            // later change of leader makes the news stale.
            let leader = url.clone();
            self.announce(epoch, url, peers, move |n: &Node| {
                n.leader().is_none() && n.engine.meta().epoch == epoch && n.leader_url() == leader
            });
        }
        Ok(())
    }

    /// Why this follower knows no leader, and what to do: under etcd an
    /// election is likely under way; with the static coordinator nothing
    /// elects, so either an operator's switchover is handing over (the new
    /// leader announces itself within moments) or only an operator's
    /// promote ends it.
    pub fn no_leader_hint(&self) -> &'static str {
        match self.config.coordinator {
            CoordinatorKind::Etcd => "an election may be under way; retry shortly",
            CoordinatorKind::Static => {
                "the static coordinator elects no one: during a switchover retry shortly; if the leader is gone, promote a follower with POST /admin/promote"
            }
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.core.role()
    }

    /// The leader state, if leading.
    pub fn leader(&self) -> Option<Arc<Leader>> {
        self.core.leader()
    }

    /// The follower state, if following.
    pub fn follower(&self) -> Option<Arc<Follower>> {
        self.core.follower()
    }

    /// Lead: apply everything durable, open a new epoch if needed, accept
    /// writes.
    pub async fn become_leader(&self) -> Result<(), ServerError> {
        self.core
            .become_leader()
            .await
            .map_err(|e| ServerError::Startup(e.to_string()))
    }

    /// Follow the leader at `url`.
    pub fn become_follower(&self, url: String) {
        self.core.become_follower(url);
    }

    /// The leader's URL as far as this node knows (its own when leading).
    pub fn leader_url(&self) -> String {
        self.core.leader_url()
    }

    /// Periodic upkeep until shutdown: checkpoints and gauges.
    async fn housekeeping(self: Arc<Self>) {
        let mut gauges = tokio::time::interval(Duration::from_millis(500));
        // As often as heartbeats bring the member list: a promote soon
        // after start must already know every member.
        let mut members = tokio::time::interval(
            self.config
                .heartbeat_interval
                .max(Duration::from_millis(10)),
        );
        let mut checkpoint = tokio::time::interval(self.config.checkpoint_interval);
        checkpoint.tick().await;
        let mut newer_leader =
            tokio::time::interval(crate::static_coord::NEWER_LEADER_PROBE_INTERVAL);
        newer_leader.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let static_single_leader = self.config.coordinator == CoordinatorKind::Static
            && self.config.topology == Topology::SingleLeader;
        let mut probe = None;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                // In a task of its own (a peer may take its whole timeout),
                // one at a time.
                _ = newer_leader.tick(), if static_single_leader => {
                    if probe.as_ref().is_none_or(|p: &tokio::task::JoinHandle<()>| p.is_finished()) {
                        let node = self.clone();
                        probe = Some(tokio::spawn(async move {
                            crate::static_coord::seek_newer_leader(&node).await;
                        }));
                    }
                }
                _ = members.tick() => self.core.refresh_members(),
                _ = gauges.tick() => crate::metrics::refresh_gauges(&self),
                _ = checkpoint.tick() => {
                    if let Err(e) = self.checkpoint().await {
                        tracing::error!(error = %e, "checkpoint failed");
                    }
                }
            }
        }
    }

    /// Checkpoint the table and trim the WAL, keeping what followers need
    /// up to the retention limit.
    pub async fn checkpoint(&self) -> Result<u64, replidb_engine::EngineError> {
        let keep_all_followers = match self.role() {
            Role::Leader(l) => l.retain_from().unwrap_or(Lsn(u64::MAX)),
            Role::Follower(_) => Lsn(u64::MAX),
        };
        let mut freed = self.engine.checkpoint(keep_all_followers).await?;
        if self.engine.positions().wal_bytes > self.config.wal_retention_bytes {
            // Past the limit, lagging followers lose their claim: they will
            // get a snapshot rather than fill this disk.
            tracing::warn!(
                wal_bytes = self.engine.positions().wal_bytes,
                limit = self.config.wal_retention_bytes,
                "wal retention limit reached; lagging followers will need a snapshot"
            );
            freed += self.engine.checkpoint(Lsn(u64::MAX)).await?;
        }
        Ok(freed)
    }

    /// Tell `peers` that this node now leads `epoch` (static coordinator):
    /// they re-point, and an old leader steps down. Retried every 500 ms
    /// until each peer has heard it, for as long as we lead that epoch.
    pub fn announce_leadership(self: &Arc<Self>, epoch: Epoch, peers: Vec<String>) {
        self.announce(epoch, self.config.advertise(), peers, move |n: &Node| {
            n.leader().is_some_and(|l| l.epoch() == epoch)
        });
    }

    /// Send `POST /admin/fence {epoch, leader}` to each of `peers` (this
    /// node's own URL left out), each in a task of its own, retried every
    /// [`ANNOUNCE_RETRY`] until the peer answers (2xx, or a 4xx such as 409:
    /// it already knows that epoch or a later one), for as long as
    /// `current` holds ([`Self::post_to_peer`]).
    fn announce(
        self: &Arc<Self>,
        epoch: Epoch,
        leader: String,
        peers: Vec<String>,
        current: impl Fn(&Node) -> bool + Clone + Send + Sync + 'static,
    ) {
        let me = self.config.advertise();
        let body = serde_json::json!({"epoch": epoch.0, "leader": leader});
        for peer in peers.into_iter().filter(|p| *p != me && *p != leader) {
            let node = self.clone();
            let body = body.clone();
            let current = current.clone();
            tokio::spawn(async move {
                let answered = node
                    .post_to_peer(&peer, "/admin/fence", &body, None, current)
                    .await;
                if let Some(status) = answered {
                    tracing::info!(peer = %peer, epoch = epoch.0, leader = %body["leader"], status = status.as_u16(), "announced leadership");
                }
            });
        }
    }

    /// `POST base + path` with `body` to a peer, again every
    /// [`ANNOUNCE_RETRY`] while it does not answer or answers 5xx, at most
    /// `tries` times (`None`: no limit) and while `current` holds. Returns
    /// the status it answered with (2xx, or a 4xx that a retry would not
    /// change: 409 for an announcement it already knows), or `None` if it
    /// gave up.
    pub(crate) async fn post_to_peer(
        self: &Arc<Self>,
        base: &str,
        path: &str,
        body: &serde_json::Value,
        tries: Option<usize>,
        current: impl Fn(&Node) -> bool,
    ) -> Option<reqwest::StatusCode> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut attempt = 0;
        while tries.is_none_or(|n| attempt < n) {
            if !current(self) || self.shutdown.is_cancelled() {
                return None;
            }
            if attempt > 0 {
                tokio::time::sleep(ANNOUNCE_RETRY).await;
            }
            attempt += 1;
            let sent = self
                .http
                .post(&url)
                .json(body)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            match sent {
                Ok(r) if !r.status().is_server_error() => return Some(r.status()),
                _ => {}
            }
        }
        None
    }

    /// Stop every task and flush storage.
    pub async fn stop(&self) {
        self.core.stop();
        self.engine.shutdown().await;
    }
}

/// Whom a static node follows when it starts (`None`: it leads). Its
/// flags decide only until it has a leader on record: what it durably
/// learned since (`NodeMeta::leader`, the leader of the newest epoch it
/// knows) outranks the command line it was first started with.
///
/// - Started without `--follow`, but the newest epoch it knows is led by
///   another node (it was fenced, or handed over in a switchover): it
///   follows that node. Leading would put two leaders in one epoch, whose
///   logs could then differ at the same `(epoch, lsn)` where no
///   comparison of positions can see it.
/// - Started with `--follow`, but it led the newest epoch it knows: it
///   follows as told, with a warning. If the named node now follows this
///   one, the cluster has no leader until an operator promotes this node;
///   leading on instead could make a second leader, when a newer epoch
///   was won while this node was down by a leader that does not know it.
///   Safety first: no leader is recoverable by one call, two are not.
fn static_start(
    meta: &replidb_engine::NodeMeta,
    me: &str,
    follow: Option<String>,
) -> Option<String> {
    let recorded =
        (meta.epoch > Epoch(0) && !meta.leader.is_empty()).then_some(meta.leader.as_str());
    match (follow, recorded) {
        (None, Some(leader)) if leader != me => {
            tracing::warn!(epoch = meta.epoch.0, leader = %leader, "started without --follow, but this node last followed the leader of epoch {}; following it (POST /admin/promote makes this node the leader)", meta.epoch.0);
            Some(leader.to_string())
        }
        (Some(named), Some(leader)) if leader == me => {
            tracing::warn!(epoch = meta.epoch.0, follow = %named, "started with --follow, but this node led epoch {}, the newest it knows; following as told (if {named} follows this node, POST /admin/promote here)", meta.epoch.0);
            Some(named)
        }
        (follow, _) => follow,
    }
}

/// How long an unanswered leadership announcement waits before it is sent
/// again.
const ANNOUNCE_RETRY: Duration = Duration::from_millis(500);

/// A stable per-node seed for the artificial-delay sampler.
fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The role machine's settings from the server's configuration.
fn core_options(config: &NodeConfig) -> CoreOptions {
    let mut follower = FollowerOptions::new(config.id.clone(), config.advertise());
    follower.delay = config.replication_delay;
    follower.backoff_base = config.backoff_base;
    follower.backoff_max = config.backoff_max;
    follower.idle_timeout = (config.heartbeat_interval * 20).max(Duration::from_secs(1));
    follower.seed = seed_of(&config.id);
    follower.compression = config.replication_compression;
    CoreOptions {
        id: config.id.clone(),
        advertise_url: config.advertise(),
        leader: LeaderOptions {
            heartbeat_interval: config.heartbeat_interval,
            cluster_size: match config.topology {
                // Write concerns count this node and its peers, this node
                // once even when `--peers` names it (w=all must be reachable).
                Topology::MultiLeader => Some(config.other_peers().len() + 1),
                // Nobody streams a leaderless node's log: it writes alone.
                Topology::Leaderless => Some(1),
                Topology::SingleLeader => config.cluster_size,
            },
            advertise_url: config.advertise(),
            topology: config.topology_fingerprint(),
            compression: config.replication_compression,
            // Multi-leader: every node writes alone; nothing to lose.
            check_quorum: match config.topology {
                Topology::MultiLeader | Topology::Leaderless => Duration::ZERO,
                Topology::SingleLeader => LeaderOptions::default().check_quorum,
            },
            ..LeaderOptions::default()
        },
        follower,
        default_write_concern: config.default_write_concern,
        lease_required: config.coordinator == CoordinatorKind::Etcd,
        // Out of elections for a few lease periods: long enough for the
        // side with a majority to elect without us.
        step_down_cooldown: config.lease_ttl * 3,
        data_dir: Some(config.data_dir.clone()),
    }
}

/// This node's candidacy for an epoch ([`Node::stand_for`]): while it
/// lives, the node re-points within no epoch up to it; dropping it (a
/// promote that failed, or whose request went away) ends that.
pub struct Candidacy {
    node: Arc<Node>,
    epoch: Epoch,
}

impl Candidacy {
    /// The epoch stood for.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Lead the epoch, if it is still this candidacy's: nothing newer was
    /// recorded and nobody was followed in it since [`Node::stand_for`].
    /// The check and the promotion happen under the re-pointing lock, so
    /// no fence can slip between them.
    ///
    /// `ServerError::Superseded` if the epoch moved on (nothing changes).
    pub async fn lead(self) -> Result<(), ServerError> {
        let node = self.node.clone();
        let _one_at_a_time = node.repoint.lock().await;
        let meta = node.engine.meta();
        if meta.epoch != self.epoch || !meta.leader.is_empty() {
            return Err(ServerError::Superseded {
                epoch: self.epoch,
                current: meta.epoch,
            });
        }
        node.promote(self.epoch).await
    }
}

impl Drop for Candidacy {
    fn drop(&mut self) {
        // Only this candidacy's own mark: a later promote of the same node
        // may have stood for a newer epoch meanwhile.
        let _ = self.node.candidate_epoch.compare_exchange(
            self.epoch.0,
            0,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replidb_engine::NodeMeta;

    fn meta(epoch: u64, leader: &str) -> NodeMeta {
        NodeMeta {
            epoch: Epoch(epoch),
            leader: leader.into(),
            ..NodeMeta::default()
        }
    }

    #[test]
    fn a_static_node_starts_as_its_record_says_once_it_has_one() {
        let (me, other) = ("http://me", "http://other");
        let named = || Some("http://named".to_string());
        // New, or nothing on record: the flags decide.
        assert_eq!(static_start(&meta(0, ""), me, None), None);
        assert_eq!(static_start(&meta(0, ""), me, named()), named());
        assert_eq!(static_start(&meta(2, ""), me, None), None);
        // Another node leads the newest epoch: follow it, not lead.
        assert_eq!(static_start(&meta(2, other), me, None), Some(other.into()));
        // This node led it: --follow still decides (never a second leader).
        assert_eq!(static_start(&meta(2, me), me, named()), named());
        assert_eq!(static_start(&meta(2, me), me, None), None);
        // --follow given, another leader on record: the flag (a stale one
        // is redirected by the node it names).
        assert_eq!(static_start(&meta(2, other), me, named()), named());
    }
}
