//! Operator actions: promote, follow, fence, switchover.
//!
//! With the static coordinator these are the failover mechanism: an
//! operator promotes a follower, which takes `epoch = highest seen + 1` and
//! then tells every peer it knows (`POST /admin/fence`), so the other
//! followers re-point and a returning old leader steps down and rewinds.
//! With etcd, leadership is the coordinator's: promote and follow are
//! refused, and switchover goes through etcd.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use replidb_core::{Epoch, Lsn, Position};
use replidb_replication::Leader;
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
/// epoch is above every epoch any answering member has seen.
///
/// Those positions are a snapshot, and the old leader may still be
/// writing. So the node then records the new epoch (its writer refuses
/// the old leader's stream from then on, so its own position is final),
/// fences every member (`POST /admin/fence`, which makes each do the same)
/// and waits until a majority of voters has taken the epoch (else 503
/// `no_quorum`), then compares positions again: the old leader can no
/// longer commit anything, so a member found ahead now holds writes it
/// may have acknowledged, and the 409 names it (epoch fenced, nobody
/// leading it: promote that one). Raft's vote plays the same part.
/// `force=true` skips the majority and position checks, for disaster
/// recovery when a majority is gone for good (acknowledged writes may then
/// be lost; the answer says so).
#[utoipa::path(
    post,
    path = "/admin/promote",
    tag = "admin",
    operation_id = "admin_promote",
    description = "This follower leads a new epoch and tells its peers (static coordinator). Refused unless a majority of the voting set answers and none holds a later log position, unless `force=true`. Destructive: afterwards this node leads.",
    params(("force" = Option<bool>, Query, description = "Skip the majority requirement (disaster recovery; acknowledged writes held only by members that do not answer may be lost); a member that answers with a later position still refuses it (409)")),
    responses(
        (status = 200, description = "Promoted, or already the leader", body = super::openapi::PromoteResponse),
        (status = 400, description = "Unknown or invalid parameter", body = super::openapi::ErrorBody),
        (status = 409, description = "Leadership is etcd's (`coordinator_managed`), a member holds a later position (`not_most_up_to_date`), or a newer epoch was recorded while this node stood for its own (`stale_epoch`)", body = super::openapi::ErrorBody),
        (status = 503, description = "Fewer than a majority of voters answered, or took the new epoch (`no_quorum`; of two concurrent promotes at most one wins a majority); a forced promote met another candidate (`promote_in_progress`); a rewind's resync is under way here (`resyncing`); with `Retry-After`", body = super::openapi::ErrorBody),
    ),
)]
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
    let voting: Vec<String> = node
        .core
        .voting_set()
        .urls()
        .into_iter()
        .filter(|u| *u != me)
        .collect();
    // The node we followed is asked (for its position, and told of the new
    // epoch) even when it is not a voter, but only voters make the
    // majority: a follow target outside the set (a typo, or a cut link's
    // address) counted as one more member made a majority of 2 in 3 need
    // 3 of 4.
    let mut peers = voting.clone();
    if let Some(f) = node.follower() {
        let old = f.leader_url();
        if !old.is_empty() && old != me && !peers.contains(&old) {
            peers.push(old);
        }
    }
    let meta = node.engine.meta();
    let flush = node.engine.positions().flush_lsn;
    let before = meta.history.position_of(flush);
    let answers = peer_positions(&node, &peers).await;
    let voters = (voting.len() + 1).max(node.core.cluster_members());
    let needed = voters / 2 + 1;
    let heard = 1 + answers.iter().filter(|(u, _)| voting.contains(u)).count();
    let mut epoch = meta.epoch;
    if !force && heard < needed {
        return Err(ApiError::retry_later("no_quorum", format!("only {heard} of {voters} voting members answered (a majority, {needed}, must, so that no acknowledged write is missed); retry, or promote with force=true if the others are gone for good")));
    }
    // Even forced: `force` stands in for the members that are gone, not
    // for those that answered. Leading behind one of them would rewind
    // it, and a node caught mid-resync (position 0) would wipe the
    // cluster (found by a new user).
    if let Some(ahead) = member_ahead(&answers, before, |_| "; promote it instead".into()) {
        return Err(ahead);
    }
    for (_, a) in &answers {
        // A peer's epoch counts only within the same bound a fence has.
        if a.epoch.0 <= meta.epoch.0.saturating_add(replidb_core::EPOCH_JUMP_MAX) {
            epoch = epoch.max(a.epoch);
        }
    }
    let epoch = epoch.next();
    // The positions above were a snapshot: the old leader may still be
    // running, and this node and the others went on acknowledging its
    // stream, so a write could reach a majority after they answered and
    // be missing here. First stop this node's own stream (standing for
    // the new epoch makes the writer refuse the old leader's batches), so
    // its position is final; then fence the others the same way, and
    // compare again with what a majority of them holds now that they
    // cannot move.
    // In a task of its own: a client that hangs up must not stop it
    // between recording the epoch and following nobody.
    let standing = tokio::spawn({
        let node = node.clone();
        async move { node.stand_for(epoch).await }
    })
    .await
    .map_err(|e| ApiError::internal(format!("promote task failed: {e}")))?;
    let candidacy = match standing {
        Ok(c) => c,
        Err(crate::ServerError::Leading { epoch }) => {
            return Ok(Json(
                json!({"promoted": false, "message": "already the leader", "epoch": epoch.0}),
            )
            .into_response());
        }
        Err(e) => return Err(repoint_error(e)),
    };
    let mine = node
        .engine
        .meta()
        .history
        .position_of(node.engine.positions().flush_lsn);
    let Fenced { fenced, contested } = fence_for_promote(&node, epoch, &peers).await;
    if let (true, Some(rival)) = (force, contested.first()) {
        // A forced promote does not need a majority, so a majority does
        // not keep two forced candidates of one epoch apart: give up,
        // rather than both lead it. Unforced, the rival simply does not
        // count: each member takes one candidate per epoch, so at most
        // one of two can count a majority, and it leads (aborting both
        // left every member following a node that led nothing).
        return Err(ApiError::retry_later("promote_in_progress", format!("{rival} is standing for epoch {epoch} too (a concurrent promote); this node does not lead; retry one of them")));
    }
    let fenced_voters = 1 + fenced.iter().filter(|u| voting.contains(u)).count();
    if !force && fenced_voters < needed {
        return Err(ApiError::retry_later("no_quorum", format!("only {fenced_voters} of {voters} voting members took the new epoch {epoch} (a majority, {needed}, must, so that the old leader can commit nothing more, and so that of two concurrent promotes at most one leads); this node does not lead; retry")));
    }
    let now = peer_positions(&node, &fenced).await;
    if let Some(ahead) = member_ahead(&now, mine, |url| {
        format!(" (the old leader wrote on while the positions were compared); epoch {epoch} is fenced, nobody leads it: promote {url}")
    }) {
        return Err(ahead);
    }
    // Likewise: once it records that it leads, it must also take the role
    // and announce it, or the members it fenced would follow a node that
    // does not lead.
    tokio::spawn({
        let (node, peers) = (node.clone(), peers.clone());
        async move {
            candidacy.lead().await?;
            node.announce_leadership(epoch, peers);
            Ok::<(), crate::ServerError>(())
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("promote task failed: {e}")))?
    .map_err(repoint_error)?;
    tracing::warn!(epoch = epoch.0, force, "promoted by operator");
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

/// 409 `not_most_up_to_date` naming the first of `answers` that holds a
/// later position than `mine`, `advice(its URL)` ending the message;
/// `None` if none does.
fn member_ahead(
    answers: &[(String, PeerPosition)],
    mine: Position,
    advice: impl FnOnce(&str) -> String,
) -> Option<ApiError> {
    let (url, better) = answers.iter().find(|(_, p)| p.position > mine)?;
    Some(ApiError::new(
        StatusCode::CONFLICT,
        "not_most_up_to_date",
        format!(
            "{url} holds a later log position {} than this node's {mine}{}",
            better.position,
            advice(url)
        ),
    ))
}

/// What a peer said about its log.
struct PeerPosition {
    position: Position,
    epoch: Epoch,
}

/// Tell each of `peers` (concurrently, each at most twice, within a few
/// seconds) that `epoch` begins, led by this node (`POST /admin/fence`);
/// returns those that took it (answered 2xx and now follow this node), and
/// those standing for the same epoch themselves. From
/// then on they append and acknowledge nothing of an older epoch's
/// stream. A peer already following another node in the same epoch (a
/// second, concurrent promote) answers 2xx without re-pointing, and does
/// not count: one leader per epoch, as one vote per term in Raft.
async fn fence_for_promote(node: &AppState, epoch: Epoch, peers: &[String]) -> Fenced {
    let me = node.config.advertise();
    let body = json!({"epoch": epoch.0, "leader": me});
    let asks = peers.iter().map(|peer| {
        let (body, me) = (body.clone(), me.clone());
        async move {
            let url = format!("{}/admin/fence", peer.trim_end_matches('/'));
            for attempt in 0..2 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let Ok(r) = node
                    .http
                    .post(&url)
                    .json(&body)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                else {
                    continue;
                };
                let status = r.status();
                let answer: serde_json::Value =
                    crate::peer_answer::json(r, crate::peer_answer::CONTROL_ANSWER_BYTES_MAX)
                        .await
                        .unwrap_or_default();
                if answer["error"]["code"] == "promote_in_progress" {
                    return Some(FenceAnswer::Contested(peer.clone()));
                }
                if status.is_server_error() {
                    continue;
                }
                if !status.is_success() {
                    return None;
                }
                let follows_me = answer["following"]
                    .as_str()
                    .and_then(|u| crate::config::normalise_node_url(u).ok())
                    .is_some_and(|u| u == me);
                return follows_me.then(|| FenceAnswer::Fenced(peer.clone()));
            }
            None
        }
    });
    let mut out = Fenced {
        fenced: Vec::new(),
        contested: Vec::new(),
    };
    for answer in futures::future::join_all(asks).await.into_iter().flatten() {
        match answer {
            FenceAnswer::Fenced(url) => out.fenced.push(url),
            FenceAnswer::Contested(url) => out.contested.push(url),
        }
    }
    out
}

/// One peer's answer to a promote's fence.
enum FenceAnswer {
    /// It took the epoch and follows this node.
    Fenced(String),
    /// It stands for the same epoch itself (`promote_in_progress`).
    Contested(String),
}

/// What a promote's fence achieved ([`fence_for_promote`]).
struct Fenced {
    /// Members that took the epoch and follow this node.
    fenced: Vec<String>,
    /// Members standing for the same epoch in a promote of their own.
    contested: Vec<String>,
}

/// Ask each peer's `/status` for its position, concurrently, 1 s each;
/// peers that do not answer are left out.
async fn peer_positions(node: &Node, peers: &[String]) -> Vec<(String, PeerPosition)> {
    let asks = peers.iter().map(|url| async move {
        let answer = node
            .http
            .get(format!("{}/status", url.trim_end_matches('/')))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        let status: serde_json::Value =
            crate::peer_answer::json(answer, crate::peer_answer::CONTROL_ANSWER_BYTES_MAX)
                .await
                .ok()?;
        let pos = status.get("position")?.as_array()?;
        let position = Position::new(Epoch(pos.first()?.as_u64()?), Lsn(pos.get(1)?.as_u64()?));
        let epoch = Epoch(status.get("epoch")?.as_u64()?);
        Some((url.clone(), PeerPosition { position, epoch }))
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `POST /admin/forget`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForgetBody {
    /// The member's URL or id.
    member: String,
    /// Set only by a leader relaying its forget to its followers: the
    /// epoch it leads. A follower takes a relayed forget from its own
    /// epoch only.
    #[serde(default)]
    epoch: Option<u64>,
}

/// `POST /admin/forget {"member": URL or id}`: remove a member that is gone
/// for good from the voting set, so it no longer counts toward majorities.
#[utoipa::path(
    post,
    path = "/admin/forget",
    tag = "admin",
    operation_id = "admin_forget",
    description = "Remove a member that is gone for good from the leader's voting set, so it no longer counts toward majorities.",
    request_body(content = ForgetBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Forgotten", body = super::openapi::ForgetResponse),
        (status = 400, description = "Malformed body, an unknown field, or a query parameter", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::openapi::ErrorBody),
        (status = 404, description = "Not in the voting set", body = super::openapi::ErrorBody),
        (status = 409, description = "Not the leader (`not_leader`), or the member still has a stream open to this leader (`member_connected`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn forget(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    super::params::Params::parse(q.as_deref(), &[])?;
    let b: ForgetBody = json_body(body, "{\"member\": URL or id}").await?;
    let member = voter_named(&node.core.voting_set().urls(), &b.member);
    if let Some(epoch) = b.epoch {
        return forget_relayed(&node, &member, Epoch(epoch));
    }
    if node.leader().is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_leader",
            format!(
                "forget must be asked of the leader ({}): a follower's voting set follows its leader's",
                node.leader_url()
            ),
        ));
    }
    if member == node.config.advertise() || member == node.config.id {
        return Err(ApiError::bad_request("a leader cannot forget itself"));
    }
    match node.core.forget(&member) {
        Ok(url) => {
            relay_forget(&node, &url);
            Ok(
                Json(json!({"forgotten": url, "voting_set": node.core.voting_set().urls()}))
                    .into_response(),
            )
        }
        Err(e @ replidb_node::ForgetError::Connected { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "member_connected",
            e.to_string(),
        )),
        Err(e @ replidb_node::ForgetError::NotAVoter { .. }) => {
            Err(ApiError::not_found(e.to_string()))
        }
    }
}

/// A forget relayed by the leader of `epoch`: a follower of that epoch
/// drops `member` from its own voting set, so that if it is promoted later
/// it does not count a member the operator removed (its heartbeats no
/// longer name it, but a voting set only grows from heartbeats).
fn forget_relayed(node: &Node, member: &str, epoch: Epoch) -> ApiResult<Response> {
    let mine = node.engine.meta().epoch;
    if node.leader().is_some() || epoch != mine {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_epoch",
            format!(
                "a relayed forget is for the followers of epoch {epoch}; this node is {} in epoch {mine}",
                if node.leader().is_some() { "the leader" } else { "a follower" }
            ),
        ));
    }
    if member == node.config.advertise() || member == node.config.id {
        return Err(ApiError::bad_request("a node cannot forget itself"));
    }
    let forgotten = node.core.forget(member).ok();
    Ok(Json(json!({
        "forgotten": forgotten,
        "voting_set": node.core.voting_set().urls(),
    }))
    .into_response())
}

/// Tell every connected follower of this leader to forget `url` too
/// (`POST /admin/forget {"member", "epoch"}`), each in a task of its own,
/// a few tries each. A follower that is down keeps the member, which is
/// the safe side: a larger voting set needs more acknowledgements, never
/// fewer.
fn relay_forget(node: &Arc<Node>, url: &str) {
    let Some(leader) = node.leader() else { return };
    let epoch = leader.epoch();
    let body = json!({"member": url, "epoch": epoch.0});
    for r in leader.replicas().into_iter().filter(|r| {
        r.state != replidb_replication::ReplicaState::Disconnected && !r.addr.is_empty()
    }) {
        let node = node.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let answered = node
                .post_to_peer(
                    &r.addr,
                    "/admin/forget",
                    &body,
                    Some(FORGET_RELAY_TRIES),
                    |_| true,
                )
                .await;
            match answered {
                Some(s) if s.is_success() => {
                    tracing::info!(follower = %r.id, member = %body["member"], "relayed forget");
                }
                Some(s) => {
                    tracing::warn!(follower = %r.id, status = s.as_u16(), "follower refused the relayed forget");
                }
                None => {
                    tracing::warn!(follower = %r.id, member = %body["member"], "could not relay the forget; repeat it on this follower's leader after a failover");
                }
            }
        });
    }
}

/// Attempts per follower to relay a forget.
const FORGET_RELAY_TRIES: usize = 5;

/// The voting set's URL that `member` names, written as elsewhere on the
/// command line: with or without `http://`, with a trailing `/`. Anything
/// else (an id) as given.
fn voter_named(voters: &[String], member: &str) -> String {
    let m = member.trim_end_matches('/');
    if voters.iter().any(|v| v == m) {
        return m.to_string();
    }
    voters
        .iter()
        .find(|v| {
            v.split_once("://")
                .is_some_and(|(_, host_port)| host_port == m)
        })
        .cloned()
        .unwrap_or_else(|| m.to_string())
}

/// `POST /admin/follow`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct FollowBody {
    /// The leader's URL.
    leader: String,
}

/// `POST /admin/follow {"leader": URL}`: follow another leader.
#[utoipa::path(
    post,
    path = "/admin/follow",
    tag = "admin",
    operation_id = "admin_follow",
    description = "Follow another leader (static coordinator). Destructive: a leader steps down.",
    request_body(content = FollowBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Now following", body = super::openapi::FollowResponse),
        (status = 400, description = "Malformed body, an unknown field, or a query parameter", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::openapi::ErrorBody),
        (status = 409, description = "Leadership is etcd's (`coordinator_managed`), or a newer epoch was recorded meanwhile (`stale_epoch`)", body = super::openapi::ErrorBody),
        (status = 503, description = "This node is standing for its epoch in a promote (`promote_in_progress`); with `Retry-After`", body = super::openapi::ErrorBody),
    ),
)]
pub async fn follow(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    super::params::Params::parse(q.as_deref(), &[])?;
    etcd_managed(&node, "manual follow")?;
    let mut b: FollowBody = json_body(body, "{\"leader\": URL}").await?;
    // As on the command line: `host:port` means http, a trailing `/` goes.
    b.leader = crate::config::normalise_node_url(&b.leader).map_err(ApiError::bad_request)?;
    if b.leader == node.config.advertise() {
        return Err(ApiError::bad_request("a node cannot follow itself"));
    }
    let epoch = node.engine.meta().epoch;
    // Not silent: a leader told to follow steps down without handing
    // over (POST /admin/switchover does that), so say so in the answer
    // and the log.
    let stepped_down = node.leader().is_some();
    if stepped_down {
        tracing::warn!(
            leader = %b.leader,
            epoch = epoch.0,
            "POST /admin/follow on the leader: stepping down without a hand-over; the new leader must be promoted for writes to resume"
        );
    }
    follow_to_the_end(&node, b.leader.clone(), None).await?;
    Ok(Json(json!({"following": b.leader, "stepped_down": stepped_down})).into_response())
}

/// Re-point this node at `leader` in `epoch`, in a task of its own: the
/// server drops a handler's future when its client disconnects, and a
/// re-pointing cut off between recording the new epoch and stepping down
/// left a leader that refused every write (its epoch was no longer the
/// node's) yet never followed anyone. Seen when a frozen old leader woke
/// up to fence requests whose senders had already given up on them.
/// `epoch` `None`: in the epoch the node has recorded by then (an
/// operator's follow).
async fn follow_to_the_end(node: &AppState, leader: String, epoch: Option<Epoch>) -> ApiResult<()> {
    let node = node.clone();
    tokio::spawn(async move {
        match epoch {
            Some(epoch) => node.follow(leader, epoch).await,
            None => node.follow_in_current_epoch(leader).await,
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("re-pointing task failed: {e}")))?
    .map_err(repoint_error)
}

/// A re-pointing's or a promote's refusal as an answer: 409 when the
/// epoch moved on (a retry would not change it), 503 with `Retry-After`
/// while this node stands for the epoch itself (it ends with that
/// promote, and an announcement retried after it succeeds).
fn repoint_error(e: crate::ServerError) -> ApiError {
    match e {
        crate::ServerError::StaleEpoch { .. } | crate::ServerError::Superseded { .. } => {
            ApiError::new(StatusCode::CONFLICT, "stale_epoch", e.to_string())
        }
        crate::ServerError::Resyncing(why) => ApiError::retry_later("resyncing", why),
        crate::ServerError::Candidate { .. } => {
            ApiError::retry_later("promote_in_progress", e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// `POST /admin/fence`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct FenceBody {
    /// The new leader's epoch.
    epoch: u64,
    /// The new leader's URL.
    leader: String,
}

/// `POST /admin/fence {"epoch", "leader"}`: a new leader announces itself.
/// A node at a lower epoch stops acting on it: a leader steps down, and
/// everyone re-points to the announced leader.
#[utoipa::path(
    post,
    path = "/admin/fence",
    tag = "admin",
    operation_id = "admin_fence",
    description = "A new leader announces itself: a node at a lower epoch stops acting on it (a leader steps down) and follows the announced leader. Destructive.",
    request_body(content = FenceBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Fenced, or the announced leader is this node", body = super::openapi::FenceResponse),
        (status = 400, description = "Malformed body", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::openapi::ErrorBody),
        (status = 409, description = "The announced epoch is not newer (`stale_epoch`)", body = super::openapi::ErrorBody),
        (status = 503, description = "This node is itself standing for that epoch in a promote (`promote_in_progress`); with `Retry-After`", body = super::openapi::ErrorBody),
    ),
)]
pub async fn fence(State(node): State<AppState>, body: Body) -> ApiResult<Response> {
    let b: FenceBody = json_body(body, "{\"epoch\": N, \"leader\": URL}").await?;
    replidb_replication::transport::host_port(&b.leader)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if b.leader == node.config.advertise() {
        return Ok(Json(json!({"fenced": false, "message": "that is this node"})).into_response());
    }
    let mine = node.engine.meta().epoch;
    let theirs = Epoch(b.epoch);
    if b.epoch > mine.0.saturating_add(replidb_core::EPOCH_JUMP_MAX) {
        return Err(ApiError::bad_request(format!(
            "announced epoch {theirs} is more than {} above this node's epoch {mine}",
            replidb_core::EPOCH_JUMP_MAX
        )));
    }
    // Compare a leader with the epoch it leads, not with its metadata: a
    // fence cut off half-way may have recorded the new epoch without the
    // node stepping down, and a retry of that same announcement must then
    // finish the job rather than be refused as "not newer".
    let leading = node.leader().map(|l| l.epoch());
    if theirs < mine || leading.is_some_and(|led| theirs <= led) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_epoch",
            format!("announced epoch {theirs} is not newer than this node's epoch {mine}"),
        ));
    }
    // The same epoch, from a follower of it that knows its leader: the
    // leader is back (restarted) and wants it to reconnect now rather than
    // after its backoff. Re-pointing would adopt the announced URL, which
    // may be spelled differently from the one this follower was given
    // (`--advertise-url` vs `--follow`), and could cut a working stream.
    if theirs == mine && leading.is_none() && !node.engine.meta().leader.is_empty() {
        if let Some(f) = node.follower() {
            f.reconnect_now();
            return Ok(Json(
                json!({"fenced": false, "reconnecting": true, "epoch": theirs.0, "following": node.leader_url()}),
            )
            .into_response());
        }
    }
    let was_leader = leading.is_some();
    follow_to_the_end(&node, b.leader.clone(), Some(theirs)).await?;
    if was_leader {
        tracing::warn!(new_leader = %b.leader, epoch = theirs.0, "fenced: stepped down");
    }
    // Whom this node follows now, not whom the request named: a node that
    // already follows another leader of the same epoch keeps it (one
    // leader per epoch), and a promote counts only the members that answer
    // with its own URL here.
    let following = node.leader_url();
    Ok(Json(json!({
        "fenced": following == b.leader,
        "following": following,
        "epoch": node.engine.meta().epoch.0,
        "was_leader": was_leader,
    }))
    .into_response())
}

/// `POST /admin/switchover`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SwitchoverBody {
    /// The follower's id.
    to: String,
    /// How long to wait for it to catch up (default 5000, at most 60000;
    /// writes pause meanwhile).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// How long a switchover waits for its target by default.
pub const SWITCHOVER_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Longest `timeout_ms` a switchover may ask for. Writes are paused for up
/// to that long, so the bound is the longest write outage an operator can
/// cause with one request; larger values are a 400.
pub const SWITCHOVER_TIMEOUT_MS_MAX: u64 = 60_000;

/// Pauses the leader's writes for as long as it lives, and resumes them
/// when dropped unless the hand-over succeeded ([`Pause::keep`]).
///
/// The guard, not the handler's code paths, ends the pause: when a client
/// disconnects, the server drops the handler's future at whatever `.await`
/// it was in, and no line after it runs. Without the guard such a dropped
/// request left the leader refusing every write (`switchover_in_progress`)
/// until it was restarted.
struct Pause {
    leader: Arc<Leader>,
    armed: bool,
}

impl Pause {
    fn start(leader: Arc<Leader>) -> Pause {
        leader.set_paused(true);
        Pause {
            leader,
            armed: true,
        }
    }

    /// The hand-over succeeded: this leader is done, leave it paused (it
    /// steps down; resuming would let it write in its old epoch meanwhile).
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        if self.armed {
            self.leader.set_paused(false);
            tracing::info!("switchover ended without a hand-over; writes resume");
        }
    }
}

/// Wait until the follower `to` has durably written everything this
/// leader has, woken by each acknowledgement; the LSN it reached, or
/// `None` at `deadline` (or if this leader stops).
async fn wait_caught_up(
    node: &Node,
    leader: &Leader,
    to: &str,
    deadline: tokio::time::Instant,
) -> Option<Lsn> {
    let mut acks = leader.ack_changes();
    loop {
        // Mark the current value seen before reading positions, so an ack
        // that lands between the check and the wait still wakes us.
        acks.borrow_and_update();
        let head = node.engine.positions().flush_lsn;
        let flush = leader
            .replicas()
            .into_iter()
            .find(|r| r.id == to)
            .map(|r| r.flush_lsn)
            .unwrap_or_default();
        if flush >= head {
            return Some(head);
        }
        match tokio::time::timeout_at(deadline, acks.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out, or the leader state is gone (stepped down).
            _ => return None,
        }
    }
}

/// `POST /admin/switchover {"to": ID, "timeout_ms"}`: hand leadership to
/// a follower without losing an acknowledged write. Writes pause (503
/// `switchover_in_progress`, Retry-After) until the target holds every
/// record; then the target takes over and this node follows it. If the
/// target does not catch up in `timeout_ms` (default 5000, at most
/// [`SWITCHOVER_TIMEOUT_MS_MAX`]), writes resume here and the answer is
/// 504. The pause never outlives the request: a client that disconnects
/// ends it too. Once the hand-over itself has started it runs to its end
/// even if the client leaves, so it is never cut off half-way.
#[utoipa::path(
    post,
    path = "/admin/switchover",
    tag = "admin",
    operation_id = "admin_switchover",
    description = "Hand leadership to a connected follower without losing an acknowledged write: writes pause until it holds every record, then it leads and this node follows it. Destructive.",
    request_body(content = SwitchoverBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Switched", body = super::openapi::SwitchoverResponse),
        (status = 400, description = "Malformed body, an unknown field, or a query parameter (settings go in the body)", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::openapi::ErrorBody),
        (status = 404, description = "No such follower is connected", body = super::openapi::ErrorBody),
        (status = 409, description = "Not the leader, another switchover in progress, or the hand-over failed", body = super::openapi::ErrorBody),
        (status = 504, description = "The follower did not catch up in time; writes resumed here (`switchover_timeout`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn switchover(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    // Its settings are in the body: a `?timeout_ms=` would otherwise be
    // ignored, and the switchover run with the default.
    super::params::Params::parse(q.as_deref(), &[])?;
    let b: SwitchoverBody = json_body(body, "{\"to\": ID, \"timeout_ms\"}").await?;
    let timeout_ms = b.timeout_ms.unwrap_or(SWITCHOVER_TIMEOUT_MS_DEFAULT);
    if timeout_ms > SWITCHOVER_TIMEOUT_MS_MAX {
        return Err(ApiError::invalid_param(
            "timeout_ms",
            &timeout_ms.to_string(),
            &format!("milliseconds, at most {SWITCHOVER_TIMEOUT_MS_MAX} (writes pause meanwhile)"),
        ));
    }
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
    if b.to == node.config.id || b.to.trim_end_matches('/') == node.config.advertise() {
        // Already where the operator wants it: nothing to hand over, as a
        // promote of the leader is a no-op (it was a 404 "no follower").
        return Ok(Json(json!({
            "switched_to": node.config.id,
            "lsn": node.engine.positions().flush_lsn.0,
            "write_pause_ms": 0,
            "already_leader": true,
        }))
        .into_response());
    }
    let Some(target) = leader.replicas().into_iter().find(|r| r.id == b.to) else {
        return Err(ApiError::not_found(format!(
            "no follower {:?} is connected",
            b.to
        )));
    };
    // One switchover at a time: a second one's guard would resume writes
    // under the first.
    if leader.writable() == Err(replidb_replication::NotWritable::Paused) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "switchover_in_progress",
            "another switchover is in progress",
        ));
    }
    let started = Instant::now();
    let timeout = Duration::from_millis(timeout_ms);
    let pause = Pause::start(leader.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    let Some(lsn) = wait_caught_up(&node, &leader, &b.to, deadline).await else {
        drop(pause);
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
    // The hand-over runs in its own task, holding the pause: cancelling it
    // half-way (the client gone) could leave the target promoted while
    // this node resumed writing.
    let handing = node.clone();
    let (to, addr) = (b.to.clone(), target.addr.clone());
    let handed = tokio::spawn(async move {
        match handing.coordinator().hand_over(&to, &addr).await {
            Ok(()) => {
                pause.keep();
                Ok(())
            }
            // Dropping the pause here resumes writes.
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("switchover task failed: {e}")))?;
    if let Err(e) = handed {
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

#[cfg(test)]
mod forget_tests {
    use super::voter_named;

    #[test]
    fn a_member_is_named_as_on_the_command_line() {
        let voters = vec![
            "http://127.0.0.1:7001".to_string(),
            "https://10.0.0.2:7002".to_string(),
        ];
        for (given, want) in [
            ("http://127.0.0.1:7001", "http://127.0.0.1:7001"),
            ("http://127.0.0.1:7001/", "http://127.0.0.1:7001"),
            ("127.0.0.1:7001", "http://127.0.0.1:7001"),
            ("10.0.0.2:7002/", "https://10.0.0.2:7002"),
            ("n3", "n3"),
            ("127.0.0.1:9999", "127.0.0.1:9999"),
        ] {
            assert_eq!(voter_named(&voters, given), want, "{given}");
        }
    }
}
