//! The client of a leaderless run, drawn from the seed before the run so
//! every (R, W) setting replays exactly the same requests: puts and
//! deletes of plain keys (`lww/` blind, `sib/` under `siblings`, mostly
//! with the context the client last read), counter increments, set adds
//! and removes, and reads of all of them, each sent to a node the client
//! can reach.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::LeaderlessConfig;

/// Salt of the workload's random stream.
const WORKLOAD_SALT: u64 = 0x6c65_6164_6c65_7373;

/// Every key the workload touches (anti-entropy walks these).
pub const KEYS: [&str; 9] = [
    "lww/k0", "lww/k1", "lww/k2", "sib/k0", "sib/k1", "ctr/c0", "ctr/c1", "set/s0", "set/s1",
];

/// What a request asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Read the key.
    Get,
    /// Put a unique value; `context`: send the context of the client's
    /// last read of the key.
    Put {
        /// The value.
        value: String,
        /// Whether to send the last read's context.
        context: bool,
    },
    /// Delete (a tombstone version).
    Delete {
        /// Whether to send the last read's context.
        context: bool,
    },
    /// Add to a counter.
    Incr(i64),
    /// Add a member to a set.
    SetAdd(String),
    /// Remove a member from a set.
    SetRemove(String),
}

impl OpKind {
    /// Whether it is a read.
    pub fn is_read(&self) -> bool {
        matches!(self, OpKind::Get)
    }
}

/// One request of the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Its number.
    pub seq: usize,
    /// When it is sent (simulated ms).
    pub at_ms: u64,
    /// The node the client tries first (it skips ones it cannot reach).
    pub entry: usize,
    /// The key.
    pub key: String,
    /// What it asks.
    pub kind: OpKind,
}

impl Op {
    /// How the story names it.
    pub fn describe(&self) -> String {
        let ctx = |c: bool| if c { " (with context)" } else { "" };
        match &self.kind {
            OpKind::Get => format!("#{} get {}", self.seq, self.key),
            OpKind::Put { value, context } => {
                format!("#{} put {}={value}{}", self.seq, self.key, ctx(*context))
            }
            OpKind::Delete { context } => {
                format!("#{} del {}{}", self.seq, self.key, ctx(*context))
            }
            OpKind::Incr(d) => format!("#{} incr {} {d:+}", self.seq, self.key),
            OpKind::SetAdd(m) => format!("#{} sadd {} {m}", self.seq, self.key),
            OpKind::SetRemove(m) => format!("#{} srem {} {m}", self.seq, self.key),
        }
    }
}

/// The seed's requests, in time order.
pub fn generate(cfg: &LeaderlessConfig) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ WORKLOAD_SALT);
    let mut at = 0u64;
    let mut ops = Vec::with_capacity(cfg.ops);
    for seq in 0..cfg.ops {
        at += rng.random_range(2..=30);
        let entry = rng.random_range(0..cfg.nodes);
        let (key, kind) = if rng.random_bool(0.5) {
            let key = KEYS[rng.random_range(0..KEYS.len())].to_string();
            (key, OpKind::Get)
        } else {
            draw_write(&mut rng, seq)
        };
        ops.push(Op {
            seq,
            at_ms: at,
            entry,
            key,
            kind,
        });
    }
    ops
}

fn draw_write(rng: &mut StdRng, seq: usize) -> (String, OpKind) {
    match rng.random_range(0..100u32) {
        0..30 => {
            let key = KEYS[rng.random_range(0..3)].to_string();
            if rng.random_bool(0.1) {
                (key, OpKind::Delete { context: false })
            } else {
                (
                    key,
                    OpKind::Put {
                        value: format!("v{seq}"),
                        context: false,
                    },
                )
            }
        }
        30..50 => {
            let key = KEYS[3 + rng.random_range(0..2)].to_string();
            let context = rng.random_bool(0.7);
            if rng.random_bool(0.1) {
                (key, OpKind::Delete { context })
            } else {
                (
                    key,
                    OpKind::Put {
                        value: format!("v{seq}"),
                        context,
                    },
                )
            }
        }
        50..75 => {
            let key = KEYS[5 + rng.random_range(0..2)].to_string();
            let delta = match rng.random_range(-5..=10) {
                0 => 1,
                d => d,
            };
            (key, OpKind::Incr(delta))
        }
        _ => {
            let key = KEYS[7 + rng.random_range(0..2)].to_string();
            let member = format!("m{}", rng.random_range(0..4));
            if rng.random_bool(0.3) {
                (key, OpKind::SetRemove(member))
            } else {
                (key, OpKind::SetAdd(member))
            }
        }
    }
}
