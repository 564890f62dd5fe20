//! The follower's side: connect, say where our log ends, then append, fsync,
//! acknowledge and (after an optional artificial delay) apply what the leader
//! pushes. Reconnects with exponential backoff.
//!
//! Lag is measured on this node's monotonic clock from *ages* the leader
//! sends (see [`crate::lag`]): never by subtracting the leader's wall clock
//! from ours, which may be off by any amount.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use replidb_core::{Clock, DurationRange, Epoch, Lsn};
use replidb_engine::Engine;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::compress::{Codec, Offer};
use crate::frame::{Frame, FrameCodec};
use crate::lag::{LeaderAges, LEADER_AGES_ENTRIES_MAX};
use crate::rollback;
use crate::transport::{BoxIo, NotLeader, Transport};
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
    /// This node's `--replication-compression`, sent as its preference in
    /// `Hello` (the leader compresses with its own setting; this node
    /// decodes every codec).
    pub compression: Codec,
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
            compression: Codec::DEFAULT,
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
    /// When we last heard from the leader (ms since the Unix epoch, for
    /// display only; since start when never).
    pub last_sync_ms: u64,
    /// The same moment on our monotonic clock: what silence is measured
    /// from.
    #[serde(skip)]
    pub last_sync_mono_ms: u64,
    /// Stream failures so far.
    pub error_count: u64,
    /// The most recent failure, until a new stream is up (`error_count`
    /// keeps the count): a streaming follower showing an old error read as
    /// one still failing.
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
    /// The codec the leader compresses this stream with, as negotiated at
    /// the last handshake (`None` before the first).
    pub compression: Option<Codec>,
}

/// A follower: owns the stream from its leader and the delayed applier.
pub struct Follower {
    engine: Arc<Engine>,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    opts: FollowerOptions,
    status: Mutex<FollowerStatus>,
    /// How old, on our monotonic clock, the records we have not applied
    /// were when the leader made them durable: gives the apply lag.
    ages: Mutex<LeaderAges>,
    schedule: crate::delay::ApplySchedule,
    /// `sent_mono_ms` of the newest frame received from the current
    /// leader (0 at the start of each session), echoed in every ack.
    leader_sent_mono_ms: std::sync::atomic::AtomicU64,
    /// Ends a reconnect backoff early ([`Follower::reconnect_now`]).
    reconnect: tokio::sync::Notify,
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
            last_sync_mono_ms: clock.mono_ms(),
            ..Default::default()
        };
        Arc::new(Follower {
            engine,
            transport,
            clock,
            schedule: crate::delay::ApplySchedule::new(opts.delay, opts.seed),
            opts,
            status: Mutex::new(status),
            ages: Mutex::new(LeaderAges::new(LEADER_AGES_ENTRIES_MAX)),
            leader_sent_mono_ms: Default::default(),
            reconnect: tokio::sync::Notify::new(),
        })
    }

    /// Drop `url` from the member list the last heartbeat carried: the
    /// leader forgot it, and a refresh of the voting set from that list
    /// (taken before the forget) would learn it back.
    pub fn forget_peer(&self, url: &str) {
        self.st().peers.retain(|p| p != url);
    }

    /// Stop waiting out a reconnect backoff and dial the leader now: it
    /// was just announced (a fence or a follow naming the leader this
    /// follower already has), so the next attempt is likely to succeed,
    /// and a backoff that had grown to its maximum would otherwise leave
    /// the node disconnected, serving stale reads, for that long. Without
    /// a backoff in progress, the next one ends at once.
    pub fn reconnect_now(&self) {
        self.reconnect.notify_one();
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

    /// Estimated apply lag: the age of the oldest record the leader had
    /// made durable that we have not applied (received or not), on our
    /// monotonic clock; while disconnected, at least the time since we last
    /// heard from the leader.
    pub fn lag_ms(&self) -> u64 {
        // Every HTTP answer carries the lag: copy the two fields it needs,
        // not the whole status with its strings.
        let (connected, last_sync_mono_ms) = {
            let s = self.st();
            (s.connected, s.last_sync_mono_ms)
        };
        self.lag_ms_from(connected, last_sync_mono_ms)
    }

    /// How long since we last heard from the leader, on our monotonic
    /// clock.
    pub fn silent_ms(&self) -> u64 {
        let since = self.st().last_sync_mono_ms;
        self.clock.mono_ms().saturating_sub(since)
    }

    fn lag_ms_with(&self, s: &FollowerStatus) -> u64 {
        self.lag_ms_from(s.connected, s.last_sync_mono_ms)
    }

    fn lag_ms_from(&self, connected: bool, last_sync_mono_ms: u64) -> u64 {
        let now = self.clock.mono_ms();
        let applied = self.engine.positions().applied_lsn;
        let mut lag = self
            .ages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lag_ms(applied, now);
        if !connected {
            lag = lag.max(now.saturating_sub(last_sync_mono_ms));
        }
        lag
    }

    /// Note that records up to `until` include one `age_ms` old on the
    /// leader, as of a frame received at `received_mono_ms`.
    fn note_age(&self, until: Lsn, age_ms: u64, received_mono_ms: u64) {
        self.ages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(until, age_ms, received_mono_ms);
    }

    /// We heard from the leader: reset the silence clocks.
    fn note_sync(&self, s: &mut FollowerStatus) {
        s.last_sync_ms = self.clock.now_ms();
        s.last_sync_mono_ms = self.clock.mono_ms();
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
        // Whether the last attempt ended in a re-pointing hint.
        let mut redirected = false;
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
                Ok(()) => {
                    redirected = false;
                    Duration::ZERO
                }
                Err(e) => match self.redirect(&url, &e) {
                    // The first hint is taken at once; hints in a row (two
                    // nodes naming each other mid-hand-over) back off.
                    Some(to) => {
                        tracing::info!(not_leader = %url, leader = %to, "re-pointed: the node dialled follows another leader");
                        self.set_leader(to);
                        let first = !redirected;
                        redirected = true;
                        if first {
                            Duration::ZERO
                        } else {
                            backoff.next_delay()
                        }
                    }
                    None => {
                        redirected = false;
                        tracing::warn!(error = %e, leader = %url, "replication stream failed");
                        backoff.next_delay()
                    }
                },
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.reconnect.notified() => {}
                _ = cancel.cancelled() => break,
            }
        }
        applier.abort();
    }

    /// Where to stream from instead, when the node at `url` answered that
    /// it is not the leader and named one ([`NotLeader`]): followed only
    /// if it learned that leader in an epoch at least ours (a node behind
    /// us would send us back), and it is neither us nor `url`. Following
    /// it is safe whoever answered: the handshake still refuses a leader
    /// of an older epoch and rewinds a diverged log.
    fn redirect(&self, url: &str, e: &ReplicationError) -> Option<String> {
        let ReplicationError::Stream(io) = e else {
            return None;
        };
        let hint = NotLeader::of(io)?;
        if hint.leader == self.opts.advertise_url {
            tracing::warn!(node = %url, epoch = hint.epoch.0, "the node this one follows says this node is the leader; if it should be, POST /admin/promote here");
        }
        (hint.epoch >= self.engine.meta().epoch
            && hint.leader != url
            && hint.leader != self.opts.advertise_url)
            .then(|| hint.leader.clone())
    }

    /// Count `n` records applied, the last of them `to`.
    fn note_applied(&self, n: u64, to: Lsn) {
        if n == 0 {
            return;
        }
        self.st().changes_applied += n;
        metrics::counter!("replidb_replication_changes_applied_total", "node_id" => self.opts.node_id.clone()).increment(n);
        tracing::debug!(node_id = %self.opts.node_id, from = to.0 + 1 - n, to = to.0, lag_ms = self.lag_ms(), "applied batch");
    }

    async fn applier(self: Arc<Self>, mut rx: mpsc::Receiver<(Instant, Lsn)>) {
        while let Some((due, lsn)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            // Nothing left to do when the batch was applied on receipt.
            if self.engine.positions().applied_lsn >= lsn {
                continue;
            }
            let before = self.engine.positions().applied_lsn;
            match self.engine.apply_up_to(lsn).await {
                Ok(after) => {
                    self.note_applied(after.0.saturating_sub(before.0), after);
                }
                Err(e) => {
                    tracing::error!(error = %e, "apply failed; follower stops applying");
                    return;
                }
            }
        }
    }

    fn schedule_due(&self) -> Instant {
        self.schedule.next_due()
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
        // A new leader's clock has nothing to do with the last one's.
        self.leader_sent_mono_ms
            .store(0, std::sync::atomic::Ordering::SeqCst);
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
                topology: String::new(),
                compression: Offer::all(self.opts.compression),
            },
        )
        .await?;
        let first = self.next_frame(&mut framed).await?;
        let history = match first {
            Frame::Welcome {
                leader_id,
                epoch,
                history,
                compression,
                ..
            } => {
                if epoch < meta.epoch {
                    return Err(ReplicationError::Fenced(format!(
                        "leader {leader_id} is at epoch {epoch}, we have seen {}",
                        meta.epoch
                    )));
                }
                self.engine
                    .adopt_history_from(epoch, history.clone(), Some(url.to_string()))
                    .await?;
                // From here on, and only the codec we agreed to.
                framed.codec_mut().set_accept(&[compression]);
                let mut s = self.st();
                s.compression = Some(compression);
                s.leader_id = Some(leader_id);
                s.leader_epoch = epoch;
                s.connected = true;
                s.last_error = None;
                self.note_sync(&mut s);
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
        // Records flushed earlier but not applied yet (their applier went
        // with an earlier role, or the delay had not passed when the last
        // stream ended): the leader took our log as a prefix of its own,
        // so they are its records. Hand them to the applier now rather than
        // wait for a new record to carry them: an idle leader sends none,
        // and this node would stay behind (`replidb simulate --seed 73
        // --faults failover`).
        let p = self.engine.positions();
        if p.applied_lsn < p.flush_lsn {
            apply_tx
                .send((self.schedule_due(), p.flush_lsn))
                .await
                .map_err(|_| ReplicationError::Protocol("applier stopped".into()))?;
        }
        let mut positions = self.engine.subscribe();
        let mut acked = (pos.flush_lsn, pos.applied_lsn);
        let mut sync_started: Option<Instant> = None;
        // What ended the last coalesced batch, to handle before reading on.
        let mut held: Option<Result<Frame>> = None;
        loop {
            let frame = match held.take() {
                Some(next) => Some(next?),
                None => tokio::select! {
                    frame = self.next_frame(&mut framed) => Some(frame?),
                    changed = positions.changed() => {
                        if changed.is_err() {
                            return Err(ReplicationError::Protocol("engine stopped".into()));
                        }
                        None
                    }
                },
            };
            if let Some(frame) = frame {
                // A Records batch is timed from receipt to its ack (append + fsync + ack).
                let started = matches!(frame, Frame::Records { .. }).then(Instant::now);
                // Every heartbeat is answered, changed positions or not:
                // the leader tells a live follower from a stopped one by
                // these answers.
                let answer = matches!(frame, Frame::Heartbeat { .. });
                if matches!(frame, Frame::Records { .. }) {
                    let (frames, next) =
                        crate::coalesce::gather(frame, || ready_frame(&mut framed));
                    held = next;
                    self.handle_records(frames, apply_tx).await?;
                } else {
                    self.handle(frame, &history, apply_tx, &mut framed).await?;
                }
                backoff.reset();
                sync_started = started;
                if answer {
                    let p = self.engine.positions();
                    acked = (p.flush_lsn, p.applied_lsn);
                    self.send_ack(&mut framed).await?;
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

    /// Remember the leader's send time of a frame, to echo in acks.
    fn note_leader_sent(&self, sent_mono_ms: u64) {
        self.leader_sent_mono_ms
            .fetch_max(sent_mono_ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Tell the leader where our log and table are.
    async fn send_ack(&self, framed: &mut Framed<BoxIo, FrameCodec>) -> Result<()> {
        let p = self.engine.positions();
        let ack = Frame::Ack {
            flush_lsn: p.flush_lsn,
            applied_lsn: p.applied_lsn,
            lag_ms: self.lag_ms(),
            echo_mono_ms: self
                .leader_sent_mono_ms
                .load(std::sync::atomic::Ordering::SeqCst),
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
        crate::bounded::send_within(framed, frame, self.opts.idle_timeout, "leader").await
    }

    async fn next_frame(&self, framed: &mut Framed<BoxIo, FrameCodec>) -> Result<Frame> {
        crate::bounded::recv_within(framed, self.opts.idle_timeout, "leader").await
    }

    /// Append consecutive `Records` frames (see [`crate::coalesce`]) in one
    /// writer round, then account for each frame in order, as if they had
    /// come one by one.
    async fn handle_records(
        &self,
        frames: Vec<Frame>,
        apply_tx: &mpsc::Sender<(Instant, Lsn)>,
    ) -> Result<()> {
        let received_mono_ms = self.clock.mono_ms();
        let now = self.clock.now_ms();
        // Per frame: its last record, the leader's head and commit LSN, and
        // the two ages.
        let mut seen = Vec::with_capacity(frames.len());
        let mut all = Vec::new();
        for frame in frames {
            let Frame::Records {
                records,
                last_lsn,
                commit_lsn,
                first_age_ms,
                behind_age_ms,
                sent_mono_ms,
            } = frame
            else {
                return Err(ReplicationError::Protocol(format!(
                    "internal: {} frame among records",
                    frame.kind()
                )));
            };
            self.note_leader_sent(sent_mono_ms);
            let Some(last) = records.last().map(|r| r.lsn) else {
                continue;
            };
            seen.push((last, last_lsn, commit_lsn, first_age_ms, behind_age_ms));
            if all.is_empty() {
                all = records;
            } else {
                all.extend(records);
            }
        }
        let Some(last) = all.last().map(|r| r.lsn) else {
            return Ok(());
        };
        // The epoch of the leader this stream comes from: the engine
        // refuses the batch if the node has since been fenced into a newer
        // one, so nothing more is acknowledged to the old leader.
        let stream_epoch = self.st().leader_epoch;
        if self.opts.delay.is_zero() {
            // Visible before our own fsync; acknowledged after it.
            let out = self.engine.append_and_apply(all, stream_epoch).await?;
            self.note_applied(out.applied_early, last);
        } else {
            self.engine.append_replicated(all, stream_epoch).await?;
        }
        for (frame_last, last_lsn, commit_lsn, first_age_ms, behind_age_ms) in seen {
            // Until the whole batch is applied, its first record's age
            // bounds the lag from below.
            self.note_age(frame_last, first_age_ms, received_mono_ms);
            if last_lsn > frame_last {
                // Records we had not even received: the oldest of them
                // was this old.
                self.note_age(last_lsn, behind_age_ms, received_mono_ms);
            }
            let mut s = self.st();
            s.leader_last_lsn = last_lsn;
            s.commit_lsn = commit_lsn;
            self.note_sync(&mut s);
        }
        metrics::gauge!("replidb_replication_last_sync_timestamp_seconds", "node_id" => self.opts.node_id.clone()).set(now as f64 / 1000.0);
        let due = self.schedule_due();
        apply_tx
            .send((due, last))
            .await
            .map_err(|_| ReplicationError::Protocol("applier stopped".into()))?;
        Ok(())
    }

    async fn handle(
        &self,
        frame: Frame,
        history: &replidb_core::EpochHistory,
        apply_tx: &mpsc::Sender<(Instant, Lsn)>,
        framed: &mut Framed<BoxIo, FrameCodec>,
    ) -> Result<()> {
        // Ages in frames are translated from the moment of receipt.
        let received_mono_ms = self.clock.mono_ms();
        let now = self.clock.now_ms();
        match frame {
            Frame::Records { .. } => self.handle_records(vec![frame], apply_tx).await?,
            Frame::Heartbeat {
                last_lsn,
                commit_lsn,
                lacking_age_ms,
                epoch,
                peers,
                sent_mono_ms,
            } => {
                self.note_leader_sent(sent_mono_ms);
                let mut s = self.st();
                if epoch < s.leader_epoch {
                    return Err(ReplicationError::Fenced(
                        "heartbeat from an older epoch".into(),
                    ));
                }
                s.peers = peers;
                s.leader_last_lsn = last_lsn;
                s.commit_lsn = commit_lsn;
                self.note_sync(&mut s);
                drop(s);
                // The leader's view of our lag covers records we lost track
                // of (a restart, a reconnect); if we have applied everything
                // it knows of, it is out of date and ignored.
                if self.engine.positions().applied_lsn < last_lsn {
                    self.note_age(last_lsn, lacking_age_ms, received_mono_ms);
                }
                metrics::gauge!("replidb_replication_last_sync_timestamp_seconds", "node_id" => self.opts.node_id.clone()).set(now as f64 / 1000.0);
            }
            Frame::SnapshotBegin { lsn } => {
                tracing::info!(lsn = lsn.0, "receiving snapshot");
                self.engine.restore_begin().await?;
                self.ages.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            Frame::SnapshotChunk { entries } => self.engine.restore_chunk(entries).await?,
            Frame::SnapshotEnd { lsn } => {
                self.engine.restore_finish(lsn).await?;
                let epoch = self.st().leader_epoch;
                self.engine.adopt_history(epoch, history.clone()).await?;
                self.st().snapshots_installed += 1;
                tracing::info!(lsn = lsn.0, "snapshot installed");
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
        // rollback entry on the retry but never lose one. The tail is
        // streamed in bounded chunks, off the async runtime: a long
        // divergent tail costs time, not memory.
        let reader = self.engine.wal_reader();
        let dir = self.engine.options().dir.clone();
        let now_ms = self.clock.now_ms();
        let traced = crate::run_blocking(self.engine.options().inline_io, move || {
            save_divergent_tail(&reader, &dir, common_lsn, leader_epoch, now_ms)
        })
        .await??;
        if let Some((file, n)) = traced {
            self.st().rollback_records += n;
            metrics::counter!("replidb_rollback_records_total", "node_id" => self.opts.node_id.clone())
                .increment(n);
            tracing::warn!(common_lsn = common_lsn.0, records = n, file = %file.display(), "rewound divergent records");
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

/// Records per chunk a rewind reads and writes to its rollback file.
const REWIND_CHUNK_RECORDS_MAX: usize = 256;
/// Bytes (of WAL frames) per chunk a rewind reads, beyond which a chunk
/// takes no further record.
const REWIND_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Copy every record after `common_lsn` to a new rollback file, a chunk at
/// a time. Returns the file and how many records it took, or `None` when
/// there was nothing after `common_lsn` (or a previous attempt already cut
/// it). Blocking.
fn save_divergent_tail(
    reader: &replidb_wal::WalReader,
    dir: &std::path::Path,
    common_lsn: Lsn,
    leader_epoch: Epoch,
    now_ms: u64,
) -> Result<Option<(std::path::PathBuf, u64)>> {
    let mut cursor = match reader.cursor(common_lsn.next()) {
        Ok(c) => c,
        // A previous attempt already cut (and recorded) them.
        Err(replidb_wal::WalError::Compacted { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut file: Option<rollback::RollbackFile> = None;
    loop {
        let chunk = cursor.next_batch(REWIND_CHUNK_RECORDS_MAX, REWIND_CHUNK_BYTES_MAX)?;
        if chunk.is_empty() {
            break;
        }
        if file.is_none() {
            file = Some(rollback::RollbackFile::create(dir, leader_epoch, now_ms)?);
        }
        if let Some(f) = file.as_mut() {
            f.append(&chunk)?;
        }
    }
    match file {
        Some(f) => {
            let n = f.records();
            Ok(Some((f.finish()?, n)))
        }
        None => Ok(None),
    }
}

/// The next frame if it can be had without waiting (already decoded or in
/// the receive buffer), `None` otherwise.
fn ready_frame(framed: &mut Framed<BoxIo, FrameCodec>) -> Option<Result<Frame>> {
    use futures::{FutureExt as _, StreamExt as _};
    match framed.next().now_or_never()? {
        None => Some(Err(ReplicationError::Protocol(
            "leader closed the stream".into(),
        ))),
        Some(r) => Some(r.map_err(Into::into)),
    }
}
