//! Support code of the Jepsen-style test: a cuttable TCP proxy, the
//! linearizability checker, and the history the clients record.

pub mod linearizability;
pub mod proxy;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use linearizability::{Millis, Op};

/// Every completed or indeterminate operation, per key, with times relative
/// to the start of the run.
pub struct History {
    start: Instant,
    ops: Mutex<BTreeMap<String, Vec<Op>>>,
}

impl History {
    /// An empty history starting now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::new(BTreeMap::new()),
        }
    }

    /// Milliseconds since the start.
    pub fn now(&self) -> Millis {
        self.start.elapsed().as_millis() as Millis
    }

    /// Record `op` on `key`.
    pub fn record(&self, key: &str, op: Op) {
        self.ops
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .push(op);
    }

    /// Every key's operations.
    pub fn by_key(&self) -> BTreeMap<String, Vec<Op>> {
        self.ops.lock().unwrap().clone()
    }
}
