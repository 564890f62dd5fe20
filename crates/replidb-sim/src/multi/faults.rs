//! Faults of a multi-leader run: partitions between two nodes, crashes and
//! restarts, slow links with duplicated frames and cut streams. Drawn from
//! the seed before the run, never two at once on one node, applied by the
//! driver between simulation steps; link latencies are set per link every
//! [`JITTER_PERIOD_MS`] as in the single-leader run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{MultiConfig, MultiShared};
use crate::faults::{JITTER_PERIOD_MS, LINK_LATENCY_MS, SLOW_LINK_MS};

/// Salt of the fault schedule's random stream.
const FAULT_SALT: u64 = 0x6d6c_6661_756c_7473;
/// Salt of the link latency streams.
const LATENCY_SALT: u64 = 0x6d6c_6c61_7465;

/// What a fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut the two nodes off from each other (both directions).
    Partition(String, String),
    /// Kill the node's process; restart it (reopening its data dir) when
    /// the fault ends.
    Crash(String),
    /// Slow every link of the node, and duplicate frames and cut the
    /// streams it pulls from its peers.
    Slow(String),
}

impl Fault {
    fn nodes(&self) -> Vec<&String> {
        match self {
            Fault::Partition(a, b) => vec![a, b],
            Fault::Crash(n) | Fault::Slow(n) => vec![n],
        }
    }
}

/// One step of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    /// When (ms since the start).
    pub at_ms: u64,
    /// Which fault.
    pub fault: Fault,
    /// `true` starts it, `false` heals it.
    pub begin: bool,
    /// How long it lasts.
    pub duration_ms: u64,
}

/// Draw the schedule: a few faults over the time the workload takes.
pub fn schedule(cfg: &MultiConfig) -> Vec<Action> {
    let mut kinds = Vec::new();
    if cfg.faults.partitions() {
        kinds.push(0);
    }
    if cfg.faults.crashes() {
        kinds.push(1);
    }
    if cfg.faults.delays() {
        kinds.push(2);
    }
    if kinds.is_empty() {
        return Vec::new();
    }
    let names = cfg.node_names();
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ FAULT_SALT);
    // The client spends about 67 ms per write; faults begin while it
    // writes, so writes land on both sides of partitions and on nodes
    // that just restarted.
    let horizon = 300 + 60 * cfg.writes as u64;
    let count = kinds.len() * (1 + cfg.writes / 40);
    let mut busy_until = vec![0u64; names.len()];
    let mut out = Vec::new();
    for i in 0..count {
        let kind = kinds[i % kinds.len()];
        let drawn = rng.random_range(200..=horizon);
        let duration_ms = rng.random_range(300..=2000);
        let needed = if kind == 0 { 2 } else { 1 };
        // The nodes free at `drawn`, from a random one on; if too few are,
        // the ones free soonest, and the fault waits for them.
        let first = rng.random_range(0..names.len());
        let mut order: Vec<usize> = (0..names.len())
            .map(|k| (first + k) % names.len())
            .collect();
        let free_at = |k: usize| (busy_until[k] + 100).max(drawn);
        order.sort_by_key(|k| free_at(*k));
        let chosen = &order[..needed.min(order.len())];
        let start = chosen.iter().map(|k| free_at(*k)).max().unwrap_or(drawn);
        if chosen.len() < needed || start > horizon + 1500 {
            continue;
        }
        let fault = match (kind, chosen) {
            (0, [a, b]) => Fault::Partition(names[*a.min(b)].clone(), names[*a.max(b)].clone()),
            (1, [a]) => Fault::Crash(names[*a].clone()),
            (_, [a]) => Fault::Slow(names[*a].clone()),
            _ => continue,
        };
        for n in fault.nodes() {
            if let Some(k) = names.iter().position(|x| x == n) {
                busy_until[k] = start + duration_ms;
            }
        }
        for (at_ms, begin) in [(start, true), (start + duration_ms, false)] {
            out.push(Action {
                at_ms,
                fault: fault.clone(),
                begin,
                duration_ms,
            });
        }
    }
    out.sort_by_key(|a| a.at_ms);
    out
}

/// One link whose latency the driver sets.
struct Link {
    a: String,
    b: String,
    rng: StdRng,
}

/// Applies the schedule as simulated time passes, and sets link latencies.
pub struct Driver {
    pending: VecDeque<Action>,
    links: Vec<Link>,
    slow: BTreeSet<String>,
    next_jitter_ms: u64,
    /// Faults begun, by kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// Frames duplicated and streams cut by slow-link faults.
    pub duplicated: u64,
    /// Streams cut by slow-link faults.
    pub cuts: u64,
}

impl Driver {
    /// A driver for `cfg`'s schedule.
    pub fn new(cfg: &MultiConfig) -> Self {
        let names = cfg.node_names();
        let mut links = Vec::new();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                links.push(Link {
                    a: a.clone(),
                    b: b.clone(),
                    rng: StdRng::seed_from_u64(cfg.seed ^ LATENCY_SALT ^ (links.len() as u64 + 1)),
                });
            }
        }
        Driver {
            pending: schedule(cfg).into(),
            links,
            slow: BTreeSet::new(),
            next_jitter_ms: 0,
            counts: BTreeMap::new(),
            duplicated: 0,
            cuts: 0,
        }
    }

    /// Apply every action due at `now_ms`; once none is left, mark the
    /// faults healed.
    pub fn apply_due(&mut self, sim: &mut turmoil::Sim<'_>, shared: &MultiShared, now_ms: u64) {
        while self.pending.front().is_some_and(|a| a.at_ms <= now_ms) {
            let Some(a) = self.pending.pop_front() else {
                break;
            };
            let line = self.apply(sim, shared, &a);
            shared.event_at(now_ms, true, format!("fault    {line}"));
        }
        if now_ms >= self.next_jitter_ms {
            for l in &mut self.links {
                let slow = self.slow.contains(&l.a) || self.slow.contains(&l.b);
                let (lo, hi) = if slow { SLOW_LINK_MS } else { LINK_LATENCY_MS };
                let d = Duration::from_millis(l.rng.random_range(lo..=hi));
                sim.set_link_latency(l.a.as_str(), l.b.as_str(), d);
            }
            self.next_jitter_ms = now_ms + JITTER_PERIOD_MS;
        }
        if self.pending.is_empty() && !shared.healed.swap(true, Ordering::Relaxed) {
            shared.healed_at_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, shared: &MultiShared, a: &Action) -> String {
        let d = a.duration_ms;
        match (&a.fault, a.begin) {
            (Fault::Partition(x, y), true) => {
                *self.counts.entry("partition").or_default() += 1;
                sim.partition(x.as_str(), y.as_str());
                format!("partition {x} <-> {y} for {d}ms (each keeps writing)")
            }
            (Fault::Partition(x, y), false) => {
                sim.repair(x.as_str(), y.as_str());
                format!("repair {x} <-> {y}")
            }
            (Fault::Crash(n), true) => {
                *self.counts.entry("crash").or_default() += 1;
                shared.unregister(n);
                sim.crash(n.as_str());
                format!("crash {n} (restart in {d}ms)")
            }
            (Fault::Crash(n), false) => {
                sim.bounce(n.as_str());
                format!("restart {n}")
            }
            (Fault::Slow(n), true) => {
                *self.counts.entry("slow link").or_default() += 1;
                self.slow.insert(n.clone());
                self.next_jitter_ms = 0;
                if let Some(l) = shared.links.get(n) {
                    l.duplicate.store(true, Ordering::Relaxed);
                }
                format!(
                    "slow links of {n} (up to {}ms one way), duplicating frames and cutting the streams it pulls, for {d}ms",
                    SLOW_LINK_MS.1
                )
            }
            (Fault::Slow(n), false) => {
                self.slow.remove(n);
                self.next_jitter_ms = 0;
                let (mut dups, mut cuts) = (0, 0);
                if let Some(l) = shared.links.get(n) {
                    l.duplicate.store(false, Ordering::Relaxed);
                    dups = l.duplicated.swap(0, Ordering::Relaxed);
                    cuts = l.cuts.swap(0, Ordering::Relaxed);
                }
                self.duplicated += dups;
                self.cuts += cuts;
                format!(
                    "links of {n} healthy again ({} duplicated, {} cut)",
                    replidb_core::text::count_s(dups, "frame"),
                    replidb_core::text::count_s(cuts, "stream"),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_seeded_and_never_overlap_on_one_node() {
        let cfg = MultiConfig::new(5);
        let s = schedule(&cfg);
        assert_eq!(s, schedule(&cfg));
        assert!(!s.is_empty() && s.len() <= 2 * 3 * 3);
        for n in cfg.node_names() {
            let mine: Vec<_> = s.iter().filter(|a| a.fault.nodes().contains(&&n)).collect();
            for w in mine.windows(2) {
                assert_ne!(w[0].begin, w[1].begin, "{n}: {mine:?}");
            }
        }
    }
}
