//! The leader's side: one streaming session per follower, the registry of
//! followers (the equivalent of `pg_stat_replication`), commit tracking and
//! write-concern waits.
//!
//! Time: every deadline, timeout and lag here is on the leader's monotonic
//! clock ([`Clock::mono_ms`]); see [`crate::lag`]. A follower that neither
//! acknowledges nor answers heartbeats for [`LeaderOptions::ack_timeout`]
//! is `disconnected` and its session is closed, whatever TCP thinks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use replidb_core::{Clock, Epoch, Lsn, WriteConcern};
use replidb_engine::Engine;
use replidb_wal::WalError;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::compress::{self, Codec};
use crate::decide::{decide_start, LogPosition, StartDecision};
use crate::frame::{Frame, FrameCodec, BATCH_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MAX};
use crate::lag::{DurableTimes, DURABLE_TIMES_ENTRIES_MAX};
use crate::transport::BoxIo;
use crate::{ReplicationError, Result};

/// Tuning of the leader's streams.
#[derive(Clone, Debug)]
pub struct LeaderOptions {
    /// Heartbeat period on an idle stream.
    pub heartbeat_interval: Duration,
    /// Voting members for `w=majority`; `None` = leader + followers seen.
    pub cluster_size: Option<usize>,
    /// Most records per `Records` frame (capped at
    /// [`crate::frame::BATCH_RECORDS_MAX`]).
    pub batch_max_records: usize,
    /// Most bytes of records per `Records` frame, beyond which a batch takes
    /// no further record (capped at [`BATCH_BYTES_MAX`]; one record larger
    /// than this still travels alone).
    pub batch_max_bytes: usize,
    /// Most entries per snapshot chunk.
    pub snapshot_chunk_entries: usize,
    /// Most bytes of entries per snapshot chunk (capped at
    /// [`SNAPSHOT_CHUNK_BYTES_MAX`]; one larger entry still travels alone).
    pub snapshot_chunk_bytes_max: usize,
    /// A follower that neither acknowledges nor answers a heartbeat for
    /// this long is disconnected (and a frame it does not take within this
    /// long ends the session).
    pub ack_timeout: Duration,
    /// How long a new stream may take to say `Hello`.
    pub hello_timeout: Duration,
    /// This leader's own URL, shared with followers in heartbeats.
    pub advertise_url: String,
    /// Check-quorum window (Raft §6.2's check-quorum, on the monotonic
    /// clock): a leader that has not heard an acknowledgement from a
    /// majority of voters within this long refuses writes and strong reads
    /// (and, with etcd, steps down), so an isolated leader cannot keep the
    /// cluster unavailable or serve stale "latest" state.
    pub check_quorum: Duration,
    /// This node's topology fingerprint (see `Frame::Hello::topology`); a
    /// connecting node with another one is refused.
    pub topology: String,
    /// Codec for `Records` and `SnapshotChunk` frames
    /// (`--replication-compression`), used on each stream whose other
    /// side can decode it (its `Hello` says), else frames go plain.
    pub compression: Codec,
    /// Whether the first check-quorum window after this leader starts
    /// counts as contact. True after an election or a promote, which just
    /// heard from a majority (followers need a moment to reconnect). False
    /// for a node that resumes leading an epoch from its own records (a
    /// static leader restarted): nothing has confirmed that the others
    /// did not move on without it, so it takes no write until a majority
    /// of voters acknowledges it (a replaced leader restarted with its
    /// original command line took `w=1` writes under its old epoch until
    /// the fence reached it, and they were rolled back).
    pub quorum_grace: bool,
}

impl Default for LeaderOptions {
    fn default() -> Self {
        LeaderOptions {
            heartbeat_interval: Duration::from_millis(100),
            cluster_size: None,
            batch_max_records: 1024,
            batch_max_bytes: 1 << 20,
            snapshot_chunk_entries: 1000,
            snapshot_chunk_bytes_max: 1 << 20,
            ack_timeout: Duration::from_secs(3),
            hello_timeout: Duration::from_secs(5),
            advertise_url: String::new(),
            check_quorum: Duration::from_millis(3000),
            topology: String::new(),
            compression: Codec::DEFAULT,
            quorum_grace: true,
        }
    }
}

/// Where a follower's stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Receiving a table snapshot.
    Snapshot,
    /// Streaming, but more than one batch behind.
    CatchingUp,
    /// Streaming and caught up to within a batch.
    Streaming,
    /// No open stream.
    Disconnected,
}

/// What the leader knows about one follower.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaInfo {
    /// Follower id.
    pub id: String,
    /// Follower URL.
    pub addr: String,
    /// Stream state.
    pub state: ReplicaState,
    /// Highest LSN sent.
    pub sent_lsn: Lsn,
    /// Highest LSN the follower reported durable.
    pub flush_lsn: Lsn,
    /// Highest LSN the follower reported applied.
    pub applied_lsn: Lsn,
    /// Records the follower has not applied.
    pub lag_records: u64,
    /// Age of the oldest record the follower has not acknowledged as
    /// applied, on the leader's monotonic clock (0 when it has them all).
    pub lag_ms: u64,
    /// `sync`, `quorum` or `async`, from the default write concern.
    pub sync: &'static str,
    /// The codec this stream's records and snapshot chunks are compressed
    /// with, as negotiated at its handshake.
    pub compression: Codec,
    /// Last time we heard from it (leader's monotonic clock, ms).
    #[serde(skip)]
    pub last_seen_mono_ms: u64,
    /// Session counter, so an old session's exit does not mark a newer one
    /// disconnected.
    #[serde(skip)]
    session: u64,
    /// When the last acknowledgement arrived, on the monotonic clock: an
    /// ack received after instant `t` proves the follower still followed
    /// this leader after `t` (followers ack only their current leader, and
    /// answer every heartbeat).
    #[serde(skip)]
    last_ack_mono_ms: Option<u64>,
    /// How long ago the last acknowledgement arrived, in ms on this
    /// leader's monotonic clock (`None`: never).
    pub last_ack_age_ms: Option<u64>,
}

/// Leader-side replication state, shared by every session and the write
/// path.
pub struct Leader {
    node_id: String,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    opts: LeaderOptions,
    default_wc: WriteConcern,
    replicas: Mutex<BTreeMap<String, ReplicaInfo>>,
    /// When each LSN became durable here, for lag in time.
    durable: Mutex<DurableTimes>,
    /// Bumped on every acknowledgement, to wake write-concern waiters.
    acks: watch::Sender<u64>,
    next_session: std::sync::atomic::AtomicU64,
    /// Cancelled when this node stops leading: every session ends.
    cancel: CancellationToken,
    epoch: Epoch,
    /// Writes are allowed until this time (ms on the monotonic clock, so a
    /// wall clock stepped back cannot extend it): `u64::MAX` without a
    /// lease (static coordinator), else the lease deadline the coordinator
    /// computed; 0 once fenced.
    write_deadline_ms: std::sync::atomic::AtomicU64,
    /// Set during a planned switchover: writes pause.
    paused: std::sync::atomic::AtomicBool,
    /// Set when a follower showed us a higher epoch: we are stale.
    stale: std::sync::atomic::AtomicBool,
    /// Cluster members known from outside this leader's own sessions (the
    /// coordinator's registry, or the previous leader's peer list): a new
    /// leader must not count a majority of only the followers that happen
    /// to have reconnected.
    known_members: std::sync::atomic::AtomicUsize,
    /// When this leader started, on the monotonic clock: the check-quorum
    /// window starts here, so a new leader has time to hear its followers.
    started_mono_ms: u64,
    /// Bumped to make every session send a heartbeat now (a strong read
    /// confirming leadership, ReadIndex-style).
    probe: watch::Sender<u64>,
}

/// Why a leader refuses a write right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotWritable {
    /// The lease is gone or expiring: self-fenced.
    Fenced,
    /// A planned switchover is in progress.
    Paused,
    /// Another node leads a higher epoch.
    Stale,
    /// No acknowledgement from a majority of voters within the
    /// check-quorum window: this leader may be cut off from the others.
    NoQuorum,
}

impl Leader {
    /// Leader state for `engine` at its current epoch.
    pub fn new(
        node_id: impl Into<String>,
        engine: Arc<Engine>,
        clock: Arc<dyn Clock>,
        opts: LeaderOptions,
        default_wc: WriteConcern,
    ) -> Arc<Leader> {
        let epoch = engine.meta().epoch;
        let mut durable = DurableTimes::new(DURABLE_TIMES_ENTRIES_MAX);
        // What is durable already was durable by now (at least).
        durable.note(engine.positions().flush_lsn, clock.mono_ms());
        let started_mono_ms = clock.mono_ms();
        let leader = Arc::new(Leader {
            node_id: node_id.into(),
            engine,
            clock,
            opts,
            default_wc,
            replicas: Mutex::new(BTreeMap::new()),
            durable: Mutex::new(durable),
            acks: watch::channel(0).0,
            next_session: Default::default(),
            cancel: CancellationToken::new(),
            epoch,
            write_deadline_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            paused: Default::default(),
            stale: Default::default(),
            known_members: Default::default(),
            started_mono_ms,
            probe: watch::channel(0).0,
        });
        leader.spawn_durability_clock();
        leader
    }

    /// Note the time of every new flush position, so lag can be measured
    /// even when no session is awake to see it. Holds only a weak
    /// reference: it ends with the leader, or when it stops leading.
    fn spawn_durability_clock(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            // Built outside a runtime (some tests): sessions and status
            // reads note positions as they see them.
            return;
        }
        let weak = Arc::downgrade(self);
        let mut rx = self.engine.subscribe();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = cancel.cancelled() => return,
                }
                let Some(leader) = weak.upgrade() else {
                    return;
                };
                leader.note_durable();
            }
        });
    }

    /// Record the current flush position as durable now.
    fn note_durable(&self) {
        let flush = self.engine.positions().flush_lsn;
        let now = self.clock.mono_ms();
        self.durable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(flush, now);
    }

    /// Age of the oldest record after `applied`, on our monotonic clock: a
    /// follower's lag in time. 0 when nothing after `applied` is durable.
    fn lag_after_ms(&self, applied: Lsn) -> u64 {
        self.note_durable();
        let now = self.clock.mono_ms();
        self.durable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .age_ms(applied.next(), now)
    }

    /// Allow writes until `deadline_ms` on the monotonic clock (0 = fence
    /// now, `u64::MAX` = no lease needed).
    pub fn set_write_deadline(&self, deadline_ms: u64) {
        self.write_deadline_ms
            .store(deadline_ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// The current write deadline.
    pub fn write_deadline(&self) -> u64 {
        self.write_deadline_ms
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Pause or resume writes (planned switchover).
    pub fn set_paused(&self, paused: bool) {
        self.paused
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    /// A receiver that changes on every acknowledgement from any follower,
    /// for callers that wait on a follower's position (a switchover waiting
    /// for its target to catch up) without polling.
    pub fn ack_changes(&self) -> watch::Receiver<u64> {
        self.acks.subscribe()
    }

    /// Mark this leader stale: someone has seen a higher epoch.
    pub fn mark_stale(&self) {
        self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a write may be accepted now.
    pub fn writable(&self) -> std::result::Result<(), NotWritable> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.stale.load(SeqCst) {
            return Err(NotWritable::Stale);
        }
        if self.paused.load(SeqCst) {
            return Err(NotWritable::Paused);
        }
        if self.clock.mono_ms() >= self.write_deadline_ms.load(SeqCst) {
            return Err(NotWritable::Fenced);
        }
        if !self.has_quorum_contact() {
            return Err(NotWritable::NoQuorum);
        }
        Ok(())
    }

    /// Check-quorum: a majority of voters (this leader included) sent an
    /// acknowledgement within the last [`LeaderOptions::check_quorum`], or
    /// this leader started less than that long ago (with
    /// [`LeaderOptions::quorum_grace`]).
    pub fn has_quorum_contact(&self) -> bool {
        // Zero turns check-quorum off (multi-leader: every node writes
        // alone; there is no majority to lose).
        if self.opts.check_quorum.is_zero() {
            return true;
        }
        self.has_quorum_contact_within(self.opts.check_quorum)
    }

    /// Check-quorum over `window`: a majority of voters acknowledged within
    /// it, or this leader started less than that long ago (with
    /// [`LeaderOptions::quorum_grace`]).
    pub fn has_quorum_contact_within(&self, window: Duration) -> bool {
        let now = self.clock.mono_ms();
        let window_ms = window.as_millis() as u64;
        if self.opts.quorum_grace && now.saturating_sub(self.started_mono_ms) < window_ms {
            return true;
        }
        self.heard_from_majority_since(now.saturating_sub(window_ms))
    }

    /// Whether a majority of voters (this leader included) acknowledged
    /// something at or after `since_mono_ms` (this leader's monotonic clock).
    pub fn heard_from_majority_since(&self, since_mono_ms: u64) -> bool {
        let heard = 1 + self
            .lock()
            .values()
            .filter(|r| r.last_ack_mono_ms.is_some_and(|t| t >= since_mono_ms))
            .count();
        heard >= WriteConcern::Majority.required(self.voters())
    }

    /// Confirm that this node still leads, for a linearizable read that
    /// arrived at `since_mono_ms` (Raft's ReadIndex, §6.4): ask every
    /// follower for an immediate heartbeat answer and wait until a majority
    /// of voters acknowledged strictly after that millisecond. A deposed leader (paused, partitioned,
    /// or replaced by an operator's promote) cannot get that majority: the
    /// others follow a newer epoch and ack only their leader. `false` on
    /// timeout or when stale.
    pub async fn confirm_leadership(&self, since_mono_ms: u64, timeout: Duration) -> bool {
        let after = since_mono_ms + 1;
        let mut rx = self.acks.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        self.probe.send_modify(|v| *v += 1);
        loop {
            if self.stale.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            if self.heard_from_majority_since(after) {
                return true;
            }
            rx.borrow_and_update();
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return self.heard_from_majority_since(after) && !self.is_stale();
            }
        }
    }

    /// Whether a follower showed us a higher epoch.
    pub fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The epoch this leader leads in.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// End every session (stepping down or shutting down).
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ReplicaInfo>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Followers, in id order, with lag computed now: in records against
    /// our last LSN, in time as the age of the oldest record each has not
    /// applied, and `disconnected` for one silent past the ack timeout.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        let last = self.engine.positions().flush_lsn;
        let sync = match self.default_wc {
            WriteConcern::One => "async",
            WriteConcern::All => "sync",
            _ => "quorum",
        };
        let now = self.clock.mono_ms();
        let mut out: Vec<ReplicaInfo> = self.lock().values().cloned().collect();
        for r in &mut out {
            r.last_ack_age_ms = r.last_ack_mono_ms.map(|t| now.saturating_sub(t));
            r.lag_records = last.0.saturating_sub(r.applied_lsn.0);
            r.lag_ms = self.lag_after_ms(r.applied_lsn);
            r.sync = sync;
            if self.silent_too_long(r, now) {
                r.state = ReplicaState::Disconnected;
            }
        }
        out
    }

    /// How long a follower may stay silent: the configured bound, but never
    /// less than ten heartbeats (each heartbeat is answered).
    fn ack_timeout(&self) -> Duration {
        self.opts
            .ack_timeout
            .max(self.opts.heartbeat_interval.saturating_mul(10))
    }

    /// A follower we have not heard from within the ack timeout. During a
    /// snapshot it cannot answer; the send timeout covers it then.
    fn silent_too_long(&self, r: &ReplicaInfo, now_mono_ms: u64) -> bool {
        !matches!(r.state, ReplicaState::Snapshot | ReplicaState::Disconnected)
            && now_mono_ms.saturating_sub(r.last_seen_mono_ms)
                > self.ack_timeout().as_millis() as u64
    }

    /// This leader's URL and its followers' URLs.
    pub fn peers(&self) -> Vec<String> {
        let mut v = vec![self.opts.advertise_url.clone()];
        v.extend(self.lock().values().map(|r| r.addr.clone()));
        v.retain(|u| !u.is_empty());
        v
    }

    /// Record how many members the cluster has, as known from outside.
    pub fn set_known_members(&self, n: usize) {
        self.known_members
            .fetch_max(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Replace the known member count (an operator forgot a member).
    pub fn reset_known_members(&self, n: usize) {
        self.known_members
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Voting members: configured, or the most of (leader + followers seen)
    /// and the members known from the coordinator or the previous leader.
    pub fn voters(&self) -> usize {
        self.opts.cluster_size.unwrap_or_else(|| {
            let seen = 1 + self.lock().len();
            seen.max(self.known_members.load(std::sync::atomic::Ordering::SeqCst))
        })
    }

    /// Nodes (leader included) that hold `lsn` durably.
    pub fn acks_for(&self, lsn: Lsn) -> usize {
        let leader = usize::from(self.engine.positions().flush_lsn >= lsn);
        leader + self.lock().values().filter(|r| r.flush_lsn >= lsn).count()
    }

    /// Highest LSN durable on a majority of voters.
    pub fn commit_lsn(&self) -> Lsn {
        let mut flushes: Vec<Lsn> = self.lock().values().map(|r| r.flush_lsn).collect();
        flushes.push(self.engine.positions().flush_lsn);
        flushes.sort_unstable_by(|a, b| b.cmp(a));
        let need = WriteConcern::Majority.required(self.voters());
        flushes.get(need - 1).copied().unwrap_or(Lsn::ZERO)
    }

    /// Wait until `lsn` is on enough nodes for `wc`, or `timeout`. Returns
    /// `(acks, met)`.
    ///
    /// The concern is met only while this leader still holds its lease
    /// (not stale, write deadline not passed): acknowledgements that arrive
    /// after it was fenced may arrive after a successor was elected without
    /// the record, which then rewinds it. Found by the simulation
    /// (`replidb simulate --seed 50 --faults failover`): a leader isolated
    /// right after a `w=majority` write came back after its lease expired,
    /// followers that had not yet heard of the new leader reconnected to it
    /// and took the record, and the write was acknowledged 10 ms after the
    /// new leader had been elected without it.
    pub async fn wait_for(&self, lsn: Lsn, wc: WriteConcern, timeout: Duration) -> (usize, bool) {
        let mut rx = self.acks.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let acks = self.acks_for(lsn);
            if acks >= wc.required(self.voters()) && self.holds_lease() {
                return (acks, true);
            }
            rx.borrow_and_update();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    let acks = self.acks_for(lsn);
                    return (
                        acks,
                        acks >= wc.required(self.voters()) && self.holds_lease(),
                    );
                }
            }
        }
    }

    /// Not stale, and the write deadline has not passed (always, without a
    /// lease).
    fn holds_lease(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        !self.stale.load(SeqCst) && self.clock.mono_ms() < self.write_deadline_ms.load(SeqCst)
    }

    /// Wait until `commit_lsn >= lsn` or `timeout`; whether it was reached.
    pub async fn wait_commit(&self, lsn: Lsn, timeout: Duration) -> bool {
        let mut rx = self.acks.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.commit_lsn() >= lsn {
                return true;
            }
            rx.borrow_and_update();
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return self.commit_lsn() >= lsn;
            }
        }
    }

    /// The lowest LSN a connected or known follower still needs (so the
    /// WAL keeps it), or `None` when there are no followers.
    pub fn retain_from(&self) -> Option<Lsn> {
        self.lock().values().map(|r| r.flush_lsn.next()).min()
    }

    /// Forget the follower `member` (its id or URL; it will need a snapshot
    /// when it returns if the WAL moves on without it) only if its stream is
    /// gone (`disconnected`, as [`Leader::replicas`] reports it), checked
    /// and removed under one lock. `None`: no such follower; `Err`: it is
    /// still connected, as it is now.
    pub fn forget_if_disconnected(
        &self,
        member: &str,
    ) -> Option<std::result::Result<ReplicaInfo, ReplicaInfo>> {
        let now = self.clock.mono_ms();
        let mut map = self.lock();
        let (id, r) = map
            .iter()
            .find(|(_, r)| r.id == member || r.addr == member)?;
        let mut info = r.clone();
        if self.silent_too_long(r, now) {
            info.state = ReplicaState::Disconnected;
        }
        if info.state != ReplicaState::Disconnected {
            return Some(Err(info));
        }
        let id = id.clone();
        map.remove(&id);
        Some(Ok(info))
    }

    fn update(&self, id: &str, session: u64, f: impl FnOnce(&mut ReplicaInfo)) {
        if let Some(r) = self.lock().get_mut(id) {
            if r.session == session {
                f(r);
            }
        }
    }

    /// Serve one follower's stream until it ends, we stop leading, or the
    /// returned future is dropped (the follower is then marked
    /// disconnected all the same).
    pub async fn serve(self: Arc<Self>, io: BoxIo) {
        let cancel = self.cancel.clone();
        tokio::select! {
            r = self.clone().session(io) => {
                if let Err(e) = r {
                    tracing::info!(error = %e, "replication session ended");
                }
            }
            _ = cancel.cancelled() => {}
        }
    }

    async fn session(self: Arc<Self>, io: BoxIo) -> Result<()> {
        let mut framed = Framed::new(io, FrameCodec::default());
        let hello = tokio::time::timeout(self.opts.hello_timeout, framed.next())
            .await
            .map_err(|_| ReplicationError::Protocol("no hello in time".into()))?;
        let Some(Ok(Frame::Hello {
            node_id,
            addr,
            epoch,
            flush_lsn,
            applied_lsn,
            history,
            topology,
            compression: offer,
            ..
        })) = hello
        else {
            return Err(ReplicationError::Protocol("expected hello".into()));
        };
        if topology != self.opts.topology {
            let reason = format!(
                "node {node_id} runs with topology and conflict policies {topology:?}, this node ({}) with {:?}; every node must be started with the same --topology and --conflict-policy",
                self.node_id, self.opts.topology
            );
            tracing::warn!(peer = %node_id, %reason, "refused a peer");
            let _ = framed
                .send(Frame::Refused {
                    reason: reason.clone(),
                    epoch: self.epoch,
                })
                .await;
            return Err(ReplicationError::Refused(reason));
        }
        let meta = self.engine.meta();
        if epoch > self.epoch || meta.epoch > self.epoch {
            // Invariant 3: a node that has seen a newer epoch does not take
            // orders from us; we are stale.
            let reason = format!(
                "leader {} is at epoch {}, follower {} has seen epoch {}",
                self.node_id, self.epoch, node_id, epoch
            );
            self.mark_stale();
            framed
                .send(Frame::Refused {
                    reason: reason.clone(),
                    epoch: self.epoch,
                })
                .await?;
            return Err(ReplicationError::Fenced(reason));
        }
        let pos = self.engine.positions();
        let decision = decide_start(
            &LogPosition {
                last_lsn: flush_lsn,
                history: &history,
            },
            &LogPosition {
                last_lsn: pos.flush_lsn,
                history: &meta.history,
            },
            pos.first_lsn,
        );
        let (start, start_lsn) = match decision {
            StartDecision::Stream(l) => ("stream", Some(l.0)),
            StartDecision::Snapshot => ("snapshot", None),
            StartDecision::Diverged(l) => ("diverged", Some(l.0)),
        };
        tracing::info!(
            follower = %node_id,
            flush_lsn = flush_lsn.0,
            start,
            start_lsn,
            "follower connected"
        );
        if let StartDecision::Diverged(common_lsn) = decision {
            framed
                .send(Frame::Diverged {
                    common_lsn,
                    epoch: self.epoch,
                })
                .await?;
            return Ok(());
        }
        let session = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let codec = compress::choose(self.opts.compression, &offer);
        tracing::debug!(follower = %node_id, %codec, prefers = %offer.prefer, "replication compression chosen");
        framed.codec_mut().set_send(codec, &self.node_id);
        let now = self.clock.mono_ms();
        self.lock().insert(
            node_id.clone(),
            ReplicaInfo {
                id: node_id.clone(),
                addr,
                state: ReplicaState::CatchingUp,
                sent_lsn: flush_lsn,
                flush_lsn,
                applied_lsn,
                lag_records: 0,
                lag_ms: 0,
                sync: "async",
                last_seen_mono_ms: now,
                session,
                last_ack_mono_ms: None,
                last_ack_age_ms: None,
                compression: codec,
            },
        );
        self.acks.send_modify(|v| *v += 1);
        // Marked disconnected however the session ends: returned, or
        // dropped (the leader stepping down, or the server closing a
        // stream whose token was revoked). A replica left "connected" would
        // be refused by `forget_if_disconnected` and would pin the WAL.
        let _disconnected = MarkDisconnected {
            leader: self.clone(),
            node_id: node_id.clone(),
            session,
        };
        self.clone()
            .stream(framed, &node_id, session, decision, meta.history)
            .await
    }

    async fn stream(
        self: Arc<Self>,
        mut framed: Framed<BoxIo, FrameCodec>,
        node_id: &str,
        session: u64,
        decision: StartDecision,
        history: replidb_core::EpochHistory,
    ) -> Result<()> {
        let send_timeout = self.ack_timeout();
        // After a snapshot the real start is only known once it is taken.
        let start = match decision {
            StartDecision::Stream(l) => l,
            _ => Lsn::ZERO,
        };
        let compression = framed.codec().send_codec();
        crate::bounded::send_within_follower(
            &mut framed,
            Frame::Welcome {
                leader_id: self.node_id.clone(),
                epoch: self.epoch,
                history,
                start_lsn: start,
                compression,
            },
            send_timeout,
        )
        .await?;
        let start = if decision == StartDecision::Snapshot {
            self.update(node_id, session, |r| r.state = ReplicaState::Snapshot);
            let lsn = self.send_snapshot(&mut framed, node_id, session).await?;
            let now = self.clock.mono_ms();
            // The follower could not answer while it installed: its silence
            // is counted from the end of the snapshot.
            self.update(node_id, session, |r| {
                r.state = ReplicaState::CatchingUp;
                r.last_seen_mono_ms = now;
            });
            lsn.next()
        } else {
            start
        };
        let (mut sink, acks_in) = framed.split();
        // Acknowledgements arrive on the same stream; read them on a task of
        // their own so a slow send never delays commit tracking.
        let ack_task = tokio::spawn(
            self.clone()
                .read_acks(acks_in, node_id.to_string(), session),
        );
        // The reader must not outlive the session: when the session ends
        // (stepping down, shutdown) it would keep the leader, and through
        // it the engine, alive until the follower hangs up.
        let mut ack_task = AbortOnDrop(ack_task);
        let mut cursor = match self.engine.wal_reader().cursor(start) {
            Ok(c) => c,
            Err(WalError::Compacted { .. }) => {
                return Err(ReplicationError::Protocol(
                    "records removed before streaming began; follower must resync".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let batch_records_max = self
            .opts
            .batch_max_records
            .clamp(1, crate::frame::BATCH_RECORDS_MAX);
        let batch_bytes_max = self.opts.batch_max_bytes.min(BATCH_BYTES_MAX);
        let mut positions = self.engine.subscribe();
        let mut heartbeat = tokio::time::interval(self.opts.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = self.probe.subscribe();
        loop {
            positions.borrow_and_update();
            self.note_durable();
            if self.is_silent(node_id, session) {
                return Err(ReplicationError::Protocol(format!(
                    "follower {node_id} silent for more than {:?}",
                    self.ack_timeout()
                )));
            }
            // A follower that keeps up is served from the WAL's in-memory
            // tail; reading segment files blocks, so that is done off the
            // async runtime.
            let batch = match cursor.next_batch_in_memory(batch_records_max, batch_bytes_max)? {
                Some(batch) => batch,
                None => {
                    let (back, batch) =
                        crate::run_blocking(self.engine.options().inline_io, move || {
                            let batch = cursor.next_batch(batch_records_max, batch_bytes_max);
                            (cursor, batch)
                        })
                        .await?;
                    cursor = back;
                    batch?
                }
            };
            if let (Some(first), Some(last)) =
                (batch.first().map(|r| r.lsn), batch.last().map(|r| r.lsn))
            {
                // The WAL's flush point is published to positions a moment
                // after readers can see it: never report a head behind
                // what we send.
                let head = self.engine.positions().flush_lsn.max(last);
                let state = if head.0 - last.0 <= batch_records_max as u64 {
                    ReplicaState::Streaming
                } else {
                    ReplicaState::CatchingUp
                };
                self.update(node_id, session, |r| {
                    r.sent_lsn = last;
                    r.state = state;
                });
                metrics::histogram!("replidb_replication_batch_size", "node_id" => self.node_id.clone())
                    .record(batch.len() as f64);
                let first_age_ms = self.lag_after_ms(first.prev());
                let behind_age_ms = if head > last {
                    self.lag_after_ms(last)
                } else {
                    0
                };
                let frame = Frame::Records {
                    records: batch,
                    last_lsn: head,
                    commit_lsn: self.commit_lsn(),
                    first_age_ms,
                    behind_age_ms,
                    sent_mono_ms: self.clock.mono_ms(),
                };
                crate::bounded::send_within_follower(&mut sink, frame, send_timeout).await?;
                continue;
            }
            self.update(node_id, session, |r| r.state = ReplicaState::Streaming);
            tokio::select! {
                _ = positions.changed() => {}
                _ = probe.changed() => {
                    heartbeat.reset_immediately();
                }
                _ = heartbeat.tick() => {
                    let applied = self
                        .lock()
                        .get(node_id)
                        .map_or(Lsn::ZERO, |r| r.applied_lsn);
                    let frame = Frame::Heartbeat {
                        last_lsn: self.engine.positions().flush_lsn,
                        commit_lsn: self.commit_lsn(),
                        lacking_age_ms: self.lag_after_ms(applied),
                        epoch: self.epoch,
                        peers: self.peers(),
                        sent_mono_ms: self.clock.mono_ms(),
                    };
                    crate::bounded::send_within_follower(&mut sink, frame, send_timeout).await?;
                }
                ended = &mut ack_task.0 => {
                    return match ended {
                        Ok(Err(e)) => Err(e),
                        _ => Err(ReplicationError::Protocol("follower closed the stream".into())),
                    };
                }
            }
        }
    }

    /// Whether this session's follower has been silent past the ack
    /// timeout.
    fn is_silent(&self, node_id: &str, session: u64) -> bool {
        let now = self.clock.mono_ms();
        self.lock()
            .get(node_id)
            .is_some_and(|r| r.session == session && self.silent_too_long(r, now))
    }

    /// Read the follower's acknowledgements until the stream ends or the
    /// follower breaks the protocol.
    ///
    /// Invariant: a follower never acknowledges past what it was sent. An
    /// ack beyond `sent_lsn` is not trusted (it would count toward write
    /// concerns and `commit_lsn` for records the follower cannot have):
    /// positions are not moved, and the session ends with a protocol error.
    async fn read_acks(
        self: Arc<Self>,
        mut acks_in: futures::stream::SplitStream<Framed<BoxIo, FrameCodec>>,
        id: String,
        session: u64,
    ) -> Result<()> {
        while let Some(frame) = acks_in.next().await {
            match frame {
                Ok(Frame::Ack {
                    flush_lsn,
                    applied_lsn,
                    echo_mono_ms,
                    ..
                }) => {
                    let now = self.clock.mono_ms();
                    // A follower cannot have seen a frame from our future;
                    // clamp rather than trust it.
                    let echo = (echo_mono_ms != 0).then_some(echo_mono_ms.min(now));
                    let mut bad = None;
                    self.update(&id, session, |r| {
                        r.last_seen_mono_ms = now;
                        let applied_max = r.sent_lsn.max(r.applied_lsn);
                        if flush_lsn > r.sent_lsn || applied_lsn > applied_max {
                            bad = Some(r.sent_lsn);
                            return;
                        }
                        r.flush_lsn = r.flush_lsn.max(flush_lsn);
                        r.applied_lsn = r.applied_lsn.max(applied_lsn);
                        // Only a follower's own ack proves it still
                        // follows us (check-quorum, ReadIndex), and only as
                        // of the newest frame of ours it had seen.
                        if let Some(e) = echo {
                            r.last_ack_mono_ms = r.last_ack_mono_ms.max(Some(e));
                        }
                    });
                    if let Some(sent) = bad {
                        tracing::warn!(follower = %id, flush_lsn = flush_lsn.0, applied_lsn = applied_lsn.0, sent = sent.0, "follower acknowledged records it was not sent; closing its stream");
                        return Err(ReplicationError::Protocol(format!(
                            "follower {id} acknowledged flush {flush_lsn} / applied {applied_lsn} but was sent only up to {sent}"
                        )));
                    }
                    self.acks.send_modify(|v| *v += 1);
                }
                Ok(Frame::Heartbeat { .. }) => {
                    let now = self.clock.mono_ms();
                    self.update(&id, session, |r| r.last_seen_mono_ms = now);
                }
                Ok(other) => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected frame from follower: {}",
                        other.kind()
                    )));
                }
                Err(e) => {
                    tracing::info!(error = %e, "follower stream read failed");
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Send a consistent table snapshot; returns its LSN (streaming resumes
    /// after it). Chunks are bounded in entries and in bytes, and read off
    /// the async runtime, one at a time: memory stays at one chunk whatever
    /// the table's size.
    async fn send_snapshot(
        &self,
        framed: &mut Framed<BoxIo, FrameCodec>,
        node_id: &str,
        session: u64,
    ) -> Result<Lsn> {
        let inline = self.engine.options().inline_io;
        let table = self.engine.table().clone();
        let snap = crate::run_blocking(inline, move || table.snapshot()).await??;
        let snap: Arc<dyn replidb_storage::TableSnapshot> = Arc::from(snap);
        let lsn = snap.lsn();
        let send_timeout = self.ack_timeout();
        let entries_max = self.opts.snapshot_chunk_entries.max(1);
        let bytes_max = self
            .opts
            .snapshot_chunk_bytes_max
            .clamp(1, SNAPSHOT_CHUNK_BYTES_MAX);
        tracing::info!(lsn = lsn.0, "sending snapshot");
        crate::bounded::send_within_follower(framed, Frame::SnapshotBegin { lsn }, send_timeout)
            .await?;
        let mut after: Option<String> = None;
        loop {
            let view = snap.clone();
            let from = after.take();
            let entries = crate::run_blocking(inline, move || {
                view.read_chunk_bounded(from.as_deref(), entries_max, bytes_max)
            })
            .await??;
            let Some((last, _)) = entries.last() else {
                break;
            };
            after = Some(last.clone());
            crate::bounded::send_within_follower(
                framed,
                Frame::SnapshotChunk { entries },
                send_timeout,
            )
            .await?;
        }
        // The follower will acknowledge the snapshot's LSN: that much it
        // was sent.
        self.update(node_id, session, |r| r.sent_lsn = r.sent_lsn.max(lsn));
        crate::bounded::send_within_follower(framed, Frame::SnapshotEnd { lsn }, send_timeout)
            .await?;
        Ok(lsn)
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Marks a follower's session disconnected when dropped (see
/// `Leader::session`).
struct MarkDisconnected {
    leader: Arc<Leader>,
    node_id: String,
    session: u64,
}

impl Drop for MarkDisconnected {
    fn drop(&mut self) {
        self.leader.update(&self.node_id, self.session, |r| {
            r.state = ReplicaState::Disconnected
        });
    }
}
