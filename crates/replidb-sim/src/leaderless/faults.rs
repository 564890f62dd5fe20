//! The fault schedule of a leaderless run, drawn from the seed: one
//! fault at a time, each on one node, while the client works.
//!
//! - **crash**: the node is down (its table and hints are durable and
//!   come back with it); connections to it are refused at once, messages
//!   in flight to it are lost;
//! - **partition**: the node is cut from every other node and from the
//!   client; whoever talks to it waits out the internal timeout;
//! - **delay**: every link of the node gets 200–600 ms more one-way lag.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::LeaderlessConfig;
use crate::FaultMode;

/// Salt of the fault schedule's random stream.
const FAULT_SALT: u64 = 0x6661_756c_7473;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// The node is down.
    Crash,
    /// The node is cut off from everyone.
    Partition,
    /// The node's links are slow.
    Delay,
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FaultKind::Crash => "crash",
            FaultKind::Partition => "partition",
            FaultKind::Delay => "delay",
        })
    }
}

/// One fault window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The node (index).
    pub node: usize,
    /// What happens to it.
    pub kind: FaultKind,
    /// When it begins (ms).
    pub at_ms: u64,
    /// How long it lasts (ms).
    pub for_ms: u64,
}

impl Fault {
    /// How the story names it.
    pub fn describe(&self, names: &[String]) -> String {
        let n = names.get(self.node).map(String::as_str).unwrap_or("?");
        format!("{} {n} for {}ms", self.kind, self.for_ms)
    }
}

/// The seed's faults, in time order, within the first `span_ms` of the run.
pub fn schedule(cfg: &LeaderlessConfig, span_ms: u64) -> Vec<Fault> {
    let kinds: &[FaultKind] = match cfg.faults {
        FaultMode::None | FaultMode::Failover => &[],
        FaultMode::Crash => &[FaultKind::Crash],
        FaultMode::Partition => &[FaultKind::Partition],
        FaultMode::Delay => &[FaultKind::Delay],
        FaultMode::All => &[FaultKind::Crash, FaultKind::Partition, FaultKind::Delay],
    };
    if kinds.is_empty() {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ FAULT_SALT);
    let mut out = Vec::new();
    let mut at = rng.random_range(50..=span_ms / 4 + 50);
    // The failing node: it crashes first (when crashes are asked for),
    // and again at every later crash.
    let failing = rng.random_range(0..cfg.nodes);
    let mut first = true;
    while at < span_ms {
        let kind = if first && kinds.contains(&FaultKind::Crash) {
            FaultKind::Crash
        } else {
            kinds[rng.random_range(0..kinds.len())]
        };
        // Crashes always hit the failing node; other faults any node.
        let node = if kind == FaultKind::Crash {
            failing
        } else {
            rng.random_range(0..cfg.nodes)
        };
        first = false;
        let for_ms = rng.random_range(300..=span_ms / 2 + 300);
        out.push(Fault {
            node,
            kind,
            at_ms: at,
            for_ms,
        });
        at += for_ms + rng.random_range(100..=span_ms / 3 + 100);
    }
    out
}
