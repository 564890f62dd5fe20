//! `replidb simulate --topology multi-leader`: every node leads its own
//! log and applies every peer's, under clock skew and faults.
//!
//! # What is real, what is simulated
//! Real, unchanged: each node is the server's multi-leader node minus
//! HTTP — a [`NodeCore`] that [`NodeCore::become_leader`]s its own log
//! (epoch 1, `check_quorum` off, the topology fingerprint and the cluster
//! size in its `LeaderOptions`), a [`PeerStream`] per peer that applies
//! the peer's records with `Engine::apply_origin`, the engine (real WAL,
//! memory table checkpointed every second, recovery), the causal merge of
//! `replidb-causal` (versions with dots, `lww` and `siblings`, PN-counters,
//! OR-sets) and the conflict log. Simulated: the network (turmoil TCP
//! between `n1`.., the same transport and fault layer as the single-leader
//! run), time (turmoil's clock, seen by each node through its own
//! [`SkewedClock`]: every node's wall clock is off by up to `--skew`, in
//! either direction), the client (it calls the engines directly, as the
//! causal HTTP handlers do) and the faults.
//!
//! # A run
//! The client makes `--writes` causal writes, each at a random running
//! node, on a few overlapping keys: plain puts under `lww/` (blind, as the
//! HTTP API takes them) and under `sib/` (policy `siblings`, usually with
//! the context the client just read there), counter increments with random
//! deltas under `ctr/`, set adds and removes under `set/`. Faults
//! (`--faults partition|crash|delay|all`): partitions between two nodes,
//! crashes of a node (its data dir is reopened on restart: recovery from
//! the table snapshot and the WAL, peers resend from its durable origin
//! positions), slow links with duplicated frames and cut streams. Then
//! everything heals, and the client waits (simulated time, at most
//! [`CONVERGE_DEADLINE_MS`]) until every node has applied every origin's
//! last LSN.
//!
//! # Invariants (see the `check` module)
//! Convergence (equal table digests), counters exact (the sum of every
//! acknowledged delta), sets exact (the OR-set model on the dots each
//! write reported), nothing lost without a trace (every acknowledged put
//! survives, is causally superseded, or is in a conflict log), and HLC
//! orders every causally later put after what it saw — even when the
//! physical clocks say the opposite, which the summary counts: the writes
//! wall-clock last-writer-wins would have lost.

mod check;
mod faults;
mod workload;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replidb_causal::PolicySet;
use replidb_core::{Clock, SkewedClock, WriteConcern};
use replidb_engine::Engine;
use replidb_node::{CoreOptions, NoEvents, NodeCore};
use replidb_replication::{FollowerOptions, LeaderOptions, PeerOptions, PeerStream, Transport};
use tokio_util::sync::CancellationToken;

use crate::clock::{SimClock, EPOCH_MS};
use crate::cluster::{checkpoints, engine_options, HostResult};
use crate::config::fmt_duration;
use crate::net::{serve_replication, LinkFaults, SimTransport, PORT};
use crate::{FaultMode, SimError, SimReport, SoakReport};

pub use workload::{Ack, WOp, Write};

/// Simulated time after which a run is abandoned (a hang is a failure).
const MAX_SIM_TIME: Duration = Duration::from_secs(3600);
/// How long after the last fault healed the nodes have to converge (ms).
pub const CONVERGE_DEADLINE_MS: u64 = 60_000;
/// Host name of the client.
const CLIENT: &str = "client";
/// Salt of the clock skews.
const SKEW_SALT: u64 = 0x736b_6577;

/// The conflict policies every node runs with (`--conflict-policy`).
pub const POLICIES: &str = "*=lww,sib/=siblings";

/// One multi-leader run's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiConfig {
    /// Seed of everything random.
    pub seed: u64,
    /// Number of nodes, each leading its own log.
    pub nodes: usize,
    /// Writes the client makes.
    pub writes: usize,
    /// Largest wall-clock skew of a node, either direction.
    pub skew: Duration,
    /// Faults to inject (`none`, `partition`, `crash`, `delay` or `all`).
    pub faults: FaultMode,
    /// Story lines printed before eliding (0 = all); faults always print.
    pub story_lines: usize,
}

impl MultiConfig {
    /// Three nodes, 80 writes, up to 5 s of skew, every fault.
    pub fn new(seed: u64) -> Self {
        MultiConfig {
            seed,
            nodes: 3,
            writes: 80,
            skew: Duration::from_secs(5),
            faults: FaultMode::All,
            story_lines: 30,
        }
    }

    /// The command line that reproduces this run.
    pub fn command_line(&self) -> String {
        format!(
            "replidb simulate --topology multi-leader --seed {} --nodes {} --writes {} --skew {} --faults {}",
            self.seed,
            self.nodes,
            self.writes,
            fmt_duration(self.skew),
            self.faults
        )
    }

    /// Refuse shapes the simulation cannot run.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Config(m.to_string()));
        if !(2..=9).contains(&self.nodes) {
            return bad("--nodes must be 2..=9 with --topology multi-leader");
        }
        if self.writes == 0 || self.writes > 100_000 {
            return bad("--writes must be 1..=100000");
        }
        if self.skew > Duration::from_secs(3600) {
            return bad("--skew above 1h is not useful in a simulation");
        }
        if self.faults == FaultMode::Failover {
            return bad("--faults failover needs an elected leader: with --topology multi-leader use none, partition, crash, delay or all");
        }
        Ok(())
    }

    /// Host names `n1`, `n2`, ...
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("n{i}")).collect()
    }

    /// Each node's wall-clock offset in ms, drawn from the seed: the first
    /// node runs ahead and the second behind, so every run has skew both
    /// ways; the others anywhere within `skew`.
    pub fn skews_ms(&self) -> Vec<i64> {
        let max = self.skew.as_millis() as i64;
        let mut rng = StdRng::seed_from_u64(self.seed ^ SKEW_SALT);
        (0..self.nodes)
            .map(|i| {
                if max == 0 {
                    return 0;
                }
                match i {
                    0 => rng.random_range(max / 4..=max),
                    1 => -rng.random_range(max / 4..=max),
                    _ => rng.random_range(-max..=max),
                }
            })
            .collect()
    }
}

/// The topology fingerprint every node sends and expects (the server's
/// `NodeConfig::topology_fingerprint`).
pub fn topology_fingerprint() -> String {
    format!("multi-leader;{}", policies().fingerprint())
}

/// [`POLICIES`], parsed.
pub fn policies() -> PolicySet {
    PolicySet::parse(POLICIES).unwrap_or_default()
}

/// A running node as the client and the checks reach it.
#[derive(Clone)]
pub struct MultiNode {
    /// Its storage.
    pub engine: Arc<Engine>,
    /// Its role machine (it always leads its own log).
    pub core: Arc<NodeCore>,
    /// Its (skewed) clock.
    pub clock: Arc<dyn Clock>,
    /// Its subscriptions to every peer.
    pub peers: Vec<Arc<PeerStream>>,
}

/// State shared by the hosts, the client and the fault driver.
pub struct MultiShared {
    /// The simulation's clock (unskewed).
    pub clock: Arc<SimClock>,
    /// Per-node wall-clock offsets, by index.
    pub skews: Vec<i64>,
    nodes: Mutex<BTreeMap<String, MultiNode>>,
    /// Per-node fault switches of the streams it pulls from peers.
    pub links: BTreeMap<String, Arc<LinkFaults>>,
    events: Mutex<Vec<(u64, bool, String)>>,
    writes: Mutex<Vec<Write>>,
    violations: Mutex<Vec<String>>,
    /// Every fault has healed.
    pub healed: AtomicBool,
    /// When the last fault healed (ms).
    pub healed_at_ms: AtomicU64,
    /// When every node had every origin's last LSN with equal digests.
    pub converged_at_ms: Mutex<Option<u64>>,
    /// Restarts so far, per node.
    restarts: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MultiShared {
    fn new(cfg: &MultiConfig) -> Arc<MultiShared> {
        Arc::new(MultiShared {
            clock: Arc::new(SimClock::new()),
            skews: cfg.skews_ms(),
            nodes: Mutex::default(),
            links: cfg
                .node_names()
                .into_iter()
                .map(|n| (n, Arc::new(LinkFaults::default())))
                .collect(),
            events: Mutex::default(),
            writes: Mutex::default(),
            violations: Mutex::default(),
            healed: AtomicBool::new(false),
            healed_at_ms: AtomicU64::new(0),
            converged_at_ms: Mutex::default(),
            restarts: Mutex::default(),
        })
    }

    /// ms since the run began.
    pub fn now(&self) -> u64 {
        self.clock.elapsed_ms()
    }

    /// A story line at `t_ms`; `always` lines are never elided.
    pub(crate) fn event_at(&self, t_ms: u64, always: bool, line: String) {
        lock(&self.events).push((t_ms, always, line));
    }

    /// A story line now.
    pub(crate) fn event(&self, always: bool, line: String) {
        self.event_at(self.now(), always, line);
    }

    /// Every story line, by time.
    pub(crate) fn events(&self) -> Vec<(u64, bool, String)> {
        let mut v = lock(&self.events).clone();
        v.sort_by_key(|e| e.0);
        v
    }

    /// Record an invariant violation found while running.
    pub(crate) fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    /// The running node called `name`.
    pub fn node(&self, name: &str) -> Option<MultiNode> {
        lock(&self.nodes).get(name).cloned()
    }

    /// Every running node, by name.
    pub fn nodes(&self) -> BTreeMap<String, MultiNode> {
        lock(&self.nodes).clone()
    }

    pub(crate) fn unregister(&self, name: &str) {
        lock(&self.nodes).remove(name);
    }

    pub(crate) fn record_write(&self, w: Write) {
        lock(&self.writes).push(w);
    }

    /// Every write the client made, in order.
    pub fn writes(&self) -> Vec<Write> {
        lock(&self.writes).clone()
    }
}

/// Run one multi-leader simulation.
pub fn run(cfg: &MultiConfig) -> Result<SimReport, SimError> {
    cfg.validate()?;
    let dir = tempfile::Builder::new()
        .prefix("replidb-sim-ml-")
        .tempdir()
        .map_err(SimError::TempDir)?;
    let shared = MultiShared::new(cfg);
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
        .simulation_duration(MAX_SIM_TIME)
        .build();
    hosts(&mut sim, &shared, cfg, dir.path());
    sim.client(CLIENT, workload::client(shared.clone(), cfg.clone()));

    let mut driver = faults::Driver::new(cfg);
    driver.apply_due(&mut sim, &shared, 0);
    loop {
        match sim.step() {
            Ok(done) => {
                let now = sim.elapsed().as_millis() as u64;
                driver.apply_due(&mut sim, &shared, now);
                if done {
                    break;
                }
            }
            Err(e) => {
                shared.violation(format!("the simulation stopped: {e}"));
                break;
            }
        }
    }
    let checks = check::run(&shared, cfg);
    let output = check::render(cfg, &shared, &driver, &checks);
    let failures = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    drop(sim);
    drop(shared);
    drop(dir);
    Ok(SimReport {
        seed: cfg.seed,
        output,
        failures,
    })
}

/// Run `base` once per seed in `seeds`, calling `progress` after each run.
pub fn run_seeds(
    base: &MultiConfig,
    seeds: RangeInclusive<u64>,
    progress: impl FnMut(&SimReport),
) -> Result<SoakReport, SimError> {
    crate::run::soak(
        seeds,
        |seed| MultiConfig {
            seed,
            ..base.clone()
        },
        run,
        MultiConfig::command_line,
        progress,
    )
}

/// The URL a node advertises.
fn url_of(name: &str) -> String {
    format!("http://{name}:{PORT}")
}

fn hosts(sim: &mut turmoil::Sim<'_>, shared: &Arc<MultiShared>, cfg: &MultiConfig, dir: &Path) {
    for (i, name) in cfg.node_names().into_iter().enumerate() {
        let (shared, dir, cfg) = (shared.clone(), dir.join(&name), cfg.clone());
        sim.host(name.clone().as_str(), move || {
            node_host(shared.clone(), dir.clone(), name.clone(), cfg.clone(), i)
        });
    }
}

/// A node's software, as the server's `start_multi_leader` wires it: open
/// (or recover) the engine on the node's skewed clock, lead its own log,
/// stream from every peer, serve its log to every peer.
async fn node_host(
    shared: Arc<MultiShared>,
    dir: PathBuf,
    name: String,
    cfg: MultiConfig,
    index: usize,
) -> HostResult {
    let clock: Arc<dyn Clock> =
        Arc::new(SkewedClock::new(shared.clock.clone(), shared.skews[index]));
    let engine = Engine::open(engine_options(dir, &name), clock.clone()).await?;
    let restarts = {
        let mut r = lock(&shared.restarts);
        let n = r.entry(name.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    if restarts > 0 {
        let pos = engine.positions();
        let origins: Vec<String> = engine
            .origin_positions()
            .iter()
            .filter(|(o, _)| **o != name)
            .map(|(o, l)| format!("{o}@{l}"))
            .collect();
        shared.event(
            true,
            format!(
                "{name:<8} recovered: own log to lsn {}, peers {}",
                pos.applied_lsn,
                if origins.is_empty() {
                    "none yet".to_string()
                } else {
                    origins.join(" ")
                }
            ),
        );
    }
    let seed = cfg
        .seed
        .wrapping_mul(1_000_003)
        .wrapping_add(index as u64 + 1);
    let link = shared.links.get(&name).cloned().unwrap_or_default();
    let transport: Arc<dyn Transport> = Arc::new(SimTransport::new(link, seed ^ 0x5eed));
    let url = url_of(&name);
    let topology = topology_fingerprint();
    let opts = CoreOptions {
        id: name.clone(),
        advertise_url: url.clone(),
        leader: LeaderOptions {
            cluster_size: Some(cfg.nodes),
            advertise_url: url.clone(),
            topology: topology.clone(),
            // Every node writes alone: nothing to lose by writing while cut off.
            check_quorum: Duration::ZERO,
            compression: crate::node::codec_of(cfg.seed, index as u64),
            ..LeaderOptions::default()
        },
        follower: FollowerOptions::new(name.clone(), url.clone()),
        default_write_concern: WriteConcern::One,
        lease_required: false,
        step_down_cooldown: Duration::ZERO,
        data_dir: None,
    };
    let core = NodeCore::new(
        opts,
        engine.clone(),
        clock.clone(),
        transport.clone(),
        Arc::new(NoEvents),
        CancellationToken::new(),
    );
    core.become_leader().await?;
    let mut popts = PeerOptions::new(name.clone(), url.clone());
    popts.topology = topology;
    popts.backoff_base = Duration::from_millis(200);
    popts.backoff_max = Duration::from_secs(2);
    popts.idle_timeout = Duration::from_secs(1);
    popts.seed = seed;
    popts.compression = crate::node::codec_of(cfg.seed, index as u64);
    let peers: Vec<Arc<PeerStream>> = cfg
        .node_names()
        .into_iter()
        .filter(|p| *p != name)
        .map(|p| {
            PeerStream::new(
                engine.clone(),
                transport.clone(),
                clock.clone(),
                popts.clone(),
                url_of(&p),
            )
        })
        .collect();
    for p in &peers {
        tokio::spawn(p.clone().run(CancellationToken::new()));
    }
    lock(&shared.nodes).insert(
        name.clone(),
        MultiNode {
            engine: engine.clone(),
            core: core.clone(),
            clock,
            peers,
        },
    );
    tokio::spawn(checkpoints(engine));
    serve_replication(move || core.leader()).await?;
    Ok(())
}
