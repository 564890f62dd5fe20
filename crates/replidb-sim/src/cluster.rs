//! The simulated hosts with a fixed leader: one leader and N followers,
//! each running the real engine and replication code on its own turmoil
//! host (an elected cluster's hosts are in [`crate::node`]), plus the state
//! the hosts, the client and the fault driver share (the registry of
//! running nodes and the event log the story is printed from).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use replidb_core::{Clock, Epoch, Lsn, Op, WriteConcern};
use replidb_engine::{Engine, EngineOptions};
use replidb_replication::{Follower, FollowerOptions, Leader, LeaderOptions};
use replidb_storage::Backend;
use replidb_wal::{FsyncPolicy, WalOptions};

/// The WAL tail cache of simulated nodes: a few dozen records, so that
/// leader sessions serve both from memory and, for a follower that fell
/// behind, from the files.
const SIM_TAIL_CACHE_BYTES: usize = 8 << 10;

/// Zeros written ahead of simulated nodes' WAL: small, so that crashes
/// often leave a segment ending in zeros, part overwritten, for recovery.
const SIM_PREALLOCATE_BYTES: u64 = 4 << 10;

use tokio_util::sync::CancellationToken;

use crate::clock::SimClock;
use crate::net::{serve_replication, LinkFaults, SimTransport, PORT};
use crate::SimConfig;

/// Host name of the leader.
pub const LEADER: &str = "leader";
/// Host name of the client that writes and reads.
pub const CLIENT: &str = "client";
/// How often every node checkpoints its table (so a restart recovers from
/// the table snapshot plus the WAL after it).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(1000);

/// A running node, as the client and the checks reach it.
#[derive(Clone)]
pub struct NodeHandle {
    /// Its storage.
    pub engine: Arc<Engine>,
    /// Set on the leader.
    pub leader: Option<Arc<Leader>>,
    /// Set on followers.
    pub follower: Option<Arc<Follower>>,
}

pub use crate::events::{Event, EventKind, ReadEvent};

/// State shared by the hosts, the client and the driver.
pub struct Shared {
    /// The one clock.
    pub clock: Arc<SimClock>,
    nodes: Mutex<BTreeMap<String, NodeHandle>>,
    events: Mutex<Vec<Event>>,
    /// `(node, lsn)` → when that node first had `lsn` applied.
    applied_at: Mutex<BTreeMap<(String, u64), u64>>,
    /// `(node, applied lsn, epoch of the record at that lsn)` → table
    /// digest at that point. The epoch tells apart two histories that share
    /// an LSN (a record later rewound, and the one that replaced it).
    digests: Mutex<BTreeMap<(String, u64, u64), String>>,
    /// Whether the leader is elected (nodes `n1`..) rather than fixed.
    pub elected: bool,
    /// Every election won: `(ms, node, epoch)`, in the order they happened.
    promotions: Mutex<Vec<(u64, String, u64)>>,
    /// Per-follower (elected: per-node) fault switches.
    pub links: BTreeMap<String, Arc<LinkFaults>>,
    /// Flush LSN of each follower just before it crashed.
    pub flushed_before_crash: Mutex<BTreeMap<String, u64>>,
    /// Invariant violations found while running.
    violations: Mutex<Vec<String>>,
    /// Every scheduled fault has healed.
    pub healed: AtomicBool,
    /// ms at which the last fault healed.
    pub healed_at_ms: AtomicU64,
    /// What the client achieved.
    pub outcome: Mutex<ClientOutcome>,
}

/// What the client did, for the checks and the summary.
#[derive(Clone, Debug, Default)]
pub struct ClientOutcome {
    /// `(lsn, key, value)` of writes acknowledged at `w=majority`.
    pub majority_acked: Vec<(u64, String, String)>,
    /// `(node, epoch, lsn)` of every write a leader accepted.
    pub accepted: Vec<(String, u64, u64)>,
    /// Writes the leader made durable.
    pub writes: usize,
    /// When the last write was persisted (ms).
    pub last_write_ms: u64,
    /// LSN of the last write.
    pub last_lsn: u64,
    /// When every follower matched the leader (ms), if it happened.
    pub converged_ms: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(cfg: &SimConfig) -> Arc<Shared> {
        Arc::new(Shared {
            clock: Arc::new(SimClock::new()),
            nodes: Mutex::default(),
            events: Mutex::default(),
            applied_at: Mutex::default(),
            digests: Mutex::default(),
            elected: cfg.faults.elected(),
            promotions: Mutex::default(),
            links: cfg
                .read_targets()
                .into_iter()
                .map(|n| (n, Arc::new(LinkFaults::default())))
                .collect(),
            flushed_before_crash: Mutex::default(),
            violations: Mutex::default(),
            healed: AtomicBool::new(false),
            healed_at_ms: AtomicU64::new(0),
            outcome: Mutex::default(),
        })
    }

    /// ms since the run began.
    pub fn now(&self) -> u64 {
        self.clock.elapsed_ms()
    }

    /// Add a story line at `t_ms`.
    pub fn event_at(&self, t_ms: u64, kind: EventKind) {
        lock(&self.events).push(Event { t_ms, kind });
    }

    /// Add a story line now.
    pub fn event(&self, kind: EventKind) {
        self.event_at(self.now(), kind);
    }

    /// Every event, ordered by time (ties keep the order they happened in).
    pub fn events(&self) -> Vec<Event> {
        let mut v = lock(&self.events).clone();
        v.sort_by_key(|e| e.t_ms);
        v
    }

    /// Record an invariant violation.
    pub fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    /// Violations so far.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    /// The running node called `name`.
    pub fn node(&self, name: &str) -> Option<NodeHandle> {
        lock(&self.nodes).get(name).cloned()
    }

    /// Every running node, by name.
    pub fn nodes(&self) -> BTreeMap<String, NodeHandle> {
        lock(&self.nodes).clone()
    }

    pub(crate) fn register(&self, name: &str, h: NodeHandle) {
        lock(&self.nodes).insert(name.to_string(), h);
    }

    /// Forget a node that is about to crash; remember its flush LSN.
    pub(crate) fn unregister(&self, name: &str) {
        if let Some(h) = lock(&self.nodes).remove(name) {
            lock(&self.flushed_before_crash)
                .insert(name.to_string(), h.engine.positions().flush_lsn.0);
        }
    }

    /// When `node` first had `lsn` applied.
    pub fn applied_at(&self, node: &str, lsn: u64) -> Option<u64> {
        lock(&self.applied_at)
            .get(&(node.to_string(), lsn))
            .copied()
    }

    /// Record the table digest of `node` at `lsn` (whose record is of
    /// `epoch`).
    pub fn record_digest(&self, node: &str, lsn: u64, epoch: u64, digest: String) {
        lock(&self.digests)
            .entry((node.to_string(), lsn, epoch))
            .or_insert(digest);
    }

    /// Record that `node` won the election for `epoch`.
    pub(crate) fn record_promotion(&self, node: &str, epoch: u64) {
        let t = self.now();
        lock(&self.promotions).push((t, node.to_string(), epoch));
    }

    /// Every election won: `(ms, node, epoch)`.
    pub fn promotions(&self) -> Vec<(u64, String, u64)> {
        lock(&self.promotions).clone()
    }

    /// The node that leads now: the fixed leader, or (elected) the
    /// running node whose leader accepts writes, else the running leader
    /// of the highest epoch.
    pub fn leader_name(&self) -> Option<String> {
        let nodes = lock(&self.nodes);
        if !self.elected {
            return nodes.contains_key(LEADER).then(|| LEADER.to_string());
        }
        let leaders = || {
            nodes
                .iter()
                .filter_map(|(n, h)| h.leader.as_ref().map(|l| (n, l)))
        };
        if let Some((n, _)) = leaders().find(|(_, l)| l.writable().is_ok()) {
            return Some(n.clone());
        }
        leaders()
            .max_by_key(|(_, l)| l.epoch())
            .map(|(n, _)| n.clone())
    }

    /// A copy of the client's outcome.
    pub fn outcome(&self) -> ClientOutcome {
        lock(&self.outcome).clone()
    }

    pub(crate) fn update_outcome(&self, f: impl FnOnce(&mut ClientOutcome)) {
        f(&mut lock(&self.outcome));
    }

    /// Every recorded digest.
    pub fn digests(&self) -> BTreeMap<(String, u64, u64), String> {
        lock(&self.digests).clone()
    }
}

/// Engine options of every simulated node: the in-memory table, the real
/// WAL in the run's temp directory, blocking IO inline.
pub(crate) fn engine_options(dir: PathBuf, node: &str) -> EngineOptions {
    let mut o = EngineOptions::new(dir, node);
    o.backend = Backend::Memory;
    o.inline_io = true;
    // The simulation's crash is a process crash: bytes handed to the OS
    // survive it, so an fsync would only cost real time. The WAL still
    // buffers appends in memory until `Wal::sync`, which is the durability
    // point the protocol relies on.
    o.wal = WalOptions {
        fsync: FsyncPolicy::Never,
        tail_cache_bytes: SIM_TAIL_CACHE_BYTES,
        preallocate_bytes: SIM_PREALLOCATE_BYTES,
        ..WalOptions::default()
    };
    o
}

pub(crate) type HostResult = turmoil::Result;

/// The leader's software: open (or recover) the engine, start epoch 1 on a
/// fresh log, and serve replication streams.
pub(crate) async fn leader_host(
    shared: Arc<Shared>,
    dir: PathBuf,
    voters: usize,
    compression: replidb_replication::Codec,
) -> HostResult {
    let clock: Arc<dyn Clock> = shared.clock.clone();
    let engine = Engine::open(engine_options(dir, LEADER), clock.clone()).await?;
    if engine.meta().epoch == Epoch(0) {
        engine.begin_epoch(Epoch(1)).await?;
    }
    let opts = LeaderOptions {
        cluster_size: Some(voters),
        compression,
        ..LeaderOptions::default()
    };
    let leader = Leader::new(LEADER, engine.clone(), clock, opts, WriteConcern::One);
    shared.register(
        LEADER,
        NodeHandle {
            engine: engine.clone(),
            leader: Some(leader.clone()),
            follower: None,
        },
    );
    tokio::spawn(checkpoints(engine));
    serve_replication(move || Some(leader.clone())).await?;
    Ok(())
}

/// A follower's software: open (or recover) the engine, report what
/// survived a crash, then stream from the leader and watch the applies.
pub(crate) async fn follower_host(
    shared: Arc<Shared>,
    dir: PathBuf,
    name: String,
    cfg: SimConfig,
    index: u64,
) -> HostResult {
    let clock: Arc<dyn Clock> = shared.clock.clone();
    let engine = open_engine(&shared, dir, &name).await?;
    let mut fopts = FollowerOptions::new(name.clone(), format!("http://{name}:{PORT}"));
    fopts.delay = cfg.lag;
    fopts.backoff_base = Duration::from_millis(200);
    fopts.backoff_max = Duration::from_secs(2);
    fopts.idle_timeout = Duration::from_secs(1);
    fopts.seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(index);
    let link = shared.links.get(&name).cloned().unwrap_or_default();
    let transport = Arc::new(SimTransport::new(link, fopts.seed ^ 0x5eed));
    let leader_url = format!("http://{LEADER}:{PORT}");
    let follower = Follower::new(engine.clone(), transport, clock, fopts, leader_url);
    shared.register(
        &name,
        NodeHandle {
            engine: engine.clone(),
            leader: None,
            follower: Some(follower.clone()),
        },
    );
    tokio::spawn(watch_applies(shared.clone(), engine.clone(), name));
    tokio::spawn(checkpoints(engine));
    follower.run(CancellationToken::new()).await;
    Ok(())
}

/// Open (or recover) `name`'s engine; after a crash, tell what recovery
/// found and check that nothing it had flushed was lost.
pub(crate) async fn open_engine(
    shared: &Shared,
    dir: PathBuf,
    name: &str,
) -> Result<Arc<Engine>, replidb_engine::EngineError> {
    let clock: Arc<dyn Clock> = shared.clock.clone();
    let engine = Engine::open(engine_options(dir, name), clock).await?;
    let pos = engine.positions();
    let before = lock(&shared.flushed_before_crash).get(name).copied();
    if let Some(before) = before {
        shared.event(EventKind::Recovered {
            node: name.to_string(),
            flush: pos.flush_lsn.0,
            applied: pos.applied_lsn.0,
        });
        if pos.flush_lsn.0 < before {
            shared.violation(format!(
                "{name} lost durable records in a crash: flush lsn {before} before, {} after recovery",
                pos.flush_lsn.0
            ));
        }
    }
    Ok(engine)
}

/// Epoch of the record at `lsn` in `engine`'s log (0 if unreadable).
fn epoch_at(engine: &Engine, lsn: u64) -> u64 {
    engine
        .wal_reader()
        .read_range(Lsn(lsn), 1)
        .ok()
        .and_then(|r| r.first().map(|r| r.epoch.0))
        .unwrap_or(0)
}

pub(crate) async fn checkpoints(engine: Arc<Engine>) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        // Keep the whole WAL (retain from 0): the checks compare logs
        // from LSN 1.
        if engine.checkpoint(Lsn::ZERO).await.is_err() {
            return;
        }
    }
}

/// Log every apply on `node` with its persist→apply lag, and the table
/// digest at each applied LSN.
pub(crate) async fn watch_applies(shared: Arc<Shared>, engine: Arc<Engine>, node: String) {
    let mut rx = engine.subscribe();
    // A restarted node starts from what recovery applied: those records
    // were applied (or are now) without a story line of their own.
    let mut last = rx.borrow_and_update().applied_lsn.0;
    if last > 0 {
        let now = shared.now();
        if let Ok(d) = engine.table().digest() {
            shared.record_digest(&node, last, epoch_at(&engine, last), d);
        }
        let mut at = lock(&shared.applied_at);
        for lsn in 1..=last {
            at.entry((node.clone(), lsn)).or_insert(now);
        }
    }
    loop {
        let applied = rx.borrow_and_update().applied_lsn.0;
        // A rewind that rebuilt the table starts applying from scratch.
        last = last.min(applied);
        if applied > last {
            let now = shared.now();
            // Synchronous from here on: with inline IO the writer cannot
            // run in between, so the digest is the state at `applied`.
            if let Ok(d) = engine.table().digest() {
                shared.record_digest(&node, applied, epoch_at(&engine, applied), d);
            }
            // A leader applies its own writes: not a story line.
            let leading = shared.node(&node).is_some_and(|h| h.leader.is_some());
            if leading {
                last = applied;
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let from = last + 1;
            let records = engine
                .wal_reader()
                .read_range(Lsn(from), (applied - last) as usize)
                .unwrap_or_default();
            let mut keys = Vec::new();
            let (mut lag_min, mut lag_max) = (u64::MAX, 0u64);
            {
                let mut at = lock(&shared.applied_at);
                for r in &records {
                    at.entry((node.clone(), r.lsn.0)).or_insert(now);
                    let lag = (now + crate::clock::EPOCH_MS).saturating_sub(r.hlc.wall_ms);
                    lag_min = lag_min.min(lag);
                    lag_max = lag_max.max(lag);
                    if let Op::Put { key, .. } | Op::Delete { key } = &r.op {
                        keys.push(key.clone());
                    }
                }
            }
            if !records.is_empty() {
                shared.event_at(
                    now,
                    EventKind::Applied {
                        node: node.clone(),
                        from,
                        to: applied,
                        keys,
                        lag_min,
                        lag_max,
                    },
                );
            }
            last = applied;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
