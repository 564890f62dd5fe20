//! The static coordinator: the leader is named in configuration (the node
//! started without `--follow`), and leadership moves only when an operator
//! says so — `POST /admin/promote` on a follower, or a planned switchover.

use std::sync::Weak;
use std::time::Duration;

use replidb_coordinator::{BoxFuture, Coordinator, CoordinatorError, Result};
use replidb_core::Epoch;

use crate::node::Node;

/// Leadership by configuration and operator action.
pub struct StaticCoordinator {
    node: Weak<Node>,
}

impl StaticCoordinator {
    /// The static coordinator of `node`.
    pub fn new(node: Weak<Node>) -> Self {
        StaticCoordinator { node }
    }
}

impl Coordinator for StaticCoordinator {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn automatic(&self) -> bool {
        false
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({"kind": "static"})
    }

    /// Ask the target to promote itself (it announces the new epoch to its
    /// peers), then follow it.
    fn hand_over<'a>(
        &'a self,
        _target_id: &'a str,
        target_url: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let node = self
                .node
                .upgrade()
                .ok_or_else(|| CoordinatorError::Refused("node stopped".into()))?;
            let url = format!("{}/admin/promote", target_url.trim_end_matches('/'));
            let resp = node
                .http
                .post(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| CoordinatorError::Refused(format!("{url}: {e}")))?;
            if !resp.status().is_success() {
                return Err(CoordinatorError::Refused(format!(
                    "{url} answered {}",
                    resp.status()
                )));
            }
            let v: serde_json::Value =
                crate::peer_answer::json(resp, crate::peer_answer::CONTROL_ANSWER_BYTES_MAX)
                    .await
                    .map_err(|e| CoordinatorError::Refused(e.to_string()))?;
            let epoch = Epoch(v["epoch"].as_u64().unwrap_or(0));
            node.follow(target_url.to_string(), epoch)
                .await
                .map_err(|e| CoordinatorError::Refused(e.to_string()))
        })
    }
}

/// How often a static leader without check-quorum contact asks its voting
/// set whether a newer epoch has a leader ([`seek_newer_leader`]).
pub const NEWER_LEADER_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one peer's `/status` may take to answer that probe.
const NEWER_LEADER_PROBE_TIMEOUT: Duration = Duration::from_millis(800);
const _: () =
    assert!(NEWER_LEADER_PROBE_TIMEOUT.as_millis() < NEWER_LEADER_PROBE_INTERVAL.as_millis());

/// One voter's answer to the probe: the newest epoch it knows and the
/// leader it names for it (`/status`'s `epoch` and `leader`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochReport {
    /// The newest epoch the voter knows.
    pub epoch: Epoch,
    /// The leader it names (itself if it leads; empty if none).
    pub leader: String,
}

/// Of the voters' reports, the leader this node, leading `leading` at
/// `me`, should follow: the newest epoch above its own that names a leader
/// other than itself, within [`replidb_core::EPOCH_JUMP_MAX`] of it (the
/// bound `/admin/fence` applies to an announcement). `None`: nobody knows
/// of a newer leader, and this node goes on leading (and, without a
/// majority, refusing writes).
pub fn newer_leader(leading: Epoch, me: &str, reports: &[EpochReport]) -> Option<EpochReport> {
    reports
        .iter()
        .filter(|r| r.epoch > leading && !r.leader.is_empty() && r.leader != me)
        .filter(|r| r.epoch.0 <= leading.0.saturating_add(replidb_core::EPOCH_JUMP_MAX))
        .max_by_key(|r| r.epoch)
        .cloned()
}

/// A static leader that has not heard from a majority of its voters within
/// the check-quorum window asks each of them for its `/status`; a newer
/// epoch with a leader is as good as that leader's `/admin/fence`, and
/// this node steps down and follows it.
///
/// Without this, a replaced leader whose successor never fences it stays a
/// leader that refuses every write for good: its successor fences only the
/// voting set it knows, so not an old leader it has forgotten, and its
/// announcements end when it restarts (or once a peer has answered); the old leader's own announcements
/// to the voters are refused (409, stale epoch) and taught it nothing.
/// (Raft has a deposed leader learn the new term from any message of a
/// peer; here the peers do not write to it, so it asks.)
pub async fn seek_newer_leader(node: &std::sync::Arc<Node>) {
    let Some(leader) = node.leader() else {
        return;
    };
    if leader.has_quorum_contact() {
        return;
    }
    let me = node.config.advertise();
    // All at once: k unreachable voters cost one timeout, not k.
    let asks = node
        .core
        .voting_set()
        .urls()
        .into_iter()
        .filter(|peer| *peer != me)
        .map(|peer| async move { status_of_peer(node, &peer).await });
    let reports: Vec<EpochReport> = futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .filter_map(|doc| {
            Some(EpochReport {
                epoch: Epoch(doc["epoch"].as_u64()?),
                leader: crate::normalise_node_url(doc["leader"].as_str()?).ok()?,
            })
        })
        .collect();
    let Some(newer) = newer_leader(leader.epoch(), &me, &reports) else {
        return;
    };
    // A follower's report names the node it connects to, which need not
    // be the leader of its epoch (a restart's `--follow`, an operator's
    // `/admin/follow`): only a node that says itself it leads that epoch,
    // and is not this node under another spelling, is followed.
    let Some(doc) = status_of_peer(node, &newer.leader).await else {
        return;
    };
    let confirmed = doc["role"] == "leader"
        && doc["epoch"].as_u64() == Some(newer.epoch.0)
        && doc["id"].as_str() != Some(node.config.id.as_str());
    if !confirmed {
        tracing::debug!(named = %newer.leader, epoch = newer.epoch.0, "a voter named a newer leader that does not confirm it");
        return;
    }
    // Still the same leader, still without a majority, and no newer epoch
    // recorded meanwhile: the answers took a while, and an announcement
    // (`/admin/fence`) may have re-pointed this node since.
    if !node
        .leader()
        .is_some_and(|l| l.epoch() == leader.epoch() && !l.has_quorum_contact())
        || node.engine.meta().epoch > newer.epoch
    {
        return;
    }
    tracing::warn!(epoch = leader.epoch().0, newer_epoch = newer.epoch.0, new_leader = %newer.leader, "a voter knows a newer epoch and its leader confirms it; stepping down to follow it");
    if let Err(e) = node.follow(newer.leader.clone(), newer.epoch).await {
        tracing::warn!(error = %e, new_leader = %newer.leader, "could not follow the newer leader");
    }
}

/// `GET {peer}/status` within [`NEWER_LEADER_PROBE_TIMEOUT`], if it answers
/// 2xx with JSON.
async fn status_of_peer(node: &Node, peer: &str) -> Option<serde_json::Value> {
    let url = format!("{}/status", peer.trim_end_matches('/'));
    let answer = node
        .http
        .get(&url)
        .timeout(NEWER_LEADER_PROBE_TIMEOUT)
        .send()
        .await
        .ok()?;
    if !answer.status().is_success() {
        // A 401/403 (`--auth-file` without a token this node may use):
        // the probe cannot work there, which is worth knowing.
        tracing::debug!(peer = %peer, status = answer.status().as_u16(), "newer-leader probe: /status refused");
        return None;
    }
    crate::peer_answer::json(answer, crate::peer_answer::CONTROL_ANSWER_BYTES_MAX)
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(epoch: u64, leader: &str) -> EpochReport {
        EpochReport {
            epoch: Epoch(epoch),
            leader: leader.to_string(),
        }
    }

    #[test]
    fn the_newest_epoch_that_names_another_leader_wins() {
        let me = "http://127.0.0.1:7000";
        let reports = [
            report(3, "http://127.0.0.1:7001"),
            report(5, "http://127.0.0.1:7002"),
            report(4, "http://127.0.0.1:7001"),
        ];
        assert_eq!(
            newer_leader(Epoch(2), me, &reports),
            Some(report(5, "http://127.0.0.1:7002"))
        );
    }

    #[test]
    fn nothing_newer_or_nobody_named_keeps_this_leader() {
        let me = "http://127.0.0.1:7000";
        // Same epoch (its own followers), older, no leader, or itself.
        let reports = [
            report(2, "http://127.0.0.1:7001"),
            report(1, "http://127.0.0.1:7001"),
            report(9, ""),
            report(9, me),
            // An epoch further ahead than any announcement may jump.
            report(
                2 + replidb_core::EPOCH_JUMP_MAX + 1,
                "http://127.0.0.1:7002",
            ),
        ];
        assert_eq!(newer_leader(Epoch(2), me, &reports), None);
    }
}
