//! The invariants of a leaderless run and the printed report.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use replidb_causal::{merge, Dot, KeyState, Operand};

use super::faults::Fault;
use super::workload::{OpKind, KEYS};
use super::world::{render, World};
use super::LeaderlessConfig;

/// One invariant's verdict.
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

fn verdict(name: String, problems: Vec<String>, ok_detail: String) -> Check {
    if problems.is_empty() {
        Check {
            name,
            ok: true,
            detail: ok_detail,
        }
    } else {
        let n = problems.len();
        let mut detail = problems.into_iter().take(3).collect::<Vec<_>>().join("; ");
        if n > 3 {
            let _ = write!(detail, "; and {} more", n - 3);
        }
        Check {
            name,
            ok: false,
            detail,
        }
    }
}

/// Whether `read` holds everything of `written` (joining it changes
/// nothing): the read saw the write or something that supersedes it.
fn includes(key: &str, read: Option<&KeyState>, written: &KeyState) -> bool {
    let Some(read) = read else {
        return false;
    };
    let joined = merge(key, Some(read.clone()), Operand::State(written.clone())).state;
    joined.canonical_bytes() == read.canonical_bytes()
}

/// Per-setting numbers for the table.
struct Stats {
    reads: usize,
    reads_answered: usize,
    stale: usize,
    writes: usize,
    writes_acked: usize,
    sloppy: usize,
    write_ms: Vec<u64>,
    read_ms: Vec<u64>,
}

/// Nearest-rank percentile of sorted `v`.
fn pct(v: &[u64], p: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1].to_string()
}

/// Stale reads and freshness violations of one world.
fn freshness(world: &World) -> (Stats, Vec<String>) {
    let mut s = Stats {
        reads: 0,
        reads_answered: 0,
        stale: 0,
        writes: 0,
        writes_acked: 0,
        sloppy: 0,
        write_ms: Vec::new(),
        read_ms: Vec::new(),
    };
    let strict_fresh = world.r + world.w > world.ring.replicas();
    let mut violations = Vec::new();
    // Acknowledged writes per key, in ack order: (ack ms, seq, sloppy, state).
    let mut acked: BTreeMap<&str, Vec<(u64, usize, bool, &KeyState)>> = BTreeMap::new();
    for o in &world.outcomes {
        if o.op.kind.is_read() {
            continue;
        }
        s.writes += 1;
        if let (Some(t), Some(st)) = (o.answered_ms, o.state.as_ref()) {
            s.writes_acked += 1;
            s.sloppy += usize::from(o.sloppy);
            s.write_ms.push(t - o.op.at_ms);
            acked
                .entry(o.op.key.as_str())
                .or_default()
                .push((t, o.op.seq, o.sloppy, st));
        }
    }
    for o in &world.outcomes {
        if !o.op.kind.is_read() {
            continue;
        }
        s.reads += 1;
        let Some(t) = o.answered_ms else { continue };
        s.reads_answered += 1;
        s.read_ms.push(t - o.op.at_ms);
        let key = o.op.key.as_str();
        let mut stale = false;
        for (ack, seq, sloppy, st) in acked.get(key).into_iter().flatten() {
            if *ack >= o.op.at_ms {
                continue;
            }
            if includes(key, o.read.as_ref(), st) {
                continue;
            }
            stale = true;
            if strict_fresh && !sloppy {
                violations.push(format!(
                    "R={} W={}: read #{} of {key} at {}ms returned {} without write #{seq} acknowledged at {ack}ms",
                    world.r,
                    world.w,
                    o.op.seq,
                    o.op.at_ms,
                    render(o.read.as_ref())
                ));
            }
        }
        s.stale += usize::from(stale);
    }
    s.write_ms.sort_unstable();
    s.read_ms.sort_unstable();
    (s, violations)
}

/// Every replica of every key holds the same state; no hint is left.
fn convergence(world: &World) -> Vec<String> {
    let mut problems = Vec::new();
    for key in KEYS {
        let pref = world.ring.preference_list(key);
        let states: BTreeSet<Option<Vec<u8>>> = pref
            .iter()
            .filter_map(|u| world.names.iter().position(|n| n == u))
            .map(|i| world.nodes[i].state(key).map(|s| s.canonical_bytes()))
            .collect();
        if states.len() > 1 {
            problems.push(format!("{key}: its replicas {pref:?} differ"));
        }
    }
    let hints: usize = world.nodes.iter().map(|n| n.hints.len()).sum();
    if hints > 0 {
        problems.push(format!("{hints} hints still pending"));
    }
    problems.extend(world.problems.iter().cloned());
    problems
}

/// The converged state of `key` (its first replica's).
fn final_state(world: &World, key: &str) -> Option<KeyState> {
    let first = world
        .ring
        .preference_list(key)
        .first()
        .map(|s| s.to_string())?;
    let i = world.names.iter().position(|n| *n == first)?;
    world.nodes[i].state(key)
}

/// Every acknowledged put or delete survives, is superseded by a version
/// that saw it, or is in a conflict log — itself, or a version that saw it
/// and then lost to a concurrent one.
fn nothing_lost(world: &World) -> Vec<String> {
    let conflicts: Vec<_> = world.nodes.iter().flat_map(|n| n.conflicts()).collect();
    let mut problems = Vec::new();
    for o in &world.outcomes {
        if !matches!(o.op.kind, OpKind::Put { .. } | OpKind::Delete { .. })
            || o.answered_ms.is_none()
        {
            continue;
        }
        let (Some(c), Some(lsn), Some(KeyState::Register(at_write))) =
            (o.coordinator, o.dot, o.state.as_ref())
        else {
            continue;
        };
        let dot = Dot::new(world.names[c].clone(), lsn);
        let Some(version) = at_write.versions.iter().find(|v| v.dot == dot) else {
            problems.push(format!(
                "write #{}: its version is not in its own coordinator's state",
                o.op.seq
            ));
            continue;
        };
        let kept = match final_state(world, &o.op.key) {
            Some(KeyState::Register(r)) => r.versions.iter().any(|v| v.covers(version)),
            _ => false,
        };
        // In a conflict log: itself as a loser, or a loser that had seen
        // it (the write was superseded, and what superseded it lost).
        let logged = conflicts.iter().any(|cf| {
            cf.key == o.op.key
                && cf.versions.iter().any(|v| {
                    let itself = v.origin == dot.origin && v.hlc == version.hlc;
                    (itself && cf.kept.as_ref() != Some(&dot))
                        || (!itself && replidb_causal::vector::vector_covers(&v.version, &dot))
                })
        });
        if !kept && !logged {
            problems.push(format!(
                "write #{} ({}) acknowledged, then lost without a trace",
                o.op.seq,
                o.op.describe()
            ));
        }
    }
    problems
}

/// Counters equal the sum of every increment made durable; sets equal the
/// OR-set model.
fn crdts_exact(world: &World) -> Vec<String> {
    let mut problems = Vec::new();
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    // Set key → member → (add dots, remove contexts).
    type Model<'a> =
        BTreeMap<&'a str, BTreeMap<String, (Vec<Dot>, Vec<&'a replidb_causal::VersionVector>)>>;
    let mut sets: Model = BTreeMap::new();
    for o in &world.outcomes {
        if !o.applied {
            continue;
        }
        let key = o.op.key.as_str();
        match &o.op.kind {
            OpKind::Incr(d) => *sums.entry(key).or_default() += d,
            OpKind::SetAdd(m) => {
                let (Some(c), Some(st)) = (o.coordinator, o.state.as_ref()) else {
                    continue;
                };
                let origin = world.names[c].clone();
                let counter = st.context().get(&origin);
                sets.entry(key)
                    .or_default()
                    .entry(m.clone())
                    .or_default()
                    .0
                    .push(Dot::new(origin, counter));
            }
            OpKind::SetRemove(m) => {
                if let Some(ctx) = o.rm_context.as_ref() {
                    sets.entry(key)
                        .or_default()
                        .entry(m.clone())
                        .or_default()
                        .1
                        .push(ctx);
                }
            }
            _ => {}
        }
    }
    for (key, sum) in &sums {
        let got = final_state(world, key).and_then(|s| s.counter_value());
        if got != Some(*sum) {
            problems.push(format!(
                "{key}: counter {got:?}, the increments add up to {sum}"
            ));
        }
    }
    for (key, members) in &sets {
        let expected: Vec<String> = members
            .iter()
            .filter(|(_, (adds, removes))| {
                adds.iter().any(|d| {
                    !removes
                        .iter()
                        .any(|ctx| replidb_causal::vector::vector_covers(ctx, d))
                })
            })
            .map(|(m, _)| m.clone())
            .collect();
        let got = final_state(world, key)
            .and_then(|s| s.set_members())
            .unwrap_or_default();
        if got != expected {
            problems.push(format!(
                "{key}: members {got:?}, the adds and removes make {expected:?}"
            ));
        }
    }
    problems
}

fn fmt_faults(faults: &[Fault], names: &[String]) -> String {
    if faults.is_empty() {
        return "none".into();
    }
    faults
        .iter()
        .map(|f| format!("at {}ms {}", f.at_ms, f.describe(names)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The run's printed report and its failed invariants.
pub(crate) fn report(cfg: &LeaderlessConfig, worlds: &[World]) -> (String, Vec<String>) {
    let mut out = String::new();
    let Some(first) = worlds.first() else {
        return (out, vec!["no setting ran".into()]);
    };
    let names = &first.names;
    let _ = writeln!(
        out,
        "leaderless simulation, seed {}: {} nodes ({}), N={}, {} requests per setting, faults {}, {} quorum",
        cfg.seed,
        cfg.nodes,
        names.join(" "),
        first.ring.replicas(),
        cfg.ops,
        cfg.faults,
        if cfg.strict { "strict" } else { "sloppy" }
    );
    let links = cfg.links_ms();
    let mut l = Vec::new();
    for a in 0..cfg.nodes {
        for b in a + 1..cfg.nodes {
            let (lo, hi) = links[a][b];
            l.push(format!("{}-{} {lo}..{hi}ms", names[a], names[b]));
        }
    }
    let _ = writeln!(out, "links    one-way lag {}", l.join(", "));
    let _ = writeln!(out, "faults   {}", fmt_faults(&first.faults, names));
    let mut checks = Vec::new();
    let mut rows = Vec::new();
    for world in worlds {
        let tag = format!("R={} W={}", world.r, world.w);
        let _ = writeln!(out, "--- {tag} ---");
        let mut printed = 0;
        let mut elided = 0;
        for (t, line) in &world.story {
            let always = line.starts_with("fault");
            if cfg.story_lines == 0 || printed < cfg.story_lines || always {
                let _ = writeln!(out, "{:>7.3}s {line}", *t as f64 / 1000.0);
                printed += usize::from(!always);
            } else {
                elided += 1;
            }
        }
        if elided > 0 {
            let _ = writeln!(
                out,
                "         ... {elided} more lines (--story-lines 0 prints all)"
            );
        }
        let (stats, violations) = freshness(world);
        let _ = writeln!(
            out,
            "repairs  read repair {}, hints stored {} delivered {}, anti-entropy keys {}",
            world.read_repairs, world.hints_stored, world.hints_delivered, world.ae_repairs
        );
        checks.push(verdict(
            format!("{tag}: convergence"),
            convergence(world),
            format!(
                "every replica of the {} keys holds the same state, no hint left",
                KEYS.len()
            ),
        ));
        checks.push(verdict(
            format!("{tag}: nothing acknowledged lost without a trace"),
            nothing_lost(world),
            "every acknowledged put and delete is kept, superseded or in a conflict log".into(),
        ));
        checks.push(verdict(
            format!("{tag}: counters and sets exact"),
            crdts_exact(world),
            "counters sum every durable increment, sets match the OR-set model".into(),
        ));
        if world.r + world.w > world.ring.replicas() {
            checks.push(verdict(
                format!("{tag}: reads after an acknowledged write see it"),
                violations,
                format!(
                    "W+R>N: {} answered reads, none missed a write acknowledged before it began without a hint holder",
                    stats.reads_answered
                ),
            ));
        }
        rows.push((
            world.r,
            world.w,
            world.r + world.w > world.ring.replicas(),
            stats,
        ));
    }
    let _ = writeln!(
        out,
        "summary  (simulated ms; every setting replays the same requests, lag and faults)"
    );
    let _ = writeln!(
        out,
        "  R  W  W+R>N  stale reads          write p50/p99  read p50/p99  availability  sloppy writes"
    );
    for (r, w, fresh, s) in &rows {
        let stale = if s.reads_answered == 0 {
            "-".to_string()
        } else {
            format!(
                "{:5.1}% ({}/{})",
                100.0 * s.stale as f64 / s.reads_answered as f64,
                s.stale,
                s.reads_answered
            )
        };
        let total = s.reads + s.writes;
        let avail = 100.0 * (s.reads_answered + s.writes_acked) as f64 / total.max(1) as f64;
        let _ = writeln!(
            out,
            "  {r}  {w}  {:<5}  {stale:<19}  {:>5} / {:<5}   {:>4} / {:<5}  {:>6.1}%       {}",
            if *fresh { "yes" } else { "no" },
            pct(&s.write_ms, 50.0),
            pct(&s.write_ms, 99.0),
            pct(&s.read_ms, 50.0),
            pct(&s.read_ms, 99.0),
            avail,
            s.sloppy
        );
    }
    let _ = writeln!(out, "invariants");
    let mut failures = Vec::new();
    for c in &checks {
        let _ = writeln!(
            out,
            "  {}  {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
        if !c.ok {
            failures.push(format!("{}: {}", c.name, c.detail));
        }
    }
    if failures.is_empty() {
        let _ = writeln!(out, "result: PASS (seed {})", cfg.seed);
    } else {
        let _ = writeln!(
            out,
            "result: FAIL (seed {}), reproduce with: {}",
            cfg.seed,
            cfg.command_line()
        );
    }
    (out, failures)
}
