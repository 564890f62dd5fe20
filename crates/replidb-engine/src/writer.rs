//! The writer: the single owner of the WAL and the only applier.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use replidb_causal::{CausalWrite, KeyKind, KeyState, Operand, WriteStamp};
use replidb_core::{Clock, Epoch, EpochHistory, HlcClock, Lsn, Op, Record, Versioned};
use replidb_storage::Table;
use replidb_wal::{Wal, WalCursor};
use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::{Appended, Committed, EngineOptions, Positions, Proposal};
use crate::meta::{self, NodeMeta};
use crate::{EngineError, Result};

type Reply<T> = oneshot::Sender<Result<T>>;

/// Requests to the writer.
pub(crate) enum Command {
    Propose {
        proposal: Proposal,
        reply: Reply<Committed>,
    },
    Append {
        records: Vec<Record>,
        /// The epoch of the leader whose stream brought them: refused once
        /// the node has recorded a newer one (fenced, or promoting), so
        /// nothing of an old leader's is appended, or acknowledged to it,
        /// after that.
        stream_epoch: Epoch,
        /// Apply them before the fsync (see [`Engine::append_and_apply`]).
        ///
        /// [`Engine::append_and_apply`]: crate::Engine::append_and_apply
        apply_early: bool,
        reply: Reply<Appended>,
    },
    Apply {
        up_to: Lsn,
        reply: Reply<Lsn>,
    },
    MergeStates {
        origin: String,
        entries: Vec<(String, Versioned)>,
        lsn: Lsn,
        reply: Reply<()>,
    },
    Truncate {
        after: Lsn,
        reply: Reply<Vec<Record>>,
    },
    Checkpoint {
        retain_from: Lsn,
        reply: Reply<u64>,
    },
    BeginEpoch {
        epoch: Epoch,
        leader: String,
        reply: Reply<()>,
    },
    Adopt {
        epoch: Epoch,
        history: EpochHistory,
        leader: Option<String>,
        reply: Reply<()>,
    },
    RestoreBegin {
        reply: Reply<()>,
    },
    RestoreChunk {
        entries: Vec<(String, Versioned)>,
        reply: Reply<()>,
    },
    RestoreFinish {
        lsn: Lsn,
        reply: Reply<()>,
    },
    RestoreAbort {
        reply: Reply<()>,
    },
    Stop {
        reply: Reply<()>,
    },
}

impl Command {
    /// Commands that only append take part in group commit; every other
    /// command is a barrier that first flushes the group.
    fn is_append(&self) -> bool {
        matches!(self, Command::Propose { .. } | Command::Append { .. })
    }
}

/// State owned by the writer (its thread, or its task in the simulator).
pub(crate) struct WriterCore {
    wal: Wal,
    table: Arc<dyn Table>,
    meta: Arc<RwLock<NodeMeta>>,
    hlc: Arc<HlcClock<Arc<dyn Clock>>>,
    positions: watch::Sender<Positions>,
    opts: EngineOptions,
    /// Kept between rounds so a follower's apply reads sequentially.
    cursor: Option<WalCursor>,
    /// Set after an IO failure: the node must not write again.
    failed: Option<String>,
    stopped: bool,
    syncs: Arc<std::sync::atomic::AtomicU64>,
    /// Shared copy of `failed`, readable by the node for `/health`.
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// `replidb_wal_fsync_duration_seconds` and
    /// `replidb_wal_records_per_fsync` of this node, looked up once:
    /// registering them per round (a label allocated and hashed, the
    /// registry searched) cost ~180 instructions per durable write.
    fsync_seconds: metrics::Histogram,
    records_per_fsync: metrics::Histogram,
}

/// Take the next round's commands: `first`, then everything that queued
/// while the last round ran (group commit: they share this round's fsync),
/// at most `max_group` in all.
fn gather(first: Command, rx: &mut mpsc::Receiver<Command>, max_group: usize) -> Vec<Command> {
    let mut cmds = vec![first];
    while cmds.len() < max_group {
        match rx.try_recv() {
            Ok(c) => cmds.push(c),
            Err(_) => break,
        }
    }
    cmds
}

/// Run one round, catching a panic. `false`: the writer must stop (it
/// panicked, recorded in `failure`, or a `Stop` arrived).
fn round_or_stop(
    core: &mut WriterCore,
    cmds: Vec<Command>,
    failure: &std::sync::Mutex<Option<String>>,
) -> bool {
    let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.round(cmds)));
    if let Err(payload) = round {
        record_panic(failure, &panic_message(payload.as_ref()));
        return false;
    }
    !core.stopped
}

/// Run the writer on a thread of its own until the channel closes or a
/// `Stop` arrives (the server's driver).
///
/// A thread rather than a task that hands each round to tokio's blocking
/// pool: the writer blocks in every round (append, fsync, apply), and a
/// round handed to the pool cost two more thread hand-offs — the pool
/// thread's wake-up and the task's wake-up when it finished — on the path
/// of every durable write. Here a proposal wakes the writer thread
/// directly, and the round runs where it woke.
///
/// A panic in a round stops the writer for good (its state may be half
/// updated). It is recorded as the engine's failure, like a failed fsync,
/// so `/health` turns red and names it instead of the node looking healthy
/// while every write answers "writer is not running".
pub(crate) fn run_thread(mut core: WriterCore, mut rx: mpsc::Receiver<Command>, max_group: usize) {
    let failure = core.failure.clone();
    while let Some(first) = rx.blocking_recv() {
        let cmds = gather(first, &mut rx, max_group);
        if !round_or_stop(&mut core, cmds, &failure) {
            return;
        }
    }
}

/// Run the writer as a task doing its IO inline (the deterministic
/// simulator's driver: one thread, no blocking pool), until the channel
/// closes or a `Stop` arrives. Panics as in [`run_thread`].
pub(crate) async fn run_inline(
    mut core: WriterCore,
    mut rx: mpsc::Receiver<Command>,
    max_group: usize,
) {
    let failure = core.failure.clone();
    while let Some(first) = rx.recv().await {
        let cmds = gather(first, &mut rx, max_group);
        if !round_or_stop(&mut core, cmds, &failure) {
            return;
        }
    }
}

/// Record a writer panic as the engine's failure (keeping an earlier,
/// more specific reason if there was one).
fn record_panic(failure: &std::sync::Mutex<Option<String>>, why: &str) {
    tracing::error!(error = %why, "writer round panicked; engine stopped");
    let mut slot = failure.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(format!("writer panicked: {why}"));
    }
}

/// The text of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// What this round has sequenced but the table does not show yet.
///
/// foldhash, randomly seeded per map, rather than std's SipHash: every
/// plain write hashes its key here, which showed in the write path's
/// profile; the keys are clients', so the seed stays random (a map lives
/// for one round of at most `max_group` commands).
#[derive(Default)]
struct Overlay {
    /// Key → LSN of its newest write in the round (0: deleted).
    lsn: HashMap<String, Lsn, foldhash::fast::RandomState>,
    /// Causal key → its state after the round's writes so far.
    state: HashMap<String, KeyState, foldhash::fast::RandomState>,
}

/// A write accepted into this round, waiting for the round's fsync.
enum Pending {
    Proposed(Reply<Committed>, Committed),
    Appended(Reply<Appended>),
}

impl WriterCore {
    // One argument per piece of state the writer owns or shares; only
    // Engine::open calls it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        wal: Wal,
        table: Arc<dyn Table>,
        meta: Arc<RwLock<NodeMeta>>,
        hlc: Arc<HlcClock<Arc<dyn Clock>>>,
        positions: watch::Sender<Positions>,
        opts: EngineOptions,
        syncs: Arc<std::sync::atomic::AtomicU64>,
        failure: Arc<std::sync::Mutex<Option<String>>>,
    ) -> Self {
        let labels = [("node_id", opts.node_id.clone())];
        let fsync_seconds = metrics::histogram!("replidb_wal_fsync_duration_seconds", &labels);
        let records_per_fsync = metrics::histogram!("replidb_wal_records_per_fsync", &labels);
        WriterCore {
            wal,
            table,
            meta,
            hlc,
            positions,
            opts,
            cursor: None,
            failed: None,
            stopped: false,
            syncs,
            failure,
            fsync_seconds,
            records_per_fsync,
        }
    }

    fn round(&mut self, cmds: Vec<Command>) {
        let mut group = Vec::new();
        for cmd in cmds {
            if let Some(why) = &self.failed {
                fail(cmd, why);
                continue;
            }
            if cmd.is_append() {
                group.push(cmd);
                continue;
            }
            self.commit_group(std::mem::take(&mut group));
            self.barrier(cmd);
        }
        self.commit_group(group);
        self.publish();
    }

    /// Append every command of the group, fsync once, apply, answer.
    fn commit_group(&mut self, group: Vec<Command>) {
        if group.is_empty() {
            return;
        }
        let mut pending = Vec::with_capacity(group.len());
        let mut proposed: Vec<Record> = Vec::new();
        // Records appended for a follower that may apply them before the
        // fsync; `None` once an append in the group does not allow it.
        let mut early: Option<Vec<Record>> = Some(Vec::new());
        // Key versions written earlier in this same group, so a later
        // condition (or causal write) sees them although the table does not
        // yet.
        let mut overlay = Overlay::default();
        for cmd in group {
            match cmd {
                Command::Propose { proposal, reply } => {
                    match self.sequence(proposal, &mut overlay) {
                        Ok((rec, committed)) => match self.wal.append(&rec) {
                            Ok(()) => {
                                proposed.push(rec);
                                pending.push(Pending::Proposed(reply, committed));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e.into()));
                            }
                        },
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Append {
                    records,
                    stream_epoch,
                    apply_early,
                    reply,
                } => match self
                    .check_stream_epoch(stream_epoch)
                    .and_then(|()| self.append_all(&records))
                {
                    Ok(appended) => {
                        match (&mut early, apply_early) {
                            (Some(e), true) => e.extend(records.into_iter().skip(appended)),
                            _ => early = None,
                        }
                        pending.push(Pending::Appended(reply));
                    }
                    Err(e) => {
                        early = None;
                        let _ = reply.send(Err(e));
                    }
                },
                other => fail(other, "internal: barrier in group"),
            }
        }
        if pending.is_empty() {
            return;
        }
        let mut applied_early = 0;
        if let Some(fresh) = early.filter(|e| !e.is_empty()) {
            let before = self.table.applied_lsn();
            match self.apply_early(&fresh) {
                // Readers see the records now, while the fsync runs.
                Ok(true) => {
                    applied_early = self.table.applied_lsn().0 - before.0;
                    self.publish();
                }
                Ok(false) => {}
                Err(e) => self.fatal(format!("apply failed: {e}")),
            }
        }
        let started = Instant::now();
        match self.wal.sync() {
            Ok(stats) => {
                self.syncs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.fsync_seconds.record(started.elapsed().as_secs_f64());
                self.records_per_fsync.record(stats.records as f64);
            }
            Err(e) => {
                self.fatal(format!("wal sync failed: {e}"));
                for p in pending {
                    match p {
                        Pending::Proposed(r, _) => fail_reply(r, &self.failed_reason()),
                        Pending::Appended(r) => fail_reply(r, &self.failed_reason()),
                    }
                }
                return;
            }
        }
        // A leader applies what it proposed right after the fsync.
        if let Some(last) = proposed.last() {
            if let Err(e) = self.apply_through(last.lsn, &proposed) {
                self.fatal(format!("apply failed: {e}"));
            }
        }
        let flush = self.wal.flushed_lsn();
        let why = self.failed.clone();
        // Publish before answering: a caller that checks positions right
        // after its reply (write-concern counting) must see its own write.
        self.publish();
        for p in pending {
            match (p, &why) {
                (Pending::Proposed(r, _), Some(w)) => fail_reply(r, w),
                (Pending::Appended(r), Some(w)) => fail_reply(r, w),
                (Pending::Proposed(r, c), None) => {
                    let _ = r.send(Ok(c));
                }
                (Pending::Appended(r), None) => {
                    // One group holds one follower's appends: the count
                    // goes to the first, so it is not counted twice.
                    let _ = r.send(Ok(Appended {
                        flush_lsn: flush,
                        applied_early: std::mem::take(&mut applied_early),
                    }));
                }
            }
        }
    }

    /// The causal state of `key` as of everything sequenced so far; `Err`
    /// carries a plain value's presence (`true`) when the key is not causal.
    fn causal_state(
        &self,
        key: &str,
        overlay: &Overlay,
    ) -> Result<std::result::Result<Option<KeyState>, bool>> {
        if let Some(s) = overlay.state.get(key) {
            return Ok(Ok(Some(s.clone())));
        }
        if let Some(l) = overlay.lsn.get(key) {
            // Written plainly earlier in this group.
            return Ok(Err(*l != Lsn::ZERO));
        }
        Ok(match self.table.get(key)? {
            None => Ok(None),
            Some(v) if v.causal => Ok(KeyState::decode(&v.value).ok()),
            Some(_) => Err(true),
        })
    }

    /// Sequence a causal write: build its operand against the key's state.
    fn sequence_causal(
        &self,
        cp: crate::engine::CausalProposal,
        epoch: Epoch,
        overlay: &mut Overlay,
    ) -> Result<(Record, Committed)> {
        let existing = match self.causal_state(&cp.key, overlay)? {
            Ok(s) => s,
            // Deleted earlier in this group: absent.
            Err(false) => None,
            // A plain value (written in single-leader mode) under a plain
            // key's causal write: the causal version replaces it.
            Err(true) if cp.write.kind() == KeyKind::Register => None,
            Err(true) => {
                return Err(replidb_causal::PrepareError::WrongType {
                    key: cp.key,
                    existing: KeyKind::Register,
                    requested: cp.write.kind(),
                }
                .into())
            }
        };
        let lsn = self.wal.last_lsn().next();
        if matches!(cp.write, CausalWrite::Clear { .. }) && existing.is_none() {
            // Nothing here to clear. Writing an empty state would create
            // the key as that kind, and merging kinds keeps the higher
            // ranked one on every node: a clear that outran the key's
            // first write would replace it. An empty record keeps the LSNs
            // gapless and changes nothing.
            let rec = Record {
                lsn,
                epoch,
                hlc: self.hlc.now(),
                op: Op::Batch(Vec::new()),
            };
            let committed = Committed {
                lsn,
                epoch,
                existed: Some(false),
                state: None,
                version: None,
            };
            return Ok((rec, committed));
        }
        // The write supersedes what the key holds, so its stamp must be
        // later than all of it, even when this node's clock runs behind
        // and restarted since (recovery does not restore the HLC): else
        // `lww` could order a causally later write first.
        if let Some(seen) = existing.as_ref().and_then(KeyState::latest_stamp) {
            self.hlc.absorb(seen);
        }
        let hlc = self.hlc.now();
        let stamp = WriteStamp {
            origin: self.opts.node_id.clone(),
            lsn: lsn.0,
            hlc,
        };
        let existed = matches!(
            cp.write,
            CausalWrite::Delete { .. } | CausalWrite::Clear { .. }
        )
        .then(|| existing.as_ref().is_some_and(|s| !s.is_absent()));
        let operand =
            replidb_causal::prepare(&cp.key, existing.as_ref(), cp.write, cp.policy, &stamp)?;
        let version = match &operand {
            Operand::Register { version, .. } => Some(version.vector()),
            _ => None,
        };
        let merged = replidb_causal::merge(&cp.key, existing, operand.clone());
        overlay.state.insert(cp.key.clone(), merged.state.clone());
        overlay.lsn.insert(cp.key.clone(), lsn);
        let rec = Record {
            lsn,
            epoch,
            hlc,
            op: Op::Merge {
                key: cp.key,
                operand: operand.encode(),
            },
        };
        Ok((
            rec,
            Committed {
                lsn,
                epoch,
                existed,
                state: Some(merged.state),
                version,
            },
        ))
    }

    /// Assign LSN, epoch and timestamp, after checking the conditions.
    fn sequence(&self, proposal: Proposal, overlay: &mut Overlay) -> Result<(Record, Committed)> {
        let (epoch, history_last) = {
            let m = self.meta.read().unwrap_or_else(|e| e.into_inner());
            (m.epoch, m.history.last_epoch())
        };
        if let Some(proposed) = proposal.epoch {
            if proposed != epoch || proposed != history_last {
                return Err(EngineError::NotLeaderOfEpoch {
                    proposed,
                    current: epoch,
                    history_last,
                });
            }
        }
        if let Some(cp) = proposal.causal {
            return self.sequence_causal(cp, epoch, overlay);
        }
        let current = |key: &str| -> Result<Lsn> {
            if let Some(l) = overlay.lsn.get(key) {
                return Ok(*l);
            }
            Ok(self.table.get(key)?.map(|v| v.lsn).unwrap_or(Lsn::ZERO))
        };
        // A plain write must not clobber a counter, set or map (a delete
        // may remove one: in this log's single order there is no
        // concurrent update for it to lose, unlike the causal topologies,
        // where a typed key is emptied by a causal write instead). Where no
        // causal key exists (every single-leader workload without typed
        // keys) there is nothing to look up: the lookup was 6% of a plain
        // write's instructions.
        let no_typed_keys = overlay.state.is_empty() && !self.table.may_hold_causal_keys();
        let mut typed: Option<(String, KeyKind)> = None;
        let mut check = |key: &str| -> Result<()> {
            if typed.is_some() || no_typed_keys {
                return Ok(());
            }
            if let Ok(Some(s)) = self.causal_state(key, overlay)? {
                if s.kind() != KeyKind::Register {
                    typed = Some((key.to_string(), s.kind()));
                }
            }
            Ok(())
        };
        let mut failed = None;
        proposal.op.for_each_leaf(&mut |leaf| {
            if let (Op::Put { key, .. }, None) = (leaf, &failed) {
                if let Err(e) = check(key) {
                    failed = Some(e);
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some((key, kind)) = typed {
            return Err(EngineError::TypedKey { key, kind });
        }
        for (key, expected) in &proposal.conditions {
            let actual = current(key)?;
            if actual != *expected {
                return Err(EngineError::ConditionFailed {
                    key: key.clone(),
                    expected: *expected,
                    actual,
                    as_of: self.wal.last_lsn(),
                });
            }
        }
        let existed = match &proposal.op {
            Op::Delete { key } => Some(current(key)? != Lsn::ZERO),
            _ => None,
        };
        let lsn = self.wal.last_lsn().next();
        // A round of plain writes has no causal state to forget: skip the
        // second lookup.
        let forget_state = !overlay.state.is_empty();
        proposal.op.for_each_leaf(&mut |leaf| match leaf {
            Op::Put { key, .. } => {
                overlay.lsn.insert(key.clone(), lsn);
                if forget_state {
                    overlay.state.remove(key);
                }
            }
            Op::Delete { key } => {
                overlay.lsn.insert(key.clone(), Lsn::ZERO);
                if forget_state {
                    overlay.state.remove(key);
                }
            }
            Op::Merge { .. } | Op::Batch(_) => {}
        });
        let rec = Record {
            lsn,
            epoch,
            hlc: self.hlc.now(),
            op: proposal.op,
        };
        Ok((
            rec,
            Committed {
                lsn,
                epoch,
                existed,
                state: None,
                version: None,
            },
        ))
    }

    /// A follower appends only from the stream of a leader of its newest
    /// recorded epoch. Once a fence or a promote has recorded a newer one,
    /// a batch still on its way from the old leader's stream is refused,
    /// so this node never acknowledges to the old leader a record the new
    /// epoch's leader was not shown when it compared positions (a
    /// `w=majority` write counted on this node's ack would otherwise be
    /// lost when it rewinds).
    fn check_stream_epoch(&self, stream_epoch: Epoch) -> Result<()> {
        let meta = self.meta.read().unwrap_or_else(|e| e.into_inner());
        if stream_epoch < meta.epoch {
            return Err(EngineError::NotLeaderOfEpoch {
                proposed: stream_epoch,
                current: meta.epoch,
                history_last: meta.history.last_epoch(),
            });
        }
        Ok(())
    }

    /// Append what `records` adds to the WAL (no fsync); returns how many
    /// leading records were skipped as already present.
    fn append_all(&mut self, records: &[Record]) -> Result<usize> {
        let mut skipped = 0;
        for rec in records {
            if rec.lsn <= self.wal.last_lsn() {
                skipped += 1;
                continue; // already have it: a resent batch after reconnect
            }
            // A leader's stamp too far in our future is not absorbed (its
            // clock is wrong, ours must not follow it); the record keeps it.
            if let Err(e) = self.hlc.observe(rec.hlc) {
                tracing::warn!(lsn = rec.lsn.0, error = %e, "replicated record's clock not absorbed");
            }
            self.wal.append(rec)?;
        }
        Ok(skipped)
    }

    /// A follower's apply before its own fsync: `fresh` were just appended
    /// (written, not yet synced) and the leader made them durable before
    /// sending them. They are applied only if the table has everything
    /// before them (the WAL reader serves synced records only, so a backlog
    /// waits for the regular apply) and no snapshot is being staged.
    /// Returns whether anything was applied.
    ///
    /// Safe because the table's commits are not durable (`Durability::None`)
    /// and the only durable commit, a checkpoint, is a barrier that runs
    /// after this round's fsync: a crash before it rolls the table back to
    /// a state the synced WAL covers. The flush LSN, which is what the node
    /// acknowledges, still moves only after the fsync.
    fn apply_early(&mut self, fresh: &[Record]) -> Result<bool> {
        let next = self.table.applied_lsn().next();
        let Some(first) = fresh.first() else {
            return Ok(false);
        };
        if first.lsn > next || self.table.needs_restore() {
            return Ok(false);
        }
        let skip = (next.0 - first.lsn.0) as usize;
        let Some(rest) = fresh.get(skip..).filter(|r| !r.is_empty()) else {
            return Ok(false);
        };
        self.table.apply(rest)?;
        Ok(true)
    }

    /// Apply every flushed record up to `up_to`, using `fresh` (records of
    /// this round, in order) where it has them and the WAL otherwise.
    fn apply_through(&mut self, up_to: Lsn, fresh: &[Record]) -> Result<Lsn> {
        let up_to = up_to.min(self.wal.flushed_lsn());
        while self.table.applied_lsn() < up_to {
            let next = self.table.applied_lsn().next();
            if let Some(first) = fresh.first() {
                if first.lsn <= next {
                    let skip = (next.0 - first.lsn.0) as usize;
                    let take = (up_to.0 - next.0 + 1) as usize;
                    let slice: Vec<Record> = fresh.iter().skip(skip).take(take).cloned().collect();
                    if !slice.is_empty() {
                        self.table.apply(&slice)?;
                        continue;
                    }
                }
            }
            let limit = fresh
                .first()
                .map(|r| r.lsn.prev())
                .unwrap_or(up_to)
                .min(up_to);
            let batch = self.read_from(next, limit)?;
            if batch.is_empty() {
                break;
            }
            self.table.apply(&batch)?;
        }
        Ok(self.table.applied_lsn())
    }

    /// Read records `from..=limit` from the WAL, reusing the cursor.
    fn read_from(&mut self, from: Lsn, limit: Lsn) -> Result<Vec<Record>> {
        let reuse = matches!(&self.cursor, Some(c) if c.next_lsn() == from);
        if !reuse {
            self.cursor = Some(self.wal.reader().cursor(from)?);
        }
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(Vec::new());
        };
        let max = (limit.0.saturating_sub(from.0) + 1).min(4096) as usize;
        let batch = cursor.next_batch(max, 16 << 20)?;
        Ok(batch.into_iter().filter(|r| r.lsn <= limit).collect())
    }

    fn barrier(&mut self, cmd: Command) {
        match cmd {
            Command::Apply { up_to, reply } => {
                if self.table.needs_restore() {
                    // A snapshot is being staged and will replace the
                    // table: the log below it is not worth applying. The
                    // stream sends what follows it only after the switch;
                    // after an abort, the next apply (it reads from the
                    // WAL at applied + 1) catches up on what this skips.
                    let _ = reply.send(Ok(self.table.applied_lsn()));
                    return;
                }
                let r = self.apply_through(up_to, &[]);
                if let Err(e) = &r {
                    self.fatal(format!("apply failed: {e}"));
                }
                self.publish();
                let _ = reply.send(r);
            }
            Command::MergeStates {
                origin,
                entries,
                lsn,
                reply,
            } => {
                let r = self
                    .table
                    .merge_states(&origin, &entries, lsn)
                    .map_err(Into::into);
                self.publish();
                let _ = reply.send(r);
            }
            Command::Truncate { after, reply } => {
                self.cursor = None;
                let r = self.wal.truncate_after(after).map_err(Into::into);
                self.publish();
                let _ = reply.send(r);
            }
            Command::Checkpoint { retain_from, reply } => {
                let r = self.checkpoint(retain_from);
                self.publish();
                let _ = reply.send(r);
            }
            Command::BeginEpoch {
                epoch,
                leader,
                reply,
            } => {
                let first = self.wal.last_lsn().next();
                let table = self.table.applied_lsn();
                if table >= first {
                    // Every earlier round has fsynced and applied, so only
                    // a truncation the table has not caught up with leaves
                    // it past the log's end.
                    let _ = reply.send(Err(EngineError::TableAheadOfLog {
                        table,
                        wal_last: self.wal.last_lsn(),
                        epoch,
                    }));
                    return;
                }
                let r = self.update_meta(|m| {
                    if epoch >= m.epoch {
                        m.leader = leader;
                    }
                    m.epoch = m.epoch.max(epoch);
                    m.history.push(epoch, first);
                });
                let _ = reply.send(r);
            }
            Command::Adopt {
                epoch,
                history,
                leader,
                reply,
            } => {
                let r = self.update_meta(|m| {
                    // A newer epoch's leader is unknown unless named; the
                    // current epoch's is replaced only by a name.
                    if epoch > m.epoch {
                        m.leader = leader.unwrap_or_default();
                    } else if let (true, Some(l)) = (epoch == m.epoch, leader) {
                        m.leader = l;
                    }
                    m.epoch = m.epoch.max(epoch);
                    m.history = history;
                });
                let _ = reply.send(r);
            }
            Command::RestoreBegin { reply } => {
                self.cursor = None;
                let _ = reply.send(self.table.begin_restore().map_err(Into::into));
            }
            Command::RestoreChunk { entries, reply } => {
                let _ = reply.send(self.table.restore_chunk(&entries).map_err(Into::into));
            }
            Command::RestoreFinish { lsn, reply } => {
                self.cursor = None;
                let r = self
                    .table
                    .finish_restore(lsn)
                    .map_err(EngineError::from)
                    .and_then(|()| self.wal.reset(lsn.next()).map_err(Into::into));
                self.publish();
                let _ = reply.send(r);
            }
            Command::RestoreAbort { reply } => {
                let r = self.table.abort_restore().map_err(Into::into);
                self.publish();
                let _ = reply.send(r);
            }
            Command::Stop { reply } => {
                self.stopped = true;
                let _ = reply.send(Ok(()));
            }
            other @ (Command::Propose { .. } | Command::Append { .. }) => {
                fail(other, "internal: append as barrier")
            }
        }
    }

    fn checkpoint(&mut self, retain_from: Lsn) -> Result<u64> {
        let durable = self.table.checkpoint()?;
        // Keep what the table has not made durable and what followers
        // still need; `retain_from == 0` means "keep everything".
        let keep_from = if retain_from == Lsn::ZERO {
            Lsn::ZERO
        } else {
            durable.next().min(retain_from)
        };
        if keep_from == Lsn::ZERO {
            return Ok(0);
        }
        self.cursor = None;
        Ok(self.wal.remove_segments_before(keep_from)?)
    }

    fn update_meta(&mut self, f: impl FnOnce(&mut NodeMeta)) -> Result<()> {
        let mut next = self.meta.read().unwrap_or_else(|e| e.into_inner()).clone();
        f(&mut next);
        meta::store(&self.opts.dir, &next)?;
        *self.meta.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn publish(&self) {
        let p = Positions {
            first_lsn: self.wal.first_lsn(),
            flush_lsn: self.wal.flushed_lsn(),
            applied_lsn: self.table.applied_lsn(),
            durable_lsn: self.table.durable_lsn(),
            wal_bytes: self.wal.size_bytes(),
        };
        self.positions.send_if_modified(|old| {
            let changed = *old != p;
            *old = p;
            changed
        });
    }

    fn fatal(&mut self, why: String) {
        tracing::error!(reason = %why, "engine failed; refusing further writes");
        *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
        self.failed = Some(why);
    }

    fn failed_reason(&self) -> String {
        self.failed.clone().unwrap_or_default()
    }
}

fn fail_reply<T>(reply: Reply<T>, why: &str) {
    let _ = reply.send(Err(EngineError::Stopped(why.to_string())));
}

fn fail(cmd: Command, why: &str) {
    match cmd {
        Command::Propose { reply, .. } => fail_reply(reply, why),
        Command::Append { reply, .. } => fail_reply(reply, why),
        Command::Apply { reply, .. } => fail_reply(reply, why),
        Command::MergeStates { reply, .. } => fail_reply(reply, why),
        Command::Truncate { reply, .. } => fail_reply(reply, why),
        Command::Checkpoint { reply, .. } => fail_reply(reply, why),
        Command::BeginEpoch { reply, .. } => fail_reply(reply, why),
        Command::Adopt { reply, .. } => fail_reply(reply, why),
        Command::RestoreBegin { reply } => fail_reply(reply, why),
        Command::RestoreChunk { reply, .. } => fail_reply(reply, why),
        Command::RestoreFinish { reply, .. } => fail_reply(reply, why),
        Command::RestoreAbort { reply } => fail_reply(reply, why),
        Command::Stop { reply } => fail_reply(reply, why),
    }
}
