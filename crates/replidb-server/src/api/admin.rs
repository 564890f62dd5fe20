//! Operator actions: promote, follow, fence, switchover.
//!
//! With the static coordinator these are the failover mechanism: an
//! operator promotes a follower, which takes `epoch = highest seen + 1` and
//! then tells every peer it knows (`POST /admin/fence`), so the other
//! followers re-point and a returning old leader steps down and rewinds.
//! With etcd, leadership is the coordinator's: promote and follow are
//! refused, and switchover goes through etcd.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use replidb_core::Epoch;
use serde::Deserialize;
use serde_json::json;

use super::write::read_body;
use super::{ApiError, ApiResult, AppState};
use crate::node::Node;

fn etcd_managed(node: &Node, what: &str) -> ApiResult<()> {
    if node.coordinator().automatic() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "coordinator_managed",
            format!(
                "leadership is managed by etcd; {what} is not available (use /admin/switchover)"
            ),
        ));
    }
    Ok(())
}

async fn json_body<T: for<'de> Deserialize<'de>>(body: Body, shape: &str) -> ApiResult<T> {
    let raw = read_body(body, 64 * 1024).await?;
    serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("expected {shape}: {e}")))
}

/// `POST /admin/promote`: this follower leads a new epoch and tells its peers.
pub async fn promote(State(node): State<AppState>) -> ApiResult<Response> {
    etcd_managed(&node, "manual promote")?;
    if node.leader().is_some() {
        return Ok(Json(json!({"promoted": false, "message": "already the leader", "epoch": node.engine.meta().epoch.0})).into_response());
    }
    let mut peers = Vec::new();
    if let Some(f) = node.follower() {
        peers = f.status().peers;
        let old = f.leader_url();
        if !old.is_empty() && !peers.contains(&old) {
            peers.push(old);
        }
    }
    let epoch = node.engine.meta().epoch.next();
    node.promote(epoch)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    node.announce_leadership(epoch, peers.clone());
    tracing::warn!(epoch = %epoch, "promoted by operator");
    Ok(Json(json!({"promoted": true, "epoch": epoch.0, "announcing_to": peers})).into_response())
}

#[derive(Deserialize)]
struct FollowBody {
    leader: String,
}

/// `POST /admin/follow {"leader": URL}`: follow another leader.
pub async fn follow(State(node): State<AppState>, body: Body) -> ApiResult<Response> {
    etcd_managed(&node, "manual follow")?;
    let b: FollowBody = json_body(body, "{\"leader\": URL}").await?;
    replidb_replication::transport::host_port(&b.leader)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if b.leader == node.config.advertise() {
        return Err(ApiError::bad_request("a node cannot follow itself"));
    }
    let epoch = node.engine.meta().epoch;
    node.follow(b.leader.clone(), epoch)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({"following": b.leader})).into_response())
}

#[derive(Deserialize)]
struct FenceBody {
    epoch: u64,
    leader: String,
}

/// `POST /admin/fence {"epoch", "leader"}`: a new leader announces itself.
/// A node at a lower epoch stops acting on it: a leader steps down, and
/// everyone re-points to the announced leader.
pub async fn fence(State(node): State<AppState>, body: Body) -> ApiResult<Response> {
    let b: FenceBody = json_body(body, "{\"epoch\": N, \"leader\": URL}").await?;
    replidb_replication::transport::host_port(&b.leader)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if b.leader == node.config.advertise() {
        return Ok(Json(json!({"fenced": false, "message": "that is this node"})).into_response());
    }
    let mine = node.engine.meta().epoch;
    let theirs = Epoch(b.epoch);
    if theirs < mine || (theirs == mine && node.leader().is_some()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_epoch",
            format!("announced epoch {theirs} is not newer than this node's epoch {mine}"),
        ));
    }
    let was_leader = node.leader().is_some();
    node.follow(b.leader.clone(), theirs)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if was_leader {
        tracing::warn!(new_leader = %b.leader, epoch = %theirs, "fenced: stepped down");
    }
    Ok(Json(
        json!({"fenced": true, "following": b.leader, "epoch": theirs.0, "was_leader": was_leader}),
    )
    .into_response())
}

#[derive(Deserialize)]
struct SwitchoverBody {
    to: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `POST /admin/switchover {"to": ID}`: hand leadership to a follower
/// without losing an acknowledged write. Writes pause (503, Retry-After)
/// until the target holds every record; then the target takes over and
/// this node follows it. If the target does not catch up in `timeout_ms`
/// (default 5000), writes resume here and the answer is 504.
pub async fn switchover(State(node): State<AppState>, body: Body) -> ApiResult<Response> {
    let b: SwitchoverBody = json_body(body, "{\"to\": ID}").await?;
    let Some(leader) = node.leader() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_leader",
            format!(
                "switchover must be asked of the leader ({})",
                node.leader_url()
            ),
        ));
    };
    let Some(target) = leader.replicas().into_iter().find(|r| r.id == b.to) else {
        return Err(ApiError::not_found(format!(
            "no follower {:?} is connected",
            b.to
        )));
    };
    let started = Instant::now();
    let timeout = Duration::from_millis(b.timeout_ms.unwrap_or(5000));
    leader.set_paused(true);
    let caught_up = loop {
        let head = node.engine.positions().flush_lsn;
        let flush = leader
            .replicas()
            .into_iter()
            .find(|r| r.id == b.to)
            .map(|r| r.flush_lsn)
            .unwrap_or_default();
        if flush >= head {
            break Some(head);
        }
        if started.elapsed() > timeout {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let Some(lsn) = caught_up else {
        leader.set_paused(false);
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "switchover_timeout",
            format!(
                "{} did not catch up within {} ms; writes resumed here",
                b.to,
                timeout.as_millis()
            ),
        ));
    };
    let handed = node
        .coordinator()
        .hand_over(&b.to, &target.addr)
        .await
        .map_err(|e| e.to_string());
    if let Err(e) = handed {
        leader.set_paused(false);
        return Err(ApiError::new(StatusCode::CONFLICT, "switchover_failed", e));
    }
    // Wait (bounded) until we follow the new leader, so the answer means
    // "done".
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.leader().is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Json(json!({
        "switched_to": b.to,
        "lsn": lsn.0,
        "write_pause_ms": started.elapsed().as_millis() as u64,
    }))
    .into_response())
}
