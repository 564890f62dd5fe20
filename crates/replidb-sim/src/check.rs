//! The invariants checked at the end of every run.
//!
//! "The leader" is the fixed leader, or with an elected one the node that
//! leads at the end of the run.
//!
//! 1. **Logs are prefixes**: every follower's WAL, record by record, equals
//!    the leader's at the same LSNs (read with `WalReader::read_range`).
//! 2. **Equal state at equal LSNs**: every table digest any node had at an
//!    applied LSN equals every other node's digest at that LSN (of the same
//!    history: digests are keyed by the LSN and its record's epoch, so a
//!    rewound record is not compared with the one that replaced it).
//! 3. **`w=majority` writes survive**: each write a leader acknowledged at
//!    `w=majority` is, byte for byte, in the WAL of a majority of nodes (of
//!    every node, once the cluster converged), the final leader's included.
//! 4. **Convergence**: after the last fault healed, every follower reached
//!    the leader's last LSN with the leader's digest.
//! 5. **Crashes lose nothing durable**: a restarted node's flush LSN is
//!    at least what it had published before the crash (checked as the node
//!    restarts, reported here); no leader refused a write it should take,
//!    and (elected) never were two leaders writable at once.
//! 6. **One writer per epoch** (elected leader only): every epoch was won
//!    by one node, epochs grow with every election, and every accepted
//!    write of an epoch was made by the node that won it.

use std::collections::BTreeMap;

use replidb_core::text::count_s;
use replidb_core::{Lsn, Op, Record, WriteConcern};
use replidb_engine::Engine;

use crate::cluster::Shared;
use crate::SimConfig;

/// The verdict on one invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Short name.
    pub name: &'static str,
    /// What was checked, or what failed.
    pub detail: String,
    /// Whether it held.
    pub ok: bool,
}

fn whole_log(engine: &Engine) -> Result<Vec<Record>, String> {
    let reader = engine.wal_reader();
    let first = reader.first_lsn();
    let last = reader.flushed_lsn();
    if last < first {
        return Ok(Vec::new());
    }
    reader
        .read_range(first, (last.0 - first.0 + 1) as usize)
        .map_err(|e| e.to_string())
}

/// Run every end-of-run check. `runtime` are the violations found while
/// running (crash losses, a refused write, no convergence).
pub fn run(shared: &Shared, cfg: &SimConfig, runtime: &[String]) -> Vec<Check> {
    let nodes = shared.nodes();
    let mut logs: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    let mut read_errors = Vec::new();
    for (name, h) in &nodes {
        match whole_log(&h.engine) {
            Ok(l) => {
                logs.insert(name.clone(), l);
            }
            Err(e) => read_errors.push(format!("{name}: cannot read its WAL: {e}")),
        }
    }
    let leader = shared.leader_name().unwrap_or_default();
    let leader_log = logs.get(&leader).cloned().unwrap_or_default();
    let by_lsn: BTreeMap<u64, &Record> = leader_log.iter().map(|r| (r.lsn.0, r)).collect();

    // 1. Prefixes.
    let mut problems = read_errors;
    let mut compared = 0usize;
    for (name, log) in logs.iter().filter(|(n, _)| **n != leader) {
        for r in log {
            compared += 1;
            match by_lsn.get(&r.lsn.0) {
                Some(l) if *l == r => {}
                Some(_) => {
                    problems.push(format!(
                        "{name}'s record at lsn {} differs from the leader's",
                        r.lsn
                    ));
                    break;
                }
                None => {
                    problems.push(format!(
                        "{name} has lsn {} which the leader does not",
                        r.lsn
                    ));
                    break;
                }
            }
        }
    }
    let mut checks = vec![verdict(
        "logs are prefixes of the leader's",
        problems,
        format!("{compared} follower records compared"),
    )];

    // 2. Digests at equal LSNs (and epochs): each compared with the first
    // node's digest of the same point.
    let mut by_point: BTreeMap<(u64, u64), Vec<(&String, &String)>> = BTreeMap::new();
    let digests = shared.digests();
    for ((node, lsn, epoch), d) in &digests {
        by_point.entry((*lsn, *epoch)).or_default().push((node, d));
    }
    let mut problems = Vec::new();
    let mut compared = 0usize;
    for ((lsn, _), nodes) in &by_point {
        let Some((first, reference)) = nodes.first() else {
            continue;
        };
        for (node, d) in &nodes[1..] {
            compared += 1;
            if d != reference {
                problems.push(format!(
                    "{node}'s table at lsn {lsn} differs from {first}'s"
                ));
            }
        }
    }
    checks.push(verdict(
        "equal table digests at equal lsns",
        problems,
        format!("{} compared", count_s(compared as u64, "digest")),
    ));

    // 3. Majority-acknowledged writes.
    let outcome = shared.outcome();
    let voters = cfg.followers + 1;
    let need = if outcome.converged_ms.is_some() {
        voters
    } else {
        WriteConcern::Majority.required(voters)
    };
    let mut problems = Vec::new();
    for (lsn, key, value) in &outcome.majority_acked {
        let holders = logs
            .values()
            .filter(|log| {
                log.iter().any(|r| {
                    r.lsn == Lsn(*lsn)
                        && matches!(&r.op, Op::Put { key: k, value: v } if k == key && v == value.as_bytes())
                })
            })
            .count();
        let on_leader = leader_log.iter().any(|r| {
            r.lsn == Lsn(*lsn)
                && matches!(&r.op, Op::Put { key: k, value: v } if k == key && v == value.as_bytes())
        });
        if holders < need {
            problems.push(format!(
                "w=majority write lsn {lsn} ({key}) is on {holders} of {voters} nodes, expected {need}"
            ));
        } else if !on_leader {
            problems.push(format!(
                "w=majority write lsn {lsn} ({key}) is not on the final leader {leader}"
            ));
        }
    }
    checks.push(verdict(
        "w=majority writes present",
        problems,
        format!(
            "{} on {need} of {voters} nodes",
            count_s(outcome.majority_acked.len() as u64, "acknowledged write")
        ),
    ));

    // 4 and 5: found while running.
    let convergence: Vec<String> = runtime
        .iter()
        .filter(|v| v.contains("convergence"))
        .cloned()
        .collect();
    let detail = match outcome.converged_ms {
        Some(t) => format!("at {t}ms"),
        None => "never".to_string(),
    };
    checks.push(verdict(
        "converged after faults healed",
        convergence,
        detail,
    ));
    let other: Vec<String> = runtime
        .iter()
        .filter(|v| !v.contains("convergence"))
        .cloned()
        .collect();
    checks.push(verdict(
        "no durable record lost, no refused write",
        other,
        "checked at every restart and write".to_string(),
    ));
    if shared.elected {
        checks.push(one_writer_per_epoch(shared));
    }
    checks
}

/// Invariant 6: who won each epoch, and who wrote in it.
fn one_writer_per_epoch(shared: &Shared) -> Check {
    let promotions = shared.promotions();
    let mut problems = Vec::new();
    let mut winner: BTreeMap<u64, &String> = BTreeMap::new();
    let mut last = 0u64;
    for (t, node, epoch) in &promotions {
        if *epoch <= last {
            problems.push(format!(
                "{node} won epoch {epoch} at {t}ms, after epoch {last} had been won"
            ));
        }
        last = last.max(*epoch);
        if let Some(other) = winner.insert(*epoch, node) {
            if other != node {
                problems.push(format!("epoch {epoch} was won by {other} and by {node}"));
            }
        }
    }
    let outcome = shared.outcome();
    let mut writers: BTreeMap<u64, &String> = BTreeMap::new();
    for (node, epoch, lsn) in &outcome.accepted {
        match winner.get(epoch) {
            Some(w) if *w == node => {}
            Some(w) => problems.push(format!(
                "{node} accepted lsn {lsn} in epoch {epoch}, which {w} won"
            )),
            None => problems.push(format!(
                "{node} accepted lsn {lsn} in epoch {epoch}, which nobody won"
            )),
        }
        if let Some(other) = writers.insert(*epoch, node) {
            if other != node {
                problems.push(format!("{other} and {node} both wrote in epoch {epoch}"));
            }
        }
    }
    let epochs: Vec<String> = winner.iter().map(|(e, n)| format!("{e}:{n}")).collect();
    verdict(
        "one writer per epoch, epochs increase",
        problems,
        format!(
            "{} (epoch:winner {}), {} in {}",
            count_s(promotions.len() as u64, "election"),
            epochs.join(" "),
            count_s(outcome.accepted.len() as u64, "write"),
            count_s(writers.len() as u64, "epoch")
        ),
    )
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
