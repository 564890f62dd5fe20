//! One node's role machine: the core that the server and the simulator
//! both run.
//!
//! A node is either a **leader** (a [`Leader`]: accepts writes in its
//! epoch, streams its log) or a **follower** (a [`Follower`]: streams from
//! the leader at a URL, or from nobody while it waits to be told). What
//! moves it between the two is the coordinator (etcd's election, or an
//! operator with the static coordinator) through four transitions, all
//! here so that the simulator validates exactly the code the server runs:
//!
//! - [`NodeCore::promote`]`(epoch)` — apply everything flushed, open
//!   `epoch` in the history, lead. A new leader under a lease-based
//!   coordinator starts fenced until the coordinator confirms the lease.
//! - [`NodeCore::follow`]`(url, epoch)` — remember `epoch` first (a stream
//!   from an older leader is refused from then on), mark a leader we were
//!   stale, and stream from `url`; the handshake rewinds a divergent tail.
//! - [`NodeCore::step_down`] — a leader that lost contact with a majority
//!   of voters (check-quorum) stops leading and, for a cool-down, does not
//!   stand for election, so the side that holds a majority can elect.
//! - [`NodeCore::set_write_deadline`] — the coordinator's lease, on the
//!   monotonic clock.
//!
//! # Invariants
//! - At most one role's tasks run: switching roles cancels the old role's
//!   tasks and stops the old leader's sessions before the new role starts.
//! - A node never leads an epoch lower than one it has seen
//!   ([`replidb_engine::Engine::begin_epoch`] only moves forward), and its
//!   writes carry the epoch it leads (`Proposal::in_epoch`).
//! - The voting set only grows from what the coordinator or the previous
//!   leader said ([`NodeCore::set_cluster_size`]); it is never computed
//!   from "followers seen lately" alone.
//!
//! # Left out
//! The HTTP API, the coordinator loop and the replication listener: those
//! are IO at the edge, in `replidb-server` (and `replidb-sim`'s drivers).

pub mod voters;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use replidb_coordinator::{BoxFuture, Member, MemberInfo};
use replidb_core::{Clock, Epoch, Lsn, WriteConcern};
use replidb_engine::{Engine, EngineError};
use replidb_replication::{Follower, FollowerOptions, Leader, LeaderOptions, Reach, Transport};
use tokio_util::sync::CancellationToken;

pub use voters::{VotingSet, VOTERS_MAX};

/// How many refused connects prove a leader's process gone: one could be
/// a port briefly closed by a restart racing the probe; two, apart, are not.
const GONE_PROBES: usize = 2;
/// Pause between those connects.
const GONE_PROBE_GAP: Duration = Duration::from_millis(25);
/// How long one probe connect may take. A refusal comes back in one round
/// trip; anything slower is a timeout, which proves nothing, and the
/// coordinator's tick should not wait longer for it.
const GONE_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// Why [`NodeCore::forget`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForgetError {
    /// The member has a stream open to this leader (a 409).
    #[error("{id} ({url}) is still {state:?} from this leader; stop it first and wait until GET /status shows it disconnected: a running member forgotten would keep receiving the log without counting toward majorities")]
    Connected {
        /// Its id.
        id: String,
        /// Its URL.
        url: String,
        /// Its stream's state.
        state: replidb_replication::ReplicaState,
    },
    /// Not in the voting set (a 404).
    #[error("{member:?} is not in the voting set {voting_set:?}; a member this leader has never streamed to is named by its URL")]
    NotAVoter {
        /// What was asked for.
        member: String,
        /// The voting set's URLs.
        voting_set: Vec<String>,
    },
}

/// What a node is doing right now.
#[derive(Clone)]
pub enum Role {
    /// Accepting writes and streaming them.
    Leader(Arc<Leader>),
    /// Streaming from a leader (or from nobody: an empty URL).
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

/// How a node's roles are built.
#[derive(Clone, Debug)]
pub struct CoreOptions {
    /// Node id.
    pub id: String,
    /// This node's URL as peers reach it.
    pub advertise_url: String,
    /// Settings of the leader this node becomes (its `advertise_url` is
    /// overwritten with ours).
    pub leader: LeaderOptions,
    /// Settings of the follower this node becomes.
    pub follower: FollowerOptions,
    /// Write concern of a write that names none.
    pub default_write_concern: WriteConcern,
    /// A new leader refuses writes until a coordinator confirms its lease
    /// (etcd); without a lease (static), it writes at once.
    pub lease_required: bool,
    /// After a check-quorum step-down, how long this node reports itself
    /// unhealthy (not a candidate), so another node wins the election.
    pub step_down_cooldown: Duration,
    /// Where the durable voting set lives (`members.json`); `None` keeps it
    /// in memory.
    pub data_dir: Option<PathBuf>,
}

/// Hooks for what the role machine does, for a driver that reports it
/// (the simulator's story, the server's metrics). Every method defaults
/// to nothing.
pub trait RoleEvents: Send + Sync + 'static {
    /// The role changed (after the new role is installed).
    fn role_changed(&self, _role: &Role) {}
    /// This node now leads `epoch`; its log ended at `flush`.
    fn elected(&self, _epoch: Epoch, _flush: Lsn) {}
    /// This node now follows `url` (which leads `epoch`); `stepped_down`
    /// when it was a leader.
    fn following(&self, _url: &str, _epoch: Epoch, _stepped_down: bool) {}
    /// The lease of the leader of `epoch` ended; its old deadline was
    /// `deadline_before_mono_ms`.
    fn fenced(&self, _epoch: Epoch, _deadline_before_mono_ms: u64) {}
    /// A fenced leader of `epoch` got its lease back.
    fn unfenced(&self, _epoch: Epoch) {}
    /// The leader of `epoch` stepped down (check-quorum).
    fn stepped_down(&self, _epoch: Epoch) {}
}

/// A [`RoleEvents`] that ignores everything.
pub struct NoEvents;

impl RoleEvents for NoEvents {}

/// One node: its engine and its current role.
pub struct NodeCore {
    opts: CoreOptions,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    transport: Arc<dyn Transport>,
    events: Arc<dyn RoleEvents>,
    role: RwLock<Role>,
    /// Cancels the current role's tasks.
    role_cancel: Mutex<CancellationToken>,
    /// Parent of every role token: cancelled when the node stops.
    shutdown: CancellationToken,
    /// Voting members known from the coordinator's registry or the previous
    /// leader's peer list; handed to every new leader so `w=majority`
    /// counts them even before they reconnect.
    cluster_members: AtomicUsize,
    /// A leader whose lease ended and may get it back.
    fenced: AtomicBool,
    /// When this node last stepped down (monotonic ms).
    stepped_down_mono_ms: Mutex<Option<u64>>,
    /// The durable voting set (member URLs).
    voters: VotingSet,
    /// Held while the voting set is learned or a member forgotten, so a
    /// refresh that read the members before a forget cannot add the
    /// forgotten one back after it.
    membership: Mutex<()>,
}

impl NodeCore {
    /// A node over `engine`, waiting as a follower of nobody until a
    /// driver calls [`become_leader`](Self::become_leader) or
    /// [`become_follower`](Self::become_follower).
    pub fn new(
        opts: CoreOptions,
        engine: Arc<Engine>,
        clock: Arc<dyn Clock>,
        transport: Arc<dyn Transport>,
        events: Arc<dyn RoleEvents>,
        shutdown: CancellationToken,
    ) -> Arc<NodeCore> {
        let placeholder = Follower::new(
            engine.clone(),
            transport.clone(),
            clock.clone(),
            opts.follower.clone(),
            String::new(),
        );
        let voters = VotingSet::load(opts.data_dir.as_deref());
        Arc::new(NodeCore {
            voters,
            opts,
            engine,
            clock,
            transport,
            events,
            role: RwLock::new(Role::Follower(placeholder)),
            role_cancel: Mutex::new(CancellationToken::new()),
            shutdown,
            cluster_members: AtomicUsize::new(0),
            fenced: AtomicBool::new(false),
            stepped_down_mono_ms: Mutex::new(None),
            membership: Mutex::new(()),
        })
    }

    /// Settings.
    pub fn options(&self) -> &CoreOptions {
        &self.opts
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

    /// The leader's URL as far as this node knows (its own when leading;
    /// empty when it follows nobody).
    pub fn leader_url(&self) -> String {
        match self.role() {
            Role::Leader(_) => self.opts.advertise_url.clone(),
            Role::Follower(f) => f.leader_url(),
        }
    }

    /// Voting members known from outside this node's own sessions: the
    /// coordinator's registry, and the durable voting set.
    pub fn cluster_members(&self) -> usize {
        self.cluster_members
            .load(Ordering::SeqCst)
            .max(self.voters.len())
    }

    /// The durable voting set.
    pub fn voting_set(&self) -> &VotingSet {
        &self.voters
    }

    /// Learn members from the current role (a leader's sessions, or the
    /// peer list in a follower's heartbeats), keep them durably, and size
    /// a leader's majority from them. Called on every coordinator tick and
    /// by the server's housekeeping.
    pub fn refresh_members(&self) {
        let _membership = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let mut urls = vec![self.opts.advertise_url.clone()];
        match self.role() {
            Role::Leader(l) => urls.extend(l.peers()),
            Role::Follower(f) => urls.extend(f.status().peers),
        }
        self.voters.learn(urls);
        if let Some(l) = self.leader() {
            l.set_known_members(self.cluster_members());
        }
    }

    /// Remove a member from the voting set (an operator's decision: the
    /// node is gone for good), so it no longer raises the majority.
    /// `member` is its URL or, for a follower of this leader, its id.
    /// Returns the URL removed.
    ///
    /// # Errors
    /// [`ForgetError::Connected`] while the member still has a stream open
    /// to this leader: it would go on receiving the log without counting
    /// toward majorities, which lowers the majority over nodes that are in
    /// fact still members. [`ForgetError::NotAVoter`] when it is not in the
    /// voting set.
    pub fn forget(&self, member: &str) -> Result<String, ForgetError> {
        let _membership = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let mut url = member.to_string();
        let leader = self.leader();
        // Checked and removed in one step: a follower reconnecting in
        // between keeps its new session.
        match leader
            .as_ref()
            .and_then(|l| l.forget_if_disconnected(member))
        {
            Some(Err(r)) => {
                return Err(ForgetError::Connected {
                    id: r.id,
                    url: r.addr,
                    state: r.state,
                })
            }
            Some(Ok(r)) => url = r.addr,
            None => {}
        }
        if let Some(f) = self.follower() {
            // Under the membership lock, before the set shrinks: a refresh
            // after it reads the list without the member.
            f.forget_peer(&url);
        }
        if !self.voters.forget(&url) {
            return Err(ForgetError::NotAVoter {
                member: member.to_string(),
                voting_set: self.voters.urls(),
            });
        }
        // The registry's count no longer holds either.
        self.cluster_members.store(0, Ordering::SeqCst);
        if let Some(l) = &leader {
            l.reset_known_members(self.cluster_members());
        }
        Ok(url)
    }

    /// Install `role`: stop the old leader's sessions, cancel the old
    /// role's tasks, and return the new role's token.
    fn set_role(&self, role: Role) -> CancellationToken {
        let token = self.shutdown.child_token();
        let old_token = std::mem::replace(
            &mut *self.role_cancel.lock().unwrap_or_else(|e| e.into_inner()),
            token.clone(),
        );
        let old = std::mem::replace(
            &mut *self.role.write().unwrap_or_else(|e| e.into_inner()),
            role.clone(),
        );
        if let Role::Leader(l) = old {
            l.stop();
        }
        old_token.cancel();
        self.events.role_changed(&role);
        token
    }

    /// Lead: apply everything durable, open epoch 1 in a brand-new
    /// cluster, accept writes (under a lease-based coordinator, only once
    /// it confirms the lease).
    pub async fn become_leader(&self) -> Result<(), EngineError> {
        self.lead(true).await
    }

    /// Lead the epoch this node's own records say it leads (a static
    /// leader restarted), without the check-quorum grace an election or a
    /// promote earns: writes wait until a majority of voters acknowledges
    /// this leader ([`LeaderOptions::quorum_grace`]). A node whose voting
    /// set is itself writes at once.
    pub async fn resume_leadership(&self) -> Result<(), EngineError> {
        self.lead(false).await
    }

    async fn lead(&self, quorum_grace: bool) -> Result<(), EngineError> {
        let flush = self.engine.positions().flush_lsn;
        self.engine.apply_up_to(flush).await?;
        let meta = self.engine.meta();
        let me = self.opts.advertise_url.clone();
        if meta.history.entries.is_empty() || meta.epoch == Epoch(0) {
            self.engine
                .begin_epoch_led_by(meta.epoch.next(), me)
                .await?;
        } else if meta.leader != me {
            // Leading the epoch it already has (a restart): record it.
            self.engine
                .adopt_history_from(meta.epoch, meta.history, Some(me))
                .await?;
        }
        let leader = Leader::new(
            self.opts.id.clone(),
            self.engine.clone(),
            self.clock.clone(),
            LeaderOptions {
                advertise_url: self.opts.advertise_url.clone(),
                quorum_grace,
                ..self.opts.leader.clone()
            },
            self.opts.default_write_concern,
        );
        if self.opts.lease_required {
            leader.set_write_deadline(0);
        }
        self.fenced.store(false, Ordering::SeqCst);
        leader.set_known_members(self.cluster_members());
        self.set_role(Role::Leader(leader));
        tracing::info!(node_id = %self.opts.id, epoch = self.engine.meta().epoch.0, "leading");
        Ok(())
    }

    /// Follow the leader at `url` (empty: nobody yet).
    pub fn become_follower(&self, url: String) {
        let follower = Follower::new(
            self.engine.clone(),
            self.transport.clone(),
            self.clock.clone(),
            self.opts.follower.clone(),
            url.clone(),
        );
        let token = self.set_role(Role::Follower(follower.clone()));
        tokio::spawn(follower.run(token));
        if !url.is_empty() {
            tracing::info!(node_id = %self.opts.id, leader = %url, "following");
        }
    }

    /// Become the leader of `epoch` (an election or an operator's promote).
    pub async fn promote(&self, epoch: Epoch) -> Result<(), EngineError> {
        if self.engine.meta().epoch >= epoch && self.leader().is_some() {
            return Ok(());
        }
        // The old leader's peer list is the cluster as it last knew it.
        self.refresh_members();
        let flush = self.engine.positions().flush_lsn;
        self.engine.apply_up_to(flush).await?;
        self.engine
            .begin_epoch_led_by(epoch, self.opts.advertise_url.clone())
            .await?;
        self.become_leader().await?;
        metrics::counter!("replidb_failovers_total", "node_id" => self.opts.id.clone())
            .increment(1);
        self.events.elected(epoch, flush);
        Ok(())
    }

    /// Follow `url`, which leads `epoch`: remember the epoch first, so a
    /// stream from an older leader is refused from now on.
    pub async fn follow(&self, url: String, epoch: Epoch) -> Result<(), EngineError> {
        // Stop writing first, then remember the epoch.
        let stepped_down = match self.leader() {
            Some(l) => {
                l.mark_stale();
                true
            }
            None => false,
        };
        let meta = self.engine.meta();
        // The epoch and its leader in one durable write: a node restarted
        // after this knows it does not lead (`NodeMeta::leader`).
        if epoch > meta.epoch || (epoch == meta.epoch && meta.leader != url) {
            self.engine
                .adopt_history_from(epoch, meta.history, Some(url.clone()))
                .await?;
        }
        match self.follower() {
            Some(f) if f.leader_url() == url => {
                f.reconnect_now();
                return Ok(());
            }
            _ => self.become_follower(url.clone()),
        }
        self.events.following(&url, epoch, stepped_down);
        Ok(())
    }

    /// Stop leading because a majority of voters has not been heard from
    /// (Raft's check-quorum): follow nobody, and stay out of elections for
    /// the cool-down so the side that holds a majority elects.
    pub fn step_down(&self) {
        let Some(l) = self.leader() else {
            return;
        };
        *self
            .stepped_down_mono_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(self.clock.mono_ms());
        tracing::warn!(node_id = %self.opts.id, epoch = l.epoch().0, "no acknowledgement from a majority of voters within the check-quorum window; stepping down");
        self.become_follower(String::new());
        self.events.stepped_down(l.epoch());
    }

    /// Whether this node stepped down less than the cool-down ago.
    fn cooling_down(&self) -> bool {
        let at = *self
            .stepped_down_mono_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        at.is_some_and(|t| {
            self.clock.mono_ms().saturating_sub(t) < self.opts.step_down_cooldown.as_millis() as u64
        })
    }

    /// The lease: writes allowed until `deadline_mono_ms` (0 = fenced).
    pub fn set_write_deadline(&self, deadline_mono_ms: u64) {
        let Some(l) = self.leader() else {
            return;
        };
        let before = l.write_deadline();
        l.set_write_deadline(deadline_mono_ms);
        if deadline_mono_ms != 0 && self.fenced.swap(false, Ordering::SeqCst) {
            self.events.unfenced(l.epoch());
        }
        if deadline_mono_ms == 0 && before != 0 && !self.fenced.swap(true, Ordering::SeqCst) {
            self.events.fenced(l.epoch(), before);
        }
    }

    /// The coordinator's registry holds `n` members: the voting set is at
    /// least that large from now on.
    pub fn set_cluster_size(&self, n: usize) {
        self.cluster_members.fetch_max(n, Ordering::SeqCst);
        if let Some(l) = self.leader() {
            l.set_known_members(n);
        }
    }

    /// What this node publishes to the coordinator: its position as
    /// `(last_epoch, flush_lsn)`, and whether it may be elected.
    pub fn member_info(&self) -> MemberInfo {
        self.refresh_members();
        let pos = self.engine.positions();
        let meta = self.engine.meta();
        let role = self.role();
        let commit = match &role {
            Role::Leader(l) => l.commit_lsn(),
            Role::Follower(f) => f.status().commit_lsn,
        };
        MemberInfo {
            id: self.opts.id.clone(),
            url: self.opts.advertise_url.clone(),
            role: role.name().to_string(),
            epoch: meta.epoch.0,
            flush_lsn: pos.flush_lsn.0,
            last_epoch: meta.history.position_of(pos.flush_lsn).epoch.0,
            applied_lsn: pos.applied_lsn.0,
            commit_lsn: commit.0,
            healthy: self.engine.failure().is_none()
                && !self.shutdown.is_cancelled()
                && !self.cooling_down(),
        }
    }

    /// Whether this node can prove that the process of the leader at `url`
    /// is gone: it follows, its stream from that leader is down, and
    /// `GONE_PROBES` bare connects to the leader's listening address,
    /// `GONE_PROBE_GAP` apart, were all refused. A live process never
    /// refuses connections on the port it listens on; a partition or an
    /// overloaded host times out instead, and a timeout (or any error
    /// other than a refusal) proves nothing. The coordinator then revokes
    /// the dead leader's lease instead of waiting for it to expire.
    pub async fn leader_process_gone(&self, url: &str) -> bool {
        let Some(f) = self.follower() else {
            // A leader has no stream to lose.
            return false;
        };
        let streaming = || {
            let s = f.status();
            s.connected && s.leader_url == url
        };
        if streaming() {
            return false;
        }
        for attempt in 0..GONE_PROBES {
            if attempt > 0 {
                tokio::time::sleep(GONE_PROBE_GAP).await;
            }
            if self.transport.probe(url, GONE_PROBE_TIMEOUT).await != Reach::Refused {
                return false;
            }
        }
        // A stream that came up meanwhile disproves it.
        !streaming()
    }

    /// Check-quorum for stepping down: true unless this node leads and has
    /// not heard from a majority of voters within the window.
    pub fn has_quorum(&self) -> bool {
        self.leader().is_none_or(|l| l.has_quorum_contact())
    }

    /// Stop: cancel the role's tasks and stop a leader's sessions.
    pub fn stop(&self) {
        self.shutdown.cancel();
        if let Role::Leader(l) = self.role() {
            l.stop();
        }
    }
}

/// The node as its coordinator sees it. Weak, so the coordinator's loop
/// does not keep a stopped node alive.
pub struct CoreMember(pub Weak<NodeCore>);

impl CoreMember {
    fn core(&self) -> Result<Arc<NodeCore>, String> {
        self.0.upgrade().ok_or_else(|| "node stopped".to_string())
    }
}

impl Member for CoreMember {
    fn info(&self) -> MemberInfo {
        match self.core() {
            Ok(c) => c.member_info(),
            Err(_) => MemberInfo {
                id: String::new(),
                url: String::new(),
                role: "stopped".into(),
                epoch: 0,
                flush_lsn: 0,
                last_epoch: 0,
                applied_lsn: 0,
                commit_lsn: 0,
                healthy: false,
            },
        }
    }

    fn is_leader(&self) -> bool {
        self.core().is_ok_and(|c| c.leader().is_some())
    }

    fn following(&self) -> Option<String> {
        self.core()
            .ok()?
            .follower()
            .map(|f| f.leader_url())
            .filter(|u| !u.is_empty())
    }

    fn promote(&self, epoch: Epoch) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let c = self.core()?;
            c.promote(epoch).await.map_err(|e| e.to_string())
        })
    }

    fn follow(&self, url: String, epoch: Epoch) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let c = self.core()?;
            c.follow(url, epoch).await.map_err(|e| e.to_string())
        })
    }

    fn set_write_deadline(&self, deadline_ms: u64) {
        if let Ok(c) = self.core() {
            c.set_write_deadline(deadline_ms);
        }
    }

    fn set_cluster_size(&self, n: usize) {
        if let Ok(c) = self.core() {
            c.set_cluster_size(n);
        }
    }

    fn mono_ms(&self) -> u64 {
        self.core().map(|c| c.clock.mono_ms()).unwrap_or(0)
    }

    fn has_quorum(&self) -> bool {
        self.core().is_ok_and(|c| c.has_quorum())
    }

    fn step_down(&self) {
        if let Ok(c) = self.core() {
            c.step_down();
        }
    }

    fn leader_process_gone<'a>(&'a self, leader_url: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.core() {
                Ok(c) => c.leader_process_gone(leader_url).await,
                Err(_) => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use replidb_core::SystemClock;
    use replidb_engine::EngineOptions;
    use replidb_replication::TcpTransport;

    use super::*;

    async fn follower_node(dir: &std::path::Path) -> Arc<NodeCore> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine = Engine::open(EngineOptions::new(dir, "n2"), clock.clone())
            .await
            .unwrap();
        let url = "http://127.0.0.1:9";
        let opts = CoreOptions {
            id: "n2".into(),
            advertise_url: url.into(),
            leader: LeaderOptions::default(),
            follower: FollowerOptions::new("n2", url),
            default_write_concern: WriteConcern::Majority,
            lease_required: true,
            step_down_cooldown: Duration::from_secs(3),
            data_dir: None,
        };
        NodeCore::new(
            opts,
            engine,
            clock,
            Arc::new(TcpTransport::default()),
            Arc::new(NoEvents),
            CancellationToken::new(),
        )
    }

    /// Refused connects prove the leader's process gone; a port something
    /// listens on (even a process that never answers the upgrade) does
    /// not, nor does an address that cannot be reached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_refused_connects_prove_the_leader_gone() {
        let dir = tempfile::tempdir().unwrap();
        let node = follower_node(dir.path()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        node.become_follower(url.clone());
        assert!(!node.leader_process_gone(&url).await, "a process listens");
        drop(listener);
        assert!(node.leader_process_gone(&url).await, "nothing listens");
        // A black hole (or no route at all): a timeout or an unreachable
        // network, never a refusal.
        let far = "http://10.255.255.1:7000";
        node.become_follower(far.into());
        assert!(!node.leader_process_gone(far).await);
        node.stop();
    }
}
