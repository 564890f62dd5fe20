//! The etcd coordinator loop: lease, publish, watch the leader key, elect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use replidb_core::Epoch;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::election::{choose, MemberInfo};
use crate::etcd::{Compare, EtcdClient, LeaseId, TxnOp};
use crate::store::CoordStore;
use crate::{CoordinatorError, Member, Result};

/// Settings of the etcd coordinator.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// etcd endpoints.
    pub endpoints: Vec<String>,
    /// Cluster name: the key prefix.
    pub cluster: String,
    /// Session lease TTL (etcd may raise it to its minimum).
    pub lease_ttl: Duration,
    /// Loop period.
    pub tick: Duration,
    /// How long the leader key must be absent (with fresh positions
    /// published) before an election.
    pub settle: Duration,
    /// Candidates further behind the longest log are not eligible.
    pub max_lag_records: u64,
    /// PEM CA file that signs etcd's certificate, for `https://`
    /// endpoints (`--tls-ca`).
    pub ca_file: Option<std::path::PathBuf>,
}

impl EtcdOptions {
    /// Defaults for `endpoints` and `cluster`.
    pub fn new(endpoints: Vec<String>, cluster: impl Into<String>) -> Self {
        EtcdOptions {
            endpoints,
            cluster: cluster.into(),
            lease_ttl: Duration::from_secs(1),
            tick: Duration::from_millis(100),
            settle: Duration::from_millis(200),
            max_lag_records: 1_000_000,
            ca_file: None,
        }
    }
}

/// The leader key's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderKey {
    /// Leader id.
    pub id: String,
    /// Leader URL.
    pub url: String,
    /// Its epoch.
    pub epoch: u64,
}

/// What the coordinator reports for `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CoordinatorStatus {
    /// Leader key as last seen.
    pub leader: Option<LeaderKey>,
    /// Granted lease TTL in ms.
    pub lease_ttl_ms: u64,
    /// Writes allowed until (ms on this node's monotonic clock, comparable
    /// only with its own readings; 0 = not leading).
    pub write_deadline_ms: u64,
    /// Elections this node won.
    pub elections_won: u64,
    /// Last error talking to etcd.
    pub last_error: Option<String>,
}

/// Patroni-style automatic failover through etcd.
pub struct EtcdCoordinator {
    client: Arc<dyn CoordStore>,
    opts: EtcdOptions,
    /// This node's id, named on every log line (several nodes may log
    /// into one stream, as in the simulator).
    node_id: String,
    member: Arc<dyn Member>,
    status: Mutex<CoordinatorStatus>,
    lease: Mutex<Option<LeaseId>>,
}

struct Session {
    lease: Option<LeaseId>,
    ttl_ms: u64,
    valid_until_ms: u64,
    last_keepalive_ms: u64,
    absent_since_ms: Option<u64>,
    /// Revision of our own member record, published on a tick after we saw
    /// the leader key gone: member records at or above it were written
    /// after the old leader's lease ended.
    absent_rev: Option<i64>,
    ticks_as_leader: u64,
}

impl EtcdCoordinator {
    /// A coordinator for `member`, talking to the etcd cluster at
    /// `opts.endpoints`.
    pub fn new(opts: EtcdOptions, member: Arc<dyn Member>) -> Result<Arc<Self>> {
        let client = EtcdClient::new(
            opts.endpoints.clone(),
            Duration::from_millis(500),
            opts.ca_file.as_deref(),
        )?;
        Ok(Self::with_store(opts, Arc::new(client), member))
    }

    /// A coordinator for `member` on any [`CoordStore`] (a simulated etcd,
    /// for instance); `opts.endpoints` is not used.
    pub fn with_store(
        opts: EtcdOptions,
        store: Arc<dyn CoordStore>,
        member: Arc<dyn Member>,
    ) -> Arc<Self> {
        Arc::new(EtcdCoordinator {
            client: store,
            opts,
            node_id: member.info().id,
            member,
            status: Mutex::new(CoordinatorStatus::default()),
            lease: Mutex::new(None),
        })
    }

    fn key(&self, rest: &str) -> String {
        format!("/{}/{rest}", self.opts.cluster)
    }

    /// Current status.
    pub fn status(&self) -> CoordinatorStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note_error(&self, e: &CoordinatorError) {
        tracing::warn!(node_id = %self.node_id, error = %e, "coordinator");
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error = Some(e.to_string());
    }

    fn set_deadline(&self, ms: u64) {
        self.member.set_write_deadline(ms);
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_deadline_ms = ms;
    }

    /// Run until `cancel`; on the way out, revoke the lease so a successor
    /// need not wait for it to expire (a clean stop is a fast failover).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut s = Session {
            lease: None,
            ttl_ms: self.opts.lease_ttl.as_millis() as u64,
            valid_until_ms: 0,
            last_keepalive_ms: 0,
            absent_since_ms: None,
            absent_rev: None,
            ticks_as_leader: 0,
        };
        let me = self.member.info();
        while let Err(e) = self
            .client
            .put(
                &self.key(&format!("nodes/{}", me.id)),
                me.url.as_bytes(),
                None,
            )
            .await
        {
            self.note_error(&e);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.opts.tick * 5) => {}
            }
        }
        let mut tick = tokio::time::interval(self.opts.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.step(&mut s).await {
                self.note_error(&e);
            }
            // Self-fencing holds even when etcd is unreachable: past the
            // deadline the leader refuses writes.
            if self.member.mono_ms() >= s.valid_until_ms {
                self.set_deadline(0);
            }
        }
        self.set_deadline(0);
        if let Some(l) = s.lease {
            let _ = self.client.revoke(l).await;
        }
    }

    async fn step(&self, s: &mut Session) -> Result<()> {
        self.renew(s).await?;
        let Some(lease) = s.lease else {
            return Ok(());
        };
        let info = self.member.info();
        let body = serde_json::to_vec(&info).map_err(|e| CoordinatorError::Etcd(e.to_string()))?;
        self.client
            .put(
                &self.key(&format!("members/{}", info.id)),
                &body,
                Some(lease),
            )
            .await?;
        let leader_kv = self.client.get(&self.key("leader")).await?;
        let leader: Option<LeaderKey> = leader_kv
            .as_ref()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        self.status.lock().unwrap_or_else(|e| e.into_inner()).leader = leader.clone();
        match (leader, leader_kv) {
            (Some(l), Some(kv)) => {
                s.absent_since_ms = None;
                s.absent_rev = None;
                if l.id == info.id
                    && kv.lease == lease
                    && self.member.is_leader()
                    && !self.member.has_quorum()
                {
                    // Check-quorum (Raft §6.2): cut off from a majority of
                    // voters but not from etcd, this leader would keep the
                    // key and nothing could commit anywhere. Give the key
                    // up, and the session lease with it (so a failed
                    // delete cannot keep the key alive), then step down.
                    self.set_deadline(0);
                    let leader_key = self.key("leader");
                    let _ = self
                        .client
                        .txn(
                            &[Compare::ModRevision(leader_key.clone(), kv.mod_revision)],
                            &[TxnOp::Delete(leader_key)],
                        )
                        .await;
                    let _ = self.client.revoke(lease).await;
                    s.lease = None;
                    s.valid_until_ms = 0;
                    s.ticks_as_leader = 0;
                    self.member.step_down();
                } else if l.id == info.id && kv.lease == lease && self.member.is_leader() {
                    s.ticks_as_leader += 1;
                    if s.ticks_as_leader % 20 == 1 {
                        let n = self.client.get_prefix(&self.key("nodes/")).await?.len();
                        self.member.set_cluster_size(n);
                    }
                    self.set_deadline(s.valid_until_ms);
                } else if l.id == info.id && kv.lease == lease {
                    // The key is ours, under our live lease, but we do not
                    // lead: an election we won whose answer was lost, or a
                    // promote that failed. Finish it rather than leave the
                    // cluster without a leader until the lease lapses.
                    tracing::warn!(
                        node_id = %self.node_id,
                        epoch = l.epoch,
                        "leader key is ours but we do not lead; promoting"
                    );
                    self.member
                        .promote(Epoch(l.epoch))
                        .await
                        .map_err(CoordinatorError::Refused)?;
                    self.set_deadline(s.valid_until_ms);
                } else {
                    self.set_deadline(0);
                    if l.id != info.id && self.member.following().as_deref() != Some(&l.url) {
                        tracing::info!(node_id = %self.node_id, leader = %l.id, epoch = l.epoch, "following the elected leader");
                        self.member
                            .follow(l.url.clone(), Epoch(l.epoch))
                            .await
                            .map_err(CoordinatorError::Refused)?;
                    }
                }
            }
            _ => {
                self.set_deadline(0);
                let now = self.member.mono_ms();
                let first_tick = s.absent_since_ms.is_none();
                let since = *s.absent_since_ms.get_or_insert(now);
                if !first_tick && s.absent_rev.is_none() {
                    // This tick's publish came after we saw the key gone.
                    s.absent_rev = self
                        .client
                        .get(&self.key(&format!("members/{}", info.id)))
                        .await?
                        .map(|kv| kv.mod_revision);
                }
                if now.saturating_sub(since) >= self.opts.settle.as_millis() as u64 {
                    self.try_elect(lease, s).await?;
                }
            }
        }
        Ok(())
    }

    /// Grant or renew the session lease.
    async fn renew(&self, s: &mut Session) -> Result<()> {
        let now = self.member.mono_ms();
        // Renew well inside the TTL; the margin covers scheduling delays.
        let margin = (s.ttl_ms / 10).max(100);
        match s.lease {
            None => {
                let ttl_s = self.opts.lease_ttl.as_secs().max(1) as i64;
                let (id, granted) = self.client.grant(ttl_s).await?;
                s.ttl_ms = (granted.max(1) as u64) * 1000;
                s.lease = Some(id);
                s.valid_until_ms = now + s.ttl_ms - (s.ttl_ms / 10).max(100);
                s.last_keepalive_ms = now;
                *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
                self.status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .lease_ttl_ms = s.ttl_ms;
            }
            Some(id) if now.saturating_sub(s.last_keepalive_ms) >= s.ttl_ms / 4 => {
                match self.client.keepalive(id).await? {
                    Some(ttl) => {
                        s.ttl_ms = (ttl as u64) * 1000;
                        s.valid_until_ms = now + s.ttl_ms - margin;
                        s.last_keepalive_ms = now;
                    }
                    None => {
                        tracing::warn!(node_id = %self.node_id, "session lease expired");
                        s.lease = None;
                        s.valid_until_ms = 0;
                        self.set_deadline(0);
                    }
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    async fn try_elect(&self, lease: LeaseId, s: &Session) -> Result<()> {
        let records = self.client.get_prefix(&self.key("members/")).await?;
        // Decide only on positions published after the old leader's lease
        // ended: a stale record could understate what a member holds, and
        // the winner must hold every write a majority acknowledged.
        let Some(fresh_from) = s.absent_rev else {
            return Ok(());
        };
        if records.iter().any(|kv| kv.mod_revision < fresh_from) {
            tracing::debug!(
                node_id = %self.node_id,
                "waiting for every member to publish a fresh position"
            );
            return Ok(());
        }
        let members: Vec<MemberInfo> = records
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        let registered = self.client.get_prefix(&self.key("nodes/")).await?.len();
        self.member.set_cluster_size(registered);
        let target = self
            .client
            .get(&self.key("switchover"))
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let me = self.member.info();
        let winner = match choose(
            &members,
            registered,
            self.opts.max_lag_records,
            target.as_deref(),
        ) {
            Ok(w) => w,
            Err(why) => {
                tracing::debug!(node_id = %self.node_id, ?why, "no leader can be elected yet");
                return Ok(());
            }
        };
        if winner.id != me.id {
            return Ok(());
        }
        let epoch_kv = self.client.get(&self.key("epoch")).await?;
        let stored: u64 = epoch_kv
            .as_ref()
            .and_then(|kv| String::from_utf8_lossy(&kv.value).parse().ok())
            .unwrap_or(0);
        let highest_seen = members.iter().map(|m| m.epoch).max().unwrap_or(0);
        let epoch = stored.max(highest_seen) + 1;
        let leader = LeaderKey {
            id: me.id.clone(),
            url: me.url.clone(),
            epoch,
        };
        let value =
            serde_json::to_vec(&leader).map_err(|e| CoordinatorError::Etcd(e.to_string()))?;
        let won = self
            .client
            .txn(
                &[
                    Compare::Absent(self.key("leader")),
                    Compare::ModRevision(
                        self.key("epoch"),
                        epoch_kv.map(|kv| kv.mod_revision).unwrap_or(0),
                    ),
                ],
                &[
                    TxnOp::Put(self.key("leader"), value, Some(lease)),
                    TxnOp::Put(self.key("epoch"), epoch.to_string().into_bytes(), None),
                    TxnOp::Delete(self.key("switchover")),
                ],
            )
            .await?;
        if !won {
            return Ok(());
        }
        tracing::info!(
            node_id = %self.node_id,
            epoch,
            flush_lsn = me.flush_lsn,
            "won the election; promoting"
        );
        self.member
            .promote(Epoch(epoch))
            .await
            .map_err(CoordinatorError::Refused)?;
        self.set_deadline(s.valid_until_ms);
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elections_won += 1;
        Ok(())
    }

    /// Planned switchover, called on the leader once `target` holds every
    /// record: name the target, then give up the leader key. Only the target
    /// is eligible in the election that follows.
    pub async fn hand_over(&self, target: &str) -> Result<()> {
        let me = self.member.info();
        let leader_key = self.key("leader");
        let current = self.client.get(&leader_key).await?;
        let Some(current) = current else {
            return Err(CoordinatorError::Refused(
                "no leader key to hand over".into(),
            ));
        };
        let mine: Option<LeaderKey> = serde_json::from_slice(&current.value).ok();
        if mine.as_ref().map(|l| l.id.as_str()) != Some(me.id.as_str()) {
            return Err(CoordinatorError::Refused(
                "this node does not hold the leader key".into(),
            ));
        }
        self.set_deadline(0);
        let ok = self
            .client
            .txn(
                &[Compare::ModRevision(
                    leader_key.clone(),
                    current.mod_revision,
                )],
                &[
                    TxnOp::Put(self.key("switchover"), target.as_bytes().to_vec(), None),
                    TxnOp::Delete(leader_key),
                ],
            )
            .await?;
        if ok {
            Ok(())
        } else {
            Err(CoordinatorError::Refused(
                "leader key changed during switchover".into(),
            ))
        }
    }
}

impl crate::Coordinator for EtcdCoordinator {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn automatic(&self) -> bool {
        true
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({"kind": "etcd", "state": EtcdCoordinator::status(self)})
    }

    fn hand_over<'a>(
        &'a self,
        target_id: &'a str,
        _target_url: &'a str,
    ) -> crate::BoxFuture<'a, Result<()>> {
        Box::pin(EtcdCoordinator::hand_over(self, target_id))
    }
}
