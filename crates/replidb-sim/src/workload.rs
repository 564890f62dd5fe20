//! The client: writes through the leader, reads from followers, and waits
//! for the cluster to converge once the faults have healed.
//!
//! The client calls the nodes' engines directly (the HTTP layer is not
//! part of the simulation); the leader's side of a write is the real
//! `Engine::propose` and, for `w=majority`, the real `Leader::wait_for`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replidb_core::{Lsn, Op, WriteConcern};
use replidb_engine::Proposal;

use crate::cluster::{EventKind, ReadEvent, Shared, LEADER};
use crate::SimConfig;

/// Salt of the workload's random stream (faults use another).
const WORKLOAD_SALT: u64 = 0x776f_726b_6c6f_6164;
/// How long a `w=majority` write waits for its acknowledgements.
pub const MAJORITY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the client waits for the cluster to come up.
const READY_TIMEOUT_MS: u64 = 10_000;
/// How long the client waits for convergence after faults heal.
pub const CONVERGENCE_TIMEOUT_MS: u64 = 60_000;

/// The client's own view: what it wrote, so a read can tell stale.
#[derive(Default)]
struct Session {
    expected: BTreeMap<String, u64>,
    token: u64,
    last_write_ms: u64,
}

/// The client's software.
pub(crate) async fn client(shared: Arc<Shared>, cfg: SimConfig) -> turmoil::Result {
    let names = cfg.follower_names();
    if !wait_ready(&shared, &names).await {
        shared.violation("the cluster did not come up within 10s".into());
        return Ok(());
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ WORKLOAD_SALT);
    let session = Arc::new(Mutex::new(Session::default()));
    let key_space = (cfg.writes / 2).max(1);
    let read_window = cfg.lag.hi.as_millis() as u64 + 300;
    let mut reads = Vec::new();
    for i in 0..cfg.writes {
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..=120))).await;
        let key = format!("k{:03}", rng.random_range(0..key_space));
        let value = format!("v{i}");
        let majority = rng.random_bool(0.25);
        let n_reads = cfg.read_ratio.floor() as usize
            + usize::from(rng.random_bool(cfg.read_ratio.fract().clamp(0.0, 1.0)));
        let plan: Vec<(u64, usize)> = (0..n_reads)
            .map(|j| {
                // The first read follows the write at once: the one most
                // likely to miss.
                let delay = if j == 0 {
                    rng.random_range(1..=20)
                } else {
                    rng.random_range(1..=read_window)
                };
                (delay, rng.random_range(0..names.len()))
            })
            .collect();
        let Some(lsn) = write(&shared, &key, &value, majority).await else {
            break;
        };
        {
            let mut s = session.lock().unwrap_or_else(|e| e.into_inner());
            s.expected.insert(key.clone(), lsn);
            s.token = lsn;
            s.last_write_ms = shared.now();
        }
        for (delay, node) in plan {
            let (shared, session) = (shared.clone(), session.clone());
            let (key, node) = (key.clone(), names[node].clone());
            reads.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                read(&shared, &session, &node, &key);
            }));
        }
    }
    for r in reads {
        let _ = r.await;
    }
    while !shared.healed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_converged(&shared, &names).await;
    Ok(())
}

async fn wait_ready(shared: &Shared, names: &[String]) -> bool {
    let start = shared.now();
    while shared.now() - start < READY_TIMEOUT_MS {
        let up = shared.node(LEADER).is_some()
            && names.iter().all(|n| {
                shared
                    .node(n)
                    .and_then(|h| h.follower)
                    .is_some_and(|f| f.status().connected)
            });
        if up {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// One write through the leader; `None` if the leader cannot take it.
async fn write(shared: &Shared, key: &str, value: &str, majority: bool) -> Option<u64> {
    let Some(node) = shared.node(LEADER) else {
        shared.violation("the leader is not running".into());
        return None;
    };
    let op = Op::Put {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
    };
    let committed = match node.engine.propose(Proposal::new(op)).await {
        Ok(c) => c,
        Err(e) => {
            shared.violation(format!("the leader refused a write: {e}"));
            return None;
        }
    };
    let lsn = committed.lsn.0;
    // The client is the only writer: right after its proposal returns, the
    // leader's table is exactly the state at `lsn`.
    if let Ok(d) = node.engine.table().digest() {
        shared.record_digest(LEADER, lsn, d);
    }
    let t = shared.now();
    shared.event_at(
        t,
        EventKind::Persisted {
            key: key.to_string(),
            value: value.to_string(),
            lsn,
            majority,
        },
    );
    shared.update_outcome(|o| {
        o.writes += 1;
        o.last_write_ms = t;
        o.last_lsn = lsn;
    });
    if let (true, Some(leader)) = (majority, node.leader) {
        let (acks, met) = leader
            .wait_for(Lsn(lsn), WriteConcern::Majority, MAJORITY_TIMEOUT)
            .await;
        let needed = WriteConcern::Majority.required(leader.voters());
        shared.event(EventKind::MajorityAck {
            lsn,
            acks,
            needed,
            voters: leader.voters(),
            met,
            waited_ms: shared.now() - t,
        });
        if met {
            shared.update_outcome(|o| {
                o.majority_acked
                    .push((lsn, key.to_string(), value.to_string()))
            });
        }
    }
    Some(lsn)
}

/// One eventual read on a follower, judged against the session.
fn read(shared: &Shared, session: &Mutex<Session>, node: &str, key: &str) {
    let (expected, token, last_write_ms) = {
        let s = session.lock().unwrap_or_else(|e| e.into_inner());
        (
            s.expected.get(key).copied().unwrap_or(0),
            s.token,
            s.last_write_ms,
        )
    };
    let mut ev = ReadEvent {
        node: node.to_string(),
        key: key.to_string(),
        expected,
        token,
        last_write_ms,
        seen: None,
        value: None,
        applied: 0,
    };
    if let Some(h) = shared.node(node) {
        ev.applied = h.engine.positions().applied_lsn.0;
        match h.engine.table().get(key) {
            Ok(Some(v)) => {
                ev.seen = Some(v.lsn.0);
                ev.value = Some(String::from_utf8_lossy(&v.value).into_owned());
            }
            Ok(None) => ev.seen = Some(0),
            Err(_) => {}
        }
    }
    shared.event(EventKind::Read(ev));
}

/// Wait until every follower has applied the leader's last LSN with the
/// same table digest.
async fn wait_converged(shared: &Shared, names: &[String]) {
    let start = shared.now();
    loop {
        if let Some(lsn) = converged(shared, names) {
            let t = shared.now();
            shared.event_at(t, EventKind::Converged { lsn });
            shared.update_outcome(|o| o.converged_ms = Some(t));
            return;
        }
        if shared.now() - start > CONVERGENCE_TIMEOUT_MS {
            let lag: Vec<String> = names
                .iter()
                .map(|n| match shared.node(n) {
                    Some(h) => format!("{n} at lsn {}", h.engine.positions().applied_lsn),
                    None => format!("{n} down"),
                })
                .collect();
            shared.violation(format!(
                "no convergence within {}s after the faults healed: {}",
                CONVERGENCE_TIMEOUT_MS / 1000,
                lag.join(", ")
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn converged(shared: &Shared, names: &[String]) -> Option<u64> {
    let leader = shared.node(LEADER)?;
    let lsn = leader.engine.positions().flush_lsn;
    let digest = leader.engine.table().digest().ok()?;
    for n in names {
        let h = shared.node(n)?;
        if h.engine.positions().applied_lsn != lsn || h.engine.table().digest().ok()? != digest {
            return None;
        }
    }
    Some(lsn.0)
}
