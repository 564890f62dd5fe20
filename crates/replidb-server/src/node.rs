//! [`Node`]: one replidb process's state — engine, role, and the background
//! tasks that keep it healthy (checkpoints, metric gauges).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use replidb_core::{Clock, Lsn, SystemClock};
use replidb_engine::{Engine, EngineOptions};
use replidb_replication::{
    Follower, FollowerOptions, Leader, LeaderOptions, TcpTransport, Transport,
};
use replidb_wal::WalOptions;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
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
            role_cancel: RwLock::new(CancellationToken::new()),
            shutdown: CancellationToken::new(),
            config,
        });
        match node.config.follow.clone() {
            Some(url) => node.become_follower(url),
            None => node.become_leader().await?,
        }
        tokio::spawn(node.clone().housekeeping());
        Ok(node)
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
                ..LeaderOptions::default()
            },
            self.config.default_write_concern,
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
