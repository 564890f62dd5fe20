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
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use replidb_core::{Epoch, Position};
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

/// `POST /admin/promote[?force=true]`: this follower leads a new epoch and
/// tells its peers.
///
/// Before it leads, it asks every member of its voting set for its log
/// position (`GET /status`): a majority of the set (itself included) must
/// answer — the same majority a write needs, so this node's view includes
/// every acknowledged write — and none may hold a better position
/// `(last epoch, lsn)` than this node (409 `not_most_up_to_date` names
/// it: promote that one instead, or wait for this one to catch up). The new
/// epoch is above every epoch any answering member has seen. `force=true`
/// skips both checks, for disaster recovery when a majority is gone for
/// good (acknowledged writes may then be lost; the answer says so).
pub async fn promote(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    etcd_managed(&node, "manual promote")?;
    let p = super::params::Params::parse(q.as_deref(), &["force"])?;
    let force = p
        .parse_as::<bool>("force", "true or false")?
        .unwrap_or(false);
    if node.leader().is_some() {
        return Ok(Json(json!({"promoted": false, "message": "already the leader", "epoch": node.engine.meta().epoch.0})).into_response());
    }
    node.core.refresh_members();
    let me = node.config.advertise();
    let mut peers: Vec<String> = node
        .core
        .voting_set()
        .urls()
        .into_iter()
        .filter(|u| *u != me)
        .collect();
    if let Some(f) = node.follower() {
        let old = f.leader_url();
        if !old.is_empty() && old != me && !peers.contains(&old) {
            peers.push(old);
        }
    }
    let meta = node.engine.meta();
    let flush = node.engine.positions().flush_lsn;
    let mine = meta.history.position_of(flush);
    let answers = peer_positions(&node, &peers).await;
    let voters = (peers.len() + 1).max(node.core.cluster_members());
    let needed = voters / 2 + 1;
    let heard = answers.len() + 1;
    let mut epoch = meta.epoch;
    if !force {
        if heard < needed {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_quorum",
                format!("only {heard} of {voters} voting members answered (a majority, {needed}, must, so that no acknowledged write is missed); retry, or promote with force=true if the others are gone for good"),
            ));
        }
        if let Some((url, better)) = answers.iter().find(|(_, p)| p.position > mine) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_most_up_to_date",
                format!(
                    "{url} holds a later log position {} than this node's {mine}; promote it instead",
                    better.position
                ),
            ));
        }
    }
    for (_, a) in &answers {
        epoch = epoch.max(a.epoch);
    }
    let epoch = epoch.next();
    node.promote(epoch)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    node.announce_leadership(epoch, peers.clone());
    tracing::warn!(epoch = %epoch, %force, "promoted by operator");
    Ok(Json(json!({
        "promoted": true,
        "epoch": epoch.0,
        "position": [mine.epoch.0, mine.lsn.0],
        "members_answered": heard,
        "voters": voters,
        "forced": force,
        "announcing_to": peers,
    }))
    .into_response())
}

/// What a peer said about its log.
struct PeerPosition {
    position: Position,
    epoch: Epoch,
}

/// Ask each peer's `/status` for its position, concurrently, 1 s each;
/// peers that do not answer are left out.
async fn peer_positions(node: &Node, peers: &[String]) -> Vec<(String, PeerPosition)> {
    let asks = peers.iter().map(|url| async move {
        let status = node
            .http
            .get(format!("{}/status", url.trim_end_matches('/')))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()?;
        let pos = status.get("position")?.as_array()?;
        let position = Position::new(
            Epoch(pos.first()?.as_u64()?),
            replidb_core::Lsn(pos.get(1)?.as_u64()?),
        );
        let epoch = Epoch(status.get("epoch")?.as_u64()?);
        Some((url.clone(), PeerPosition { position, epoch }))
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[derive(Deserialize)]
struct ForgetBody {
    member: String,
}

/// `POST /admin/forget {"member": URL or id}`: remove a member that is gone
/// for good from the voting set, so it no longer counts toward majorities.
pub async fn forget(State(node): State<AppState>, body: Body) -> ApiResult<Response> {
    let b: ForgetBody = json_body(body, "{\"member\": URL or id}").await?;
    match node.core.forget(&b.member) {
        Some(url) => Ok(Json(
            json!({"forgotten": url, "voting_set": node.core.voting_set().urls()}),
        )
        .into_response()),
        None => Err(ApiError::not_found(format!(
            "{:?} is not in the voting set",
            b.member
        ))),
    }
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
