//! Helpers shared by the integration tests.
#![allow(dead_code)]

use replidb_core::{Epoch, Lsn, Op, Record};

pub fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

pub fn del(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

pub fn rec(lsn: u64, epoch: u64, op: Op) -> Record {
    Record {
        lsn: Lsn(lsn),
        epoch: Epoch(epoch),
        hlc: Default::default(),
        op,
    }
}
