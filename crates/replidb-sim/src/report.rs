//! The printed story and the summary table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::check::Check;
use crate::cluster::{Event, EventKind, ReadEvent, Shared};
use crate::config::fmt_duration;
use crate::events::line;
use crate::faults::{JITTER_PERIOD_MS, LINK_LATENCY_MS};
use crate::SimConfig;
use replidb_core::text::count_s;

/// How long the token strategy waits before going to the leader
/// (API.md's default `wait_ms`).
const TOKEN_WAIT_MS: u64 = 1000;

/// Render the whole output of a run.
pub fn render(cfg: &SimConfig, shared: &Shared, checks: &[Check]) -> String {
    let mut out = String::new();
    let events = shared.events();
    header(&mut out, cfg);
    story(&mut out, cfg, &events);
    summary(&mut out, cfg, shared, &events);
    verdicts(&mut out, cfg, checks);
    out
}

fn header(out: &mut String, cfg: &SimConfig) {
    if cfg.faults.elected() {
        let _ = writeln!(
            out,
            "replidb simulate: seed {} | {}, leader elected through etcd | apply lag {}..{} | {} | read ratio {} | faults {}",
            cfg.seed,
            count_s(cfg.followers as u64 + 1, "node"),
            fmt_duration(cfg.lag.lo),
            fmt_duration(cfg.lag.hi),
            count_s(cfg.writes as u64, "write"),
            cfg.read_ratio,
            cfg.faults
        );
        let _ = writeln!(
            out,
            "real: WAL, memory table, engine writer, replication leader/follower, etcd coordinator (lease, election, fencing) | simulated: etcd, network ({}..{}ms one way, redrawn every {}ms), clock, crashes",
            LINK_LATENCY_MS.0,
            LINK_LATENCY_MS.1,
            JITTER_PERIOD_MS
        );
        let _ = writeln!(out);
        return;
    }
    let _ = writeln!(
        out,
        "replidb simulate: seed {} | leader + {} | apply lag {}..{} | {} | read ratio {} | faults {}",
        cfg.seed,
        count_s(cfg.followers as u64, "follower"),
        fmt_duration(cfg.lag.lo),
        fmt_duration(cfg.lag.hi),
        count_s(cfg.writes as u64, "write"),
        cfg.read_ratio,
        cfg.faults
    );
    let _ = writeln!(
        out,
        "real: WAL, memory table, engine writer, replication leader/follower | simulated: network ({}..{}ms one way, redrawn every {}ms), clock, crashes",
        LINK_LATENCY_MS.0,
        LINK_LATENCY_MS.1,
        JITTER_PERIOD_MS
    );
    let _ = writeln!(out);
}

fn story(out: &mut String, cfg: &SimConfig, events: &[Event]) {
    let always = |k: &EventKind| k.always_shown();
    let ordinary = events.iter().filter(|e| !always(&e.kind)).count();
    let hidden = if cfg.story_lines == 0 {
        0
    } else {
        ordinary.saturating_sub(cfg.story_lines)
    };
    let mut shown = 0usize;
    for e in events {
        if !always(&e.kind) {
            if hidden > 0 && shown == cfg.story_lines {
                let _ = writeln!(
                    out,
                    "  ... {hidden} more write/read/apply lines not shown (--story-lines 0 shows all); faults and convergence follow"
                );
            }
            shown += 1;
            if hidden > 0 && shown > cfg.story_lines {
                continue;
            }
        }
        let _ = writeln!(out, "[{:>6}ms] {}", e.t_ms, line(&e.kind));
    }
    let _ = writeln!(out);
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank.min(v.len()) - 1).copied()
}

fn ms(v: Option<u64>) -> String {
    v.map(|x| format!("{x}ms")).unwrap_or_else(|| "-".into())
}

#[derive(Default)]
struct PerNode {
    reads: usize,
    fresh: usize,
    stale: usize,
    miss: usize,
    down: usize,
    lags: Vec<u64>,
}

fn summary(out: &mut String, cfg: &SimConfig, shared: &Shared, events: &[Event]) {
    let outcome = shared.outcome();
    let mut persisted: BTreeMap<u64, u64> = BTreeMap::new();
    let mut majority = (0usize, 0usize);
    let mut reads: Vec<(u64, &ReadEvent)> = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::Persisted { lsn, .. } => {
                persisted.insert(*lsn, e.t_ms);
            }
            EventKind::MajorityAck { met, .. } => {
                majority.0 += 1;
                majority.1 += usize::from(*met);
            }
            EventKind::Read(r) => reads.push((e.t_ms, r)),
            _ => {}
        }
    }
    let mut per: BTreeMap<String, PerNode> = cfg
        .read_targets()
        .into_iter()
        .map(|n| (n, PerNode::default()))
        .collect();
    for (_, r) in &reads {
        let p = per.entry(r.node.clone()).or_default();
        p.reads += 1;
        match r.seen {
            None => p.down += 1,
            Some(0) => p.miss += 1,
            Some(s) if s < r.expected => p.stale += 1,
            Some(_) => p.fresh += 1,
        }
    }
    let mut all_lags = Vec::new();
    for (node, p) in per.iter_mut() {
        for (lsn, t) in &persisted {
            if let Some(at) = shared.applied_at(node, *lsn) {
                p.lags.push(at.saturating_sub(*t));
            }
        }
        p.lags.sort_unstable();
        all_lags.extend_from_slice(&p.lags);
    }
    all_lags.sort_unstable();

    let _ = writeln!(out, "== summary ==");
    let _ = writeln!(
        out,
        "writes: {} persisted (last lsn {}), {} at w=majority, {} acknowledged in time; reads on followers: {}",
        outcome.writes,
        outcome.last_lsn,
        majority.0,
        majority.1,
        reads.len()
    );
    if cfg.faults.elected() {
        failover_summary(out, events);
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<8} {:>5} {:>5} {:>5} {:>5} {:>5} {:>10} {:>8} {:>8} {:>8} {:>8}",
        if cfg.faults.elected() {
            "node"
        } else {
            "follower"
        },
        "reads",
        "fresh",
        "stale",
        "miss",
        "down",
        "stale-rate",
        "lag p50",
        "lag p90",
        "lag p99",
        "lag max"
    );
    let mut total = PerNode::default();
    for p in per.values() {
        total.reads += p.reads;
        total.fresh += p.fresh;
        total.stale += p.stale;
        total.miss += p.miss;
        total.down += p.down;
    }
    total.lags = all_lags;
    for (node, p) in per
        .iter()
        .chain(std::iter::once((&"all".to_string(), &total)))
    {
        let served = p.reads - p.down;
        let rate = if served == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * (p.stale + p.miss) as f64 / served as f64)
        };
        let _ = writeln!(
            out,
            "{:<8} {:>5} {:>5} {:>5} {:>5} {:>5} {:>10} {:>8} {:>8} {:>8} {:>8}",
            node,
            p.reads,
            p.fresh,
            p.stale,
            p.miss,
            p.down,
            rate,
            ms(pct(&p.lags, 50.0)),
            ms(pct(&p.lags, 90.0)),
            ms(pct(&p.lags, 99.0)),
            ms(all_max(&p.lags)),
        );
    }
    let _ = writeln!(
        out,
        "(stale-rate = (stale + miss) / reads answered; lag = leader persisted -> follower applied)"
    );
    let _ = writeln!(out);
    let healed = shared
        .healed_at_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let since = outcome.last_write_ms.max(healed);
    let what = if healed > outcome.last_write_ms {
        "the last fault healed"
    } else {
        "the last write"
    };
    match outcome.converged_ms {
        Some(t) => {
            let _ = writeln!(
                out,
                "convergence: every follower at lsn {} with equal digests {}ms after {what} (t={t}ms)",
                outcome.last_lsn,
                t.saturating_sub(since)
            );
        }
        None => {
            let _ = writeln!(out, "convergence: NOT reached");
        }
    }
    let _ = writeln!(out);
    strategies(out, cfg, shared, &reads);
}

/// Elections, fencing, rewinds and the client's waits, in one line.
fn failover_summary(out: &mut String, events: &[Event]) {
    let (mut elections, mut fenced, mut rewound, mut rewinds, mut failed) = (0, 0, 0, 0, 0);
    let (mut waits, mut longest) = (0, 0);
    for e in events {
        match &e.kind {
            EventKind::Elected { .. } => elections += 1,
            EventKind::Fenced { .. } => fenced += 1,
            EventKind::Rewound { records, .. } => {
                rewinds += 1;
                rewound += records;
            }
            EventKind::WriteFailed { .. } => failed += 1,
            EventKind::LeaderWait { waited_ms, .. } => {
                waits += 1;
                longest = longest.max(*waited_ms);
            }
            _ => {}
        }
    }
    let _ = writeln!(
        out,
        "failover: {}, {} fenced, {} rewound in {} (never a w=majority write: see the invariants), {} retried; the client waited for a writable leader {}, longest {longest}ms",
        count_s(elections as u64, "election"),
        count_s(fenced as u64, "leader"),
        count_s(rewound, "record"),
        count_s(rewinds as u64, "rewind"),
        count_s(failed as u64, "write"),
        count_s(waits as u64, "time"),
    );
}

fn all_max(v: &[u64]) -> Option<u64> {
    v.last().copied()
}

/// What each read-your-writes strategy would have cost for the same reads.
fn strategies(out: &mut String, cfg: &SimConfig, shared: &Shared, reads: &[(u64, &ReadEvent)]) {
    let window = cfg.lag.hi.as_millis() as u64 + 100;
    let stale = |r: &ReadEvent| matches!(r.seen, Some(s) if s < r.expected);
    // (leader reads, waits, stale served)
    let mut eventual = (0usize, Vec::new(), 0usize);
    let mut token = (0usize, Vec::new(), 0usize);
    let mut fallback = (0usize, Vec::new(), 0usize);
    let mut session = (0usize, Vec::new(), 0usize);
    for (t, r) in reads {
        let down = r.seen.is_none();
        if down {
            eventual.0 += 1;
            token.0 += 1;
            fallback.0 += 1;
            session.0 += 1;
            continue;
        }
        eventual.2 += usize::from(stale(r));
        if r.applied < r.token {
            fallback.0 += 1;
            match shared.applied_at(&r.node, r.token) {
                Some(at) if at.saturating_sub(*t) <= TOKEN_WAIT_MS => {
                    token.1.push(at.saturating_sub(*t))
                }
                _ => {
                    token.0 += 1;
                    token.1.push(TOKEN_WAIT_MS);
                }
            }
        }
        if t.saturating_sub(r.last_write_ms) < window {
            session.0 += 1;
        } else {
            session.2 += usize::from(stale(r));
        }
    }
    let _ = writeln!(
        out,
        "read-your-writes (token = lsn of the client's last write)  leader reads  waits  wait p50  wait max  stale served"
    );
    let rows = [
        ("eventual: no guarantee".to_string(), eventual),
        (
            format!("token + wait (min_lsn, wait_ms={TOKEN_WAIT_MS})"),
            token,
        ),
        ("leader fallback (min_lsn, no wait)".to_string(), fallback),
        (
            format!(
                "session window (leader for {})",
                fmt_duration(std::time::Duration::from_millis(window))
            ),
            session,
        ),
    ];
    for (name, (leader, mut waits, stale)) in rows {
        waits.sort_unstable();
        let _ = writeln!(
            out,
            "{:<57} {:>12} {:>6} {:>9} {:>9} {:>13}",
            name,
            leader,
            waits.len(),
            ms(pct(&waits, 50.0)),
            ms(all_max(&waits)),
            stale
        );
    }
    let _ = writeln!(out);
}

fn verdicts(out: &mut String, cfg: &SimConfig, checks: &[Check]) {
    let _ = writeln!(out, "invariants:");
    for c in checks {
        let _ = writeln!(
            out,
            "  {} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    if checks.iter().all(|c| c.ok) {
        let _ = writeln!(out, "result: PASS (seed {})", cfg.seed);
    } else {
        let _ = writeln!(out, "result: FAIL, reproduce with: {}", cfg.command_line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_invariant_names_the_command_that_reproduces_it() {
        let cfg = SimConfig::new(99);
        let checks = [Check {
            name: "logs are prefixes of the leader's",
            detail: "f2 has lsn 9 which the leader does not".into(),
            ok: false,
        }];
        let mut out = String::new();
        verdicts(&mut out, &cfg, &checks);
        assert!(out.contains("  FAIL logs are prefixes of the leader's: f2 has lsn 9"));
        assert!(out.ends_with(
            "result: FAIL, reproduce with: replidb simulate --seed 99 --followers 3 --lag 100ms..500ms --writes 20 --read-ratio 3 --faults none\n"
        ));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(pct(&v, 50.0), Some(50));
        assert_eq!(pct(&v, 99.0), Some(99));
        assert_eq!(pct(&[7], 90.0), Some(7));
        assert_eq!(pct(&[], 50.0), None);
    }
}
