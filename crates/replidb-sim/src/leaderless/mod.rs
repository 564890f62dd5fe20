//! `replidb simulate --topology leaderless`: Dynamo-style quorums on a
//! ring, under artificial lag and a failing node, at four (R, W)
//! settings — (1,1), (1,2), (2,2), (1,3) with N = 3 — showing that
//! `W + R > N` returns fresh reads and what it costs.
//!
//! # What is real, what is simulated
//! Real, shared with the server: the coordinator's decisions
//! (`replidb_leaderless::coordinator` — routing, when a write or read
//! quorum is met or failed, which fallback keeps a hint, how replies
//! merge, which replicas need read repair, what anti-entropy joins), the
//! ring and preference lists, the anti-entropy hash-tree leaves, the causal
//! versions and their merge (`replidb-causal`: dots, `lww`, `siblings`,
//! PN-counters, OR-sets), and each node's table: `replidb-storage`'s
//! memory backend written only with `Op::Merge` records, with the conflict
//! log it keeps. Simulated: the network (per-link one-way lag drawn from
//! the seed, refused connections to a down node, the internal timeout
//! toward a partitioned one), time (a discrete-event loop over simulated
//! milliseconds: no threads, no tokio), the client, and the faults. The
//! engine's writer step (prepare the operand against the key's state
//! under an HLC stamp, log it) is done inline by [`node::SimNode`]; the
//! WAL and fsyncs are not simulated (a crash keeps the table and hints, as
//! the server's durable ones are), and an anti-entropy exchange takes no
//! simulated time.
//!
//! # A run
//! The seed draws one workload ([`workload`]: `--requests` requests, half
//! reads, half writes: blind puts under `lww/`, puts and deletes under
//! `sib/` mostly with the context the client last read, counter
//! increments, set adds and removes), one fault schedule ([`faults`]: a
//! crash of the failing node, then partitions, crashes and slow links)
//! and the links' lag; then each (R, W) setting replays exactly that, so
//! the settings differ only in their quorums. After the last request and
//! the last fault, hints are delivered and anti-entropy runs until the
//! replicas agree.
//!
//! # Invariants (see the `check` module)
//! Convergence (every replica of every key holds the same state, no hint
//! left), nothing acknowledged lost without a trace (every acknowledged
//! put or delete is in the data, superseded by a version that saw it, or
//! in a conflict log), counters exact (the sum of every increment made
//! durable at its coordinator, acknowledged or not: a failed write is not
//! undone), sets exact (the OR-set model over the dots the writes made),
//! and, when `W + R > N`, freshness: a read that starts after a write was
//! acknowledged without a hint holder in its quorum sees it (or something
//! that supersedes it).
//!
//! # Left out
//! The HTTP layer and the WAL (the table is written directly, as the
//! engine's writer would after its fsync); the client's hop to its node
//! and a non-replica's hand-off hop (latencies are measured at the
//! coordinator); tombstone collection; membership changes; map keys;
//! hint-store limits; clock skew (every node reads the simulated clock).
//!
//! # Reproducing a seed
//! A failure prints `reproduce with: replidb simulate --topology
//! leaderless --seed S ...`; the same seed prints the same bytes.

mod check;
pub mod faults;
pub mod node;
pub mod workload;
mod world;

use std::ops::RangeInclusive;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replidb_causal::PolicySet;

use crate::{FaultMode, SimError, SimReport, SoakReport};

pub use world::{Outcome, World};

/// The conflict policies every node runs with (`--conflict-policy`).
pub const POLICIES: &str = "*=lww,sib/=siblings";
/// Wall-clock time at simulated 0 (ms since the Unix epoch).
pub const EPOCH_MS: u64 = crate::clock::EPOCH_MS;
/// The (R, W) settings a run compares, with N = 3.
pub const SETTINGS: [(usize, usize); 4] = [(1, 1), (1, 2), (2, 2), (1, 3)];
/// Salt of the links' lag.
const LINK_SALT: u64 = 0x6c69_6e6b;

/// [`POLICIES`], parsed.
pub fn policies() -> PolicySet {
    PolicySet::parse(POLICIES).unwrap_or_default()
}

/// One leaderless run's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderlessConfig {
    /// Seed of everything random.
    pub seed: u64,
    /// Members of the ring.
    pub nodes: usize,
    /// N: replicas of each key.
    pub replicas: usize,
    /// Requests of the client per setting.
    pub ops: usize,
    /// Faults to inject (`none`, `partition`, `crash`, `delay` or `all`).
    pub faults: FaultMode,
    /// No hinted handoff (`--strict-quorum`).
    pub strict: bool,
    /// Story lines printed per setting before eliding (0 = all); faults
    /// always print.
    pub story_lines: usize,
}

impl LeaderlessConfig {
    /// Three nodes, N = 3, 200 requests, every fault, sloppy quorums.
    pub fn new(seed: u64) -> Self {
        LeaderlessConfig {
            seed,
            nodes: 3,
            replicas: 3,
            ops: 200,
            faults: FaultMode::All,
            strict: false,
            story_lines: 12,
        }
    }

    /// The command line that reproduces this run.
    pub fn command_line(&self) -> String {
        format!(
            "replidb simulate --topology leaderless --seed {} --nodes {} --requests {} --faults {}{}",
            self.seed,
            self.nodes,
            self.ops,
            self.faults,
            if self.strict { " --strict-quorum" } else { "" }
        )
    }

    /// Refuse shapes the simulation cannot run.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Config(m.to_string()));
        if !(3..=9).contains(&self.nodes) {
            return bad("--nodes must be 3..=9 with --topology leaderless (N is 3)");
        }
        if self.replicas != 3 {
            return bad("the leaderless simulation compares settings of N = 3");
        }
        if self.ops == 0 || self.ops > 100_000 {
            return bad("--requests must be 1..=100000");
        }
        if self.faults == FaultMode::Failover {
            return bad("--faults failover needs an elected leader: with --topology leaderless use none, partition, crash, delay or all");
        }
        Ok(())
    }

    /// Node names `n1`, `n2`, ...
    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("n{i}")).collect()
    }

    /// One-way lag range (ms) per ordered pair, symmetric, from the seed.
    pub fn links_ms(&self) -> Vec<Vec<(u64, u64)>> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ LINK_SALT);
        let mut out = vec![vec![(0, 0); self.nodes]; self.nodes];
        let pairs: Vec<(usize, usize)> = (0..self.nodes)
            .flat_map(|a| (a + 1..self.nodes).map(move |b| (a, b)))
            .collect();
        for (a, b) in pairs {
            let lo = rng.random_range(1..=20);
            let hi = lo + rng.random_range(5..=40);
            out[a][b] = (lo, hi);
            out[b][a] = (lo, hi);
        }
        out
    }
}

/// Run every setting of one seed.
pub fn run(cfg: &LeaderlessConfig) -> Result<SimReport, SimError> {
    cfg.validate()?;
    let ops = workload::generate(cfg);
    let span = ops.last().map(|o| o.at_ms).unwrap_or(0);
    let faults = faults::schedule(cfg, span);
    let links = cfg.links_ms();
    let mut worlds = Vec::with_capacity(SETTINGS.len());
    for (r, w) in SETTINGS {
        let mut world = World::new(cfg, r, w, ops.clone(), faults.clone(), links.clone());
        world.run();
        worlds.push(world);
    }
    let (output, failures) = check::report(cfg, &worlds);
    Ok(SimReport {
        seed: cfg.seed,
        output,
        failures,
    })
}

/// Run `base` once per seed in `seeds`, calling `progress` after each run.
pub fn run_seeds(
    base: &LeaderlessConfig,
    seeds: RangeInclusive<u64>,
    progress: impl FnMut(&SimReport),
) -> Result<SoakReport, SimError> {
    crate::run::soak(
        seeds,
        |seed| LeaderlessConfig {
            seed,
            ..base.clone()
        },
        run,
        LeaderlessConfig::command_line,
        progress,
    )
}
