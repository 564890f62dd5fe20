//! The seed-compatible endpoints (seed 001): `/write`, `/read`,
//! `/follower-read`, `/read-with-repair`, `/write-with-quorum`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use replidb_core::{Lsn, Op, WriteConcern};
use serde::Deserialize;
use serde_json::{json, Value};

use super::kv::versioned_json;
use super::params::{Params, WriteOpts};
use super::read::proxy_to_leader;
use super::write::{not_leader_response, propose, read_body, write_response, Origin};
use super::{ApiError, ApiResult, AppState};
use crate::node::Node;

/// The body of `POST /write` and `POST /write-with-quorum`.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SeedWrite {
    /// The key (1..=1024 bytes of UTF-8).
    key: String,
    /// The value: a string is stored as its text, anything else as its JSON.
    #[schema(value_type = Value)]
    value: Value,
    /// `/write-with-quorum`: nodes to wait for (a number, `majority` or
    /// `all`); ignored by `/write`.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    w: Option<Value>,
}

/// A JSON value as bytes: strings as their text, anything else as JSON.
fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

async fn seed_write(
    node: &Node,
    uri: &OriginalUri,
    headers: &HeaderMap,
    body: Body,
    with_w: bool,
) -> ApiResult<Response> {
    let raw = read_body(body, node.config.max_value_bytes + 64 * 1024).await?;
    let pq = uri.0.path().to_string();
    let origin = Origin {
        method: Method::POST,
        path_and_query: &pq,
        headers,
        body: raw.clone(),
    };
    if let Some(resp) = not_leader_response(node, &origin).await? {
        return Ok(resp);
    }
    let w: SeedWrite = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"key\",\"value\"}}: {e}")))?;
    replidb_core::validate_key(&w.key).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_key",
            e.to_string(),
        )
    })?;
    let value = value_bytes(&w.value);
    if value.len() > node.config.max_value_bytes {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
            format!(
                "value is {} bytes; the limit is {}",
                value.len(),
                node.config.max_value_bytes
            ),
        ));
    }
    let mut opts = WriteOpts {
        w: node.config.default_write_concern,
        timeout: node.config.default_write_timeout,
    };
    if with_w {
        let w_text = match &w.w {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            None => return Err(ApiError::bad_request("write-with-quorum needs \"w\"")),
            Some(other) => other.to_string(),
        };
        opts.w = w_text
            .parse::<WriteConcern>()
            .map_err(|_| ApiError::invalid_param("w", &w_text, "a number >= 1, majority or all"))?;
    }
    let op = Op::Put {
        key: w.key.clone(),
        value,
    };
    let out = propose(node, op, Vec::new(), opts).await?;
    Ok(write_response(Some(&w.key), opts, &out))
}

/// `POST /write {"key","value"}` at the default write concern.
#[utoipa::path(
    post,
    path = "/write",
    tag = "seed",
    operation_id = "seed_write",
    description = "Write at the node's default write concern.",
    request_body(content = SeedWrite, content_type = "application/json"),
    responses(
        (status = 200, description = "Written, and the write concern met", body = super::openapi::WriteResponse),
        (status = 307, description = "Sent to a follower: `Location` names the leader", body = super::openapi::NotLeaderBody, headers(("Location" = String, description = "The leader's URL for this request"))),
        (status = 400, description = "Malformed body, bad key, bad or missing `w`, `w` above the voters", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 409, description = "The key is a counter, set or map (`wrong_type`)", body = super::openapi::ErrorBody),
        (status = 413, description = "The value is larger than --max-value-bytes", body = super::openapi::ErrorBody),
        (status = 503, description = "This node may not write now; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 504, description = "The write concern was not met in time (`committed: false`)", body = super::openapi::WriteResponse),
        (status = 508, description = "A forwarded write relayed too many times", body = super::openapi::ErrorBody),
    ),
)]
pub async fn write(
    State(node): State<AppState>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    seed_write(&node, &uri, &headers, body, false).await
}

/// `POST /write-with-quorum {"key","value","w"}`.
#[utoipa::path(
    post,
    path = "/write-with-quorum",
    tag = "seed",
    operation_id = "seed_write_with_quorum",
    description = "Write and wait for `w` nodes (leader included).",
    request_body(content = SeedWrite, content_type = "application/json"),
    responses(
        (status = 200, description = "Written, and the write concern met", body = super::openapi::WriteResponse),
        (status = 307, description = "Sent to a follower: `Location` names the leader", body = super::openapi::NotLeaderBody, headers(("Location" = String, description = "The leader's URL for this request"))),
        (status = 400, description = "Malformed body, bad key, bad or missing `w`, `w` above the voters", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 409, description = "The key is a counter, set or map (`wrong_type`)", body = super::openapi::ErrorBody),
        (status = 413, description = "The value is larger than --max-value-bytes", body = super::openapi::ErrorBody),
        (status = 503, description = "This node may not write now; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 504, description = "The write concern was not met in time (`committed: false`)", body = super::openapi::WriteResponse),
        (status = 508, description = "A forwarded write relayed too many times", body = super::openapi::ErrorBody),
    ),
)]
pub async fn write_with_quorum(
    State(node): State<AppState>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    seed_write(&node, &uri, &headers, body, true).await
}

/// `GET /read?key=K`: the leader's value (proxied when asked of a follower).
#[utoipa::path(
    get,
    path = "/read",
    tag = "seed",
    operation_id = "seed_read",
    description = "The leader's value of `key` (a follower relays the read).",
    params(("key" = String, Query, description = "The key")),
    responses(
        (status = 200, description = "The value", body = super::openapi::SeedReadResponse),
        (status = 400, description = "Missing or invalid `key` (`invalid_key`), unknown parameter", body = super::openapi::ErrorBody),
        (status = 404, description = "Absent", body = super::openapi::ErrorBody),
        (status = 503, description = "No leader reachable", body = super::openapi::ErrorBody),
        (status = 508, description = "Relayed too many times", body = super::openapi::ErrorBody),
    ),
)]
pub async fn read(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref(), &["key"])?;
    let key = key_param(&p)?;
    if let Some(resp) = proxy_if_follower(&node, &uri, &headers).await? {
        return Ok(resp);
    }
    let v = node
        .engine
        .table()
        .get(key)?
        .ok_or_else(|| ApiError::not_found(format!("key not found: {key}")))?;
    let mut body = versioned_json(key, &v);
    body["node"] = json!(node.config.id);
    Ok(Json(body).into_response())
}

/// The `key` parameter of a seed read: required, and a valid key (400
/// `invalid_key` otherwise, as on `/v1/kv`).
fn key_param<'p>(p: &'p Params<'_>) -> ApiResult<&'p str> {
    let key = p
        .str("key")
        .ok_or_else(|| ApiError::bad_request("missing key"))?;
    super::kv::check_key(key)?;
    Ok(key)
}

/// The seed reads are the leader's to answer: a follower relays them.
async fn proxy_if_follower(
    node: &Node,
    uri: &OriginalUri,
    headers: &HeaderMap,
) -> ApiResult<Option<Response>> {
    if node.leader().is_some() {
        return Ok(None);
    }
    let pq = uri
        .0
        .path_and_query()
        .map(|x| x.as_str().to_string())
        .unwrap_or_default();
    proxy_to_leader(node, Method::GET, &pq, headers, Default::default())
        .await
        .map(Some)
}

/// Followers in `/status` order (by id), as `(id, url)`.
fn followers(node: &Node) -> ApiResult<Vec<(String, String)>> {
    let leader = node
        .leader()
        .ok_or_else(|| ApiError::unavailable("only the leader knows its followers"))?;
    Ok(leader
        .replicas()
        .into_iter()
        .map(|r| (r.id, r.addr))
        .collect())
}

/// `GET /follower-read?key=K&replica=N`: what follower N (1-based) has;
/// 404 until it has applied the key.
#[utoipa::path(
    get,
    path = "/follower-read",
    tag = "seed",
    operation_id = "seed_follower_read",
    description = "Follower number `replica`'s copy of `key` (1-based, in `/status` order); 404 until it has applied it.",
    params(
        ("key" = String, Query, description = "The key"),
        ("replica" = Option<u64>, Query, description = "The follower's number (default 1)"),
    ),
    responses(
        (status = 200, description = "The follower's copy", body = super::openapi::SeedReadResponse),
        (status = 400, description = "Missing `key`, bad `replica`, unknown parameter", body = super::openapi::ErrorBody),
        (status = 404, description = "No such follower, or it has not applied the key", body = super::openapi::ErrorBody),
        (status = 503, description = "The follower or the leader did not answer", body = super::openapi::ErrorBody),
        (status = 508, description = "Relayed too many times", body = super::openapi::ErrorBody),
    ),
)]
pub async fn follower_read(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref(), &["key", "replica"])?;
    let key = key_param(&p)?.to_string();
    let n = p
        .parse_as::<usize>("replica", "a follower number from 1")?
        .unwrap_or(1);
    if n == 0 {
        return Err(ApiError::invalid_param(
            "replica",
            "0",
            "a follower number from 1",
        ));
    }
    if let Some(resp) = proxy_if_follower(&node, &uri, &headers).await? {
        return Ok(resp);
    }
    let list = followers(&node)?;
    let Some((id, url)) = n.checked_sub(1).and_then(|i| list.get(i)).cloned() else {
        // Not `not_found`, which clients read as "no such key".
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_follower",
            format!("no follower number {n}; this leader has {}", list.len()),
        ));
    };
    let (status, body) = fetch_version(&node, &url, &key).await?;
    match (status, body) {
        (200, Some(mut v)) => {
            v["node"] = json!(id);
            v["replica"] = json!(n);
            Ok(Json(v).into_response())
        }
        (404, _) => Err(ApiError::not_found(format!(
            "follower {id} (replica {n}) has not applied key {key:?} yet"
        ))),
        (s, _) => Err(ApiError::unavailable(format!("follower {id} answered {s}"))),
    }
}

/// Ask the node at `url` for its version of `key` (eventual, JSON).
async fn fetch_version(node: &Node, url: &str, key: &str) -> ApiResult<(u16, Option<Value>)> {
    let target = format!("{}/v1/kv/{}", url.trim_end_matches('/'), encode_key(key));
    let resp = node
        .http
        .get(&target)
        .query(&[("consistency", "eventual"), ("format", "json")])
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| ApiError::unavailable(format!("{url} unreachable: {e}")))?;
    let status = resp.status().as_u16();
    let body = if status == 200 {
        // One key's answer: its value (at most --max-value-bytes),
        // base64 or JSON-escaped, with its fields.
        let limit = 6 * node.config.max_value_bytes + 64 * 1024;
        crate::peer_answer::json::<Value>(resp, limit).await.ok()
    } else {
        None
    };
    Ok((status, body))
}

/// Percent-encode a key for a URL path.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `GET /read-with-repair?key=K`: ask every node, answer the newest
/// version, and first bring every stale follower up to date (in WAL order:
/// the follower applies its log up to the leader's LSN, skipping its
/// artificial delay — a follower never applies out of order).
#[utoipa::path(
    get,
    path = "/read-with-repair",
    tag = "seed",
    operation_id = "seed_read_with_repair",
    description = "Ask every node for `key`, bring each stale follower up to date (in log order), and answer the newest version with what was repaired.",
    params(("key" = String, Query, description = "The key")),
    responses(
        (status = 200, description = "The newest version", body = super::openapi::RepairResponse),
        (status = 400, description = "Missing or invalid `key` (`invalid_key`), unknown parameter", body = super::openapi::ErrorBody),
        (status = 404, description = "Absent everywhere", body = super::openapi::RepairNotFound),
        (status = 503, description = "No leader reachable", body = super::openapi::ErrorBody),
        (status = 508, description = "Relayed too many times", body = super::openapi::ErrorBody),
    ),
)]
pub async fn read_with_repair(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref(), &["key"])?;
    let key = key_param(&p)?.to_string();
    if let Some(resp) = proxy_if_follower(&node, &uri, &headers).await? {
        return Ok(resp);
    }
    let target = node.engine.positions().applied_lsn;
    let newest = node.engine.table().get(&key)?;
    let newest_lsn = newest.as_ref().map(|v| v.lsn).unwrap_or(Lsn::ZERO);
    let mut nodes = vec![json!({"id": node.config.id, "lsn": newest_lsn.0, "stale": false})];
    let mut repaired = Vec::new();
    for (id, url) in followers(&node)? {
        let seen = match fetch_version(&node, &url, &key).await {
            Ok((200, Some(v))) => v["lsn"].as_u64().map(Lsn),
            Ok((404, _)) => Some(Lsn::ZERO),
            _ => None,
        };
        let Some(seen) = seen else {
            nodes.push(json!({"id": id, "reachable": false}));
            continue;
        };
        let stale = seen != newest_lsn;
        if stale {
            let ok = repair(&node, &url, target).await;
            if ok {
                repaired.push(id.clone());
            }
            nodes.push(json!({"id": id, "lsn": seen.0, "stale": true, "repaired": ok}));
        } else {
            nodes.push(json!({"id": id, "lsn": seen.0, "stale": false}));
        }
    }
    let Some(v) = newest else {
        return Ok((
            axum::http::StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": "not_found", "message": format!("key not found: {key}")}, "repaired": repaired, "nodes": nodes})),
        )
            .into_response());
    };
    let mut body = versioned_json(&key, &v);
    body["node"] = json!(node.config.id);
    body["repaired"] = json!(repaired);
    body["nodes"] = json!(nodes);
    Ok(Json(body).into_response())
}

async fn repair(node: &Node, url: &str, lsn: Lsn) -> bool {
    let target = format!(
        "{}/internal/catch-up?lsn={}",
        url.trim_end_matches('/'),
        lsn.0
    );
    match node
        .http
        .post(&target)
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}
