//! [`Node`]: one replidb process's state — engine, role, and the background
//! tasks that keep it healthy (checkpoints, metric gauges).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use replidb_coordinator::{
    BoxFuture, Coordinator, EtcdCoordinator, EtcdOptions, Member, MemberInfo,
};
use replidb_core::{Clock, Epoch, Lsn, SystemClock};
use replidb_engine::{Engine, EngineOptions};
use replidb_replication::{
    Follower, FollowerOptions, Leader, LeaderOptions, TcpTransport, Transport,
};
use replidb_wal::WalOptions;
use tokio_util::sync::CancellationToken;

use crate::config::{CoordinatorKind, NodeConfig};
use crate::static_coord::StaticCoordinator;
use crate::ServerError;

/// What this node is doing right now.
#[derive(Clone)]
pub enum Role {
    /// Accepting writes and streaming them.
    Leader(Arc<Leader>),
    /// Streaming from a leader.
    Follower(Arc<Follower>),
}

impl Role {
    /// `leader` or `follower`, as the API spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Leader(_) => "leader",
            Role::Follower(_) => "follower",
        }
    }
}

/// A running node.
pub struct Node {
    /// Settings.
    pub config: NodeConfig,
    /// Storage.
    pub engine: Arc<Engine>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Transport for replication streams.
    pub transport: Arc<dyn Transport>,
    /// HTTP client for forwarding and fan-out reads.
    pub http: reqwest::Client,
    role: RwLock<Role>,
    /// Cluster members known from the coordinator or a previous leader's
    /// peer list; handed to every new leader so `w=majority` counts them.
    cluster_members: std::sync::atomic::AtomicUsize,
    /// Who decides leadership (`--coordinator static|etcd`); set once at
    /// start.
    coordinator: RwLock<Option<Arc<dyn Coordinator>>>,
    /// Cancels the current role's tasks.
    role_cancel: RwLock<CancellationToken>,
    /// Cancels everything (shutdown).
    pub shutdown: CancellationToken,
}

impl Node {
    /// Open storage and start in the configured role.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, ServerError> {
        Self::start_with(config, Arc::new(SystemClock), Arc::new(TcpTransport)).await
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
        };
        eopts.backend = config.backend;
        let engine = Engine::open(eopts, clock.clone())
            .await
            .map_err(|e| ServerError::Startup(format!("cannot open storage: {e}")))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ServerError::Startup(format!("http client: {e}")))?;
        let placeholder = Role::Leader(Leader::new(
            config.id.clone(),
            engine.clone(),
            clock.clone(),
            LeaderOptions::default(),
            config.default_write_concern,
        ));
        let node = Arc::new(Node {
            engine,
            clock,
            transport,
            http,
            role: RwLock::new(placeholder),
            coordinator: RwLock::new(None),
            cluster_members: Default::default(),
            role_cancel: RwLock::new(CancellationToken::new()),
            shutdown: CancellationToken::new(),
            config,
        });
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
                let member = Arc::new(NodeMember(Arc::downgrade(&node)));
                let coordinator = EtcdCoordinator::new(opts, member)
                    .map_err(|e| ServerError::Startup(e.to_string()))?;
                node.set_coordinator(coordinator.clone());
                tokio::spawn(coordinator.run(node.shutdown.child_token()));
            }
            (CoordinatorKind::Static, follow) => {
                node.set_coordinator(Arc::new(StaticCoordinator::new(Arc::downgrade(&node))));
                match follow {
                    Some(url) => node.become_follower(url),
                    None => node.become_leader().await?,
                }
            }
        }
        tokio::spawn(node.clone().housekeeping());
        Ok(node)
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
        if let Some(f) = self.follower() {
            // The old leader's peer list is the cluster as it last knew it.
            let peers = f.status().peers.len();
            self.cluster_members
                .fetch_max(peers, std::sync::atomic::Ordering::SeqCst);
        }
        let fail = |e: replidb_engine::EngineError| ServerError::Startup(e.to_string());
        if self.engine.meta().epoch >= epoch && self.leader().is_some() {
            return Ok(());
        }
        self.engine.begin_epoch(epoch).await.map_err(fail)?;
        self.become_leader().await?;
        metrics::counter!("replidb_failovers_total", "node_id" => self.config.id.clone())
            .increment(1);
        Ok(())
    }

    /// Follow `url`, which leads `epoch`: remember the epoch first, so a
    /// stream from an older leader is refused from now on.
    pub async fn follow(&self, url: String, epoch: Epoch) -> Result<(), ServerError> {
        let meta = self.engine.meta();
        if epoch > meta.epoch {
            self.engine
                .adopt_history(epoch, meta.history)
                .await
                .map_err(|e| ServerError::Startup(e.to_string()))?;
        }
        if let Some(l) = self.leader() {
            l.mark_stale();
        }
        match self.follower() {
            Some(f) if f.leader_url() == url => {}
            _ => self.become_follower(url),
        }
        Ok(())
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The leader state, if leading.
    pub fn leader(&self) -> Option<Arc<Leader>> {
        match self.role() {
            Role::Leader(l) => Some(l),
            Role::Follower(_) => None,
        }
    }

    /// The follower state, if following.
    pub fn follower(&self) -> Option<Arc<Follower>> {
        match self.role() {
            Role::Follower(f) => Some(f),
            Role::Leader(_) => None,
        }
    }

    fn set_role(&self, role: Role) -> CancellationToken {
        if let Role::Leader(old) = self.role() {
            old.stop();
        }
        let token = self.shutdown.child_token();
        let old = std::mem::replace(
            &mut *self.role_cancel.write().unwrap_or_else(|e| e.into_inner()),
            token.clone(),
        );
        old.cancel();
        *self.role.write().unwrap_or_else(|e| e.into_inner()) = role;
        token
    }

    /// Lead: apply everything durable, open a new epoch if needed, accept
    /// writes.
    pub async fn become_leader(&self) -> Result<(), ServerError> {
        let fail = |e: replidb_engine::EngineError| ServerError::Startup(e.to_string());
        let flush = self.engine.positions().flush_lsn;
        self.engine.apply_up_to(flush).await.map_err(fail)?;
        let meta = self.engine.meta();
        if meta.history.entries.is_empty() || meta.epoch == replidb_core::Epoch(0) {
            // A brand-new cluster starts in epoch 1.
            self.engine
                .begin_epoch(meta.epoch.next())
                .await
                .map_err(fail)?;
        }
        let leader = Leader::new(
            self.config.id.clone(),
            self.engine.clone(),
            self.clock.clone(),
            LeaderOptions {
                heartbeat_interval: self.config.heartbeat_interval,
                cluster_size: self.config.cluster_size,
                advertise_url: self.config.advertise(),
                ..LeaderOptions::default()
            },
            self.config.default_write_concern,
        );
        if self.config.coordinator == CoordinatorKind::Etcd {
            // Writes wait for the coordinator to confirm the lease.
            leader.set_write_deadline(0);
        }
        leader.set_known_members(
            self.cluster_members
                .load(std::sync::atomic::Ordering::SeqCst),
        );
        self.set_role(Role::Leader(leader));
        tracing::info!(node_id = %self.config.id, epoch = %self.engine.meta().epoch, "leading");
        Ok(())
    }

    /// Follow the leader at `url`.
    pub fn become_follower(&self, url: String) {
        let mut opts = FollowerOptions::new(self.config.id.clone(), self.config.advertise());
        opts.delay = self.config.replication_delay;
        opts.backoff_base = self.config.backoff_base;
        opts.backoff_max = self.config.backoff_max;
        opts.idle_timeout = (self.config.heartbeat_interval * 20).max(Duration::from_secs(1));
        opts.seed = seed_of(&self.config.id);
        let follower = Follower::new(
            self.engine.clone(),
            self.transport.clone(),
            self.clock.clone(),
            opts,
            url.clone(),
        );
        let token = self.set_role(Role::Follower(follower.clone()));
        tokio::spawn(follower.run(token));
        tracing::info!(node_id = %self.config.id, leader = %url, "following");
    }

    /// The leader's URL as far as this node knows (its own when leading).
    pub fn leader_url(&self) -> String {
        match self.role() {
            Role::Leader(_) => self.config.advertise(),
            Role::Follower(f) => f.leader_url(),
        }
    }

    /// Periodic upkeep until shutdown: checkpoints and gauges.
    async fn housekeeping(self: Arc<Self>) {
        let mut gauges = tokio::time::interval(Duration::from_millis(500));
        let mut checkpoint = tokio::time::interval(self.config.checkpoint_interval);
        checkpoint.tick().await;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
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
        let me = self.config.advertise();
        for peer in peers.into_iter().filter(|p| *p != me) {
            let node = self.clone();
            let me = me.clone();
            tokio::spawn(async move {
                let url = format!("{}/admin/fence", peer.trim_end_matches('/'));
                let body = serde_json::json!({"epoch": epoch.0, "leader": me});
                loop {
                    let leading = node.leader().is_some_and(|l| l.epoch() == epoch);
                    if !leading || node.shutdown.is_cancelled() {
                        return;
                    }
                    let sent = node
                        .http
                        .post(&url)
                        .json(&body)
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => {
                            tracing::info!(peer = %peer, %epoch, "announced leadership");
                            return;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            });
        }
    }

    /// Stop every task and flush storage.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        if let Role::Leader(l) = self.role() {
            l.stop();
        }
        self.engine.shutdown().await;
    }
}

/// A stable per-node seed for the artificial-delay sampler.
fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The node as the coordinator sees it. Weak, so the coordinator's loop does
/// not keep a stopped node alive.
struct NodeMember(std::sync::Weak<Node>);

impl NodeMember {
    fn node(&self) -> Result<Arc<Node>, String> {
        self.0.upgrade().ok_or_else(|| "node stopped".to_string())
    }
}

impl Member for NodeMember {
    fn info(&self) -> MemberInfo {
        let Ok(node) = self.node() else {
            return MemberInfo {
                id: String::new(),
                url: String::new(),
                role: "stopped".into(),
                epoch: 0,
                flush_lsn: 0,
                last_epoch: 0,
                applied_lsn: 0,
                commit_lsn: 0,
                healthy: false,
            };
        };
        let pos = node.engine.positions();
        let role = node.role();
        let commit = match &role {
            Role::Leader(l) => l.commit_lsn(),
            Role::Follower(f) => f.status().commit_lsn,
        };
        let meta = node.engine.meta();
        MemberInfo {
            id: node.config.id.clone(),
            url: node.config.advertise(),
            role: role.name().to_string(),
            epoch: meta.epoch.0,
            flush_lsn: pos.flush_lsn.0,
            last_epoch: meta.history.position_of(pos.flush_lsn).epoch.0,
            applied_lsn: pos.applied_lsn.0,
            commit_lsn: commit.0,
            healthy: !node.shutdown.is_cancelled(),
        }
    }

    fn is_leader(&self) -> bool {
        self.node().is_ok_and(|n| n.leader().is_some())
    }

    fn following(&self) -> Option<String> {
        let node = self.node().ok()?;
        node.follower()
            .map(|f| f.leader_url())
            .filter(|u| !u.is_empty())
    }

    fn promote(&self, epoch: Epoch) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let node = self.node()?;
            node.promote(epoch).await.map_err(|e| e.to_string())
        })
    }

    fn follow(&self, url: String, epoch: Epoch) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let node = self.node()?;
            node.follow(url, epoch).await.map_err(|e| e.to_string())
        })
    }

    fn set_write_deadline(&self, deadline_ms: u64) {
        if let Ok(node) = self.node() {
            if let Some(l) = node.leader() {
                l.set_write_deadline(deadline_ms);
            }
        }
    }

    fn set_cluster_size(&self, n: usize) {
        if let Ok(node) = self.node() {
            node.cluster_members
                .fetch_max(n, std::sync::atomic::Ordering::SeqCst);
            if let Some(l) = node.leader() {
                l.set_known_members(n);
            }
        }
    }

    fn mono_ms(&self) -> u64 {
        // The leader checks its deadline against the node's clock: feed it
        // from the same one.
        self.node()
            .map(|n| n.clock.mono_ms())
            .unwrap_or_else(|_| SystemClock.mono_ms())
    }
}
