//! One simulated leaderless node: the server's replica path without HTTP.
//! Its table is `replidb-storage`'s memory backend, written only through
//! `Table::apply` of `Op::Merge` records with this node's own gapless LSNs,
//! as the server's engine does; a causal write is turned into its operand
//! the way the engine's writer does it (absorb the key's latest stamp,
//! take an HLC time, `replidb_causal::prepare`), and every state from
//! another replica is joined with the same `merge` (`Operand::State`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use replidb_causal::{CausalWrite, KeyState, Operand, Policy, PrepareError, WriteStamp};
use replidb_core::{Clock, Epoch, HlcClock, Lsn, Op, Record};
use replidb_storage::{MemoryTable, Table};

use super::EPOCH_MS;

/// The simulation's clock as a node reads it: wall = a fixed epoch plus
/// simulated ms; monotonic = simulated ms.
#[derive(Clone)]
pub struct SimTime(pub Arc<AtomicU64>);

impl Clock for SimTime {
    fn now_ms(&self) -> u64 {
        EPOCH_MS + self.0.load(Ordering::Relaxed)
    }
    fn mono_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A hint this node keeps for a replica that did not answer.
#[derive(Clone, Debug)]
pub struct HeldHint {
    /// The replica the state is for.
    pub owner: usize,
    /// The key.
    pub key: String,
    /// The state to give it.
    pub state: KeyState,
}

/// Why a node's table refused a record: a bug in the simulation or the
/// storage (LSNs are assigned here, one at a time).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The origin refused the write (another kind, too many siblings).
    #[error(transparent)]
    Refused(#[from] PrepareError),
    /// The table refused the record.
    #[error("table: {0}")]
    Storage(#[from] replidb_storage::StorageError),
}

/// One node.
pub struct SimNode {
    /// Its id (`n1`..), the origin of its dots.
    pub name: String,
    /// Its table.
    pub table: MemoryTable,
    last_lsn: u64,
    hlc: HlcClock<SimTime>,
    /// Hints held for other nodes (durable on the server: they survive a
    /// crash here too).
    pub hints: Vec<HeldHint>,
}

impl SimNode {
    /// An empty node.
    pub fn new(name: &str, time: SimTime) -> SimNode {
        SimNode {
            name: name.to_string(),
            table: MemoryTable::new(),
            last_lsn: 0,
            hlc: HlcClock::new(time),
            hints: Vec::new(),
        }
    }

    /// The key's causal state here.
    pub fn state(&self, key: &str) -> Option<KeyState> {
        self.table
            .get(key)
            .ok()
            .flatten()
            .filter(|v| v.causal)
            .and_then(|v| KeyState::decode(&v.value).ok())
    }

    fn append(
        &mut self,
        key: &str,
        operand: &Operand,
        hlc: replidb_core::Hlc,
    ) -> Result<(), NodeError> {
        let lsn = self.last_lsn + 1;
        self.table.apply(&[Record {
            lsn: Lsn(lsn),
            epoch: Epoch(1),
            hlc,
            op: Op::Merge {
                key: key.to_string(),
                operand: operand.encode(),
            },
        }])?;
        self.last_lsn = lsn;
        Ok(())
    }

    /// Coordinate a causal write here, as the engine's writer does: returns
    /// the key's new state and the write's dot counter (its LSN).
    pub fn write(
        &mut self,
        key: &str,
        write: CausalWrite,
        policy: Policy,
    ) -> Result<(KeyState, u64), NodeError> {
        let existing = self.state(key);
        if let Some(seen) = existing.as_ref().and_then(KeyState::latest_stamp) {
            self.hlc.absorb(seen);
        }
        let hlc = self.hlc.now();
        let lsn = self.last_lsn + 1;
        let stamp = WriteStamp {
            origin: self.name.clone(),
            lsn,
            hlc,
        };
        let operand = replidb_causal::prepare(key, existing.as_ref(), write, policy, &stamp)?;
        self.append(key, &operand, hlc)?;
        let state = self.state(key).ok_or_else(|| {
            NodeError::Storage(replidb_storage::StorageError::Corruption(format!(
                "{key}: no state after a write"
            )))
        })?;
        Ok((state, lsn))
    }

    /// Join a state from another replica (`/internal/replica`).
    pub fn merge(&mut self, key: &str, state: &KeyState) -> Result<(), NodeError> {
        let hlc = self.hlc.now();
        self.append(key, &Operand::State(state.clone()), hlc)
    }

    /// Conflicts this node's table resolved, newest first.
    pub fn conflicts(&self) -> Vec<replidb_causal::Conflict> {
        self.table.conflicts("", usize::MAX).unwrap_or_default()
    }
}
