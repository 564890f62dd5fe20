//! [`Engine`]: the handle the rest of the node uses.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use replidb_core::{Clock, Epoch, EpochHistory, HlcClock, Lsn, Op, Record, Versioned};
use replidb_storage::{Backend, Table};
use replidb_wal::{Wal, WalOptions, WalReader};
use tokio::sync::{mpsc, oneshot, watch};

use crate::meta::{self, NodeMeta};
use crate::writer::{Command, WriterCore};
use crate::{EngineError, Result};

/// How to open an engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Data directory (WAL in `wal/`, table and metadata beside it).
    pub dir: PathBuf,
    /// WAL settings (segment size, fsync policy).
    pub wal: WalOptions,
    /// Table backend.
    pub backend: Backend,
    /// Limit of the redb backend's page cache, in bytes.
    pub table_cache_bytes: usize,
    /// Node id, used as the `node_id` metric label.
    pub node_id: String,
    /// Run the writer as a task doing its IO inline instead of on a thread
    /// of its own, and other blocking IO on the calling task instead of
    /// tokio's blocking pool (deterministic simulation).
    pub inline_io: bool,
    /// Most commands one group commit round takes (bounds latency of the
    /// round and memory of the batch).
    pub max_group: usize,
}

impl EngineOptions {
    /// Defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>, node_id: impl Into<String>) -> Self {
        EngineOptions {
            dir: dir.into(),
            wal: WalOptions::default(),
            backend: Backend::Redb,
            table_cache_bytes: replidb_storage::TABLE_CACHE_BYTES_DEFAULT,
            node_id: node_id.into(),
            inline_io: false,
            max_group: 1024,
        }
    }
}

/// A causal write for the writer to turn into an [`Op::Merge`] against the
/// key's state at the moment it is sequenced.
#[derive(Clone, Debug, PartialEq)]
pub struct CausalProposal {
    /// The key.
    pub key: String,
    /// What the client asked for.
    pub write: replidb_causal::CausalWrite,
    /// The key's conflict policy.
    pub policy: replidb_causal::Policy,
}

/// A leader's write request: one operation and the conditions it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// What to write.
    pub op: Op,
    /// `(key, lsn)` pairs that must hold at the moment of sequencing; lsn 0
    /// means "absent".
    pub conditions: Vec<(String, Lsn)>,
    /// The epoch the proposing leader leads. The writer refuses the
    /// proposal ([`EngineError::NotLeaderOfEpoch`]) unless this node's
    /// current epoch *and* the newest epoch of its history are exactly this
    /// one, checked in the writer task itself so no epoch change can slip
    /// between the check and the append (invariant 3: a node writes only
    /// in an epoch it leads). `None` only for single-node tools and tests.
    pub epoch: Option<Epoch>,
    /// A causal write: `op` is ignored and the writer builds the record's
    /// [`Op::Merge`] from this (origin = this node, dot = the record's LSN).
    pub causal: Option<CausalProposal>,
}

impl Proposal {
    /// A proposal without conditions or epoch check.
    pub fn new(op: Op) -> Self {
        Proposal {
            op,
            conditions: Vec::new(),
            epoch: None,
            causal: None,
        }
    }

    /// A causal write (multi-leader keys, counters, sets, maps), by the
    /// leader of `epoch` if given.
    pub fn causal(
        key: String,
        write: replidb_causal::CausalWrite,
        policy: replidb_causal::Policy,
        epoch: Option<Epoch>,
    ) -> Self {
        Proposal {
            op: Op::Batch(Vec::new()),
            conditions: Vec::new(),
            epoch,
            causal: Some(CausalProposal { key, write, policy }),
        }
    }

    /// A proposal by the leader of `epoch`.
    pub fn in_epoch(op: Op, conditions: Vec<(String, Lsn)>, epoch: Epoch) -> Self {
        Proposal {
            op,
            conditions,
            epoch: Some(epoch),
            causal: None,
        }
    }
}

/// A proposal that is durable (fsynced) and applied on the leader.
#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    /// Its LSN.
    pub lsn: Lsn,
    /// Its epoch.
    pub epoch: Epoch,
    /// For a single delete: whether the key existed.
    pub existed: Option<bool>,
    /// For a causal write: the key's state right after it, on this node.
    pub state: Option<replidb_causal::KeyState>,
    /// For a causal write to a plain key: the new version's vector.
    pub version: Option<replidb_causal::VersionVector>,
}

/// A node's log positions, published after every change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Positions {
    /// Lowest LSN still in the WAL (last+1 if it holds none).
    pub first_lsn: Lsn,
    /// Highest LSN durably written (fsynced).
    pub flush_lsn: Lsn,
    /// Highest LSN applied to the table.
    pub applied_lsn: Lsn,
    /// Table's checkpointed LSN.
    pub durable_lsn: Lsn,
    /// WAL size on disk.
    pub wal_bytes: u64,
}

/// What [`Engine::append_and_apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The flush LSN after the fsync.
    pub flush_lsn: Lsn,
    /// Records it applied before the fsync (0 when the table was behind
    /// them, or a snapshot was being staged: the regular apply then
    /// catches up).
    pub applied_early: u64,
}

/// Receives a snapshot into the table; see [`Engine::restore_begin`].
pub type RestoreSink = Arc<Engine>;

/// One node's storage: WAL + table + writer.
pub struct Engine {
    tx: mpsc::Sender<Command>,
    positions: watch::Receiver<Positions>,
    table: Arc<dyn Table>,
    reader: WalReader,
    meta: Arc<RwLock<NodeMeta>>,
    opts: EngineOptions,
    syncs: Arc<std::sync::atomic::AtomicU64>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// The node's HLC, shared with the writer: peers' records are absorbed
    /// here before they become visible (see [`Engine::apply_origin`]).
    hlc: Arc<HlcClock<Arc<dyn Clock>>>,
    /// Bumped after every peer batch or snapshot merge is applied, so a
    /// read waiting for a `min_version` wakes then instead of polling
    /// (`positions` only moves with this node's own log).
    origins_applied: watch::Sender<u64>,
}

impl Engine {
    /// Open (or create) the engine in `opts.dir`, recover, and start the
    /// writer: on a thread of its own, or with `opts.inline_io` as a task
    /// on the current tokio runtime.
    pub async fn open(opts: EngineOptions, clock: Arc<dyn Clock>) -> Result<Arc<Engine>> {
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::Meta {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let meta = meta::load(&dir)?.unwrap_or_default();
        let table =
            replidb_storage::open_table_with_cache(opts.backend, &dir, opts.table_cache_bytes)?;
        let (mut wal, report) = Wal::open(&dir.join("wal"), opts.wal.clone())?;
        tracing::info!(
            node_id = %opts.node_id,
            wal_first = report.first_lsn.0,
            wal_last = report.last_lsn.0,
            torn_bytes = report.truncated_bytes,
            table_lsn = table.applied_lsn().0,
            "recovering"
        );
        // An interrupted snapshot install needs nothing here: the table
        // dropped what it had staged and is still at its old applied_lsn,
        // a prefix of this WAL, so it recovers like any other.
        recover(&mut wal, table.as_ref())?;
        let reader = wal.reader();
        let meta = Arc::new(RwLock::new(meta));
        let initial = Positions {
            first_lsn: wal.first_lsn(),
            flush_lsn: wal.flushed_lsn(),
            applied_lsn: table.applied_lsn(),
            durable_lsn: table.durable_lsn(),
            wal_bytes: wal.size_bytes(),
        };
        let (pos_tx, pos_rx) = watch::channel(initial);
        let (tx, rx) = mpsc::channel(opts.max_group * 4);
        let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failure = Arc::new(std::sync::Mutex::new(None));
        let hlc = Arc::new(HlcClock::new(clock));
        let core = WriterCore::new(
            wal,
            table.clone(),
            meta.clone(),
            hlc.clone(),
            pos_tx,
            opts.clone(),
            syncs.clone(),
            failure.clone(),
        );
        if opts.inline_io {
            tokio::spawn(crate::writer::run_inline(core, rx, opts.max_group));
        } else {
            let max_group = opts.max_group;
            std::thread::Builder::new()
                .name("replidb-writer".into())
                .spawn(move || crate::writer::run_thread(core, rx, max_group))
                .map_err(|e| {
                    EngineError::Stopped(format!("cannot start the writer thread: {e}"))
                })?;
        }
        Ok(Arc::new(Engine {
            tx,
            positions: pos_rx,
            table,
            reader,
            meta,
            opts,
            syncs,
            failure,
            hlc,
            origins_applied: watch::Sender::new(0),
        }))
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| EngineError::Stopped("writer is not running".into()))?;
        rx.await
            .map_err(|_| EngineError::Stopped("writer dropped the request".into()))?
    }

    /// Leader: sequence, log, fsync and apply one write.
    pub async fn propose(&self, proposal: Proposal) -> Result<Committed> {
        // Queue the proposal only once this worker has run the other tasks
        // that are ready now (tokio runs a yielded task after them): the
        // first proposal of a burst of requests read together no longer
        // wakes the writer alone, to fsync one record while the rest of the
        // burst waits for the next round. Redis gets the same batching by
        // reading every ready client before its one write and fsync. With
        // 50 HTTP clients on one node: 16–17 → 21–22 records per fsync,
        // +3–6% writes per second (see ARCHITECTURE.md).
        tokio::task::yield_now().await;
        self.call(|reply| Command::Propose { proposal, reply })
            .await
    }

    /// Follower: append records that carry the leader's LSNs and fsync them.
    /// Records at or below the current end are skipped (a resent batch).
    /// `stream_epoch` is the epoch of the leader that sent them:
    /// `EngineError::NotLeaderOfEpoch`, nothing appended, once this node
    /// has recorded a newer epoch.
    /// Returns the new flush LSN.
    pub async fn append_replicated(
        &self,
        records: Vec<Record>,
        stream_epoch: Epoch,
    ) -> Result<Lsn> {
        self.call(|reply| Command::Append {
            records,
            stream_epoch,
            apply_early: false,
            reply,
        })
        .await
        .map(|a| a.flush_lsn)
    }

    /// Follower without an artificial delay: like
    /// [`Engine::append_replicated`], but the records are applied to the
    /// table (and visible to reads) as soon as they are written, before the
    /// fsync completes, when the table already holds everything before
    /// them. The returned flush LSN, which acknowledgements carry, still
    /// moves only after the fsync. Only for records the leader has made
    /// durable: a leader streams nothing else.
    ///
    /// Redis replicas apply on receipt and never wait for a disk; this
    /// takes the follower's fsync (~1–4 ms on the README's machine) out of
    /// the time from a write's acknowledgement to its visibility there.
    pub async fn append_and_apply(
        &self,
        records: Vec<Record>,
        stream_epoch: Epoch,
    ) -> Result<Appended> {
        self.call(|reply| Command::Append {
            records,
            stream_epoch,
            apply_early: true,
            reply,
        })
        .await
    }

    /// Apply every flushed record up to `up_to` to the table. Returns the
    /// new applied LSN.
    pub async fn apply_up_to(&self, up_to: Lsn) -> Result<Lsn> {
        self.call(|reply| Command::Apply { up_to, reply }).await
    }

    /// Apply records of another node's log (multi-leader), in that origin's
    /// order, durably with the origin's new position; returns the
    /// position. The records' HLC stamps are absorbed, however far ahead.
    ///
    /// Runs beside the writer, not through it: the table serializes its
    /// write transactions itself, and a peer's batch (fsynced on its own,
    /// since it is in no local WAL) must not hold up this node's group
    /// commits. The HLC stamps are absorbed *before* the records become
    /// visible, so a local write that supersedes one of them is stamped
    /// after it.
    pub async fn apply_origin(&self, origin: String, records: Vec<Record>) -> Result<Lsn> {
        for rec in &records {
            self.hlc.absorb(rec.hlc);
        }
        let table = self.table.clone();
        let work = move || -> Result<Lsn> {
            table.apply_origin(&origin, &records)?;
            Ok(table
                .origin_positions()
                .get(&origin)
                .copied()
                .unwrap_or_default())
        };
        let applied = if self.opts.inline_io {
            work()?
        } else {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| EngineError::Stopped(format!("peer apply task failed: {e}")))??
        };
        self.origins_applied.send_modify(|n| *n += 1);
        Ok(applied)
    }

    /// Join a peer's snapshot entries into the table (multi-leader catch-up
    /// after the peer dropped log we had not applied) and raise `origin`'s
    /// position to `lsn`.
    pub async fn merge_states(
        &self,
        origin: String,
        entries: Vec<(String, Versioned)>,
        lsn: Lsn,
    ) -> Result<()> {
        self.call(|reply| Command::MergeStates {
            origin,
            entries,
            lsn,
            reply,
        })
        .await?;
        self.origins_applied.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Per origin, the last LSN of its log applied here; this node's own
    /// entry is its applied LSN.
    pub fn origin_positions(&self) -> std::collections::BTreeMap<String, Lsn> {
        let mut m = self.table.origin_positions();
        m.insert(self.options().node_id.clone(), self.positions().applied_lsn);
        m
    }

    /// Remove every record after `lsn` from the WAL (rewind) and return them.
    pub async fn truncate_after(&self, lsn: Lsn) -> Result<Vec<Record>> {
        self.call(|reply| Command::Truncate { after: lsn, reply })
            .await
    }

    /// Checkpoint the table, then drop WAL segments below both the
    /// checkpoint and `retain_from` (what followers still need).
    pub async fn checkpoint(&self, retain_from: Lsn) -> Result<u64> {
        self.call(|reply| Command::Checkpoint { retain_from, reply })
            .await
    }

    /// Start a new epoch at the end of the log (promotion) and persist it,
    /// its leader unrecorded ([`Engine::begin_epoch_led_by`] records it).
    pub async fn begin_epoch(&self, epoch: Epoch) -> Result<()> {
        self.begin_epoch_led_by(epoch, String::new()).await
    }

    /// Start a new epoch at the end of the log and persist it with
    /// `leader` (this node's URL) as [`NodeMeta::leader`], in one write.
    pub async fn begin_epoch_led_by(&self, epoch: Epoch, leader: String) -> Result<()> {
        self.call(|reply| Command::BeginEpoch {
            epoch,
            leader,
            reply,
        })
        .await
    }

    /// Adopt a leader's epoch and history (follower), and persist it. A
    /// newer epoch's leader becomes unknown ([`Engine::adopt_history_from`]
    /// names it).
    pub async fn adopt_history(&self, epoch: Epoch, history: EpochHistory) -> Result<()> {
        self.adopt_history_from(epoch, history, None).await
    }

    /// [`Engine::adopt_history`], recording `leader` (a URL), when given,
    /// as the leader of `epoch` ([`NodeMeta::leader`]) in the same durable
    /// write, so no crash leaves the new epoch without its leader.
    pub async fn adopt_history_from(
        &self,
        epoch: Epoch,
        history: EpochHistory,
        leader: Option<String>,
    ) -> Result<()> {
        self.call(|reply| Command::Adopt {
            epoch,
            history,
            leader,
            reply,
        })
        .await
    }

    /// Snapshot install, step 1: start staging a new table beside the live
    /// one (durably marked; a crash or [`Engine::restore_abort`] drops it).
    /// The live table keeps serving reads, unchanged, until
    /// [`Engine::restore_finish`]; applies are skipped meanwhile.
    pub async fn restore_begin(&self) -> Result<()> {
        self.call(|reply| Command::RestoreBegin { reply }).await
    }

    /// Snapshot install, step 2 (repeated): stage entries in key order.
    pub async fn restore_chunk(&self, entries: Vec<(String, Versioned)>) -> Result<()> {
        self.call(|reply| Command::RestoreChunk { entries, reply })
            .await
    }

    /// Snapshot install, step 3: the staged table atomically replaces the
    /// live one, at `lsn`; the WAL restarts at `lsn + 1`.
    pub async fn restore_finish(&self, lsn: Lsn) -> Result<()> {
        self.call(|reply| Command::RestoreFinish { lsn, reply })
            .await
    }

    /// Give up a snapshot install: drop what was staged. The live table and
    /// the WAL are untouched, so applying can go on from where it was. A
    /// no-op when no install is under way.
    pub async fn restore_abort(&self) -> Result<()> {
        self.call(|reply| Command::RestoreAbort { reply }).await
    }

    /// The table (for reads and snapshots).
    pub fn table(&self) -> &Arc<dyn Table> {
        &self.table
    }

    /// A reader of the WAL (for the replication stream).
    pub fn wal_reader(&self) -> WalReader {
        self.reader.clone()
    }

    /// Current positions.
    pub fn positions(&self) -> Positions {
        *self.positions.borrow()
    }

    /// A receiver that changes whenever positions do.
    pub fn subscribe(&self) -> watch::Receiver<Positions> {
        self.positions.clone()
    }

    /// Current epoch and history.
    pub fn meta(&self) -> NodeMeta {
        self.meta.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The highest epoch this node has seen: [`meta`](Self::meta)`().epoch`
    /// without copying the epoch history (every HTTP answer names it).
    pub fn epoch(&self) -> replidb_core::Epoch {
        self.meta.read().unwrap_or_else(|e| e.into_inner()).epoch
    }

    /// Why the writer stopped accepting writes (a failed fsync or apply),
    /// if it did. Such a node must be restarted: the state of the page
    /// cache after a failed fsync is unknown.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many fsync rounds the writer has run (group-commit efficiency:
    /// compare with the number of writes).
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Wait until `applied_lsn >= lsn` or `timeout` passes. Returns whether
    /// it was reached.
    pub async fn wait_applied(&self, lsn: Lsn, timeout: Duration) -> bool {
        let mut rx = self.positions.clone();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| p.applied_lsn >= lsn)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Wait until `reached` holds of [`Engine::origin_positions`] or
    /// `timeout` passes, checking again whenever a peer's records or this
    /// node's own are applied. Returns whether it held.
    pub async fn wait_origins(
        &self,
        timeout: Duration,
        reached: impl Fn(&std::collections::BTreeMap<String, Lsn>) -> bool,
    ) -> bool {
        let mut origins = self.origins_applied.subscribe();
        let mut own = self.positions.clone();
        let wait = async {
            loop {
                // Mark both as seen before reading the positions: a change
                // after this point wakes the select below.
                origins.borrow_and_update();
                own.borrow_and_update();
                if reached(&self.origin_positions()) {
                    return true;
                }
                tokio::select! {
                    _ = origins.changed() => {}
                    changed = own.changed() => {
                        if changed.is_err() {
                            // The writer stopped: this node's own log will
                            // not move again; only peers' batches can.
                            let _ = origins.changed().await;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Wait until `flush_lsn >= lsn` or `timeout` passes.
    pub async fn wait_flushed(&self, lsn: Lsn, timeout: Duration) -> bool {
        let mut rx = self.positions.clone();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| p.flush_lsn >= lsn)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Stop the writer after the commands already queued; a final
    /// checkpoint makes the next start fast.
    pub async fn shutdown(&self) {
        let _ = self
            .call(|reply| Command::Checkpoint {
                retain_from: Lsn::ZERO,
                reply,
            })
            .await;
        let _ = self.call(|reply| Command::Stop { reply }).await;
    }
}

/// Bring the table up to the end of the WAL.
fn recover(wal: &mut Wal, table: &dyn Table) -> Result<()> {
    let applied = table.applied_lsn();
    if wal.last_lsn() < applied {
        // The table is ahead of the log: only possible after a crash
        // between switching in a restored snapshot and restarting the WAL
        // after it (or between a rewind's truncation and its rebuild).
        tracing::warn!(
            table = applied.0,
            wal = wal.last_lsn().0,
            "wal behind table; restarting wal"
        );
        wal.reset(applied.next())?;
        return Ok(());
    }
    if wal.last_lsn() == applied {
        return Ok(());
    }
    if wal.first_lsn() > applied.next() {
        return Err(EngineError::RecoveryGap {
            table: applied,
            wal_first: wal.first_lsn(),
        });
    }
    let mut cursor = wal.reader().cursor(applied.next())?;
    let mut replayed = 0usize;
    loop {
        let batch = cursor.next_batch(4096, 16 << 20)?;
        if batch.is_empty() {
            break;
        }
        replayed += batch.len();
        table.apply(&batch)?;
    }
    tracing::info!(replayed, applied = table.applied_lsn().0, "wal replayed");
    Ok(())
}
