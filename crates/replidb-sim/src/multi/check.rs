//! The invariants of a multi-leader run, and its printed report.
//!
//! 1. **Convergence**: once every fault healed, every node applied every
//!    origin's last LSN and all table digests are equal.
//! 2. **Counters exact**: each counter equals the sum of every
//!    acknowledged delta (plus some subset of the deltas whose outcome is
//!    unknown because their node crashed under them).
//! 3. **Sets exact**: each element is present iff some acknowledged add of
//!    it has a dot no acknowledged remove of it had seen (the OR-set rule,
//!    on the dots and clocks the writes reported); elements with a write of
//!    unknown outcome are not judged.
//! 4. **Nothing lost without a trace**: every acknowledged put is a
//!    surviving version (the value, or a sibling), or causally superseded
//!    (a later write's context covers its dot), or the losing side of an
//!    `lww` entry in some node's conflict log.
//! 5. **HLC respects causality**: a put whose context covers another's dot
//!    has the higher HLC stamp, whatever the skewed wall clocks read.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use replidb_causal::{Conflict, KeyState, Policy, VersionVector};

use super::workload::fmt_wall;
use super::{faults::Driver, MultiConfig, MultiShared, WOp, Write};
use crate::check::Check;
use crate::config::fmt_duration;
use crate::faults::{JITTER_PERIOD_MS, LINK_LATENCY_MS};

/// What the end state and the writes say, computed once for the checks
/// and the summary.
struct Facts {
    /// Final state of every key on the first node.
    states: BTreeMap<String, KeyState>,
    /// Every node's conflict log, deduplicated: `(key, loser origin,
    /// loser value)` → the entry.
    conflicts: BTreeMap<(String, String, Option<Vec<u8>>), Conflict>,
    /// Conflict-log entries of each policy, summed over nodes.
    conflict_entries: BTreeMap<String, usize>,
    /// Digest per node.
    digests: BTreeMap<String, String>,
}

fn facts(shared: &MultiShared) -> Facts {
    let nodes = shared.nodes();
    let mut states = BTreeMap::new();
    if let Some(h) = nodes.values().next() {
        let table = h.engine.table();
        for prefix in ["lww/", "sib/", "ctr/", "set/"] {
            if let Ok(keys) = table.scan(prefix, None, 10_000) {
                for (k, v) in keys {
                    if let Ok(s) = KeyState::decode(&v.value) {
                        states.insert(k, s);
                    }
                }
            }
        }
    }
    let mut conflicts = BTreeMap::new();
    let mut conflict_entries: BTreeMap<String, usize> = BTreeMap::new();
    let mut digests = BTreeMap::new();
    for (n, h) in &nodes {
        digests.insert(n.clone(), h.engine.table().digest().unwrap_or_default());
        for c in h.engine.table().conflicts("", 10_000).unwrap_or_default() {
            *conflict_entries.entry(c.policy.clone()).or_default() += 1;
            for v in c.versions.iter().skip(1) {
                conflicts
                    .entry((c.key.clone(), v.origin.clone(), v.value.clone()))
                    .or_insert_with(|| c.clone());
            }
        }
    }
    Facts {
        states,
        conflicts,
        conflict_entries,
        digests,
    }
}

fn covers(vv: &VersionVector, origin: &str, counter: u64) -> bool {
    vv.get(&origin.to_string()) >= counter
}

/// Run every end-of-run check.
pub(crate) fn run(shared: &MultiShared, cfg: &MultiConfig) -> Vec<Check> {
    let f = facts(shared);
    let writes = shared.writes();
    let runtime = shared.violations();
    vec![
        convergence(shared, cfg, &f, &runtime),
        counters(&f, &writes),
        sets(&f, &writes),
        puts(&f, &writes),
        hlc_order(&writes).check,
    ]
}

fn convergence(shared: &MultiShared, cfg: &MultiConfig, f: &Facts, runtime: &[String]) -> Check {
    let mut problems: Vec<String> = runtime.to_vec();
    if f.digests.len() != cfg.nodes {
        problems.push(format!(
            "{} of {} nodes running at the end",
            f.digests.len(),
            cfg.nodes
        ));
    }
    let distinct: BTreeSet<&String> = f.digests.values().collect();
    if distinct.len() > 1 {
        let all: Vec<String> = f
            .digests
            .iter()
            .map(|(n, d)| format!("{n}={}", &d[..d.len().min(12)]))
            .collect();
        problems.push(format!("table digests differ: {}", all.join(" ")));
    }
    let detail = match convergence_ms(shared) {
        Some(ms) => format!(
            "{} nodes, equal digests {ms}ms after the last fault healed",
            f.digests.len()
        ),
        None => "never".to_string(),
    };
    verdict("converged (equal table digests)", problems, detail)
}

fn convergence_ms(shared: &MultiShared) -> Option<u64> {
    let healed = shared
        .healed_at_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let at = *shared
        .converged_at_ms
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    at.map(|t| t.saturating_sub(healed))
}

fn counters(f: &Facts, writes: &[Write]) -> Check {
    let mut per_key: BTreeMap<&String, (i64, Vec<i64>)> = BTreeMap::new();
    for w in writes {
        if let WOp::Counter { delta } = w.op {
            let e = per_key.entry(&w.key).or_default();
            match w.ack {
                Some(_) => e.0 += delta,
                None => e.1.push(delta),
            }
        }
    }
    let mut problems = Vec::new();
    let mut exact = 0;
    for (key, (sum, unknown)) in &per_key {
        let value = f
            .states
            .get(*key)
            .and_then(KeyState::counter_value)
            .unwrap_or(0);
        let extra = value - sum;
        // Some subset of the unknown deltas may have been made durable.
        let possible = (0u32..1 << unknown.len().min(16)).any(|mask| {
            let s: i64 = unknown
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, d)| d)
                .sum();
            s == extra
        });
        if !possible {
            problems.push(format!(
                "{key} is {value}, acknowledged deltas sum to {sum} (unknown outcome: {unknown:?})"
            ));
        } else if unknown.is_empty() {
            exact += 1;
        }
    }
    verdict(
        "counters equal the sum of acknowledged deltas",
        problems,
        format!(
            "{}, {exact} with every delta acknowledged",
            replidb_core::text::count_s(per_key.len() as u64, "counter")
        ),
    )
}

fn sets(f: &Facts, writes: &[Write]) -> Check {
    // (key, element) → (adds' dots, removes' contexts, any unknown op)
    type Ops<'a> = (Vec<(String, u64)>, Vec<&'a VersionVector>, bool);
    let mut per: BTreeMap<(&String, &String), Ops> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    for w in writes {
        let (e, add) = match &w.op {
            WOp::SetAdd(e) => (e, true),
            WOp::SetRemove(e) => (e, false),
            _ => continue,
        };
        keys.insert(&w.key);
        let ops = per.entry((&w.key, e)).or_default();
        match w.ack.as_ref().and_then(|a| a.set_clock.as_ref()) {
            None => ops.2 = true,
            Some(clock) if add => ops.0.push((w.node.clone(), clock.get(&w.node))),
            Some(clock) => ops.1.push(clock),
        }
    }
    let mut problems = Vec::new();
    let (mut judged, mut present_n, mut unjudged) = (0, 0, 0);
    for ((key, e), (adds, removes, unknown)) in &per {
        let members = f
            .states
            .get(*key)
            .and_then(KeyState::set_members)
            .unwrap_or_default();
        let present = members.contains(e);
        if *unknown {
            unjudged += 1;
            continue;
        }
        judged += 1;
        let expect = adds
            .iter()
            .any(|(o, c)| !removes.iter().any(|r| covers(r, o, *c)));
        if expect {
            present_n += 1;
        }
        if expect != present {
            problems.push(format!(
                "{key}: {e} is {} but its acknowledged adds {adds:?} and removes say it should {}",
                if present { "present" } else { "absent" },
                if expect { "be there" } else { "be gone" }
            ));
        }
    }
    // Nothing appears that nobody added.
    for key in keys {
        let members = f
            .states
            .get(key)
            .and_then(KeyState::set_members)
            .unwrap_or_default();
        for m in members {
            if !per.contains_key(&(key, &m)) {
                problems.push(format!("{key}: {m} is present but was never added"));
            }
        }
    }
    verdict(
        "sets hold exactly the adds no remove observed",
        problems,
        format!(
            "{judged} elements judged ({present_n} present), {unjudged} with a write of unknown outcome skipped"
        ),
    )
}

/// How each acknowledged put ended.
#[derive(Default)]
struct PutFates {
    survived: usize,
    siblings: usize,
    superseded: usize,
    lww_lost: usize,
    lost: Vec<String>,
}

fn put_fates(f: &Facts, writes: &[Write]) -> PutFates {
    let mut fates = PutFates::default();
    let acked: Vec<(&Write, &VersionVector, u64)> = writes
        .iter()
        .filter(|w| matches!(w.op, WOp::Put { .. }))
        .filter_map(|w| {
            let a = w.ack.as_ref()?;
            Some((w, a.vector.as_ref()?, a.lsn))
        })
        .collect();
    for (w, _, lsn) in &acked {
        let WOp::Put { value, .. } = &w.op else {
            continue;
        };
        let versions = match f.states.get(&w.key) {
            Some(KeyState::Register(r)) => r.versions.clone(),
            _ => Vec::new(),
        };
        if versions
            .iter()
            .any(|v| v.dot.origin == w.node && v.dot.counter == *lsn)
        {
            if versions.len() > 1 {
                fates.siblings += 1;
            } else {
                fates.survived += 1;
            }
            continue;
        }
        let later_covers = versions.iter().any(|v| covers(&v.vector(), &w.node, *lsn))
            || acked.iter().any(|(o, vv, l)| {
                o.key == w.key && !(o.node == w.node && l == lsn) && covers(vv, &w.node, *lsn)
            });
        if later_covers {
            fates.superseded += 1;
            continue;
        }
        let logged = f.conflicts.contains_key(&(
            w.key.clone(),
            w.node.clone(),
            Some(value.clone().into_bytes()),
        ));
        if logged {
            fates.lww_lost += 1;
            continue;
        }
        fates.lost.push(format!(
            "{}={value} (dot {}:{lsn}) is not in the table, not superseded, not in any conflict log",
            w.key, w.node
        ));
    }
    fates
}

fn puts(f: &Facts, writes: &[Write]) -> Check {
    let fates = put_fates(f, writes);
    verdict(
        "no acknowledged put lost without a trace",
        fates.lost.clone(),
        format!(
            "{} surviving, {} siblings, {} causally superseded, {} lost to lww and in the conflict log",
            fates.survived, fates.siblings, fates.superseded, fates.lww_lost
        ),
    )
}

/// What [`hlc_order`] found.
struct HlcOrder {
    check: Check,
    /// Pairs of acknowledged puts to one key where the second's context
    /// covers the first.
    pairs: usize,
    /// Of those, the pairs whose later write read an earlier wall clock:
    /// wall-clock last-writer-wins would have kept the older value.
    inverted: usize,
    /// The inverted pair with the widest gap between the two wall clocks,
    /// told as a story line (seed 003's skew anomaly, on this run's data).
    example: Option<String>,
}

fn put_value(w: &Write) -> &str {
    match &w.op {
        WOp::Put { value, .. } => value,
        _ => "",
    }
}

fn hlc_order(writes: &[Write]) -> HlcOrder {
    let puts: Vec<&Write> = writes
        .iter()
        .filter(|w| matches!(w.op, WOp::Put { .. }) && w.ack.is_some())
        .collect();
    let (mut pairs, mut inverted) = (0, 0);
    let mut widest: Option<(u64, String)> = None;
    let mut problems = Vec::new();
    for a in &puts {
        for b in &puts {
            let (Some(aa), Some(ba)) = (&a.ack, &b.ack) else {
                continue;
            };
            if a.key != b.key || (a.node == b.node && aa.lsn == ba.lsn) {
                continue;
            }
            let Some(bv) = &ba.vector else { continue };
            if !covers(bv, &a.node, aa.lsn) {
                continue;
            }
            pairs += 1;
            if ba.phys_ms < aa.phys_ms {
                inverted += 1;
                let gap_ms = aa.phys_ms - ba.phys_ms;
                if widest.as_ref().is_none_or(|(g, _)| gap_ms > *g) {
                    let line = format!(
                        "{key}={later} written on {bn} (wall clock {bw}, hlc {bh}) after it saw {key}={earlier} from {an} (wall clock {aw}, hlc {ah}): wall-clock lww keeps {earlier} and loses the later write; hlc keeps {later}",
                        key = a.key,
                        later = put_value(b),
                        earlier = put_value(a),
                        bn = b.node,
                        an = a.node,
                        bw = fmt_wall(ba.phys_ms),
                        aw = fmt_wall(aa.phys_ms),
                        bh = fmt_hlc(ba.hlc),
                        ah = fmt_hlc(aa.hlc),
                    );
                    widest = Some((gap_ms, line));
                }
            }
            match (aa.hlc, ba.hlc) {
                (Some(ha), Some(hb)) if hb > ha => {}
                (ha, hb) => problems.push(format!(
                    "{}: write #{} at {} (hlc {}) saw write #{} at {} (hlc {}) but is not stamped later",
                    a.key,
                    b.seq,
                    b.node,
                    fmt_hlc(hb),
                    a.seq,
                    a.node,
                    fmt_hlc(ha)
                )),
            }
        }
    }
    let check = verdict(
        "hlc orders every causally later put after what it saw",
        problems,
        format!("{pairs} causal pairs, {inverted} of them against the wall clocks"),
    );
    HlcOrder {
        check,
        pairs,
        inverted,
        example: widest.map(|(_, line)| line),
    }
}

/// How many discarded `lww` versions the summary names.
const LWW_LOST_SHOWN: usize = 6;

/// A value as the summary shows it (`(deleted)` for a tombstone).
fn fmt_value(v: &Option<Vec<u8>>) -> String {
    match v {
        Some(b) => String::from_utf8_lossy(b).into_owned(),
        None => "(deleted)".to_string(),
    }
}

fn fmt_hlc(h: Option<replidb_core::Hlc>) -> String {
    match h {
        Some(h) => format!("{}.{}", fmt_wall(h.wall_ms), h.logical),
        None => "unknown".to_string(),
    }
}

fn verdict(name: &'static str, problems: Vec<String>, ok_detail: String) -> Check {
    if problems.is_empty() {
        Check {
            name,
            detail: ok_detail,
            ok: true,
        }
    } else {
        Check {
            name,
            detail: problems.join("; "),
            ok: false,
        }
    }
}

/// The whole output of a run: header, story, summary, invariants.
pub(crate) fn render(
    cfg: &MultiConfig,
    shared: &MultiShared,
    driver: &Driver,
    checks: &[Check],
) -> String {
    let mut out = String::new();
    let skews: Vec<String> = cfg
        .node_names()
        .iter()
        .zip(&shared.skews)
        .map(|(n, s)| {
            format!(
                "{n} {}{}ms",
                if *s >= 0 { "+" } else { "-" },
                s.unsigned_abs()
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "replidb simulate: seed {} | multi-leader, {} each leading its own log | clock skew {} | {} | faults {}",
        cfg.seed,
        replidb_core::text::count_s(cfg.nodes as u64, "node"),
        skews.join(", "),
        replidb_core::text::count_s(cfg.writes as u64, "write"),
        cfg.faults
    );
    let _ = writeln!(
        out,
        "real: WAL, memory table, engine writer, NodeCore leader, peer streams (apply_origin), causal merge and conflict log | simulated: network ({}..{}ms one way, redrawn every {}ms), skewed clocks, crashes | policies {}",
        LINK_LATENCY_MS.0,
        LINK_LATENCY_MS.1,
        JITTER_PERIOD_MS,
        super::policies().fingerprint()
    );
    let _ = writeln!(out);

    let events = shared.events();
    let ordinary = events.iter().filter(|e| !e.1).count();
    let hidden = if cfg.story_lines == 0 {
        0
    } else {
        ordinary.saturating_sub(cfg.story_lines)
    };
    let mut shown = 0usize;
    let mut elided = false;
    for (t, always, line) in &events {
        if !*always {
            shown += 1;
            if hidden > 0 && shown > cfg.story_lines {
                if !elided {
                    let _ = writeln!(
                        out,
                        "          ... {hidden} more writes (--story-lines 0 shows all)"
                    );
                    elided = true;
                }
                continue;
            }
        }
        let _ = writeln!(out, "{:>7}ms {line}", t);
    }
    let _ = writeln!(out);
    summary(&mut out, cfg, shared, driver);
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
    out
}

fn summary(out: &mut String, cfg: &MultiConfig, shared: &MultiShared, driver: &Driver) {
    let f = facts(shared);
    let writes = shared.writes();
    let _ = writeln!(out, "summary:");
    let mut kinds: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for w in &writes {
        let k = match &w.op {
            WOp::Put {
                policy: Policy::Lww,
                ..
            } => "put lww",
            WOp::Put { .. } => "put siblings",
            WOp::Counter { .. } => "counter",
            WOp::SetAdd(_) | WOp::SetRemove(_) => "set",
        };
        let e = kinds.entry(k).or_default();
        if w.ack.is_some() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let list: Vec<String> = kinds
        .iter()
        .map(|(k, (a, u))| {
            if *u > 0 {
                format!("{k} {a} (+{u} unknown)")
            } else {
                format!("{k} {a}")
            }
        })
        .collect();
    let acked = writes.iter().filter(|w| w.ack.is_some()).count();
    let _ = writeln!(
        out,
        "  writes            {} acknowledged of {}: {}",
        acked,
        writes.len(),
        list.join(", ")
    );
    let faults: Vec<String> = driver
        .counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "  faults            {} | {} frames duplicated, {} streams cut",
        if faults.is_empty() {
            "none".to_string()
        } else {
            faults.join(", ")
        },
        driver.duplicated,
        driver.cuts
    );
    // Conflicts per policy.
    let mut sib_keys = 0;
    let mut sib_extra = 0;
    for s in f.states.values() {
        if let KeyState::Register(r) = s {
            if r.policy == Policy::Siblings && r.versions.len() > 1 {
                sib_keys += 1;
                sib_extra += r.versions.len() - 1;
            }
        }
    }
    let lww_entries = f.conflict_entries.get("lww").copied().unwrap_or(0);
    let lww_distinct = f.conflicts.values().filter(|c| c.policy == "lww").count();
    let type_entries = f.conflict_entries.get("type").copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "  conflicts         lww: {lww_distinct} versions discarded ({lww_entries} conflict-log entries over all nodes) | siblings: {sib_keys} keys hold {sib_extra} concurrent versions beyond the first | type clashes: {type_entries}"
    );
    // What lww discarded, by value: the summary names the first few, every
    // one is in `GET /v1/conflicts` of the node that saw it.
    let lost: Vec<String> = f
        .conflicts
        .iter()
        .filter(|(_, c)| c.policy == "lww")
        .map(|((key, origin, value), c)| {
            let kept = c
                .versions
                .first()
                .map(|v| fmt_value(&v.value))
                .unwrap_or_default();
            format!("{key}={} from {origin} (kept {kept})", fmt_value(value))
        })
        .collect();
    if !lost.is_empty() {
        let shown = lost.len().min(LWW_LOST_SHOWN);
        let more = lost.len() - shown;
        let _ = writeln!(
            out,
            "  lww discarded     {}{}",
            lost[..shown].join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    let fates = put_fates(&f, &writes);
    let _ = writeln!(
        out,
        "  acknowledged puts {} surviving, {} siblings, {} causally superseded, {} discarded by lww and not superseded (each in a conflict log), {} lost",
        fates.survived,
        fates.siblings,
        fates.superseded,
        fates.lww_lost,
        fates.lost.len()
    );
    match convergence_ms(shared) {
        Some(ms) => {
            let _ = writeln!(
                out,
                "  convergence       {ms}ms of simulated time from the last heal to equal digests on all {} nodes",
                cfg.nodes
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  convergence       never (deadline {}s)",
                super::CONVERGE_DEADLINE_MS / 1000
            );
        }
    }
    let order = hlc_order(&writes);
    let _ = writeln!(
        out,
        "  wall clock vs hlc {} causally ordered put pairs on one key; in {} the later write read an earlier wall clock (wall-clock lww would have kept the older value); hlc ordered {} correctly",
        order.pairs,
        order.inverted,
        if order.check.ok {
            "all of them".to_string()
        } else {
            "NOT all of them".to_string()
        }
    );
    if let Some(example) = &order.example {
        let _ = writeln!(out, "  for example       {example}");
    }
    let _ = writeln!(
        out,
        "  skew              up to {} either way",
        fmt_duration(cfg.skew)
    );
    let _ = writeln!(out);
}
