//! Coordinating requests in the leaderless topology: any node takes a
//! request; the key's replicas (its preference list on the ring) hold it.
//!
//! - **Writes** are coordinated by a replica of the key (a node that is
//!   not one hands the request to the first replica that answers, as
//!   Dynamo and Riak do): it makes the new version in its own log — so its
//!   dot is unique and it has seen its own earlier versions — then sends
//!   the key's whole new state to the other replicas and answers once W of
//!   them (itself included) hold it durably. A replica that does not answer
//!   gets a **hint** on the next node of the ring (sloppy quorum, counted
//!   toward W) unless `--strict-quorum`.
//! - **Reads** ask every replica, merge the first R answers, answer, and
//!   push the merged state to the replicas that were behind (**read
//!   repair**).
//!
//! States travel whole (never single versions): a replica that missed a
//! version gets it with the next state it receives, so a causal context
//! read from one replica never names a version another replica lacks.
//!
//! Every decision above — routing, W and R, the next send of a delivery,
//! when a round is met or failed, the merge of answers, who needs read
//! repair — is `replidb_leaderless::coordinator`'s; this module is its IO
//! (HTTP between nodes, deadlines, the local engine), as the simulator's
//! leaderless mode is on a simulated network.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use replidb_causal::{CausalWrite, KeyState, Operand};
use replidb_engine::Proposal;
use replidb_leaderless::{
    quorum_count, route, Delivery, Hint, Placement, ReadRound, ReadStatus, Route, WriteRound,
    WriteStatus,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::params::{Params, WriteOpts};
use super::write::{propose_with, read_body};
use super::{ApiError, ApiResult, AppState};
use crate::leaderless::{fetch_state, local_state, merge_locally, push_state, Leaderless};
use crate::node::Node;

/// Header naming the replicas that answered (or hold a write).
pub const REPLICAS_HEADER: &str = "x-replidb-replicas";
/// Set on a request a node hands to a replica-coordinator, so it is never
/// handed on again.
pub const COORDINATED_HEADER: &str = "x-replidb-coordinator-hop";

/// The node's leaderless state; on a node of another topology, the
/// leaderless endpoints are refused with a 400 (they were a 500, and
/// `/internal/replica` and `/internal/collect` wrote to a single-leader
/// follower's own log, behind its leader's back).
fn lz(node: &Node) -> ApiResult<Arc<Leaderless>> {
    node.leaderless.get().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_supported",
            format!(
                "this endpoint belongs to the leaderless topology; this node is {}",
                node.config.topology.as_str()
            ),
        )
    })
}

/// How many of `n` replicas `w=`/`r=` asks for: `1`, `k`, `quorum`
/// (default; `majority` too) or `all` (`replidb_leaderless::quorum_count`).
pub fn quorum_param(p: &Params<'_>, name: &str, n: usize) -> ApiResult<usize> {
    quorum_count(p.str(name), n).map_err(|e| {
        ApiError::invalid_param(
            name,
            &e.given,
            &format!(
                "1..={n}, quorum or all (this key has {})",
                replidb_core::text::count(n as u64, "replica", "replicas")
            ),
        )
    })
}

fn set_header(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// Coordinate a write of `key`. `forward` describes the request, for
/// handing it to a replica when this node is not one.
pub async fn write(
    node: &Arc<Node>,
    key: &str,
    write: CausalWrite,
    p: &Params<'_>,
    headers: &HeaderMap,
    forward: (Method, &str, bytes::Bytes),
) -> ApiResult<(Response, Option<KeyState>)> {
    let lz = lz(node)?;
    let pref = lz.preference_list(key);
    if let Route::HandTo(replicas) = route(&pref, &lz.me) {
        return Ok((
            hand_to_replica(node, &replicas, headers, forward).await?,
            None,
        ));
    }
    let n = pref.len();
    let w = quorum_param(p, "w", n)?;
    if matches!(write, CausalWrite::Clear { .. }) {
        // A clear takes back what this replica holds when it is prepared:
        // first join what W replicas hold (as many as the write asks to
        // hold it), so that it clears what was written through other
        // replicas too: any value on a write quorum that overlaps those W.
        let (state, answered) =
            read_from(node, key, w, crate::leaderless::INTERNAL_TIMEOUT).await?;
        let Some(s) = state else {
            // W replicas hold nothing: the clear has nothing to take back,
            // and the W that said so are its acknowledgements.
            let body = json!({
                "key": key,
                "epoch": node.engine.epoch().0,
                "lsn": node.engine.positions().flush_lsn.0,
                "origin": node.config.id,
                "acks": answered.len(),
                "w": w,
                "committed": true,
                "replicas": answered,
                "existed": false,
            });
            return Ok(((StatusCode::OK, Json(body)).into_response(), None));
        };
        merge_locally(node, key, Operand::State(s).encode())
            .await
            .map_err(ApiError::internal)?;
    }
    let timeout = super::params::ms_param(p, "timeout_ms", super::params::TIMEOUT_MS_MAX)?
        .unwrap_or(node.config.default_write_timeout);
    let policy = node.config.conflict_policy.policy_for(key);
    let k = key.to_string();
    let local_opts = WriteOpts {
        w: replidb_core::WriteConcern::One,
        timeout,
    };
    let (out, committed) = propose_with(
        node,
        move |epoch| Proposal::causal(k, write, policy, Some(epoch)),
        key.to_string(),
        local_opts,
    )
    .await?;
    let Some(state) = committed.state.clone() else {
        // A clear of a key that no replica of the read quorum holds: the
        // engine wrote nothing to the key, so there is nothing to send.
        let body = json!({
            "key": key,
            "lsn": out.lsn.0,
            "epoch": out.epoch,
            "origin": node.config.id,
            "acks": 1,
            "w": w,
            "committed": true,
            "replicas": [lz.me.clone()],
            "existed": false,
        });
        return Ok(((StatusCode::OK, Json(body)).into_response(), None));
    };
    let operand = Operand::State(state.clone()).encode();
    let walk: Vec<String> = lz.ring.walk(key).into_iter().map(String::from).collect();
    let (mut round, deliveries) =
        WriteRound::new(&pref, &walk, &lz.me, w, !node.config.strict_quorum);
    let (tx, mut rx) = mpsc::channel::<Placement>(deliveries.len().max(1));
    for delivery in deliveries {
        let tx = tx.clone();
        let http_node = node_handle(node);
        let key = key.to_string();
        let operand = operand.clone();
        // `--link-delay`: replicas far apart (demonstrations and tests).
        let delay = if node.config.link_delay.is_zero() {
            Duration::ZERO
        } else {
            node.config.link_delay.pick(rand::random::<f64>())
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let placement = deliver(&http_node, delivery, &key, operand).await;
            let _ = tx.send(placement).await;
        });
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + timeout;
    while round.status() == WriteStatus::Pending {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(placement)) => {
                round.on_placement(placement);
            }
            Ok(None) | Err(_) => {
                round.expire();
            }
        }
    }
    let met = round.status() == WriteStatus::Met;
    let replicas: Vec<String> = round
        .placements()
        .iter()
        .filter_map(Placement::describe)
        .collect();
    let failed = round.failed();
    let mut body = json!({
        "key": key,
        "lsn": out.lsn.0,
        "epoch": out.epoch,
        "origin": node.config.id,
        "acks": replicas.len(),
        "w": w,
        "committed": met,
        "replicas": replicas,
    });
    if let Some(v) = &committed.version {
        body["version"] = replidb_causal::vector::vector_json(v);
    }
    if let Some(e) = committed.existed {
        body["existed"] = json!(e);
    }
    if !met {
        body["error"] = json!({"code": "write_concern_timeout", "message": format!(
            "{} of the key's {n} replicas hold the write, fewer than w={w}; it was not undone and will spread by hints, read repair and anti-entropy{}",
            replicas.len(),
            if failed.is_empty() { String::new() } else { format!(" (unreachable: {})", failed.join(", ")) })});
    }
    let status = if met {
        StatusCode::OK
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    let mut resp = (status, Json(body)).into_response();
    set_header(&mut resp, REPLICAS_HEADER, &replicas.join(", "));
    let ctx = state.context();
    if !ctx.is_empty() {
        set_header(
            &mut resp,
            super::causal::CONTEXT_HEADER,
            &replidb_causal::vector::encode_context(&ctx),
        );
    }
    Ok((resp, Some(state)))
}

/// What the spawned deliveries need of the node.
#[derive(Clone)]
struct NodeHandle(Arc<Node>);

fn node_handle(node: &Arc<Node>) -> NodeHandle {
    NodeHandle(node.clone())
}

/// Drive one replica's [`Delivery`]: the owner, then (sloppy) fallbacks
/// as hint holders, until one makes the state durable.
async fn deliver(
    node: &NodeHandle,
    mut delivery: Delivery,
    key: &str,
    operand: Vec<u8>,
) -> Placement {
    loop {
        let attempt = delivery.attempt();
        let ok = match &attempt.hint_for {
            None => push_state(&node.0, &attempt.to, key, operand.clone()).await,
            Some(owner) => {
                let r = node
                    .0
                    .http
                    .post(format!("{}/internal/hint", attempt.to))
                    .query(&[("owner", owner.as_str()), ("key", key)])
                    .body(operand.clone())
                    .timeout(crate::leaderless::INTERNAL_TIMEOUT)
                    .send()
                    .await;
                matches!(r, Ok(r) if r.status().is_success())
            }
        };
        if let Some(placement) = delivery.on_result(ok) {
            return placement;
        }
    }
}

/// Hand a write to the first replica of the key that answers.
async fn hand_to_replica(
    node: &Node,
    pref: &[String],
    headers: &HeaderMap,
    (method, path_and_query, body): (Method, &str, bytes::Bytes),
) -> ApiResult<Response> {
    if headers.contains_key(COORDINATED_HEADER) {
        return Err(ApiError::new(
            StatusCode::LOOP_DETECTED,
            "proxy_loop",
            "a replica handed this write on again: the nodes' --peers or --replicas differ",
        ));
    }
    for replica in pref {
        let url = super::relay::relay_url(replica, path_and_query)?;
        let mut req = node
            .http
            .request(method.clone(), url)
            .header(COORDINATED_HEADER, "1")
            .body(body.clone());
        // Every copy, so the replica refuses a repeated context as this
        // node would have.
        for name in ["content-type", super::causal::CONTEXT_HEADER] {
            for v in headers.get_all(name) {
                req = req.header(name, v.clone());
            }
        }
        let Ok(r) = req.send().await else { continue };
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut out = Response::builder().status(status);
        for (k, v) in r.headers() {
            if k != "content-length" && k != "transfer-encoding" {
                out = out.header(k, v);
            }
        }
        // A key's answer: its siblings' values, base64 or JSON-escaped.
        // Not retried on another replica if lost: this one may have
        // taken the write.
        let limit = 6 * crate::leaderless::state_bytes_max(node.config.max_value_bytes);
        let bytes = crate::peer_answer::bytes(r, limit).await.map_err(|e| {
            ApiError::unavailable(format!(
                "the replica's answer was lost ({e}); the write may or may not have been taken"
            ))
        })?;
        return out
            .body(Body::from(bytes))
            .map_err(|e| ApiError::internal(e.to_string()));
    }
    Err(ApiError::retry_later(
        "no_replica",
        format!("none of the key's replicas answered: {}", pref.join(", ")),
    ))
}

/// Read `key` from R replicas and merge; read-repair the ones behind.
/// Returns the merged state and who answered.
pub async fn read(
    node: &Arc<Node>,
    key: &str,
    p: &Params<'_>,
) -> ApiResult<(Option<KeyState>, Vec<String>)> {
    let lz = lz(node)?;
    let pref = lz.preference_list(key);
    let r = quorum_param(p, "r", pref.len())?;
    let wait = super::params::ms_param(p, "wait_ms", super::params::WAIT_MS_MAX)?
        .unwrap_or(crate::leaderless::INTERNAL_TIMEOUT);
    read_from(node, key, r, wait).await
}

/// [`read`] from `r` replicas, waiting at most `wait` for them.
async fn read_from(
    node: &Arc<Node>,
    key: &str,
    r: usize,
    wait: Duration,
) -> ApiResult<(Option<KeyState>, Vec<String>)> {
    let lz = lz(node)?;
    let pref = lz.preference_list(key);
    let (tx, mut rx) =
        mpsc::channel::<(String, Result<Option<KeyState>, String>)>(pref.len().max(1));
    for url in &pref {
        let tx = tx.clone();
        let url = url.clone();
        let key = key.to_string();
        if url == lz.me {
            let _ = tx.send((url, Ok(local_state(node, &key)))).await;
            continue;
        }
        let h = node_handle(node);
        tokio::spawn(async move {
            let got = fetch_state(&h.0, &url, &key).await;
            let _ = tx.send((url, got)).await;
        });
    }
    drop(tx);
    let mut round = ReadRound::new(key, &pref, r);
    let deadline = tokio::time::Instant::now() + wait;
    while round.status() == ReadStatus::Pending {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((u, Ok(s)))) => {
                round.on_answer(&u, s);
            }
            Ok(Some((u, Err(_)))) => {
                round.on_failure(&u);
            }
            Ok(None) | Err(_) => {
                round.expire();
            }
        }
    }
    if round.status() == ReadStatus::Failed {
        return Err(ApiError::retry_later("not_enough_replicas", match round.failed() {
                // Counted when the read gave up: the answers still on
                // their way when r became out of reach are not in it.
                f if f.is_empty() => format!(
                    "{} of the key's {} replicas answered in time, fewer than r={r}",
                    round.answered().len(),
                    pref.len(),
                ),
                f => format!(
                    "{} of the key's {} replicas are unreachable ({}), so r={r} answers cannot be had",
                    f.len(),
                    pref.len(),
                    f.join(", ")
                ),
            }));
    }
    let merged = round.merged();
    let answered = round.answered();
    if let Some(m) = &merged {
        // Read repair, in the background: the answers that were behind now,
        // and the replicas that answer later.
        let h = node_handle(node);
        let key = key.to_string();
        let m = m.clone();
        let operand = Operand::State(m.clone()).encode();
        let lz = lz.clone();
        tokio::spawn(async move {
            let mut round = round;
            while let Some((u, s)) = rx.recv().await {
                match s {
                    Ok(s) => round.on_answer(&u, s),
                    Err(_) => round.on_failure(&u),
                };
            }
            for u in round.repairs(Some(&m)) {
                let ok = if u == lz.me {
                    merge_locally(&h.0, &key, operand.clone()).await.is_ok()
                } else {
                    push_state(&h.0, &u, &key, operand.clone()).await
                };
                if ok {
                    lz.read_repairs.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("replidb_read_repairs_total", "node_id" => h.0.config.id.clone()).increment(1);
                    tracing::debug!(replica = %u, %key, "read repair");
                }
            }
        });
    }
    Ok((merged, answered))
}

/// `POST /internal/replica?key=K`: join a state from another replica.
#[utoipa::path(
    post,
    path = "/internal/replica",
    tag = "internal",
    operation_id = "internal_replica_put",
    description = "Leaderless: join a key's state sent by another replica.",
    params(("key" = String, Query, description = "The key")),
    request_body(content = super::openapi::RawBytes, content_type = "application/octet-stream", description = "The encoded state"),
    responses(
        (status = 200, description = "Merged", body = super::openapi::ReplicaMerged),
        (status = 400, description = "Missing or bad key, unknown parameter, a state that does not decode or merge; `not_supported` on a node that is not leaderless", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = super::openapi::ErrorBody),
    ),
)]
pub async fn replica_put(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    lz(&node)?;
    let p = Params::parse(q.as_deref(), &["key"])?;
    let key = p
        .str("key")
        .ok_or_else(|| ApiError::bad_request("key is required"))?
        .to_string();
    super::kv::check_key(&key)?;
    let limit = crate::leaderless::state_bytes_max(node.config.max_value_bytes);
    let operand = read_body(body, limit).await?;
    merge_locally(&node, &key, operand.to_vec())
        .await
        .map_err(|e| ApiError::bad_request(format!("state not merged: {e}")))?;
    Ok(Json(json!({"key": key, "merged": true})).into_response())
}

/// `GET /internal/replica?key=K`: this node's state of `key` (encoded), or 404.
#[utoipa::path(
    get,
    path = "/internal/replica",
    tag = "internal",
    operation_id = "internal_replica_get",
    description = "Leaderless: this node's encoded state of a key.",
    params(("key" = String, Query, description = "The key")),
    responses(
        (status = 200, description = "The encoded state", content_type = "application/octet-stream", body = super::openapi::RawBytes),
        (status = 400, description = "Missing key, unknown parameter; `not_supported` on a node that is not leaderless", body = super::openapi::ErrorBody),
        (status = 404, description = "No causal state for the key here", body = super::openapi::ErrorBody),
    ),
)]
pub async fn replica_get(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    lz(&node)?;
    let p = Params::parse(q.as_deref(), &["key"])?;
    let key = p
        .str("key")
        .ok_or_else(|| ApiError::bad_request("key is required"))?;
    match node.engine.table().get(key)? {
        // Labelled, as the document says: a body without a content type
        // was the one answer the fuzzer found unlabelled.
        Some(v) if v.causal => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            v.value,
        )
            .into_response()),
        _ => Err(ApiError::not_found(format!("no state for {key:?}"))),
    }
}

/// `POST /internal/hint?owner=URL&key=K`: keep a state for a replica that
/// did not answer (507 when the hint store is full).
#[utoipa::path(
    post,
    path = "/internal/hint",
    tag = "internal",
    operation_id = "internal_hint_put",
    description = "Leaderless: keep a key's state for a replica that did not answer (hinted handoff).",
    params(
        ("owner" = String, Query, description = "The replica the hint is for"),
        ("key" = String, Query, description = "The key"),
    ),
    request_body(content = super::openapi::RawBytes, content_type = "application/octet-stream", description = "The encoded state"),
    responses(
        (status = 200, description = "Stored", body = super::openapi::HintStored),
        (status = 400, description = "Missing or invalid parameter; `not_supported` on a node that is not leaderless", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = super::openapi::ErrorBody),
        (status = 507, description = "The hint store is full (`hints_full`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn hint_put(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let lz = lz(&node)?;
    let p = Params::parse(q.as_deref(), &["owner", "key"])?;
    let (Some(owner), Some(key)) = (p.str("owner"), p.str("key")) else {
        return Err(ApiError::bad_request("owner and key are required"));
    };
    super::kv::check_key(key)?;
    let limit = crate::leaderless::state_bytes_max(node.config.max_value_bytes);
    let operand = read_body(body, limit).await?;
    Operand::decode(&operand).map_err(|e| ApiError::bad_request(format!("bad state: {e}")))?;
    lz.hints.put(Hint::new(owner, key, &operand)).map_err(|e| {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "hints_full",
            e.to_string(),
        )
    })?;
    metrics::gauge!("replidb_hints_pending", "node_id" => node.config.id.clone())
        .set(lz.hints.pending() as f64);
    Ok(Json(json!({"hinted": true})).into_response())
}

/// `GET /internal/ae/leaves?peer=URL`: the hash-tree leaves of the keys
/// this node and `peer` both replicate.
#[utoipa::path(
    get,
    path = "/internal/ae/leaves",
    tag = "internal",
    operation_id = "internal_ae_leaves",
    description = "Leaderless anti-entropy: the hash-tree leaves of the keys this node and `peer` both replicate.",
    params(("peer" = Option<String>, Query, description = "The peer's URL")),
    responses(
        (status = 200, description = "One hash per leaf", body = Vec<u64>),
        (status = 400, description = "Missing or invalid parameter; `not_supported` on a node that is not leaderless", body = super::openapi::ErrorBody),
    ),
)]
pub async fn ae_leaves(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let lz = lz(&node)?;
    let p = Params::parse(q.as_deref(), &["peer"])?;
    let peer = p.str("peer").unwrap_or_default().to_string();
    let node2 = node.clone();
    let leaves =
        tokio::task::spawn_blocking(move || crate::leaderless::shared_leaves(&node2, &lz, &peer))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(leaves).into_response())
}

/// `GET /internal/ae/bucket?peer=URL&bucket=B`: key → entry hash of one leaf.
#[utoipa::path(
    get,
    path = "/internal/ae/bucket",
    tag = "internal",
    operation_id = "internal_ae_bucket",
    description = "Leaderless anti-entropy: key to entry hash, for one leaf.",
    params(
        ("peer" = Option<String>, Query, description = "The peer's URL"),
        ("bucket" = u64, Query, description = "The leaf number"),
    ),
    responses(
        (status = 200, description = "Key to entry hash", body = BTreeMap<String, u64>),
        (status = 400, description = "Missing or invalid parameter; `not_supported` on a node that is not leaderless", body = super::openapi::ErrorBody),
    ),
)]
pub async fn ae_bucket(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let lz = lz(&node)?;
    let p = Params::parse(q.as_deref(), &["peer", "bucket"])?;
    let peer = p.str("peer").unwrap_or_default().to_string();
    let bucket = p
        .parse_as::<usize>("bucket", "a leaf number")?
        .filter(|b| *b < replidb_leaderless::antientropy::BUCKETS)
        .ok_or_else(|| ApiError::bad_request("bucket is required and below the leaf count"))?;
    let node2 = node.clone();
    let entries = tokio::task::spawn_blocking(move || {
        crate::leaderless::shared_entries(&node2, &lz, &peer, Some(bucket))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(entries).into_response())
}

/// What `/status` shows of the leaderless state.
pub fn status(node: &Node) -> Value {
    let Some(lz) = node.leaderless.get() else {
        return Value::Null;
    };
    let (held, arcs) = lz.ring.arcs_held(&lz.me);
    let last = *lz.last_round.lock().unwrap_or_else(|e| e.into_inner());
    json!({
        "members": lz.ring.members(),
        "replicas": lz.ring.replicas(),
        "vnodes_per_member": replidb_leaderless::VNODES_PER_MEMBER,
        "arcs_held": held,
        "arcs": arcs,
        "share_held": held as f64 / arcs.max(1) as f64,
        "strict_quorum": node.config.strict_quorum,
        "hints_pending": lz.hints.pending(),
        "hints_delivered": lz.hints_delivered.load(Ordering::Relaxed),
        "read_repairs": lz.read_repairs.load(Ordering::Relaxed),
        "antientropy_keys_repaired": lz.ae_keys_repaired.load(Ordering::Relaxed),
        "tombstones_collected": lz.tombstones_collected.load(Ordering::Relaxed),
        "keys_handed_off": lz.keys_handed_off.load(Ordering::Relaxed),
        "tombstone_grace_ms": crate::leaderless::tombstone_grace_ms(node),
        "last_anti_entropy": last.map(|(at, keys, peers)| json!({"at_ms": at, "keys_repaired": keys, "peers_compared": peers})),
    })
}

/// What `/status` → `peers` shows in the leaderless topology: every other
/// member, how it last answered, the hints held for it.
pub fn peers(node: &Node) -> Value {
    node.leaderless.get().map_or(Value::Null, |lz| {
        Value::Array(lz.peers_json(node.clock.mono_ms()))
    })
}

/// `GET /internal/hints?key=K`: how many hints this node holds for `key`.
#[utoipa::path(
    get,
    path = "/internal/hints",
    tag = "internal",
    operation_id = "internal_hints",
    description = "Leaderless: how many hints this node holds for a key.",
    params(("key" = Option<String>, Query, description = "The key")),
    responses(
        (status = 200, description = "The count", body = super::openapi::HintsPending),
        (status = 400, description = "Missing or invalid parameter; `not_supported` on a node that is not leaderless", body = super::openapi::ErrorBody),
    ),
)]
pub async fn hints_for(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let lz = lz(&node)?;
    let p = Params::parse(q.as_deref(), &["key"])?;
    let key = p.str("key").unwrap_or_default();
    let n = lz.hints.list().iter().filter(|(_, h)| h.key == key).count();
    Ok(Json(json!({"key": key, "pending": n})).into_response())
}

/// `POST /internal/collect?key=K&hash=H`: remove `key` if its state here
/// still hashes to `H` (a tombstone every replica holds); 409 otherwise.
#[utoipa::path(
    post,
    path = "/internal/collect",
    tag = "internal",
    operation_id = "internal_collect",
    description = "Leaderless tombstone collection: remove a key if its state here is still the tombstone that hashes to `hash`.",
    params(
        ("key" = String, Query, description = "The key"),
        ("hash" = u64, Query, description = "The entry hash of the tombstone every replica holds"),
    ),
    responses(
        (status = 200, description = "Collected, or already absent", body = super::openapi::Collected),
        (status = 400, description = "Missing or invalid parameter; `not_supported` on a node that is not leaderless", body = super::openapi::ErrorBody),
        (status = 409, description = "The state changed since (`state_changed`), or the key is of another kind", body = super::openapi::ErrorBody),
        (status = 503, description = "This node may not write now; with `Retry-After`", body = super::openapi::ErrorBody),
    ),
)]
pub async fn collect(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    lz(&node)?;
    let p = Params::parse(q.as_deref(), &["key", "hash"])?;
    let (Some(key), Some(hash)) = (p.str("key"), p.parse_as::<u64>("hash", "an entry hash")?)
    else {
        return Err(ApiError::bad_request("key and hash are required"));
    };
    let changed = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "state_changed",
            format!("{key:?} changed here since the tombstone was checked; kept"),
        )
    };
    let held = node.engine.table().get(key)?.filter(|v| v.causal);
    let Some((held, state)) = held.and_then(|v| {
        replidb_causal::KeyState::decode(&v.value)
            .ok()
            .map(|s| (v, s))
    }) else {
        return Ok(Json(json!({"collected": true, "absent": true})).into_response());
    };
    let here = replidb_leaderless::antientropy::entry_hash(key, &state.canonical_bytes());
    if here != hash || !state.is_absent() {
        return Err(changed());
    }
    // Conditional on the LSN the state was checked at: a merge that lands
    // between the check and the delete keeps the key.
    let mut delete = Proposal::new(replidb_core::Op::Delete {
        key: key.to_string(),
    });
    delete.conditions.push((key.to_string(), held.lsn));
    match node.engine.propose(delete).await {
        Ok(_) => Ok(Json(json!({"collected": true})).into_response()),
        Err(replidb_engine::EngineError::ConditionFailed { .. }) => Err(changed()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /internal/scan?prefix=P&start_after=K&limit=N`: this node's
/// entries in key order, deleted keys included (so that a coverage scan
/// lets a delete win over an older copy elsewhere).
#[utoipa::path(
    get,
    path = "/internal/scan",
    tag = "internal",
    operation_id = "internal_scan",
    description = "Leaderless: this node's next `limit` keys after `start_after` under `prefix`, with their encoded states (deleted keys included), for a coverage scan.",
    params(
        ("prefix" = Option<String>, Query, description = "Only keys that start with it"),
        ("start_after" = Option<String>, Query, description = "Only keys after it"),
        ("limit" = usize, Query, description = "At most this many entries (1..=10000)"),
    ),
    responses(
        (status = 200, description = "`[{\"key\", \"state\"}]`, the state base64 (URL-safe, unpadded); `state` is absent for a key that holds no causal state", body = Vec<super::openapi::ScanEntry>),
        (status = 400, description = "Missing or invalid parameter; `not_supported` on a node that is not leaderless", body = super::openapi::ErrorBody),
    ),
)]
pub async fn replica_scan(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    use base64::Engine as _;
    lz(&node)?;
    let p = Params::parse(q.as_deref(), &["prefix", "start_after", "limit"])?;
    let limit = scan_limit(&p)?;
    let page = node.engine.table().scan_page(
        p.str("prefix").unwrap_or(""),
        p.str("start_after"),
        limit,
        node.config.scan_page_bytes,
    )?;
    let list: Vec<Value> = page
        .entries
        .into_iter()
        .map(|(key, v)| {
            if v.causal {
                json!({"key": key, "state": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&v.value)})
            } else {
                json!({"key": key})
            }
        })
        .collect();
    Ok(super::scan::mark_truncated(
        Json(list).into_response(),
        page.cut_by_bytes,
    ))
}

/// `limit` of a scan: 1..=[`super::scan::SCAN_LIMIT_MAX`], default 1,000.
pub(crate) fn scan_limit(p: &Params<'_>) -> ApiResult<usize> {
    let limit = p
        .parse_as::<usize>("limit", "a positive integer")?
        .unwrap_or(1000);
    if limit == 0 || limit > super::scan::SCAN_LIMIT_MAX {
        return Err(ApiError::invalid_param(
            "limit",
            &limit.to_string(),
            &format!("1..={}", super::scan::SCAN_LIMIT_MAX),
        ));
    }
    Ok(limit)
}

/// Most rounds one coverage scan makes: each moves past at least one key
/// and each page after the first is twice as long as the one before (up
/// to [`super::scan::SCAN_LIMIT_MAX`]), so only a range of deleted keys far
/// longer than that (tombstones not collected yet) takes more.
const COVERAGE_SCAN_ROUNDS_MAX: usize = 64;

/// One member's page of a coverage scan: its entries in key order, with
/// their states (`None`: not a causal state, counted but not merged), and
/// whether entries may follow the last one (the page reached its `limit`
/// or its byte budget).
struct MemberPage {
    entries: Vec<(String, Option<KeyState>)>,
    may_continue: bool,
}

/// Most bytes one member's `/internal/scan` answer may hold: a page of
/// [`super::scan::SCAN_PAGE_BYTES_MAX`] plus the entry that reaches it,
/// base64 (4/3) and JSON-escaped (a key's control characters take six
/// bytes each), and the fields around each of `limit` entries.
fn member_page_bytes_max(max_value_bytes: usize, limit: usize) -> usize {
    let entry = replidb_core::MAX_KEY_BYTES + crate::leaderless::state_bytes_max(max_value_bytes);
    6usize
        .saturating_mul(super::scan::SCAN_PAGE_BYTES_MAX.saturating_add(entry))
        .saturating_add(limit.saturating_mul(64))
}

/// A leaderless scan over the whole ring, not only what this node holds
/// (a coverage query, as Riak's key listing): every member's next `limit`
/// entries, each key's states joined, deleted keys left out. Only keys up
/// to the lowest last key of a full page are complete on every member, so
/// a round answers those, and the next round continues after them until
/// `limit` keys are found or every member is exhausted.
///
/// Each key's value is the join of what every reachable replica holds. As
/// a single-key read needs `r` replicas (default a quorum of the key's N),
/// a scan needs every key to have `r` reachable replicas: with more than
/// N − r members unreachable, 503 `not_enough_replicas` rather than a list
/// that may lack a key or show a deleted one. (Like a quorum read, it does
/// not look at hints: a write held only as a hint shows once delivered.)
pub async fn coverage_scan(
    node: &Arc<Node>,
    p: &Params<'_>,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> ApiResult<(Vec<Value>, bool)> {
    let lz = lz(node)?;
    let n = lz.ring.replicas();
    let r = quorum_param(p, "r", n)?;
    let members: Vec<String> = lz.ring.members().to_vec();
    let mut cursor = start_after.map(str::to_string);
    let mut out = Vec::new();
    let mut out_bytes = 0usize;
    let mut page_limit = limit;
    for _ in 0..COVERAGE_SCAN_ROUNDS_MAX {
        let asks = members
            .iter()
            .map(|url| scan_page(node, &lz, url, prefix, cursor.as_deref(), page_limit));
        let pages = futures::future::join_all(asks).await;
        let unreachable: Vec<String> = members
            .iter()
            .zip(&pages)
            .filter_map(|(u, p)| p.as_ref().err().map(|why| format!("{u}: {why}")))
            .collect();
        if unreachable.len() > n - r {
            return Err(ApiError::retry_later(
                "not_enough_replicas",
                format!(
                    "{} of the ring's members did not answer ({}); with {n} replicas per key, some key may have fewer than r={r} replicas left to list it",
                    unreachable.len(),
                    unreachable.join("; "),
                ),
            ));
        }
        let pages: Vec<MemberPage> = pages.into_iter().flatten().collect();
        let cutoff = pages
            .iter()
            .filter(|p| p.may_continue)
            .filter_map(|p| p.entries.last().map(|(k, _)| k.clone()))
            .min();
        page_limit = (page_limit * 2).min(super::scan::SCAN_LIMIT_MAX);
        let mut by_key: std::collections::BTreeMap<String, Vec<Option<KeyState>>> =
            std::collections::BTreeMap::new();
        for (key, state) in pages.into_iter().flat_map(|p| p.entries) {
            if cutoff.as_ref().is_none_or(|c| key <= *c) {
                by_key.entry(key).or_default().push(state);
            }
        }
        for (key, states) in &by_key {
            let Some(merged) = replidb_leaderless::coordinator::join_all(key, states) else {
                continue;
            };
            if merged.is_absent() {
                continue;
            }
            let entry = super::causal::causal_json(key, &merged);
            out_bytes = out_bytes.saturating_add(key.len() + merged.canonical_bytes().len());
            out.push(entry);
            if out.len() == limit {
                return Ok((out, false));
            }
            // The answer's own budget, as a single node's scan page: the
            // client goes on after this key.
            if out_bytes >= node.config.scan_page_bytes {
                return Ok((out, true));
            }
        }
        match cutoff {
            Some(c) => cursor = Some(c),
            None => return Ok((out, false)),
        }
    }
    // Only after hundreds of thousands of deleted keys in a row: refused
    // rather than a short page a client would take for the end.
    Err(ApiError::retry_later(
        "scan_incomplete",
        format!("the range holds more deleted keys than {COVERAGE_SCAN_ROUNDS_MAX} growing pages cover (tombstones are collected once every replica holds them); retry later, or scan a narrower prefix"),
    ))
}

/// One member's page for [`coverage_scan`] (this node's own from its table).
async fn scan_page(
    node: &Arc<Node>,
    lz: &Leaderless,
    url: &str,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Result<MemberPage, String> {
    use base64::Engine as _;
    if url == lz.me {
        let page = node
            .engine
            .table()
            .scan_page(prefix, start_after, limit, node.config.scan_page_bytes)
            .map_err(|e| e.to_string())?;
        let may_continue = page.may_continue(limit);
        let entries = page
            .entries
            .into_iter()
            .map(|(k, v)| {
                let state = v.causal.then(|| KeyState::decode(&v.value).ok()).flatten();
                (k, state)
            })
            .collect();
        return Ok(MemberPage {
            entries,
            may_continue,
        });
    }
    let mut query: Vec<(&str, String)> =
        vec![("prefix", prefix.to_string()), ("limit", limit.to_string())];
    if let Some(after) = start_after {
        query.push(("start_after", after.to_string()));
    }
    let r = node
        .http
        .get(format!("{url}/internal/scan"))
        .query(&query)
        .timeout(crate::leaderless::INTERNAL_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{url} answered {}", r.status()));
    }
    let cut_by_bytes = r
        .headers()
        .get(super::scan::SCAN_TRUNCATED_HEADER)
        .is_some_and(|v| v == "bytes");
    let entries: Vec<ScanEntryWire> =
        crate::peer_answer::json(r, member_page_bytes_max(node.config.max_value_bytes, limit))
            .await
            .map_err(|e| e.to_string())?;
    if entries.len() > limit {
        return Err(format!(
            "{url} sent {} entries for a limit of {limit}",
            entries.len()
        ));
    }
    let may_continue = cut_by_bytes || entries.len() >= limit;
    let entries = entries
        .into_iter()
        .map(|e| {
            let state = e
                .state
                .and_then(|s| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(s)
                        .ok()
                })
                .and_then(|b| KeyState::decode(&b).ok());
            (e.key, state)
        })
        .collect();
    Ok(MemberPage {
        entries,
        may_continue,
    })
}

/// An entry of `/internal/scan` as received.
#[derive(serde::Deserialize)]
struct ScanEntryWire {
    key: String,
    state: Option<String>,
}
