//! The leader's side: one streaming session per follower, the registry of
//! followers (the equivalent of `pg_stat_replication`), commit tracking and
//! write-concern waits.

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

use crate::decide::{decide_start, LogPosition, StartDecision};
use crate::frame::{Frame, FrameCodec};
use crate::transport::BoxIo;
use crate::{ReplicationError, Result};

/// Tuning of the leader's streams.
#[derive(Clone, Debug)]
pub struct LeaderOptions {
    /// Heartbeat period on an idle stream.
    pub heartbeat_interval: Duration,
    /// Voting members for `w=majority`; `None` = leader + followers seen.
    pub cluster_size: Option<usize>,
    /// Most records per `Records` frame.
    pub batch_max_records: usize,
    /// Approximate most bytes per `Records` frame.
    pub batch_max_bytes: usize,
    /// Entries per snapshot chunk.
    pub snapshot_chunk_entries: usize,
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
}

impl Default for LeaderOptions {
    fn default() -> Self {
        LeaderOptions {
            heartbeat_interval: Duration::from_millis(100),
            cluster_size: None,
            batch_max_records: 1024,
            batch_max_bytes: 1 << 20,
            snapshot_chunk_entries: 1000,
            hello_timeout: Duration::from_secs(5),
            advertise_url: String::new(),
            check_quorum: Duration::from_millis(1500),
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
    /// Follower's own estimate of its apply lag.
    pub lag_ms: u64,
    /// `sync`, `quorum` or `async`, from the default write concern.
    pub sync: &'static str,
    /// Last time we heard from it (ms since the Unix epoch).
    #[serde(skip)]
    pub last_seen_ms: u64,
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
    /// Bumped on every acknowledgement, to wake write-concern waiters.
    acks: watch::Sender<u64>,
    next_session: std::sync::atomic::AtomicU64,
    /// Cancelled when this node stops leading: every session ends.
    cancel: CancellationToken,
    epoch: Epoch,
    /// Writes are allowed until this time (ms since the Unix epoch):
    /// `u64::MAX` without a lease (static coordinator), else the lease
    /// deadline the coordinator computed; 0 once fenced.
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
        let started_mono_ms = clock.mono_ms();
        Arc::new(Leader {
            node_id: node_id.into(),
            engine,
            clock,
            opts,
            default_wc,
            replicas: Mutex::new(BTreeMap::new()),
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
        })
    }

    /// Allow writes until `deadline_ms` (0 = fence now, `u64::MAX` = no
    /// lease needed).
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
        if self.clock.now_ms() >= self.write_deadline_ms.load(SeqCst) {
            return Err(NotWritable::Fenced);
        }
        if !self.has_quorum_contact() {
            return Err(NotWritable::NoQuorum);
        }
        Ok(())
    }

    /// Check-quorum: a majority of voters (this leader included) sent an
    /// acknowledgement within the last [`LeaderOptions::check_quorum`], or
    /// this leader started less than that long ago.
    pub fn has_quorum_contact(&self) -> bool {
        let now = self.clock.mono_ms();
        let window_ms = self.opts.check_quorum.as_millis() as u64;
        if now.saturating_sub(self.started_mono_ms) < window_ms {
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

    /// Followers, in id order, with lag computed against our last LSN.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        let last = self.engine.positions().flush_lsn;
        let now = self.clock.mono_ms();
        let sync = match self.default_wc {
            WriteConcern::One => "async",
            WriteConcern::All => "sync",
            _ => "quorum",
        };
        self.lock()
            .values()
            .map(|r| {
                let mut r = r.clone();
                r.last_ack_age_ms = r.last_ack_mono_ms.map(|t| now.saturating_sub(t));
                r.lag_records = last.0.saturating_sub(r.applied_lsn.0);
                r.sync = sync;
                r
            })
            .collect()
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
        !self.stale.load(SeqCst) && self.clock.now_ms() < self.write_deadline_ms.load(SeqCst)
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

    /// Forget a follower (it will need a snapshot when it returns if the
    /// WAL moves on without it).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn update(&self, id: &str, session: u64, f: impl FnOnce(&mut ReplicaInfo)) {
        if let Some(r) = self.lock().get_mut(id) {
            if r.session == session {
                f(r);
            }
        }
    }

    /// Serve one follower's stream until it ends or we stop leading.
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
            ..
        })) = hello
        else {
            return Err(ReplicationError::Protocol("expected hello".into()));
        };
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
        tracing::info!(follower = %node_id, %flush_lsn, ?decision, "follower connected");
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
        let now = self.clock.now_ms();
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
                last_seen_ms: now,
                session,
                last_ack_mono_ms: Some(self.clock.mono_ms()),
                last_ack_age_ms: None,
            },
        );
        self.acks.send_modify(|v| *v += 1);
        let result = self
            .clone()
            .stream(framed, &node_id, session, decision, meta.history)
            .await;
        self.update(&node_id, session, |r| r.state = ReplicaState::Disconnected);
        result
    }

    async fn stream(
        self: Arc<Self>,
        mut framed: Framed<BoxIo, FrameCodec>,
        node_id: &str,
        session: u64,
        decision: StartDecision,
        history: replidb_core::EpochHistory,
    ) -> Result<()> {
        // After a snapshot the real start is only known once it is taken.
        let start = match decision {
            StartDecision::Stream(l) => l,
            _ => Lsn::ZERO,
        };
        framed
            .send(Frame::Welcome {
                leader_id: self.node_id.clone(),
                epoch: self.epoch,
                history,
                start_lsn: start,
            })
            .await?;
        let start = if decision == StartDecision::Snapshot {
            self.update(node_id, session, |r| r.state = ReplicaState::Snapshot);
            self.send_snapshot(&mut framed).await?
        } else {
            start
        };
        let (mut sink, mut acks_in) = framed.split();
        // Acknowledgements arrive on the same stream; read them on a task of
        // their own so a slow send never delays commit tracking.
        let me = self.clone();
        let id = node_id.to_string();
        let ack_task = tokio::spawn(async move {
            while let Some(frame) = acks_in.next().await {
                match frame {
                    Ok(Frame::Ack {
                        flush_lsn,
                        applied_lsn,
                        lag_ms,
                    }) => {
                        let now = me.clock.now_ms();
                        let at = me.clock.mono_ms();
                        me.update(&id, session, |r| {
                            r.last_ack_mono_ms = Some(at);
                            r.lag_ms = lag_ms;
                            r.flush_lsn = r.flush_lsn.max(flush_lsn);
                            r.applied_lsn = r.applied_lsn.max(applied_lsn);
                            r.last_seen_ms = now;
                        });
                        me.acks.send_modify(|v| *v += 1);
                    }
                    Ok(Frame::Heartbeat { .. }) => {}
                    Ok(other) => {
                        tracing::warn!(frame = other.kind(), "unexpected frame from follower");
                        return;
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "follower stream read failed");
                        return;
                    }
                }
            }
        });
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
        let mut positions = self.engine.subscribe();
        let mut heartbeat = tokio::time::interval(self.opts.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = self.probe.subscribe();
        loop {
            positions.borrow_and_update();
            let batch =
                cursor.next_batch(self.opts.batch_max_records, self.opts.batch_max_bytes)?;
            if let Some(last) = batch.last().map(|r| r.lsn) {
                // The WAL's flush point is published to positions a moment
                // after readers can see it: never report a head behind
                // what we send.
                let head = self.engine.positions().flush_lsn.max(last);
                let state = if head.0 - last.0 <= self.opts.batch_max_records as u64 {
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
                sink.send(Frame::Records {
                    records: batch,
                    last_lsn: head,
                    commit_lsn: self.commit_lsn(),
                    leader_time_ms: self.clock.now_ms(),
                })
                .await?;
                continue;
            }
            self.update(node_id, session, |r| r.state = ReplicaState::Streaming);
            tokio::select! {
                _ = positions.changed() => {}
                _ = probe.changed() => {
                    heartbeat.reset_immediately();
                }
                _ = heartbeat.tick() => {
                    sink.send(Frame::Heartbeat {
                        last_lsn: self.engine.positions().flush_lsn,
                        commit_lsn: self.commit_lsn(),
                        leader_time_ms: self.clock.now_ms(),
                        epoch: self.epoch,
                        peers: self.peers(),
                    }).await?;
                }
                _ = &mut ack_task.0 => {
                    return Err(ReplicationError::Protocol("follower closed the stream".into()));
                }
            }
        }
    }

    /// Send a consistent table snapshot; returns the LSN streaming resumes at.
    async fn send_snapshot(&self, framed: &mut Framed<BoxIo, FrameCodec>) -> Result<Lsn> {
        let snap = self.engine.table().snapshot()?;
        let lsn = snap.lsn();
        tracing::info!(%lsn, "sending snapshot");
        framed.send(Frame::SnapshotBegin { lsn }).await?;
        let mut after: Option<String> = None;
        loop {
            let entries = snap.read_chunk(after.as_deref(), self.opts.snapshot_chunk_entries)?;
            let Some((last, _)) = entries.last() else {
                break;
            };
            after = Some(last.clone());
            framed.send(Frame::SnapshotChunk { entries }).await?;
        }
        framed.send(Frame::SnapshotEnd { lsn }).await?;
        Ok(lsn.next())
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
