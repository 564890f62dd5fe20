//! The etcd coordinator loop: lease, publish, watch the leader key, elect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use replidb_core::Epoch;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::election::{choose, MemberInfo};
use crate::etcd::{Compare, EtcdClient, KeyValue, LeaseId, TxnOp};
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
    /// Leader leases this node revoked because the leader's process was
    /// proven gone ([`Member::leader_process_gone`]).
    pub leases_revoked: u64,
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
    /// Revision of our own member record, published after we saw the
    /// leader key gone: member records at or above it were written after
    /// the old leader's lease ended.
    absent_rev: Option<i64>,
    ticks_as_leader: u64,
    /// Run the next step after this long rather than on the next tick
    /// (set by a step that knows when it can make progress: the end of
    /// the settle time).
    wake_in: Option<Duration>,
    /// The leader's member record as last read: `(leader id, its
    /// mod_revision, when this node first read that revision)` (monotonic
    /// ms). A live leader that reaches etcd republishes it every tick.
    leader_record: Option<(String, i64, u64)>,
}

/// Ticks a leader's member record must go unchanged before a refused
/// connect counts as proof that its process is gone: a live leader that
/// still reaches etcd republishes it every tick, so a firewall that
/// *rejects* its followers' connects (which looks like a closed port)
/// cannot get a live leader's lease revoked.
pub const LEADER_SILENT_TICKS: u32 = 2;

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
            wake_in: None,
            leader_record: None,
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
            match s.wake_in.take() {
                // A step asked to run again sooner than the tick (the
                // settle time ends before it): the election need not wait
                // for the tick's phase.
                Some(d) if d < self.opts.tick => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(d) => {}
                    }
                    tick.reset();
                }
                _ => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                }
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
        let mut leader_kv = self.client.get(&self.key("leader")).await?;
        let mut leader: Option<LeaderKey> = leader_kv
            .as_ref()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        if let (Some(l), Some(kv)) = (&leader, &leader_kv) {
            if self.revoke_if_gone(s, &info, lease, l, kv).await? {
                // Look again: the key is gone now, unless the leader
                // changed meanwhile (then the revoke touched nothing that
                // matters, and the new key is what counts).
                leader_kv = self.client.get(&self.key("leader")).await?;
                leader = leader_kv
                    .as_ref()
                    .and_then(|kv| serde_json::from_slice(&kv.value).ok());
            }
        }
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
                let since = *s.absent_since_ms.get_or_insert(now);
                if s.absent_rev.is_none() {
                    // This tick's publish may have come before the old
                    // leader's lease ended; publish again now, after the
                    // read that found the key gone (etcd orders the two),
                    // and take that revision as the start of fresh
                    // positions. Doing it on this tick rather than the
                    // next saves a tick of every failover.
                    let info = self.member.info();
                    let body = serde_json::to_vec(&info)
                        .map_err(|e| CoordinatorError::Etcd(e.to_string()))?;
                    let key = self.key(&format!("members/{}", info.id));
                    self.client.put(&key, &body, Some(lease)).await?;
                    s.absent_rev = self.client.get(&key).await?.map(|kv| kv.mod_revision);
                }
                let settle_ms = self.opts.settle.as_millis() as u64;
                let waited = now.saturating_sub(since);
                if waited >= settle_ms {
                    self.try_elect(lease, s).await?;
                } else {
                    // Wake when the settle time ends, not on the tick after.
                    s.wake_in = Some(Duration::from_millis(settle_ms - waited));
                }
            }
        }
        Ok(())
    }

    /// The leader key names another node: if this node can prove that
    /// node's process is gone ([`Member::leader_process_gone`]), revoke its
    /// session lease, which takes the leader key and its member record
    /// with it, so the election runs now instead of after the lease's TTL
    /// (and etcd's expiry sweep). Returns whether it revoked.
    ///
    /// Safe because only a dead process loses its lease early: the proof
    /// is a refused connection, never a timeout. Revoking a dead process's
    /// lease is harmless even if the key changed meanwhile: the lease is
    /// still that process's, and nothing alive holds it.
    async fn revoke_if_gone(
        &self,
        s: &mut Session,
        me: &MemberInfo,
        own_lease: LeaseId,
        leader: &LeaderKey,
        kv: &KeyValue,
    ) -> Result<bool> {
        if leader.id == me.id || kv.lease == 0 || kv.lease == own_lease {
            s.leader_record = None;
            return Ok(false);
        }
        if !self.leader_record_silent(s, &leader.id).await? {
            return Ok(false);
        }
        if !self.member.leader_process_gone(&leader.url).await {
            return Ok(false);
        }
        tracing::warn!(
            node_id = %self.node_id,
            leader = %leader.id,
            epoch = leader.epoch,
            "leader's process is gone (connection refused); revoking its lease"
        );
        match self.client.revoke(kv.lease).await {
            Ok(()) => {
                self.status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .leases_revoked += 1;
            }
            // Most likely another member revoked it first, or it expired:
            // either way the next read tells.
            Err(e) => {
                tracing::info!(node_id = %self.node_id, error = %e, "revoking the dead leader's lease failed");
            }
        }
        Ok(true)
    }

    /// Whether the leader's member record has stayed unchanged (or gone)
    /// for [`LEADER_SILENT_TICKS`] ticks as this node reads it: the leader
    /// has stopped publishing, as a dead process does.
    async fn leader_record_silent(&self, s: &mut Session, leader_id: &str) -> Result<bool> {
        let now = self.member.mono_ms();
        let rev = self
            .client
            .get(&self.key(&format!("members/{leader_id}")))
            .await?
            .map_or(0, |kv| kv.mod_revision);
        let since = match &s.leader_record {
            Some((id, r, since)) if id == leader_id && *r == rev => *since,
            _ => {
                s.leader_record = Some((leader_id.to_string(), rev, now));
                now
            }
        };
        let silent_ms = self.opts.tick.as_millis() as u64 * u64::from(LEADER_SILENT_TICKS);
        Ok(now.saturating_sub(since) >= silent_ms)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tokio::time::Instant;

    use super::*;
    use crate::BoxFuture;

    struct MemLease {
        ttl_s: i64,
        expires: Instant,
    }

    #[derive(Default)]
    struct MemState {
        revision: i64,
        next_lease: LeaseId,
        kvs: BTreeMap<String, KeyValue>,
        leases: BTreeMap<LeaseId, MemLease>,
        revoked: Vec<LeaseId>,
    }

    impl MemState {
        /// Drop every lease past its TTL, with its keys (etcd's expiry,
        /// on tokio's clock, which these tests pause).
        fn expire(&mut self) {
            let now = Instant::now();
            let due: Vec<LeaseId> = self
                .leases
                .iter()
                .filter(|(_, l)| l.expires <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                self.drop_lease(id);
            }
        }

        fn drop_lease(&mut self, id: LeaseId) {
            self.leases.remove(&id);
            self.revision += 1;
            self.kvs.retain(|_, kv| kv.lease != id);
        }

        fn put(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>, revision: i64) {
            KeyValue::put_into(&mut self.kvs, key, value, lease, revision);
        }

        fn lease_missing(&self, lease: Option<LeaseId>) -> bool {
            lease.is_some_and(|l| !self.leases.contains_key(&l))
        }
    }

    /// etcd's semantics in memory: revisions, leases that take their keys
    /// when they expire or are revoked, compare-and-swap.
    #[derive(Default)]
    struct MemStore(Mutex<MemState>);

    impl MemStore {
        fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
            let mut st = self.0.lock().unwrap();
            st.expire();
            st
        }
    }

    fn not_found() -> CoordinatorError {
        CoordinatorError::Etcd("requested lease not found".into())
    }

    impl CoordStore for MemStore {
        fn grant(&self, ttl_s: i64) -> BoxFuture<'_, Result<(LeaseId, i64)>> {
            let mut st = self.state();
            st.next_lease += 1;
            let id = st.next_lease;
            let expires = Instant::now() + Duration::from_secs(ttl_s as u64);
            st.leases.insert(id, MemLease { ttl_s, expires });
            Box::pin(async move { Ok((id, ttl_s)) })
        }

        fn keepalive(&self, id: LeaseId) -> BoxFuture<'_, Result<Option<i64>>> {
            let mut st = self.state();
            let ttl = st.leases.get_mut(&id).map(|l| {
                l.expires = Instant::now() + Duration::from_secs(l.ttl_s as u64);
                l.ttl_s
            });
            Box::pin(async move { Ok(ttl) })
        }

        fn revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
            let mut st = self.state();
            let r = if st.leases.contains_key(&id) {
                st.drop_lease(id);
                st.revoked.push(id);
                Ok(())
            } else {
                Err(not_found())
            };
            Box::pin(async move { r })
        }

        fn put<'a>(
            &'a self,
            key: &'a str,
            value: &'a [u8],
            lease: Option<LeaseId>,
        ) -> BoxFuture<'a, Result<()>> {
            let mut st = self.state();
            let r = if st.lease_missing(lease) {
                Err(not_found())
            } else {
                st.revision += 1;
                let rev = st.revision;
                st.put(key, value, lease, rev);
                Ok(())
            };
            Box::pin(async move { r })
        }

        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>>> {
            let v = self.state().kvs.get(key).cloned();
            Box::pin(async move { Ok(v) })
        }

        fn get_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>>> {
            let v = self
                .state()
                .kvs
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, kv)| kv.clone())
                .collect();
            Box::pin(async move { Ok(v) })
        }

        fn txn<'a>(
            &'a self,
            compare: &'a [Compare],
            success: &'a [TxnOp],
        ) -> BoxFuture<'a, Result<bool>> {
            let mut st = self.state();
            let holds = compare.iter().all(|c| match c {
                Compare::Absent(k) => !st.kvs.contains_key(k),
                Compare::ValueEquals(k, v) => st.kvs.get(k).is_some_and(|kv| kv.value == *v),
                Compare::ModRevision(k, r) => {
                    st.kvs.get(k).map(|kv| kv.mod_revision).unwrap_or(0) == *r
                }
            });
            let r = if !holds {
                Ok(false)
            } else if success
                .iter()
                .any(|op| matches!(op, TxnOp::Put(_, _, l) if st.lease_missing(*l)))
            {
                Err(not_found())
            } else {
                st.revision += 1;
                let rev = st.revision;
                for op in success {
                    match op {
                        TxnOp::Put(k, v, l) => st.put(k, v, *l, rev),
                        TxnOp::Delete(k) => {
                            st.kvs.remove(k);
                        }
                    }
                }
                Ok(true)
            };
            Box::pin(async move { r })
        }
    }

    /// A node as the coordinator sees it, whose proof of the leader's
    /// death is a switch.
    struct FakeMember {
        id: String,
        start: Instant,
        leading: AtomicBool,
        epoch: AtomicU64,
        following: Mutex<Option<String>>,
        /// What `leader_process_gone` answers about n1 (a refused connect,
        /// or a partition's timeout).
        gone: AtomicBool,
        /// Probes of n1.
        probes: AtomicU64,
    }

    impl FakeMember {
        fn new(id: &str, gone: bool) -> Arc<FakeMember> {
            Arc::new(FakeMember {
                id: id.into(),
                start: Instant::now(),
                leading: AtomicBool::new(false),
                epoch: AtomicU64::new(1),
                following: Mutex::new(None),
                gone: AtomicBool::new(gone),
                probes: AtomicU64::new(0),
            })
        }
    }

    fn info_of(id: &str, role: &str, epoch: u64) -> MemberInfo {
        MemberInfo {
            id: id.into(),
            url: format!("http://{id}:7000"),
            role: role.into(),
            epoch,
            flush_lsn: 10,
            last_epoch: 1,
            applied_lsn: 10,
            commit_lsn: 10,
            healthy: true,
        }
    }

    impl Member for FakeMember {
        fn info(&self) -> MemberInfo {
            let role = if self.is_leader() {
                "leader"
            } else {
                "follower"
            };
            info_of(&self.id, role, self.epoch.load(Ordering::SeqCst))
        }
        fn is_leader(&self) -> bool {
            self.leading.load(Ordering::SeqCst)
        }
        fn following(&self) -> Option<String> {
            self.following.lock().unwrap().clone()
        }
        fn promote(&self, epoch: Epoch) -> BoxFuture<'_, std::result::Result<(), String>> {
            self.epoch.store(epoch.0, Ordering::SeqCst);
            self.leading.store(true, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
        fn follow(
            &self,
            url: String,
            epoch: Epoch,
        ) -> BoxFuture<'_, std::result::Result<(), String>> {
            self.epoch.fetch_max(epoch.0, Ordering::SeqCst);
            *self.following.lock().unwrap() = Some(url);
            Box::pin(async { Ok(()) })
        }
        fn set_write_deadline(&self, _deadline_ms: u64) {}
        fn set_cluster_size(&self, _n: usize) {}
        fn mono_ms(&self) -> u64 {
            self.start.elapsed().as_millis() as u64
        }
        fn leader_process_gone<'a>(&'a self, leader_url: &'a str) -> BoxFuture<'a, bool> {
            // Only n1 (the leader the tests kill or cut off) may be gone.
            let n1 = leader_url == "http://n1:7000";
            if n1 {
                self.probes.fetch_add(1, Ordering::SeqCst);
            }
            let gone = n1 && self.gone.load(Ordering::SeqCst) && !self.is_leader();
            Box::pin(async move { gone })
        }
    }

    /// A three-node cluster whose leader n1 held the leader key (epoch 1)
    /// under a session lease of `ttl_s` seconds; returns that lease.
    async fn cluster_led_by_n1(store: &MemStore, ttl_s: i64) -> LeaseId {
        let (l1, _) = store.grant(ttl_s).await.unwrap();
        for n in ["n1", "n2", "n3"] {
            let url = format!("http://{n}:7000");
            store
                .put(&format!("/t/nodes/{n}"), url.as_bytes(), None)
                .await
                .unwrap();
        }
        store.put("/t/epoch", b"1", None).await.unwrap();
        let me = serde_json::to_vec(&info_of("n1", "leader", 1)).unwrap();
        store.put("/t/members/n1", &me, Some(l1)).await.unwrap();
        let key = LeaderKey {
            id: "n1".into(),
            url: "http://n1:7000".into(),
            epoch: 1,
        };
        let key = serde_json::to_vec(&key).unwrap();
        store.put("/t/leader", &key, Some(l1)).await.unwrap();
        l1
    }

    fn start(
        store: &Arc<MemStore>,
        member: &Arc<FakeMember>,
        cancel: &CancellationToken,
    ) -> Arc<EtcdCoordinator> {
        let c = EtcdCoordinator::with_store(
            EtcdOptions::new(Vec::new(), "t"),
            store.clone(),
            member.clone(),
        );
        tokio::spawn(c.clone().run(cancel.clone()));
        c
    }

    fn leader_key(store: &MemStore) -> Option<LeaderKey> {
        store
            .state()
            .kvs
            .get("/t/leader")
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
    }

    /// Followers with proof that n1's process is gone revoke its lease and
    /// elect a successor within a few ticks, long before the 1 s lease
    /// could have expired (and etcd swept it).
    #[tokio::test(start_paused = true)]
    async fn proven_dead_leader_is_replaced_before_its_lease_expires() {
        let store = Arc::new(MemStore::default());
        let dead = cluster_led_by_n1(&store, 1).await;
        let t0 = Instant::now();
        let cancel = CancellationToken::new();
        let members = [FakeMember::new("n2", true), FakeMember::new("n3", true)];
        let coords: Vec<_> = members.iter().map(|m| start(&store, m, &cancel)).collect();
        let winner = loop {
            if let Some(m) = members.iter().find(|m| m.is_leader()) {
                break m.clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "nobody elected after the leader died"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "elected {took:?} after the leader died: the lease was not revoked"
        );
        assert!(store.state().revoked.contains(&dead));
        let revoked: u64 = coords.iter().map(|c| c.status().leases_revoked).sum();
        assert!(revoked >= 1);
        let key = leader_key(&store).expect("the winner holds the leader key");
        assert_eq!((key.id.as_str(), key.epoch), (winner.id.as_str(), 2));
        // The loser follows the winner.
        let loser = members.iter().find(|m| m.id != winner.id).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(loser.following(), Some(key.url));
        cancel.cancel();
    }

    /// A follower that cannot prove the leader is gone (its connects time
    /// out: a partition) revokes nothing: the live leader keeps its key as
    /// long as it renews its lease.
    #[tokio::test(start_paused = true)]
    async fn unproven_leader_loss_revokes_nothing() {
        let store = Arc::new(MemStore::default());
        let l1 = cluster_led_by_n1(&store, 1).await;
        let cancel = CancellationToken::new();
        // n1 is alive behind a partition: it still renews its lease.
        let renewer = {
            let (store, cancel) = (store.clone(), cancel.clone());
            tokio::spawn(async move {
                while !cancel.is_cancelled() {
                    assert_eq!(store.keepalive(l1).await.unwrap(), Some(1));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        let members = [FakeMember::new("n2", false), FakeMember::new("n3", false)];
        let coords: Vec<_> = members.iter().map(|m| start(&store, m, &cancel)).collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(members.iter().all(|m| m.probes.load(Ordering::SeqCst) > 0));
        assert!(store.state().revoked.is_empty());
        assert!(coords.iter().all(|c| c.status().leases_revoked == 0));
        assert!(members.iter().all(|m| !m.is_leader()));
        assert_eq!(leader_key(&store).map(|k| k.id), Some("n1".to_string()));
        cancel.cancel();
        renewer.await.unwrap();
    }

    /// A live leader whose followers' connects are *refused* (a firewall
    /// that rejects rather than drops looks like a closed port) but that
    /// still reaches etcd republishes its member record every tick: that
    /// is not a dead process, and its lease is not revoked.
    #[tokio::test(start_paused = true)]
    async fn a_refusing_leader_that_still_publishes_keeps_its_lease() {
        let store = Arc::new(MemStore::default());
        let l1 = cluster_led_by_n1(&store, 1).await;
        let cancel = CancellationToken::new();
        let publisher = {
            let (store, cancel) = (store.clone(), cancel.clone());
            tokio::spawn(async move {
                let me = serde_json::to_vec(&info_of("n1", "leader", 1)).unwrap();
                let mut renewed = Instant::now();
                while !cancel.is_cancelled() {
                    store.put("/t/members/n1", &me, Some(l1)).await.unwrap();
                    if renewed.elapsed() >= Duration::from_millis(250) {
                        assert_eq!(store.keepalive(l1).await.unwrap(), Some(1));
                        renewed = Instant::now();
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        // Both followers' probes say "refused".
        let members = [FakeMember::new("n2", true), FakeMember::new("n3", true)];
        let coords: Vec<_> = members.iter().map(|m| start(&store, m, &cancel)).collect();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(store.state().revoked.is_empty());
        assert!(coords.iter().all(|c| c.status().leases_revoked == 0));
        assert!(members.iter().all(|m| !m.is_leader()));
        assert_eq!(leader_key(&store).map(|k| k.id), Some("n1".to_string()));
        cancel.cancel();
        publisher.await.unwrap();
    }
}
