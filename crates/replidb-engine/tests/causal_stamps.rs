//! A causal write is stamped after every version it supersedes, even on a
//! node whose wall clock runs behind and that restarted since it applied
//! those versions (its HLC starts again from its own wall clock). Redb
//! keeps a peer's versions across the restart; the memory table would ask
//! the peer to resend them.

use std::sync::Arc;
use std::time::Duration;

use replidb_causal::{CausalWrite, Dot, KeyState, Operand, Policy, Version, VersionVector};
use replidb_core::{Clock, Epoch, Hlc, Lsn, Op, Record, SkewedClock, SystemClock};
use replidb_engine::{Engine, EngineOptions, Proposal};
use replidb_storage::Backend;

async fn open(dir: &std::path::Path, backend: Backend, clock: Arc<dyn Clock>) -> Arc<Engine> {
    let mut o = EngineOptions::new(dir, "b");
    o.backend = backend;
    let e = Engine::open(o, clock).await.unwrap();
    if e.meta().epoch == Epoch(0) {
        e.begin_epoch(Epoch(1)).await.unwrap();
    }
    e
}

#[tokio::test]
async fn a_restarted_node_behind_stamps_after_what_it_supersedes() {
    {
        let backend = Backend::Redb;
        let dir = tempfile::tempdir().unwrap();
        // This node's clock is a minute behind the peer's.
        let behind: Arc<dyn Clock> = Arc::new(SkewedClock::new(SystemClock, -60_000));
        let peer = Hlc {
            wall_ms: SystemClock.now_ms(),
            logical: 0,
        };
        let version = Version {
            dot: Dot::new("a", 1),
            context: VersionVector::new(),
            hlc: peer,
            value: Some(b"from a".to_vec()),
        };
        let record = Record {
            lsn: Lsn(1),
            epoch: Epoch(1),
            hlc: peer,
            op: Op::Merge {
                key: "k".to_string(),
                operand: Operand::Register {
                    policy: Policy::Lww,
                    version,
                }
                .encode(),
            },
        };
        {
            let e = open(dir.path(), backend, behind.clone()).await;
            e.apply_origin("a".to_string(), vec![record]).await.unwrap();
            e.checkpoint(Lsn(u64::MAX)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = open(dir.path(), backend, behind.clone()).await;
        let write = CausalWrite::Put {
            value: b"from b".to_vec(),
            context: None,
        };
        let c = e
            .propose(Proposal::causal(
                "k".to_string(),
                write,
                Policy::Lww,
                Some(Epoch(1)),
            ))
            .await
            .unwrap();
        let Some(KeyState::Register(r)) = c.state else {
            panic!("not a register: {:?}", c.state);
        };
        assert_eq!(r.versions.len(), 1, "{backend:?}: {r:?}");
        let mine = &r.versions[0];
        assert_eq!(mine.dot, Dot::new("b", c.lsn.0), "{backend:?}");
        assert!(
            mine.hlc > peer,
            "{backend:?}: the write superseding {peer:?} is stamped {:?}",
            mine.hlc
        );
    }
}
