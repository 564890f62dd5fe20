//! The follower's side: connect, say where our log ends, then append, fsync,
//! acknowledge and (after an optional artificial delay) apply what the leader
//! pushes. Reconnects with exponential backoff.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use replidb_core::{Clock, DurationRange, Epoch, Lsn};
use replidb_engine::Engine;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::frame::{Frame, FrameCodec};
use crate::rollback;
use crate::transport::{BoxIo, Transport};
use crate::{ReplicationError, Result};

/// How a follower behaves.
#[derive(Clone, Debug)]
pub struct FollowerOptions {
    /// This node's id.
    pub node_id: String,
    /// URL others reach this node at.
    pub advertise_url: String,
    /// Artificial delay before applying what arrives.
    pub delay: DurationRange,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// A stream silent this long is considered dead.
    pub idle_timeout: Duration,
    /// Seed of the delay sampler (deterministic demos and simulation).
    pub seed: u64,
}

impl FollowerOptions {
    /// Defaults for `node_id`.
    pub fn new(node_id: impl Into<String>, advertise_url: impl Into<String>) -> Self {
        FollowerOptions {
            node_id: node_id.into(),
            advertise_url: advertise_url.into(),
            delay: DurationRange::default(),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(3),
            seed: 0,
        }
    }
}

/// What a follower knows about its stream, for `/status` and `/health`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FollowerStatus {
    /// URL of the leader we follow.
    pub leader_url: String,
    /// Its id, once it said so.
    pub leader_id: Option<String>,
    /// Its epoch.
    pub leader_epoch: Epoch,
    /// Whether a stream is open.
    pub connected: bool,
    /// The leader's last LSN, as of its last frame.
    pub leader_last_lsn: Lsn,
    /// The leader's commit LSN, as of its last frame.
    pub commit_lsn: Lsn,
    /// When we last heard from the leader (ms since the Unix epoch; 0 = never).
    pub last_sync_ms: u64,
    /// Stream failures so far.
    pub error_count: u64,
    /// The most recent failure.
    pub last_error: Option<String>,
    /// Records applied since start.
    pub changes_applied: u64,
    /// Snapshots installed since start.
    pub snapshots_installed: u64,
    /// Records rolled back by rewinds since start.
    pub rollback_records: u64,
    /// Estimated apply lag in ms.
    pub lag_ms: u64,
    /// Cluster nodes as the leader last listed them.
    pub peers: Vec<String>,
    /// Since when (ms) the leader has had records we have not received.
    #[serde(skip)]
    pub behind_since_ms: Option<u64>,
}

/// A follower: owns the stream from its leader and the delayed applier.
pub struct Follower {
    engine: Arc<Engine>,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    opts: FollowerOptions,
    status: Mutex<FollowerStatus>,
    /// `(last lsn of a received batch, leader wall ms of its first record)`
    /// for batches not yet applied: the oldest gives the apply lag.
    unapplied: Mutex<VecDeque<(Lsn, u64)>>,
    rng: Mutex<rand::rngs::StdRng>,
    /// Due time of the last scheduled apply: applies stay in LSN order even
    /// when random delays would reorder them.
    last_due: Mutex<Instant>,
}

impl Follower {
    /// A follower of `leader_url`.
    pub fn new(
        engine: Arc<Engine>,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
        opts: FollowerOptions,
        leader_url: impl Into<String>,
    ) -> Arc<Follower> {
        // Silence is counted from start, not from 1970: a follower that has
        // not connected yet is not "disconnected for 55 years".
        let status = FollowerStatus {
            leader_url: leader_url.into(),
            last_sync_ms: clock.now_ms(),
            ..Default::default()
        };
        Arc::new(Follower {
            engine,
            transport,
            clock,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(opts.seed)),
            opts,
            status: Mutex::new(status),
            unapplied: Mutex::new(VecDeque::new()),
            last_due: Mutex::new(Instant::now()),
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FollowerStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the status with the lag computed now.
    pub fn status(&self) -> FollowerStatus {
        let mut s = self.st().clone();
        s.lag_ms = self.lag_ms_with(&s);
        s
    }

    /// Estimated apply lag: how long the oldest received-but-unapplied
    /// record has waited; while disconnected, at least the time since we
    /// last heard from the leader.
    pub fn lag_ms(&self) -> u64 {
        let s = self.st().clone();
        self.lag_ms_with(&s)
    }

    fn lag_ms_with(&self, s: &FollowerStatus) -> u64 {
        let now = self.clock.now_ms();
        let applied = self.engine.positions().applied_lsn;
        let mut q = self.unapplied.lock().unwrap_or_else(|e| e.into_inner());
        while q.front().is_some_and(|(last, _)| *last <= applied) {
            q.pop_front();
        }
        let mut lag = q
            .front()
            .map(|(_, ts)| now.saturating_sub(*ts))
            .unwrap_or(0);
        if !s.connected {
            lag = lag.max(now.saturating_sub(s.last_sync_ms));
        }
        // Records the leader has and we have not even received count too:
        // behind since the first frame that told us so.
        if let Some(since) = s.behind_since_ms {
            if applied < s.leader_last_lsn {
                lag = lag.max(now.saturating_sub(since));
            }
        }
        lag
    }

    /// Note the leader's last LSN from a frame: start or stop the "behind
    /// since" clock.
    fn note_leader_last(&self, s: &mut FollowerStatus, last_lsn: Lsn, now: u64) {
        s.leader_last_lsn = last_lsn;
        let flush = self.engine.positions().flush_lsn;
        if last_lsn <= flush {
            s.behind_since_ms = None;
        } else if s.behind_since_ms.is_none() {
            s.behind_since_ms = Some(now);
        }
    }

    /// The leader this follower streams from.
    pub fn leader_url(&self) -> String {
        self.st().leader_url.clone()
    }

    /// Follow another leader from the next connection on.
    pub fn set_leader(&self, url: impl Into<String>) {
        self.st().leader_url = url.into();
    }

    /// Read repair: apply every record up to `lsn` now, skipping the
    /// artificial delay, once it is durable here (in LSN order: the applier
    /// is the engine's single writer). Returns the applied LSN.
    pub async fn catch_up(&self, lsn: Lsn, timeout: Duration) -> Result<Lsn> {
        self.engine.wait_flushed(lsn, timeout).await;
        let applied = self.engine.apply_up_to(lsn).await?;
        Ok(applied)
    }

    /// Run until `cancel`: the stream loop and the applier.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let (apply_tx, apply_rx) = mpsc::channel(4096);
        let applier = tokio::spawn(self.clone().applier(apply_rx));
        let mut backoff = Backoff::new(self.opts.backoff_base, self.opts.backoff_max);
        loop {
            let url = self.leader_url();
            if url.is_empty() {
                // No leader known yet (a coordinator will tell us): wait
                // quietly rather than count failures.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    _ = cancel.cancelled() => break,
                }
            }
            let outcome = tokio::select! {
                r = self.session(&url, &apply_tx, &mut backoff) => r,
                _ = cancel.cancelled() => break,
            };
            {
                let mut s = self.st();
                s.connected = false;
                if let Err(e) = &outcome {
                    s.error_count += 1;
                    s.last_error = Some(e.to_string());
                    metrics::counter!("replidb_replication_sync_errors_total", "node_id" => self.opts.node_id.clone()).increment(1);
                }
            }
            let wait = match outcome {
                // A rewind or a clean close: reconnect at once.
                Ok(()) => Duration::ZERO,
                Err(e) => {
                    tracing::warn!(error = %e, leader = %url, "replication stream failed");
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => break,
            }
        }
        applier.abort();
    }

    async fn applier(self: Arc<Self>, mut rx: mpsc::Receiver<(Instant, Lsn)>) {
        while let Some((due, lsn)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let before = self.engine.positions().applied_lsn;
            match self.engine.apply_up_to(lsn).await {
                Ok(after) => {
                    let n = after.0.saturating_sub(before.0);
                    if n > 0 {
                        self.st().changes_applied += n;
                        metrics::counter!("replidb_replication_changes_applied_total", "node_id" => self.opts.node_id.clone()).increment(n);
                        tracing::debug!(node_id = %self.opts.node_id, from = %before.next(), to = %after, lag_ms = self.lag_ms(), "applied batch");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "apply failed; follower stops applying");
                    return;
                }
            }
        }
    }

    fn schedule_due(&self) -> Instant {
        let now = Instant::now();
        let delay = if self.opts.delay.is_zero() {
            Duration::ZERO
        } else {
            let u: f64 = self.rng.lock().unwrap_or_else(|e| e.into_inner()).random();
            self.opts.delay.pick(u)
        };
        let mut last = self.last_due.lock().unwrap_or_else(|e| e.into_inner());
        let due = (now + delay).max(*last);
        *last = due;
        due
    }

    async fn session(
        &self,
        url: &str,
        apply_tx: &mpsc::Sender<(Instant, Lsn)>,
        backoff: &mut Backoff,
    ) -> Result<()> {
        if self.engine.table().needs_restore() {
            // A snapshot install was cut off: drop what was staged. The live
            // table, the WAL and the history are as they were before it, so
            // the leader decides again from our flush LSN.
            self.engine.restore_abort().await?;
            // Applies were skipped while the install was staged; catch up on
            // what is flushed (through the applier, after its delay).
            let p = self.engine.positions();
            if p.applied_lsn < p.flush_lsn {
                let due = self.schedule_due();
                apply_tx
                    .send((due, p.flush_lsn))
                    .await
                    .map_err(|_| ReplicationError::Protocol("applier stopped".into()))?;
            }
        }
        // Every step of the handshake is bounded: a connect to a host that
        // vanished (crashed, cut off) may never be answered, and a follower
        // waiting on it forever never finds the current leader
        // (`replidb simulate --seed 487 --faults all`).
        let io = tokio::time::timeout(self.opts.idle_timeout, self.transport.connect(url))
            .await
            .map_err(|_| {
                ReplicationError::Protocol(format!(
                    "connect to {url} took longer than {:?}",
                    self.opts.idle_timeout
                ))
            })??;
        let mut framed = Framed::new(io, FrameCodec::default());
        let meta = self.engine.meta();
        let pos = self.engine.positions();
        self.send_bounded(
            &mut framed,
            Frame::Hello {
                node_id: self.opts.node_id.clone(),
                addr: self.opts.advertise_url.clone(),
                epoch: meta.epoch,
                flush_lsn: pos.flush_lsn,
                applied_lsn: pos.applied_lsn,
                last_epoch: meta.history.epoch_at(pos.flush_lsn).unwrap_or_default(),
                history: meta.history.clone(),
            },
        )
        .await?;
        let first = self.next_frame(&mut framed).await?;
        let history = match first {
            Frame::Welcome {
                leader_id,
                epoch,
                history,
                ..
            } => {
                if epoch < meta.epoch {
                    return Err(ReplicationError::Fenced(format!(
                        "leader {leader_id} is at epoch {epoch}, we have seen {}",
                        meta.epoch
                    )));
                }
                self.engine.adopt_history(epoch, history.clone()).await?;
                let mut s = self.st();
                s.leader_id = Some(leader_id);
                s.leader_epoch = epoch;
                s.connected = true;
                s.last_sync_ms = self.clock.now_ms();
                history
            }
            Frame::Diverged { common_lsn, epoch } => {
                return self.rewind(common_lsn, epoch).await;
            }
            Frame::Refused { reason, .. } => return Err(ReplicationError::Refused(reason)),
            other => {
                return Err(ReplicationError::Protocol(format!(
                    "expected welcome, got {}",
                    other.kind()
                )))
            }
        };
        tracing::info!(leader = %url, "streaming from leader");
        let mut positions = self.engine.subscribe();
        let mut acked = (pos.flush_lsn, pos.applied_lsn);
        let mut sync_started: Option<Instant> = None;
        loop {
            tokio::select! {
                frame = self.next_frame(&mut framed) => {
                    let frame = frame?;
                    // A Records batch is timed from receipt to its ack (append + fsync + ack).
                    let started = matches!(frame, Frame::Records { .. }).then(Instant::now);
                    self.handle(frame, &history, apply_tx, &mut framed).await?;
                    backoff.reset();
                    sync_started = started;
                }
                changed = positions.changed() => {
                    if changed.is_err() {
                        return Err(ReplicationError::Protocol("engine stopped".into()));
                    }
                }
            }
            let p = self.engine.positions();
            if (p.flush_lsn, p.applied_lsn) != acked {
                acked = (p.flush_lsn, p.applied_lsn);
                self.send_ack(&mut framed).await?;
            }
            if let Some(t) = sync_started.take() {
                metrics::histogram!("replidb_replication_sync_duration_seconds", "node_id" => self.opts.node_id.clone()).record(t.elapsed().as_secs_f64());
            }
        }
    }

    /// Tell the leader where our log and table are.
    async fn send_ack(&self, framed: &mut Framed<BoxIo, FrameCodec>) -> Result<()> {
        let p = self.engine.positions();
        let ack = Frame::Ack {
            flush_lsn: p.flush_lsn,
            applied_lsn: p.applied_lsn,
            lag_ms: self.lag_ms(),
        };
        self.send_bounded(framed, ack).await
    }

    /// Send one frame, giving up after the idle timeout: a leader that
    /// stopped reading (paused, cut off) must not hold this follower in a
    /// send forever, where no idle timeout on receive can fire.
    async fn send_bounded(
        &self,
        framed: &mut Framed<BoxIo, FrameCodec>,
        frame: Frame,
    ) -> Result<()> {
        let kind = frame.kind();
        tokio::time::timeout(self.opts.idle_timeout, framed.send(frame))
            .await
            .map_err(|_| {
                ReplicationError::Protocol(format!(
                    "sending {kind} took longer than {:?}",
                    self.opts.idle_timeout
                ))
            })??;
        Ok(())
    }

    async fn next_frame(&self, framed: &mut Framed<BoxIo, FrameCodec>) -> Result<Frame> {
        match tokio::time::timeout(self.opts.idle_timeout, framed.next()).await {
            Err(_) => Err(ReplicationError::Protocol(format!(
                "no frame from leader in {:?}",
                self.opts.idle_timeout
            ))),
            Ok(None) => Err(ReplicationError::Protocol(
                "leader closed the stream".into(),
            )),
            Ok(Some(Err(e))) => Err(e.into()),
            Ok(Some(Ok(f))) => Ok(f),
        }
    }

    async fn handle(
        &self,
        frame: Frame,
        history: &replidb_core::EpochHistory,
        apply_tx: &mpsc::Sender<(Instant, Lsn)>,
        framed: &mut Framed<BoxIo, FrameCodec>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        match frame {
            Frame::Records {
                records,
                last_lsn,
                commit_lsn,
                ..
            } => {
                let (Some(first), Some(last)) = (records.first(), records.last()) else {
                    return Ok(());
                };
                let (last, ts) = (last.lsn, first.hlc.wall_ms);
                self.engine.append_replicated(records).await?;
                self.unapplied
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((last, ts));
                {
                    let mut s = self.st();
                    self.note_leader_last(&mut s, last_lsn, now);
                    s.commit_lsn = commit_lsn;
                    s.last_sync_ms = now;
                }
                metrics::gauge!("replidb_replication_last_sync_timestamp_seconds", "node_id" => self.opts.node_id.clone()).set(now as f64 / 1000.0);
                let due = self.schedule_due();
                apply_tx
                    .send((due, last))
                    .await
                    .map_err(|_| ReplicationError::Protocol("applier stopped".into()))?;
            }
            Frame::Heartbeat {
                last_lsn,
                commit_lsn,
                epoch,
                peers,
                ..
            } => {
                {
                    let mut s = self.st();
                    if epoch < s.leader_epoch {
                        return Err(ReplicationError::Fenced(
                            "heartbeat from an older epoch".into(),
                        ));
                    }
                    s.peers = peers;
                    self.note_leader_last(&mut s, last_lsn, now);
                    s.commit_lsn = commit_lsn;
                    s.last_sync_ms = now;
                }
                metrics::gauge!("replidb_replication_last_sync_timestamp_seconds", "node_id" => self.opts.node_id.clone()).set(now as f64 / 1000.0);
                // Answer every heartbeat: the leader's check-quorum and its
                // leadership confirmation for strong reads count these.
                self.send_ack(framed).await?;
            }
            Frame::SnapshotBegin { lsn } => {
                tracing::info!(%lsn, "receiving snapshot");
                self.engine.restore_begin().await?;
                self.unapplied
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
            }
            Frame::SnapshotChunk { entries } => self.engine.restore_chunk(entries).await?,
            Frame::SnapshotEnd { lsn } => {
                self.engine.restore_finish(lsn).await?;
                let epoch = self.st().leader_epoch;
                self.engine.adopt_history(epoch, history.clone()).await?;
                self.st().snapshots_installed += 1;
                tracing::info!(%lsn, "snapshot installed");
                self.send_ack(framed).await?;
            }
            other => {
                return Err(ReplicationError::Protocol(format!(
                    "unexpected frame from leader: {}",
                    other.kind()
                )))
            }
        }
        Ok(())
    }

    /// Our log has records the leader's does not: keep a trace of them,
    /// drop them, and resync.
    async fn rewind(&self, common_lsn: Lsn, leader_epoch: Epoch) -> Result<()> {
        // Trace first, cut second: the records go to a durable rollback file
        // before the WAL loses them, so a crash in between can duplicate a
        // rollback entry on the retry but never lose one.
        let removed = match self
            .engine
            .wal_reader()
            .read_range(common_lsn.next(), usize::MAX)
        {
            Ok(records) => records,
            // A previous attempt already cut (and recorded) them.
            Err(replidb_wal::WalError::Compacted { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let n = removed.len() as u64;
        if n > 0 {
            let dir = self.engine.options().dir.clone();
            let file = rollback::write(&dir, leader_epoch, &removed, self.clock.now_ms())?;
            self.st().rollback_records += n;
            metrics::counter!("replidb_rollback_records_total", "node_id" => self.opts.node_id.clone())
                .increment(n);
            tracing::warn!(%common_lsn, records = n, file = %file.display(), "rewound divergent records");
        }
        let cut = self.engine.truncate_after(common_lsn).await;
        let wal_lost_prefix = matches!(
            cut,
            Err(replidb_engine::EngineError::Wal(
                replidb_wal::WalError::Compacted { .. }
            ))
        );
        if !wal_lost_prefix {
            cut?;
        }
        if wal_lost_prefix || self.engine.positions().applied_lsn > common_lsn {
            // The table already shows records that are gone: it cannot undo
            // them, so it is rebuilt from the leader. Restoring nothing at
            // LSN 0 swaps in an empty table and restarts the WAL at 1.
            tracing::warn!("table applied past the divergence point; resyncing from scratch");
            self.engine.restore_begin().await?;
            self.engine.restore_finish(Lsn::ZERO).await?;
            self.engine
                .adopt_history(leader_epoch, Default::default())
                .await?;
        } else {
            let mut meta = self.engine.meta();
            meta.history
                .entries
                .retain(|(_, first)| *first <= common_lsn);
            self.engine
                .adopt_history(leader_epoch, meta.history)
                .await?;
        }
        Ok(())
    }
}
