//! The fault schedule: drawn from the seed before the run starts, applied
//! by the driver between simulation steps (crashes and restarts can only
//! be done from outside the hosts).
//!
//! With a fixed leader, every fault hits one follower. With an elected
//! leader (`failover`, `all`), node faults hit any node (the leader too:
//! crashing it is a failover), and two faults target whoever leads when
//! they begin: **crash leader** and **isolate leader** (cut from every
//! node and from etcd, so it cannot renew its lease). A fault whose target
//! is already down or cut off is skipped, with a story line.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{EventKind, Shared, LEADER};
use crate::etcd::ETCD;
use crate::SimConfig;

/// Salt of the fault schedule's random stream.
const FAULT_SALT: u64 = 0x6661_756c_7473;
/// Salt of the link latency streams.
const LATENCY_SALT: u64 = 0x006c_6174_656e_6379;
/// One-way latency of a healthy link, in ms.
pub const LINK_LATENCY_MS: (u64, u64) = (1, 10);
/// One-way latency of a slowed link, in ms.
pub const SLOW_LINK_MS: (u64, u64) = (50, 400);
/// How often each link's latency is drawn again, in ms.
pub const JITTER_PERIOD_MS: u64 = 50;
/// With an elected leader, faults start once the first election is over.
const ELECTED_FIRST_FAULT_MS: u64 = 1000;

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Cut a follower off from the leader (elected: a node from every
    /// other node; etcd stays reachable).
    Partition,
    /// Kill a node's process; restart it at the end.
    Crash,
    /// Slow its links and duplicate / cut its stream.
    Delay,
    /// Kill whoever leads; restart it at the end.
    CrashLeader,
    /// Cut whoever leads off from every node and from etcd.
    IsolateLeader,
}

/// One step of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultAction {
    /// Which fault (begin and end share it).
    pub id: usize,
    /// When (ms since the start).
    pub at_ms: u64,
    /// Which fault.
    pub kind: FaultKind,
    /// Which node; `None` for whoever leads when the fault begins.
    pub node: Option<String>,
    /// `true` starts the fault, `false` heals it.
    pub begin: bool,
    /// How long it lasts (for the story line).
    pub duration_ms: u64,
}

/// Draw the schedule for `cfg`: a few faults spread over the time the
/// workload should take, never two at once on the same node (nor two
/// leader faults at once).
pub fn schedule(cfg: &SimConfig) -> Vec<FaultAction> {
    let mut kinds = Vec::new();
    if cfg.faults.partitions() {
        kinds.push(FaultKind::Partition);
    }
    if cfg.faults.crashes() {
        kinds.push(FaultKind::Crash);
    }
    if cfg.faults.delays() {
        kinds.push(FaultKind::Delay);
    }
    if cfg.faults.elected() {
        kinds.extend([FaultKind::CrashLeader, FaultKind::IsolateLeader]);
    }
    if kinds.is_empty() {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ FAULT_SALT);
    let names = if cfg.faults.elected() {
        cfg.node_names()
    } else {
        cfg.follower_names()
    };
    let first = if cfg.faults.elected() {
        ELECTED_FIRST_FAULT_MS
    } else {
        200
    };
    // The workload sleeps 70 ms on average between writes.
    let horizon = first + 100 + 70 * cfg.writes as u64;
    let count = kinds.len() * (1 + cfg.writes / 40);
    let mut busy_until = vec![0u64; names.len()];
    let mut leader_busy_until = 0u64;
    let mut out = Vec::new();
    for (id, i) in (0..count).enumerate() {
        let kind = kinds[i % kinds.len()];
        let f = rng.random_range(0..names.len());
        let drawn = rng.random_range(first..=horizon);
        let (start, duration_ms, node) = match kind {
            FaultKind::CrashLeader | FaultKind::IsolateLeader => {
                let start = drawn.max(leader_busy_until + 1000);
                let duration_ms = rng.random_range(500..=4000);
                leader_busy_until = start + duration_ms;
                (start, duration_ms, None)
            }
            _ => {
                let start = drawn.max(busy_until[f] + 100);
                let duration_ms = rng.random_range(300..=2500);
                busy_until[f] = start + duration_ms;
                (start, duration_ms, Some(names[f].clone()))
            }
        };
        for (at_ms, begin) in [(start, true), (start + duration_ms, false)] {
            out.push(FaultAction {
                id,
                at_ms,
                kind,
                node: node.clone(),
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
    /// Whether delay faults slow it (not the links to etcd).
    slowable: bool,
}

/// Applies the schedule as simulated time passes, and sets each link's
/// latency.
///
/// Latency is drawn per link from the driver's own seeded streams and
/// set as a fixed value (`set_link_latency`) for the next
/// [`JITTER_PERIOD_MS`], rather than sampled per message by turmoil:
/// tokio wakes the receivers of one `watch` change in an order it
/// randomises (the leader's sessions all watch the engine), so per-message
/// samples from one shared RNG would go to different messages on every
/// run. Fixed per-link values make delivery times independent of that
/// order.
pub struct Driver {
    pending: VecDeque<FaultAction>,
    links: Vec<Link>,
    /// Nodes whose links are slowed.
    slow: BTreeSet<String>,
    next_jitter_ms: u64,
    /// Active faults: id → the node it hit.
    active: BTreeMap<usize, String>,
    /// Faults that were skipped when they should have begun.
    skipped: BTreeSet<usize>,
    /// Pairs each active partition cuts.
    cuts: BTreeMap<usize, Vec<(String, String)>>,
    /// Every other host a node's partition cuts it from.
    nodes: Vec<String>,
}

impl Driver {
    /// A driver for `cfg`'s fault schedule.
    pub fn new(cfg: &SimConfig) -> Self {
        let pairs: Vec<(String, String, bool)> = if cfg.faults.elected() {
            let mut hosts = cfg.node_names();
            hosts.push(ETCD.to_string());
            let mut v = Vec::new();
            for (i, a) in hosts.iter().enumerate() {
                for b in &hosts[i + 1..] {
                    v.push((a.clone(), b.clone(), b != ETCD));
                }
            }
            v
        } else {
            cfg.follower_names()
                .into_iter()
                .map(|f| (LEADER.to_string(), f, true))
                .collect()
        };
        let links = pairs
            .into_iter()
            .enumerate()
            .map(|(i, (a, b, slowable))| Link {
                a,
                b,
                rng: StdRng::seed_from_u64(cfg.seed ^ LATENCY_SALT ^ (i as u64 + 1)),
                slowable,
            })
            .collect();
        Driver {
            pending: schedule(cfg).into(),
            links,
            slow: BTreeSet::new(),
            next_jitter_ms: 0,
            active: BTreeMap::new(),
            skipped: BTreeSet::new(),
            cuts: BTreeMap::new(),
            nodes: cfg.node_names(),
        }
    }

    /// Apply every action due at `now_ms`; once none is left, mark the
    /// faults healed.
    pub fn apply_due(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared, now_ms: u64) {
        while self.pending.front().is_some_and(|a| a.at_ms <= now_ms) {
            let Some(a) = self.pending.pop_front() else {
                break;
            };
            if let Some(line) = self.apply(sim, shared, &a) {
                shared.event_at(now_ms, EventKind::Fault(line));
            }
        }
        if now_ms >= self.next_jitter_ms {
            for l in &mut self.links {
                let slow = l.slowable && (self.slow.contains(&l.a) || self.slow.contains(&l.b));
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

    /// Start or end one fault; the story line, if any.
    fn apply(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        shared: &Shared,
        a: &FaultAction,
    ) -> Option<String> {
        if !a.begin {
            if self.skipped.contains(&a.id) {
                return None;
            }
            let node = self.active.remove(&a.id)?;
            return Some(self.end(sim, shared, a, &node));
        }
        let leader = shared.leader_name();
        let Some(node) = a.node.clone().or_else(|| leader.clone()) else {
            self.skipped.insert(a.id);
            return Some(format!("{} skipped: no leader right now", name(a.kind)));
        };
        if self.active.values().any(|n| *n == node) {
            self.skipped.insert(a.id);
            return Some(format!(
                "{} skipped: {node} is under another fault",
                name(a.kind)
            ));
        }
        self.active.insert(a.id, node.clone());
        let is_leader = shared.elected && leader.as_deref() == Some(node.as_str());
        Some(self.begin(sim, shared, a, &node, is_leader))
    }

    fn begin(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        shared: &Shared,
        a: &FaultAction,
        f: &str,
        is_leader: bool,
    ) -> String {
        let d = a.duration_ms;
        let role = if is_leader { " (the leader)" } else { "" };
        match a.kind {
            FaultKind::Partition if !shared.elected => {
                self.cut(sim, a.id, vec![(LEADER.to_string(), f.to_string())]);
                format!("partition leader <-> {f} for {d}ms")
            }
            FaultKind::Partition => {
                let pairs = self.others(f).map(|o| (f.to_string(), o)).collect();
                self.cut(sim, a.id, pairs);
                format!(
                    "partition {f}{role} from every other node for {d}ms (etcd still reachable)"
                )
            }
            FaultKind::IsolateLeader => {
                let mut pairs: Vec<_> = self.others(f).map(|o| (f.to_string(), o)).collect();
                pairs.push((f.to_string(), ETCD.to_string()));
                self.cut(sim, a.id, pairs);
                format!("isolate leader {f} from every node and etcd for {d}ms")
            }
            FaultKind::Crash | FaultKind::CrashLeader => {
                shared.unregister(f);
                sim.crash(f);
                if a.kind == FaultKind::CrashLeader {
                    format!("crash leader {f} (restart in {d}ms)")
                } else {
                    format!("crash {f}{role} (restart in {d}ms)")
                }
            }
            FaultKind::Delay => {
                self.slow.insert(f.to_string());
                self.next_jitter_ms = 0;
                if let Some(l) = shared.links.get(f) {
                    l.duplicate.store(true, Ordering::Relaxed);
                }
                let peer = if shared.elected {
                    "every node"
                } else {
                    "leader"
                };
                format!(
                    "slow link {peer} <-> {f} (up to {}ms one way), duplicating frames and cutting streams, for {d}ms",
                    SLOW_LINK_MS.1
                )
            }
        }
    }

    fn end(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        shared: &Shared,
        a: &FaultAction,
        f: &str,
    ) -> String {
        match a.kind {
            FaultKind::Partition | FaultKind::IsolateLeader => {
                self.heal(sim, a.id);
                match (a.kind, shared.elected) {
                    (FaultKind::Partition, false) => format!("repair leader <-> {f}"),
                    (FaultKind::Partition, true) => format!("repair {f} <-> every other node"),
                    _ => format!("repair {f}: it reaches every node and etcd again"),
                }
            }
            FaultKind::Crash | FaultKind::CrashLeader => {
                sim.bounce(f);
                format!("restart {f}")
            }
            FaultKind::Delay => {
                self.slow.remove(f);
                self.next_jitter_ms = 0;
                let (mut dups, mut cuts) = (0, 0);
                if let Some(l) = shared.links.get(f) {
                    l.duplicate.store(false, Ordering::Relaxed);
                    dups = l.duplicated.swap(0, Ordering::Relaxed);
                    cuts = l.cuts.swap(0, Ordering::Relaxed);
                }
                let peer = if shared.elected {
                    "every node"
                } else {
                    "leader"
                };
                format!(
                    "link {peer} <-> {f} healthy again ({} duplicated, {} cut)",
                    replidb_core::text::count(dups, "frame was", "frames were"),
                    replidb_core::text::count_s(cuts, "stream"),
                )
            }
        }
    }

    fn others<'a>(&'a self, f: &'a str) -> impl Iterator<Item = String> + 'a {
        self.nodes.iter().filter(move |n| *n != f).cloned()
    }

    fn is_cut(&self, a: &str, b: &str) -> bool {
        self.cuts
            .values()
            .flatten()
            .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    fn cut(&mut self, sim: &mut turmoil::Sim<'_>, id: usize, pairs: Vec<(String, String)>) {
        for (a, b) in &pairs {
            sim.partition(a.as_str(), b.as_str());
        }
        self.cuts.insert(id, pairs);
    }

    /// Repair what fault `id` cut, except pairs another fault still cuts.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, id: usize) {
        let pairs = self.cuts.remove(&id).unwrap_or_default();
        for (a, b) in pairs {
            if !self.is_cut(&a, &b) {
                sim.repair(a.as_str(), b.as_str());
            }
        }
    }
}

fn name(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Partition => "partition",
        FaultKind::Crash => "crash",
        FaultKind::Delay => "slow link",
        FaultKind::CrashLeader => "crash leader",
        FaultKind::IsolateLeader => "isolate leader",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FaultMode;

    #[test]
    fn schedules_are_seeded_and_never_overlap_on_one_node() {
        let mut cfg = SimConfig::new(3);
        cfg.faults = FaultMode::All;
        cfg.writes = 100;
        let s = schedule(&cfg);
        assert_eq!(s, schedule(&cfg));
        assert_eq!(s.len(), 2 * 5 * 3);
        let mut targets: Vec<Option<String>> = cfg.node_names().into_iter().map(Some).collect();
        targets.push(None);
        for t in targets {
            let mine: Vec<_> = s.iter().filter(|a| a.node == t).collect();
            for w in mine.windows(2) {
                assert!(w[0].at_ms <= w[1].at_ms);
                assert_ne!(w[0].begin, w[1].begin, "{t:?}: {mine:?}");
            }
        }
        cfg.faults = FaultMode::Failover;
        let s = schedule(&cfg);
        assert!(s.iter().all(|a| a.node.is_none()));
        assert!(s.iter().all(|a| a.at_ms >= ELECTED_FIRST_FAULT_MS));
        cfg.faults = FaultMode::None;
        assert!(schedule(&cfg).is_empty());
    }
}
