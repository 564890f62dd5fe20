//! The client: writes through the leader, reads from followers, and waits
//! for the cluster to converge once the faults have healed.
//!
//! The client calls the nodes' engines directly (the HTTP layer is not
//! part of the simulation); the leader's side of a write is the real
//! `Engine::propose` and, for `w=majority`, the real `Leader::wait_for`.
//! With an elected leader, the client writes only through a node whose
//! `Leader::writable()` is `Ok` (the fencing check the HTTP write path
//! makes), waits while there is none, and retries a write that failed
//! because its node crashed. It stands next to every node at once, so it
//! also reaches a leader cut off from everyone else: only fencing stops it
//! from writing there.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replidb_causal::{CausalWrite, Policy};
use replidb_core::{Epoch, Lsn, Op, WriteConcern};
use replidb_engine::{Committed, Proposal};

use replidb_replication::Leader;

use crate::cluster::{EventKind, NodeHandle, ReadEvent, Shared, LEADER};
use crate::SimConfig;

/// Salt of the workload's random stream (faults use another).
const WORKLOAD_SALT: u64 = 0x776f_726b_6c6f_6164;
/// Salt of the typed-key writes' stream ([`SimConfig::typed_keys`]).
const TYPED_SALT: u64 = 0x7479_7065_645f_6b65;
/// Typed keys the client writes (`t0`..): few, so deletes meet live keys.
const TYPED_KEYS: u32 = 8;
/// How long a `w=majority` write waits for its acknowledgements.
pub const MAJORITY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the client waits for the cluster to come up.
const READY_TIMEOUT_MS: u64 = 10_000;
/// How long the client waits for a writable leader.
const LEADER_TIMEOUT_MS: u64 = 30_000;
/// Attempts at one write (elected leader) before giving up.
const WRITE_ATTEMPTS: usize = 5;
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
    let names = cfg.read_targets();
    if !wait_ready(&shared, &names).await {
        shared.violation("the cluster did not come up within 10s".into());
        return Ok(());
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ WORKLOAD_SALT);
    // Its own stream, so the plain workload draws the same numbers with
    // or without typed keys.
    let mut typed_rng = StdRng::seed_from_u64(cfg.seed ^ TYPED_SALT);
    let session = Arc::new(Mutex::new(Session::default()));
    let key_space = (cfg.writes / 2).max(1);
    let read_window = cfg.lag.hi.as_millis() as u64 + 300;
    let mut reads = Vec::new();
    let stretch = pace(&shared, &cfg);
    for i in 0..cfg.writes {
        let pause = rng.random_range(20..=120u64);
        tokio::time::sleep(Duration::from_millis((pause as f64 * stretch) as u64)).await;
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
        if cfg.typed_keys
            && typed_rng.random_bool(0.5)
            && typed_write(&shared, &mut typed_rng).await.is_none()
        {
            break;
        }
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

/// How much to stretch the pauses between writes so that, with an elected
/// leader, the writes go on until the last fault heals (a failover the
/// client does not write through tests nothing). 1 with a fixed leader.
fn pace(shared: &Shared, cfg: &SimConfig) -> f64 {
    if !cfg.faults.elected() {
        return 1.0;
    }
    let end = crate::faults::schedule(cfg)
        .iter()
        .map(|a| a.at_ms)
        .max()
        .unwrap_or(0);
    let span = (end + 300).saturating_sub(shared.now()) as f64;
    (span / (70.0 * cfg.writes as f64)).max(1.0)
}

async fn wait_ready(shared: &Shared, names: &[String]) -> bool {
    let start = shared.now();
    while shared.now() - start < READY_TIMEOUT_MS {
        let leader = shared.leader_name();
        let up = leader
            .as_ref()
            .and_then(|l| shared.node(l))
            .is_some_and(|h| h.leader.is_some_and(|l| l.writable().is_ok()))
            && names
                .iter()
                .filter(|n| Some(*n) != leader.as_ref())
                .all(|n| {
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

/// The node to write through: the fixed leader, or (elected) the node
/// whose leader accepts writes, waiting while none does.
async fn writer(shared: &Shared) -> Option<(String, NodeHandle)> {
    if !shared.elected {
        let Some(node) = shared.node(LEADER) else {
            shared.violation("the leader is not running".into());
            return None;
        };
        return Some((LEADER.to_string(), node));
    }
    let start = shared.now();
    loop {
        let writable: Vec<(String, NodeHandle, Arc<Leader>)> = shared
            .nodes()
            .into_iter()
            .filter_map(|(n, h)| {
                let l = h.leader.clone()?;
                l.writable().is_ok().then_some((n, h, l))
            })
            .collect();
        if writable.len() > 1 {
            let who: Vec<String> = writable
                .iter()
                .map(|(n, _, l)| format!("{n} (epoch {})", l.epoch()))
                .collect();
            shared.violation(format!(
                "two writable leaders at once at {}ms: {}",
                shared.now(),
                who.join(", ")
            ));
        }
        if let Some((name, h, l)) = writable.into_iter().next() {
            let waited_ms = shared.now() - start;
            if waited_ms > 0 {
                shared.event(EventKind::LeaderWait {
                    waited_ms,
                    node: name.clone(),
                    epoch: l.epoch().0,
                });
            }
            return Some((name, h));
        }
        if shared.now() - start > LEADER_TIMEOUT_MS {
            shared.violation(format!(
                "no writable leader for {}s",
                LEADER_TIMEOUT_MS / 1000
            ));
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One write through the leader; `None` if no leader can take it.
async fn write(shared: &Shared, key: &str, value: &str, majority: bool) -> Option<u64> {
    let op = Op::Put {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
    };
    let (name, node, committed) = propose(shared, key, |epoch| plain(op.clone(), epoch)).await?;
    let lsn = committed.lsn.0;
    let t = shared.now();
    shared.event_at(
        t,
        EventKind::Persisted {
            node: name.clone(),
            epoch: shared.elected.then_some(committed.epoch.0),
            key: key.to_string(),
            value: value.to_string(),
            lsn,
            majority,
        },
    );
    if let (true, Some(leader)) = (majority, node.leader) {
        let (acks, met) = leader
            .wait_for(Lsn(lsn), WriteConcern::Majority, MAJORITY_TIMEOUT)
            .await;
        let needed = WriteConcern::Majority.required(leader.voters());
        shared.event(EventKind::MajorityAck {
            node: name.clone(),
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

/// A plain proposal, as the leader of `epoch` when there is one.
fn plain(op: Op, epoch: Option<Epoch>) -> Proposal {
    match epoch {
        Some(e) => Proposal::in_epoch(op, Vec::new(), e),
        None => Proposal::new(op),
    }
}

/// One typed-key write ([`SimConfig::typed_keys`]): an increment of a
/// counter (`t` and an even number), an add to a set (odd), or a delete of
/// either, drawn from `rng`. The keys keep their kinds, so a refusal is a
/// violation like any other. The reads do not look at these keys; the
/// logs, the digests at equal LSNs and convergence do.
async fn typed_write(shared: &Shared, rng: &mut StdRng) -> Option<u64> {
    let n = rng.random_range(0..TYPED_KEYS);
    let key = format!("t{n}");
    let delete = rng.random_bool(0.25);
    let member = format!("m{}", rng.random_range(0..4u8));
    let (_, _, committed) = propose(shared, &key, |epoch| {
        if delete {
            return plain(Op::Delete { key: key.clone() }, epoch);
        }
        let write = if n % 2 == 0 {
            CausalWrite::Counter { delta: 1 }
        } else {
            CausalWrite::Set {
                add: vec![member.clone()],
                remove: Vec::new(),
            }
        };
        Proposal::causal(key.clone(), write, Policy::Lww, epoch)
    })
    .await?;
    Some(committed.lsn.0)
}

/// Propose through the leader, retrying (elected leader) a proposal that
/// failed because its node crashed or lost the lead, and record what every
/// accepted write leaves for the checks: the leader's digest at its LSN,
/// and who accepted it in which epoch. `make` builds the proposal for the
/// epoch of the node it goes to.
async fn propose(
    shared: &Shared,
    key: &str,
    make: impl Fn(Option<Epoch>) -> Proposal,
) -> Option<(String, NodeHandle, Committed)> {
    let mut attempt = 0;
    let (name, node, committed) = loop {
        attempt += 1;
        let (name, node) = writer(shared).await?;
        // Propose as the leader of its epoch, as the server's write path
        // does: the writer refuses it if the node adopted a newer epoch.
        let proposal = make(node.leader.as_ref().map(|l| l.epoch()));
        match node.engine.propose(proposal).await {
            Ok(c) => break (name, node, c),
            Err(e) if shared.elected && attempt < WRITE_ATTEMPTS => {
                shared.event(EventKind::WriteFailed {
                    node: name,
                    key: key.to_string(),
                    why: e.to_string(),
                });
            }
            Err(e) => {
                shared.violation(format!("{name} refused a write: {e}"));
                return None;
            }
        }
    };
    let lsn = committed.lsn.0;
    if let Some(l) = &node.leader {
        if l.epoch() != committed.epoch {
            shared.violation(format!(
                "{name}, leader of epoch {}, wrote lsn {lsn} in epoch {}",
                l.epoch(),
                committed.epoch
            ));
        }
    }
    // The client is the only writer: right after its proposal returns, the
    // leader's table is exactly the state at `lsn`.
    if let Ok(d) = node.engine.table().digest() {
        shared.record_digest(&name, lsn, committed.epoch.0, d);
    }
    let t = shared.now();
    shared.update_outcome(|o| {
        o.writes += 1;
        o.last_write_ms = t;
        o.last_lsn = lsn;
        o.accepted.push((name.clone(), committed.epoch.0, lsn));
    });
    Some((name, node, committed))
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
    let name = shared.leader_name()?;
    let leader = shared.node(&name)?;
    if leader.leader.as_ref().is_none_or(|l| l.writable().is_err()) {
        return None;
    }
    let lsn = leader.engine.positions().flush_lsn;
    let digest = leader.engine.table().digest().ok()?;
    for n in names.iter().filter(|n| **n != name) {
        let h = shared.node(n)?;
        if h.engine.positions().applied_lsn != lsn || h.engine.table().digest().ok()? != digest {
            return None;
        }
    }
    Some(lsn.0)
}
