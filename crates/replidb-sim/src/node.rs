//! A node of an elected cluster (`--faults failover|all`): the server's
//! own role machine ([`replidb_node::NodeCore`]: promote, follow, step
//! down, lease) over the real engine and replication code, driven by the
//! real coordinator loop (`replidb_coordinator::EtcdCoordinator`) talking
//! to the simulated etcd. Nothing here decides anything: [`SimEvents`] only
//! tells the story and registers each role with the checker.
//!
//! Every node starts as a follower of nobody. Its coordinator keeps a
//! session lease, publishes its position, and runs the election when the
//! leader key is free.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use replidb_coordinator::{EtcdCoordinator, EtcdOptions};
use replidb_core::{Clock, Epoch, Lsn, WriteConcern};
use replidb_engine::Engine;
use replidb_node::{CoreMember, CoreOptions, NodeCore, Role, RoleEvents};
use replidb_replication::{Follower, FollowerOptions, LeaderOptions};
use tokio_util::sync::CancellationToken;

use crate::cluster::{
    checkpoints, open_engine, watch_applies, EventKind, HostResult, NodeHandle, Shared,
};
use crate::etcd::SimEtcdClient;
use crate::net::{serve_replication, SimTransport, PORT};
use crate::SimConfig;

/// Key prefix in etcd (`--cluster`).
pub const CLUSTER: &str = "sim";
/// How often a node looks for a rewind to tell.
const REWIND_POLL: Duration = Duration::from_millis(50);

/// The URL a node advertises: its host name.
pub fn url_of(name: &str) -> String {
    format!("http://{name}:{PORT}")
}

/// The host name in a node URL.
fn host_of(url: &str) -> String {
    url.trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Tells the story of one node's role changes and registers each role
/// with the checker.
pub struct SimEvents {
    name: String,
    shared: Arc<Shared>,
    engine: Arc<Engine>,
}

impl RoleEvents for SimEvents {
    fn role_changed(&self, role: &Role) {
        let (leader, follower) = match role {
            Role::Leader(l) => (Some(l.clone()), None),
            Role::Follower(f) => (None, Some(f.clone())),
        };
        self.shared.register(
            &self.name,
            NodeHandle {
                engine: self.engine.clone(),
                leader,
                follower,
            },
        );
    }

    fn elected(&self, epoch: Epoch, flush: Lsn) {
        self.shared.record_promotion(&self.name, epoch.0);
        self.shared.event(EventKind::Elected {
            node: self.name.clone(),
            epoch: epoch.0,
            flush: flush.0,
        });
    }

    fn following(&self, url: &str, epoch: Epoch, stepped_down: bool) {
        self.shared.event(EventKind::Following {
            node: self.name.clone(),
            leader: host_of(url),
            epoch: epoch.0,
            stepped_down,
        });
    }

    fn fenced(&self, epoch: Epoch, deadline_before_mono_ms: u64) {
        // Fenced when the old deadline passed, or now if it had not.
        // Deadlines are on the monotonic clock: simulated time since the
        // start of the run.
        let at = deadline_before_mono_ms.min(self.shared.now());
        self.shared.event_at(
            at,
            EventKind::Fenced {
                node: self.name.clone(),
                epoch: epoch.0,
            },
        );
    }

    fn unfenced(&self, epoch: Epoch) {
        self.shared.event(EventKind::Unfenced {
            node: self.name.clone(),
            epoch: epoch.0,
        });
    }

    fn stepped_down(&self, epoch: Epoch) {
        self.shared.event(EventKind::Following {
            node: self.name.clone(),
            leader: String::new(),
            epoch: epoch.0,
            stepped_down: true,
        });
    }
}

/// The coordinator's settings in the simulation: the server's defaults
/// (1 s lease, 100 ms tick, 200 ms settle).
fn coordinator_options() -> EtcdOptions {
    EtcdOptions::new(Vec::new(), CLUSTER)
}

/// A node's software: open (or recover) the engine, wait as a follower of
/// nobody, serve replication streams while leading, and run the
/// coordinator.
pub(crate) async fn node_host(
    shared: Arc<Shared>,
    dir: PathBuf,
    name: String,
    cfg: SimConfig,
    index: u64,
) -> HostResult {
    let clock: Arc<dyn Clock> = shared.clock.clone();
    let engine = open_engine(&shared, dir.clone(), &name).await?;
    let mut fopts = FollowerOptions::new(name.clone(), url_of(&name));
    fopts.delay = cfg.lag;
    fopts.backoff_base = Duration::from_millis(200);
    fopts.backoff_max = Duration::from_secs(2);
    fopts.idle_timeout = Duration::from_secs(1);
    fopts.seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(index);
    let link = shared.links.get(&name).cloned().unwrap_or_default();
    let transport = Arc::new(SimTransport::new(link, fopts.seed ^ 0x5eed).with_hosts(&shared));
    fopts.compression = codec_of(cfg.seed, index);
    let opts = CoreOptions {
        id: name.clone(),
        advertise_url: url_of(&name),
        leader: LeaderOptions {
            compression: codec_of(cfg.seed, index),
            ..LeaderOptions::default()
        },
        follower: fopts,
        default_write_concern: WriteConcern::One,
        lease_required: true,
        step_down_cooldown: coordinator_options().lease_ttl * 3,
        data_dir: Some(dir.clone()),
    };
    let events = Arc::new(SimEvents {
        name: name.clone(),
        shared: shared.clone(),
        engine: engine.clone(),
    });
    let core = NodeCore::new(
        opts,
        engine.clone(),
        clock,
        transport,
        events,
        CancellationToken::new(),
    );
    // Follow nobody until the coordinator names a leader (or us).
    core.become_follower(String::new());
    tokio::spawn(watch_applies(shared.clone(), engine.clone(), name.clone()));
    tokio::spawn(checkpoints(engine));
    tokio::spawn(watch_rewinds(core.clone(), shared.clone(), name));
    let coordinator = EtcdCoordinator::with_store(
        coordinator_options(),
        Arc::new(SimEtcdClient::new()),
        Arc::new(CoreMember(Arc::downgrade(&core))),
    );
    tokio::spawn(coordinator.run(CancellationToken::new()));
    serve_replication(move || core.leader()).await?;
    Ok(())
}

/// Tell each rewind: the follower counts the records it rolled back.
async fn watch_rewinds(node: Arc<NodeCore>, shared: Arc<Shared>, name: String) {
    // (follower, records it had rolled back when last looked at)
    let mut seen: Option<(Arc<Follower>, u64)> = None;
    loop {
        tokio::time::sleep(REWIND_POLL).await;
        let Some(f) = node.follower() else {
            seen = None;
            continue;
        };
        let now = f.status().rollback_records;
        let before = match &seen {
            Some((g, n)) if Arc::ptr_eq(g, &f) => *n,
            _ => 0,
        };
        if now > before {
            shared.event(EventKind::Rewound {
                node: name.clone(),
                records: now - before,
            });
        }
        seen = Some((f, now));
    }
}

/// The node's `--replication-compression`, varied by seed and node so that
/// runs cover every codec and every mix of them (streams negotiate).
pub(crate) fn codec_of(seed: u64, index: u64) -> replidb_replication::Codec {
    let all = replidb_replication::Codec::ALL;
    all[(seed.wrapping_add(index) % all.len() as u64) as usize]
}
