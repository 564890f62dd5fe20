//! A node of an elected cluster (`--faults failover|all`): the real
//! engine and replication code plus the real coordinator loop
//! (`replidb_coordinator::EtcdCoordinator`) talking to the simulated etcd.
//!
//! Every node starts as a follower of nobody. Its coordinator keeps a
//! session lease, publishes its position, and runs the election when the
//! leader key is free; [`SimMember`] is what the coordinator drives, and
//! does what the server's `Node` does: `promote(epoch)` applies everything
//! flushed, calls `begin_epoch(epoch)` and starts a `Leader` (that accepts
//! writes only once the coordinator sets its write deadline);
//! `follow(url, epoch)` fences a leader it was (`mark_stale`, `stop`),
//! adopts the higher epoch, and runs a `Follower` to the named host, whose
//! handshake rewinds divergent records to `rollback/`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replidb_coordinator::{BoxFuture, EtcdCoordinator, EtcdOptions, Member, MemberInfo};
use replidb_core::{Clock, Epoch, WriteConcern};
use replidb_engine::Engine;
use replidb_replication::{Follower, FollowerOptions, Leader, LeaderOptions};
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

/// What a node is doing.
#[derive(Clone)]
enum Role {
    Leader(Arc<Leader>),
    Follower(Arc<Follower>, CancellationToken),
}

/// One node's state: engine, role, and what the coordinator told it.
pub struct SimNode {
    name: String,
    shared: Arc<Shared>,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    transport: Arc<SimTransport>,
    fopts: FollowerOptions,
    role: Mutex<Role>,
    /// Members the coordinator's registry holds (sizes `w=majority`).
    cluster_members: AtomicUsize,
    /// A leader that was fenced and may get its lease back.
    fenced: AtomicBool,
}

impl SimNode {
    fn role(&self) -> Role {
        self.role.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn leader(&self) -> Option<Arc<Leader>> {
        match self.role() {
            Role::Leader(l) => Some(l),
            Role::Follower(..) => None,
        }
    }

    fn follower(&self) -> Option<Arc<Follower>> {
        match self.role() {
            Role::Follower(f, _) => Some(f),
            Role::Leader(_) => None,
        }
    }

    /// Switch roles: end the old one's tasks, publish the new one.
    fn set_role(&self, role: Role) {
        let old = std::mem::replace(
            &mut *self.role.lock().unwrap_or_else(|e| e.into_inner()),
            role.clone(),
        );
        match old {
            Role::Leader(l) => l.stop(),
            Role::Follower(_, token) => token.cancel(),
        }
        let (leader, follower) = match role {
            Role::Leader(l) => (Some(l), None),
            Role::Follower(f, _) => (None, Some(f)),
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

    fn become_follower(&self, url: String) {
        let follower = Follower::new(
            self.engine.clone(),
            self.transport.clone(),
            self.clock.clone(),
            self.fopts.clone(),
            url,
        );
        let token = CancellationToken::new();
        self.set_role(Role::Follower(follower.clone(), token.clone()));
        tokio::spawn(follower.run(token));
    }

    async fn promote(&self, epoch: Epoch) -> Result<(), String> {
        if self.engine.meta().epoch >= epoch && self.leader().is_some() {
            return Ok(());
        }
        if let Some(f) = self.follower() {
            // The old leader's peer list is the cluster as it last knew it.
            self.cluster_members
                .fetch_max(f.status().peers.len(), Ordering::SeqCst);
        }
        let fail = |e: replidb_engine::EngineError| e.to_string();
        let flush = self.engine.positions().flush_lsn;
        self.engine.apply_up_to(flush).await.map_err(fail)?;
        self.engine.begin_epoch(epoch).await.map_err(fail)?;
        let opts = LeaderOptions {
            advertise_url: url_of(&self.name),
            ..LeaderOptions::default()
        };
        let leader = Leader::new(
            self.name.clone(),
            self.engine.clone(),
            self.clock.clone(),
            opts,
            WriteConcern::One,
        );
        // Writes wait for the coordinator to confirm the lease.
        leader.set_write_deadline(0);
        self.fenced.store(false, Ordering::SeqCst);
        leader.set_known_members(self.cluster_members.load(Ordering::SeqCst));
        self.set_role(Role::Leader(leader));
        self.shared.record_promotion(&self.name, epoch.0);
        self.shared.event(EventKind::Elected {
            node: self.name.clone(),
            epoch: epoch.0,
            flush: flush.0,
        });
        Ok(())
    }

    async fn follow(&self, url: String, epoch: Epoch) -> Result<(), String> {
        let meta = self.engine.meta();
        if epoch > meta.epoch {
            // Remember the epoch first: a stream from an older leader is
            // refused from now on.
            self.engine
                .adopt_history(epoch, meta.history)
                .await
                .map_err(|e| e.to_string())?;
        }
        let stepped_down = match self.leader() {
            Some(l) => {
                l.mark_stale();
                true
            }
            None => false,
        };
        match self.follower() {
            Some(f) if f.leader_url() == url => return Ok(()),
            _ => self.become_follower(url.clone()),
        }
        self.shared.event(EventKind::Following {
            node: self.name.clone(),
            leader: host_of(&url),
            epoch: epoch.0,
            stepped_down,
        });
        Ok(())
    }

    fn set_write_deadline(&self, deadline_ms: u64) {
        let Some(l) = self.leader() else {
            return;
        };
        let before = l.write_deadline();
        l.set_write_deadline(deadline_ms);
        if deadline_ms != 0 && self.fenced.swap(false, Ordering::SeqCst) {
            self.shared.event(EventKind::Unfenced {
                node: self.name.clone(),
                epoch: l.epoch().0,
            });
        }
        if deadline_ms == 0 && before != 0 {
            self.fenced.store(true, Ordering::SeqCst);
            // Fenced when the old deadline passed, or now if it had not.
            // Deadlines are on the monotonic clock: simulated time since
            // the start of the run.
            let at = before.min(self.shared.now());
            self.shared.event_at(
                at,
                EventKind::Fenced {
                    node: self.name.clone(),
                    epoch: l.epoch().0,
                },
            );
        }
    }
}

/// The node as its coordinator sees it.
pub struct SimMember(Arc<SimNode>);

impl Member for SimMember {
    fn info(&self) -> MemberInfo {
        let n = &self.0;
        let pos = n.engine.positions();
        let (role, commit) = match n.role() {
            Role::Leader(l) => ("leader", l.commit_lsn()),
            Role::Follower(f, _) => ("follower", f.status().commit_lsn),
        };
        let meta = n.engine.meta();
        MemberInfo {
            id: n.name.clone(),
            url: url_of(&n.name),
            role: role.to_string(),
            epoch: meta.epoch.0,
            flush_lsn: pos.flush_lsn.0,
            last_epoch: meta.history.position_of(pos.flush_lsn).epoch.0,
            applied_lsn: pos.applied_lsn.0,
            commit_lsn: commit.0,
            healthy: n.engine.failure().is_none(),
        }
    }

    fn is_leader(&self) -> bool {
        self.0.leader().is_some()
    }

    fn following(&self) -> Option<String> {
        self.0
            .follower()
            .map(|f| f.leader_url())
            .filter(|u| !u.is_empty())
    }

    fn promote(&self, epoch: Epoch) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.0.promote(epoch))
    }

    fn follow(&self, url: String, epoch: Epoch) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.0.follow(url, epoch))
    }

    fn set_write_deadline(&self, deadline_ms: u64) {
        self.0.set_write_deadline(deadline_ms);
    }

    fn set_cluster_size(&self, n: usize) {
        self.0.cluster_members.fetch_max(n, Ordering::SeqCst);
        if let Some(l) = self.0.leader() {
            l.set_known_members(n);
        }
    }

    fn mono_ms(&self) -> u64 {
        self.0.clock.mono_ms()
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
    let engine = open_engine(&shared, dir, &name).await?;
    let mut fopts = FollowerOptions::new(name.clone(), url_of(&name));
    fopts.delay = cfg.lag;
    fopts.backoff_base = Duration::from_millis(200);
    fopts.backoff_max = Duration::from_secs(2);
    fopts.idle_timeout = Duration::from_secs(1);
    fopts.seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(index);
    let link = shared.links.get(&name).cloned().unwrap_or_default();
    let transport = Arc::new(SimTransport::new(link, fopts.seed ^ 0x5eed));
    let placeholder = Follower::new(
        engine.clone(),
        transport.clone(),
        clock.clone(),
        fopts.clone(),
        String::new(),
    );
    let node = Arc::new(SimNode {
        name: name.clone(),
        shared: shared.clone(),
        engine: engine.clone(),
        clock,
        transport,
        fopts,
        role: Mutex::new(Role::Follower(placeholder, CancellationToken::new())),
        cluster_members: AtomicUsize::new(0),
        fenced: AtomicBool::new(false),
    });
    // Follow nobody until the coordinator names a leader (or us).
    node.become_follower(String::new());
    tokio::spawn(watch_applies(shared.clone(), engine.clone(), name.clone()));
    tokio::spawn(checkpoints(engine));
    tokio::spawn(watch_rewinds(node.clone()));
    let coordinator = EtcdCoordinator::with_store(
        coordinator_options(),
        Arc::new(SimEtcdClient::new()),
        Arc::new(SimMember(node.clone())),
    );
    tokio::spawn(coordinator.run(CancellationToken::new()));
    serve_replication(move || node.leader()).await?;
    Ok(())
}

/// Tell each rewind: the follower counts the records it rolled back.
async fn watch_rewinds(node: Arc<SimNode>) {
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
            node.shared.event(EventKind::Rewound {
                node: node.name.clone(),
                records: now - before,
            });
        }
        seen = Some((f, now));
    }
}
