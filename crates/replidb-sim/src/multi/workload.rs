//! The client of a multi-leader run: causal writes at random nodes on a
//! few overlapping keys, then the wait for convergence.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replidb_causal::{CausalWrite, KeyState, Policy, VersionVector};
use replidb_core::{Hlc, Lsn};
use replidb_engine::{Committed, Proposal};

use super::{policies, MultiConfig, MultiNode, MultiShared, CONVERGE_DEADLINE_MS};

/// Salt of the workload's random stream.
const WORKLOAD_SALT: u64 = 0x006d_756c_7469;
/// Longest a write may take before its outcome counts as unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the client looks for convergence.
const POLL: Duration = Duration::from_millis(10);

/// What a write asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WOp {
    /// A plain put of a unique value; `context`: with the context the
    /// client read at that node just before (else blind).
    Put {
        /// The value.
        value: String,
        /// The key's policy.
        policy: Policy,
        /// Whether the client sent the context it had read.
        context: bool,
    },
    /// A counter change.
    Counter {
        /// The delta.
        delta: i64,
    },
    /// Add an element to a set.
    SetAdd(String),
    /// Remove an element from a set.
    SetRemove(String),
}

/// What the node answered to an acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Its LSN in the node's own log (the counter of its dot).
    pub lsn: u64,
    /// Its HLC stamp (plain puts).
    pub hlc: Option<Hlc>,
    /// The node's physical wall clock just before the write.
    pub phys_ms: u64,
    /// A put's version vector (its context plus its dot).
    pub vector: Option<VersionVector>,
    /// A set's clock right after the write: an add's dot is
    /// `(node, clock[node])`, a remove's context is the whole clock.
    pub set_clock: Option<VersionVector>,
}

/// One write of the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// Its number.
    pub seq: usize,
    /// When it was issued (ms).
    pub t_ms: u64,
    /// The node it went to.
    pub node: String,
    /// The key.
    pub key: String,
    /// What it asked for.
    pub op: WOp,
    /// `Some` when acknowledged; `None` when it failed or its node
    /// crashed under it (it may or may not have been made durable).
    pub ack: Option<Ack>,
}

/// The client: writes, then waits for the faults to heal and the nodes to
/// converge.
pub(crate) async fn client(shared: Arc<MultiShared>, cfg: MultiConfig) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ WORKLOAD_SALT);
    let names = cfg.node_names();
    // Wait for every node to open its engine.
    while shared.nodes().len() < names.len() && shared.now() < 10_000 {
        tokio::time::sleep(POLL).await;
    }
    let mut seq = 0;
    while seq < cfg.writes {
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..=180))).await;
        // A batch of 1..3 writes issued at once at different nodes, often
        // to the same key: concurrent writes even on a healthy network.
        let size = match rng.random_range(0..10) {
            0..6 => 1,
            6..9 => 2,
            _ => 3,
        }
        .min(cfg.writes - seq)
        .min(names.len());
        let first = rng.random_range(0..names.len());
        let mut shape = draw(&mut rng);
        // Distinct running nodes, from a random one on.
        let running = shared.nodes();
        let targets: Vec<String> = (0..names.len())
            .map(|k| names[(first + k) % names.len()].clone())
            .filter(|n| running.contains_key(n))
            .take(size)
            .collect();
        if targets.is_empty() {
            shared.event(false, format!("client   write #{seq}: no node is running"));
            continue;
        }
        let mut batch = Vec::new();
        for (k, node) in targets.into_iter().enumerate() {
            if k > 0 && rng.random_bool(0.3) {
                shape = draw(&mut rng);
            }
            let (key, op) = shape.clone();
            let op = match op {
                WOp::Put {
                    policy, context, ..
                } => WOp::Put {
                    value: format!("{node}.{seq}"),
                    policy,
                    context,
                },
                other => other,
            };
            if let Some(h) = running.get(&node).cloned() {
                batch.push(write(&shared, seq, node, h, key, op));
            }
            seq += 1;
        }
        for w in futures::future::join_all(batch).await {
            shared.event_at(w.t_ms, false, story_line(&w));
            shared.record_write(w);
        }
    }
    // Faults end on their own schedule; then every node must catch up.
    while !shared.healed.load(Ordering::Relaxed) {
        tokio::time::sleep(POLL).await;
    }
    let healed = shared.healed_at_ms.load(Ordering::Relaxed);
    loop {
        if let Some(detail) = converged(&shared, &names) {
            let now = shared.now();
            *shared
                .converged_at_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(now);
            shared.event(
                true,
                format!(
                    "converge every node has applied every origin's last lsn ({detail}) with equal digests, {}ms after the heal",
                    now.saturating_sub(healed)
                ),
            );
            break;
        }
        if shared.now() > healed + CONVERGE_DEADLINE_MS {
            shared.violation(format!(
                "no convergence within {}s after the last fault healed: {}",
                CONVERGE_DEADLINE_MS / 1000,
                not_converged(&shared, &names)
            ));
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// A key and what to write there (a put's value is filled in later).
fn draw(rng: &mut StdRng) -> (String, WOp) {
    match rng.random_range(0..100u32) {
        0..35 => (
            format!("lww/k{}", rng.random_range(0..2)),
            WOp::Put {
                value: String::new(),
                policy: Policy::Lww,
                context: false,
            },
        ),
        35..55 => (
            format!("sib/k{}", rng.random_range(0..2)),
            WOp::Put {
                value: String::new(),
                policy: Policy::Siblings,
                context: rng.random_bool(0.8),
            },
        ),
        55..78 => (
            format!("ctr/c{}", rng.random_range(0..2)),
            WOp::Counter {
                delta: match rng.random_range(-5..=10) {
                    0 => 1,
                    d => d,
                },
            },
        ),
        _ => {
            let e = format!("e{}", rng.random_range(0..4));
            let key = format!("set/s{}", rng.random_range(0..2));
            if rng.random_bool(0.6) {
                (key, WOp::SetAdd(e))
            } else {
                (key, WOp::SetRemove(e))
            }
        }
    }
}

/// `Some(positions)` once every node runs, has applied every origin's
/// last LSN, and all digests are equal.
fn converged(shared: &MultiShared, names: &[String]) -> Option<String> {
    let nodes = shared.nodes();
    if nodes.len() < names.len() {
        return None;
    }
    let last: Vec<(String, Lsn)> = nodes
        .iter()
        .map(|(n, h)| (n.clone(), h.engine.positions().flush_lsn))
        .collect();
    for h in nodes.values() {
        let have = h.engine.origin_positions();
        for (o, l) in &last {
            if have.get(o).copied().unwrap_or_default() < *l {
                return None;
            }
        }
    }
    let mut digests = nodes.values().map(|h| h.engine.table().digest().ok());
    let first = digests.next()?;
    if first.is_none() || !digests.all(|d| d == first) {
        return None;
    }
    Some(
        last.iter()
            .map(|(o, l)| format!("{o}@{l}"))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// What is missing, for the failure message.
fn not_converged(shared: &MultiShared, names: &[String]) -> String {
    let nodes = shared.nodes();
    let mut parts = Vec::new();
    for n in names {
        match nodes.get(n) {
            None => parts.push(format!("{n} is not running")),
            Some(h) => {
                let pos: Vec<String> = h
                    .engine
                    .origin_positions()
                    .iter()
                    .map(|(o, l)| format!("{o}@{l}"))
                    .collect();
                let digest = h.engine.table().digest().unwrap_or_default();
                parts.push(format!(
                    "{n} has {} digest {}",
                    pos.join(","),
                    &digest[..digest.len().min(12)]
                ));
            }
        }
    }
    parts.join("; ")
}

/// Make one write at `h` and remember what it answered.
async fn write(
    shared: &MultiShared,
    seq: usize,
    node: String,
    h: MultiNode,
    key: String,
    op: WOp,
) -> Write {
    let (node, h) = (node.as_str(), &h);
    let t_ms = shared.now();
    let policy = policies().policy_for(&key);
    let causal = match &op {
        WOp::Put { value, context, .. } => CausalWrite::Put {
            value: value.clone().into_bytes(),
            context: context.then(|| read_context(h, &key)),
        },
        WOp::Counter { delta } => CausalWrite::Counter { delta: *delta },
        WOp::SetAdd(e) => CausalWrite::Set {
            add: vec![e.clone()],
            remove: Vec::new(),
        },
        WOp::SetRemove(e) => CausalWrite::Set {
            add: Vec::new(),
            remove: vec![e.clone()],
        },
    };
    let epoch = h.engine.meta().epoch;
    let phys_ms = h.clock.now_ms();
    let proposal = Proposal::causal(key.clone(), causal, policy, Some(epoch));
    let ack = match tokio::time::timeout(WRITE_TIMEOUT, h.engine.propose(proposal)).await {
        Ok(Ok(c)) => Some(ack_of(node, &key, &op, phys_ms, &c)),
        Ok(Err(e)) => {
            shared.event(
                false,
                format!("client   write #{seq} at {node} failed: {e}"),
            );
            None
        }
        Err(_) => None,
    };
    Write {
        seq,
        t_ms,
        node: node.to_string(),
        key,
        op,
        ack,
    }
}

/// The causal context of a read of `key` at `h` (what the HTTP API would
/// hand back in `X-Replidb-Context`).
fn read_context(h: &MultiNode, key: &str) -> VersionVector {
    h.engine
        .table()
        .get(key)
        .ok()
        .flatten()
        .filter(|v| v.causal)
        .and_then(|v| KeyState::decode(&v.value).ok())
        .map(|s| s.context())
        .unwrap_or_default()
}

fn ack_of(node: &str, key: &str, op: &WOp, phys_ms: u64, c: &Committed) -> Ack {
    let _ = key;
    let mut ack = Ack {
        lsn: c.lsn.0,
        hlc: None,
        phys_ms,
        vector: c.version.clone(),
        set_clock: None,
    };
    match (&c.state, op) {
        (Some(KeyState::Register(r)), WOp::Put { .. }) => {
            ack.hlc = r
                .versions
                .iter()
                .find(|v| v.dot.origin == node && v.dot.counter == c.lsn.0)
                .map(|v| v.hlc);
        }
        (Some(KeyState::Set(s)), WOp::SetAdd(_) | WOp::SetRemove(_)) => {
            ack.set_clock = Some(s.clock());
        }
        _ => {}
    }
    ack
}

fn story_line(w: &Write) -> String {
    let what = match &w.op {
        WOp::Put { value, context, .. } => {
            format!(
                "put {}={value}{}",
                w.key,
                if *context { " (with context)" } else { "" }
            )
        }
        WOp::Counter { delta } => format!("incr {} by {delta}", w.key),
        WOp::SetAdd(e) => format!("add {e} to {}", w.key),
        WOp::SetRemove(e) => format!("remove {e} from {}", w.key),
    };
    match &w.ack {
        Some(a) => format!(
            "{:<8} {what}: lsn {}, wall clock {}{}",
            w.node,
            a.lsn,
            fmt_wall(a.phys_ms),
            a.hlc
                .map(|h| format!(", hlc {}.{}", fmt_wall(h.wall_ms), h.logical))
                .unwrap_or_default()
        ),
        None => format!("{:<8} {what}: outcome unknown", w.node),
    }
}

/// A wall-clock reading as seconds since the run's epoch (`+12.345s`),
/// negative when a clock behind reads before it.
pub(crate) fn fmt_wall(ms: u64) -> String {
    let d = ms as i64 - crate::clock::EPOCH_MS as i64;
    let sign = if d < 0 { "-" } else { "+" };
    format!(
        "{sign}{}.{:03}s",
        d.unsigned_abs() / 1000,
        d.unsigned_abs() % 1000
    )
}
