//! The fault schedule: drawn from the seed before the run starts, applied
//! by the driver between simulation steps (crashes and restarts can only
//! be done from outside the hosts).

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{EventKind, Shared, LEADER};
use crate::{FaultMode, SimConfig};

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

/// What a fault does to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Cut the follower off from the leader (both ways).
    Partition,
    /// Kill the follower's process; restart it at the end.
    Crash,
    /// Slow its link and duplicate / cut its stream.
    Delay,
}

/// One step of the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultAction {
    /// When (ms since the start).
    pub at_ms: u64,
    /// Which fault.
    pub kind: FaultKind,
    /// Which follower.
    pub node: String,
    /// `true` starts the fault, `false` heals it.
    pub begin: bool,
    /// How long it lasts (for the story line).
    pub duration_ms: u64,
}

/// Draw the schedule for `cfg`: a few faults spread over the time the
/// workload should take, never two at once on the same follower.
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
    if cfg.faults == FaultMode::None || kinds.is_empty() {
        return Vec::new();
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ FAULT_SALT);
    let names = cfg.follower_names();
    // The workload sleeps 70 ms on average between writes.
    let horizon = 300 + 70 * cfg.writes as u64;
    let count = kinds.len() * (1 + cfg.writes / 40);
    let mut busy_until = vec![0u64; names.len()];
    let mut out = Vec::new();
    for i in 0..count {
        let kind = kinds[i % kinds.len()];
        let f = rng.random_range(0..names.len());
        let start = rng.random_range(200..=horizon).max(busy_until[f] + 100);
        let duration_ms = rng.random_range(300..=2500);
        busy_until[f] = start + duration_ms;
        for (at_ms, begin) in [(start, true), (start + duration_ms, false)] {
            out.push(FaultAction {
                at_ms,
                kind,
                node: names[f].clone(),
                begin,
                duration_ms,
            });
        }
    }
    out.sort_by_key(|a| a.at_ms);
    out
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
    pending: std::collections::VecDeque<FaultAction>,
    /// Per follower: its latency stream and whether its link is slowed.
    links: Vec<(String, StdRng, bool)>,
    next_jitter_ms: u64,
}

impl Driver {
    /// A driver for `cfg`'s fault schedule.
    pub fn new(cfg: &SimConfig) -> Self {
        let links = cfg
            .follower_names()
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let rng = StdRng::seed_from_u64(cfg.seed ^ LATENCY_SALT ^ (i as u64 + 1));
                (n, rng, false)
            })
            .collect();
        Driver {
            pending: schedule(cfg).into(),
            links,
            next_jitter_ms: 0,
        }
    }

    /// Apply every action due at `now_ms`; once none is left, mark the
    /// faults healed.
    pub fn apply_due(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared, now_ms: u64) {
        while self.pending.front().is_some_and(|a| a.at_ms <= now_ms) {
            let Some(a) = self.pending.pop_front() else {
                break;
            };
            if a.kind == FaultKind::Delay {
                if let Some(l) = self.links.iter_mut().find(|l| l.0 == a.node) {
                    l.2 = a.begin;
                }
                self.next_jitter_ms = now_ms;
            }
            apply(sim, shared, &a, now_ms);
        }
        if now_ms >= self.next_jitter_ms {
            for (name, rng, slow) in &mut self.links {
                let (lo, hi) = if *slow { SLOW_LINK_MS } else { LINK_LATENCY_MS };
                let d = Duration::from_millis(rng.random_range(lo..=hi));
                sim.set_link_latency(LEADER, name.as_str(), d);
            }
            self.next_jitter_ms = now_ms + JITTER_PERIOD_MS;
        }
        if self.pending.is_empty() && !shared.healed.swap(true, Ordering::Relaxed) {
            shared.healed_at_ms.store(now_ms, Ordering::Relaxed);
        }
    }
}

fn apply(sim: &mut turmoil::Sim<'_>, shared: &Shared, a: &FaultAction, now_ms: u64) {
    let f = a.node.as_str();
    let line = match (a.kind, a.begin) {
        (FaultKind::Partition, true) => {
            sim.partition(LEADER, f);
            format!("partition leader <-> {f} for {}ms", a.duration_ms)
        }
        (FaultKind::Partition, false) => {
            sim.repair(LEADER, f);
            format!("repair leader <-> {f}")
        }
        (FaultKind::Crash, true) => {
            shared.unregister(f);
            sim.crash(f);
            format!("crash {f} (restart in {}ms)", a.duration_ms)
        }
        (FaultKind::Crash, false) => {
            sim.bounce(f);
            format!("restart {f}")
        }
        (FaultKind::Delay, true) => {
            if let Some(l) = shared.links.get(f) {
                l.duplicate.store(true, Ordering::Relaxed);
            }
            format!(
                "slow link leader <-> {f} (up to {}ms one way), duplicating frames and cutting streams, for {}ms",
                SLOW_LINK_MS.1,
                a.duration_ms
            )
        }
        (FaultKind::Delay, false) => {
            let (mut dups, mut cuts) = (0, 0);
            if let Some(l) = shared.links.get(f) {
                l.duplicate.store(false, Ordering::Relaxed);
                dups = l.duplicated.swap(0, Ordering::Relaxed);
                cuts = l.cuts.swap(0, Ordering::Relaxed);
            }
            format!(
                "link leader <-> {f} healthy again ({dups} frames were duplicated, {cuts} streams cut)"
            )
        }
    };
    shared.event_at(now_ms, EventKind::Fault(line));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_seeded_and_never_overlap_on_one_follower() {
        let mut cfg = SimConfig::new(3);
        cfg.faults = FaultMode::All;
        cfg.writes = 100;
        let s = schedule(&cfg);
        assert_eq!(s, schedule(&cfg));
        assert_eq!(s.len(), 2 * 3 * 3);
        for name in cfg.follower_names() {
            let mine: Vec<_> = s.iter().filter(|a| a.node == name).collect();
            for w in mine.windows(2) {
                assert!(w[0].at_ms <= w[1].at_ms);
                assert_ne!(w[0].begin, w[1].begin, "{name}: {mine:?}");
            }
        }
        cfg.faults = FaultMode::None;
        assert!(schedule(&cfg).is_empty());
    }
}
