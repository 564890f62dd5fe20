//! Multi-leader: this node's subscription to one peer's own log.
//!
//! Every node streams its own WAL with the single-leader machinery
//! ([`crate::Leader`]); each peer connects to it like a follower would, but
//! instead of appending the records to its own WAL it applies them to its
//! table as the origin's writes ([`Engine::apply_origin`]), durably together
//! with the origin's position, and acknowledges that position. Nothing is
//! re-forwarded: in a full mesh every node hears every origin directly, so
//! no record loops. A peer whose log was pruned past our position sends a
//! snapshot, which is joined (merged) into the table, never installed over
//! it: the table holds every other origin's writes too.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replidb_core::{Clock, DurationRange, Epoch, EpochHistory, Lsn, Record};
use replidb_engine::Engine;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::compress::{Codec, Offer};
use crate::frame::{Frame, FrameCodec};
use crate::transport::{BoxIo, Transport};
use crate::{ReplicationError, Result};

/// Most received batches waiting for their (artificial) delay before they
/// are applied; the stream stops reading when it is full.
pub const PEER_PENDING_BATCHES_MAX: usize = 1024;

/// Most records one apply transaction takes from coalesced batches.
pub const PEER_APPLY_RECORDS_MAX: usize = 4096;
/// Most payload bytes one apply transaction takes from coalesced batches
/// (a single batch may exceed it; it is never split).
pub const PEER_APPLY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How to subscribe to a peer.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    /// This node's id.
    pub node_id: String,
    /// This node's URL, sent to the peer.
    pub advertise_url: String,
    /// This node's topology fingerprint (the peer refuses a different one).
    pub topology: String,
    /// Artificial delay before applying what arrives (`--link-delay`).
    pub delay: DurationRange,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Longest silence (and longest connect or send) before the stream is
    /// given up and reopened.
    pub idle_timeout: Duration,
    /// Seed of the delay's random choices.
    pub seed: u64,
    /// This node's `--replication-compression`, sent as its preference in
    /// `Hello` (the peer compresses with its own setting).
    pub compression: Codec,
}

impl PeerOptions {
    /// Defaults for node `node_id` at `advertise_url`.
    pub fn new(node_id: impl Into<String>, advertise_url: impl Into<String>) -> Self {
        PeerOptions {
            node_id: node_id.into(),
            advertise_url: advertise_url.into(),
            topology: String::new(),
            delay: DurationRange::default(),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3),
            seed: 0,
            compression: Codec::DEFAULT,
        }
    }
}

/// What `/status` shows of one peer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerStatus {
    /// The peer's URL.
    pub url: String,
    /// Its node id (the origin of its records), once it has said.
    pub origin: Option<String>,
    /// Whether the stream is open.
    pub connected: bool,
    /// The last LSN of its log applied here.
    pub applied_lsn: Lsn,
    /// The last LSN of its log it has told us of.
    pub origin_last_lsn: Lsn,
    /// Age of its oldest write not yet applied here, on our monotonic
    /// clock (0 when caught up).
    pub lag_ms: u64,
    /// Records of it applied since start.
    pub changes_applied: u64,
    /// Snapshots of it joined in since start.
    pub snapshots_merged: u64,
    /// Streams that failed.
    pub error_count: u64,
    /// The last failure, until a new stream is up (`error_count` keeps
    /// the count).
    pub last_error: Option<String>,
    /// The codec the peer compresses its stream to us with, as negotiated
    /// at the last handshake (`None` before the first).
    pub compression: Option<Codec>,
}

/// A batch waiting for its delay: `(due, records)`.
type Pending = (Instant, Vec<Record>);

/// This node's subscription to one peer; see the module docs.
pub struct PeerStream {
    engine: Arc<Engine>,
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    opts: PeerOptions,
    status: Mutex<PeerStatus>,
    /// `(last LSN of a received batch, monotonic ms its first record was
    /// written at the origin)`, oldest first, for the lag.
    unapplied: Mutex<VecDeque<(Lsn, u64)>>,
    schedule: crate::delay::ApplySchedule,
    leader_sent_mono_ms: AtomicU64,
    applied_tx: watch::Sender<Lsn>,
}

impl PeerStream {
    /// A subscription to the peer at `url` (not started: see [`Self::run`]).
    pub fn new(
        engine: Arc<Engine>,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
        opts: PeerOptions,
        url: impl Into<String>,
    ) -> Arc<PeerStream> {
        let (applied_tx, _) = watch::channel(Lsn::ZERO);
        let schedule = crate::delay::ApplySchedule::new(opts.delay, opts.seed);
        Arc::new(PeerStream {
            engine,
            transport,
            clock,
            opts,
            status: Mutex::new(PeerStatus {
                url: url.into(),
                ..Default::default()
            }),
            unapplied: Mutex::new(VecDeque::new()),
            schedule,
            leader_sent_mono_ms: AtomicU64::new(0),
            applied_tx,
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, PeerStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The peer's status now.
    pub fn status(&self) -> PeerStatus {
        let mut s = self.st().clone();
        if let Some(o) = &s.origin {
            s.applied_lsn = self.applied(o);
        }
        s.lag_ms = self.lag_ms(s.applied_lsn);
        s
    }

    /// The peer's origin id, once known.
    pub fn origin(&self) -> Option<String> {
        self.st().origin.clone()
    }

    fn applied(&self, origin: &str) -> Lsn {
        self.engine
            .table()
            .origin_positions()
            .get(origin)
            .copied()
            .unwrap_or_default()
    }

    fn lag_ms(&self, applied: Lsn) -> u64 {
        let mut u = self.unapplied.lock().unwrap_or_else(|e| e.into_inner());
        while u.front().is_some_and(|(last, _)| *last <= applied) {
            u.pop_front();
        }
        u.front()
            .map(|(_, written)| self.clock.mono_ms().saturating_sub(*written))
            .unwrap_or(0)
    }

    /// Run until `cancel`: connect, stream, reconnect with backoff.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let (apply_tx, apply_rx) = mpsc::channel::<Pending>(PEER_PENDING_BATCHES_MAX);
        let applier = tokio::spawn(self.clone().applier(apply_rx));
        let mut backoff = Backoff::new(self.opts.backoff_base, self.opts.backoff_max);
        loop {
            let outcome = tokio::select! {
                r = self.session(&apply_tx, &mut backoff) => r,
                _ = cancel.cancelled() => break,
            };
            let wait = {
                let mut s = self.st();
                s.connected = false;
                match &outcome {
                    Ok(()) => Duration::ZERO,
                    Err(e) => {
                        s.error_count += 1;
                        s.last_error = Some(e.to_string());
                        tracing::warn!(peer = %s.url, error = %e, "peer stream failed");
                        backoff.next_delay()
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => break,
            }
        }
        applier.abort();
    }

    async fn applier(self: Arc<Self>, mut rx: mpsc::Receiver<Pending>) {
        let mut held: Option<Pending> = None;
        loop {
            let (due, mut records) = match held.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            tokio::time::sleep_until(due).await;
            // Batches that are due by now go in the same transaction: one
            // fsync for all of them instead of one each.
            let mut bytes: usize = records.iter().map(|r| r.op.size_bytes()).sum();
            while records.len() < PEER_APPLY_RECORDS_MAX && bytes < PEER_APPLY_BYTES_MAX {
                match rx.try_recv() {
                    Ok((d, more)) if d <= Instant::now() => {
                        bytes += more.iter().map(|r| r.op.size_bytes()).sum::<usize>();
                        records.extend(more);
                    }
                    Ok(later) => {
                        held = Some(later);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let Some(origin) = self.origin() else {
                continue;
            };
            // A batch queued before a reconnect may overlap what the new
            // stream resent: keep only what continues our position.
            let applied = self.applied(&origin);
            let records: Vec<Record> = records.into_iter().filter(|r| r.lsn > applied).collect();
            if records.first().is_some_and(|r| r.lsn != applied.next()) {
                continue; // a gap: the next stream resends from our position
            }
            let n = records.len() as u64;
            match self.engine.apply_origin(origin.clone(), records).await {
                Ok(pos) => {
                    self.st().changes_applied += n;
                    metrics::counter!("replidb_replication_changes_applied_total", "node_id" => self.opts.node_id.clone()).increment(n);
                    self.applied_tx.send_replace(pos);
                }
                Err(e) => {
                    tracing::error!(%origin, error = %e, "applying a peer's records failed");
                    let mut s = self.st();
                    s.error_count += 1;
                    s.last_error = Some(e.to_string());
                }
            }
        }
    }

    fn schedule_due(&self) -> Instant {
        self.schedule.next_due()
    }

    async fn session(&self, apply_tx: &mpsc::Sender<Pending>, backoff: &mut Backoff) -> Result<()> {
        let url = self.st().url.clone();
        let known = self.origin();
        let applied = known
            .as_deref()
            .map(|o| self.applied(o))
            .unwrap_or_default();
        // Multi-leader nodes write in epoch 1 only, so any log with records
        // has this history.
        let history = if applied > Lsn::ZERO {
            EpochHistory {
                entries: vec![(Epoch(1), Lsn(1))],
            }
        } else {
            EpochHistory::default()
        };
        self.leader_sent_mono_ms.store(0, Ordering::SeqCst);
        let io = tokio::time::timeout(self.opts.idle_timeout, self.transport.connect(&url))
            .await
            .map_err(|_| {
                ReplicationError::Protocol(format!(
                    "connect to {url} took longer than {:?}",
                    self.opts.idle_timeout
                ))
            })??;
        let mut framed = Framed::new(io, FrameCodec::default());
        self.send(
            &mut framed,
            Frame::Hello {
                node_id: self.opts.node_id.clone(),
                addr: self.opts.advertise_url.clone(),
                epoch: Epoch(0),
                flush_lsn: applied,
                applied_lsn: applied,
                last_epoch: history.last_epoch(),
                history,
                topology: self.opts.topology.clone(),
                compression: Offer::all(self.opts.compression),
            },
        )
        .await?;
        let (origin, codec) = match self.next_frame(&mut framed).await? {
            Frame::Welcome {
                leader_id,
                compression,
                ..
            } => (leader_id, compression),
            Frame::Refused { reason, .. } => return Err(ReplicationError::Refused(reason)),
            Frame::Diverged { common_lsn, .. } => {
                return Err(ReplicationError::Protocol(format!(
                    "peer {url} says our copy of its log diverged after lsn {common_lsn}; multi-leader logs never rewind"
                )))
            }
            other => {
                return Err(ReplicationError::Protocol(format!(
                    "expected welcome, got {}",
                    other.kind()
                )))
            }
        };
        if origin == self.opts.node_id {
            return Err(ReplicationError::Protocol(format!(
                "{url} is this node itself; remove it from --peers"
            )));
        }
        if known.as_deref() != Some(origin.as_str()) {
            // First contact (or the URL now serves another node): learn its
            // id, then reconnect asking from our position for it.
            tracing::info!(peer = %url, %origin, "peer identified");
            self.st().origin = Some(origin);
            return Ok(());
        }
        // From here on, and only the codec we agreed to.
        framed.codec_mut().set_accept(&[codec]);
        {
            let mut s = self.st();
            s.connected = true;
            s.last_error = None;
            s.compression = Some(codec);
        }
        tracing::info!(peer = %url, %origin, from = applied.next().0, "streaming from peer");
        let mut applied_rx = self.applied_tx.subscribe();
        let mut queued_through = applied;
        loop {
            tokio::select! {
                frame = self.next_frame(&mut framed) => {
                    let frame = frame?;
                    backoff.reset();
                    let answer = matches!(frame, Frame::Heartbeat { .. } | Frame::SnapshotEnd { .. });
                    self.handle(frame, &origin, &mut queued_through, apply_tx).await?;
                    if answer {
                        self.send_ack(&mut framed, &origin).await?;
                    }
                }
                changed = applied_rx.changed() => {
                    if changed.is_err() {
                        return Err(ReplicationError::Protocol("applier stopped".into()));
                    }
                    self.send_ack(&mut framed, &origin).await?;
                }
            }
        }
    }

    async fn handle(
        &self,
        frame: Frame,
        origin: &str,
        queued_through: &mut Lsn,
        apply_tx: &mpsc::Sender<Pending>,
    ) -> Result<()> {
        let received = self.clock.mono_ms();
        match frame {
            Frame::Records {
                records,
                last_lsn,
                first_age_ms,
                sent_mono_ms,
                ..
            } => {
                self.leader_sent_mono_ms
                    .fetch_max(sent_mono_ms, Ordering::SeqCst);
                let records: Vec<Record> = records
                    .into_iter()
                    .filter(|r| r.lsn > *queued_through)
                    .collect();
                let Some(last) = records.last().map(|r| r.lsn) else {
                    return Ok(());
                };
                *queued_through = last;
                self.st().origin_last_lsn = last_lsn;
                self.unapplied
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((last, received.saturating_sub(first_age_ms)));
                let due = self.schedule_due();
                apply_tx
                    .send((due, records))
                    .await
                    .map_err(|_| ReplicationError::Protocol("applier stopped".into()))?;
            }
            Frame::Heartbeat {
                last_lsn,
                sent_mono_ms,
                ..
            } => {
                self.leader_sent_mono_ms
                    .fetch_max(sent_mono_ms, Ordering::SeqCst);
                self.st().origin_last_lsn = last_lsn;
            }
            Frame::SnapshotBegin { lsn } => {
                tracing::info!(%origin, lsn = lsn.0, "joining a peer's snapshot");
            }
            Frame::SnapshotChunk { entries } => {
                self.engine
                    .merge_states(origin.to_string(), entries, Lsn::ZERO)
                    .await?;
            }
            Frame::SnapshotEnd { lsn } => {
                self.engine
                    .merge_states(origin.to_string(), Vec::new(), lsn)
                    .await?;
                *queued_through = (*queued_through).max(lsn);
                self.st().snapshots_merged += 1;
                self.applied_tx.send_replace(lsn);
            }
            other => {
                return Err(ReplicationError::Protocol(format!(
                    "unexpected {} from a peer",
                    other.kind()
                )))
            }
        }
        Ok(())
    }

    async fn send_ack(&self, framed: &mut Framed<BoxIo, FrameCodec>, origin: &str) -> Result<()> {
        let applied = self.applied(origin);
        let ack = Frame::Ack {
            flush_lsn: applied,
            applied_lsn: applied,
            lag_ms: self.lag_ms(applied),
            echo_mono_ms: self.leader_sent_mono_ms.load(Ordering::SeqCst),
        };
        self.send(framed, ack).await
    }

    async fn send(&self, framed: &mut Framed<BoxIo, FrameCodec>, frame: Frame) -> Result<()> {
        crate::bounded::send_within(framed, frame, self.opts.idle_timeout, "peer").await
    }

    async fn next_frame(&self, framed: &mut Framed<BoxIo, FrameCodec>) -> Result<Frame> {
        crate::bounded::recv_within(framed, self.opts.idle_timeout, "peer").await
    }
}
