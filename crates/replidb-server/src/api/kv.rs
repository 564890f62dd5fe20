//! `/v1/kv` and `/v1/txn`.

use axum::body::Body;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use replidb_core::{validate_key, Lsn, Op, Versioned};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::params::{read_params_for, write_params_for, Params, ReadOpts, WriteOpts, WRITE_PARAMS};
use super::read::{confirm_strong, plan, proxy_to_leader, Plan};
use super::write::{not_leader_response, propose, read_body, write_response, Origin};
use super::{ApiError, ApiResult, AppState};
use crate::node::Node;

/// The `{key}` of a `/v1/kv/{key}` (and typed-key) path, percent-decoded.
/// A key that does not decode to UTF-8 is refused as the contract says, a
/// 400 `invalid_key` JSON error, not axum's plain-text rejection.
pub(crate) struct KeyPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(key)) => Ok(KeyPath(key)),
            Err(e) => Err(KeyPath::not_utf8(e)),
        }
    }
}

impl KeyPath {
    /// The key of a `/v1/kv/{key}` path's raw (percent-encoded) `rest`,
    /// decoded as the router's `{*key}` capture is: the key-value fast
    /// path ([`super::service`]) takes keys without the router.
    pub(crate) fn decode(rest: &str) -> ApiResult<KeyPath> {
        percent_encoding::percent_decode_str(rest)
            .decode_utf8()
            .map(|key| KeyPath(key.into_owned()))
            // The router's rejection, word for word.
            .map_err(|_| KeyPath::not_utf8("Invalid UTF-8 in `key`"))
    }

    fn not_utf8(why: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            format!("keys are 1..=1024 bytes of UTF-8; this one is not: {why}"),
        )
    }
}

pub(crate) fn check_key(key: &str) -> ApiResult<()> {
    validate_key(key)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", e.to_string()))
}

/// [`check_key`] for a key a request *creates or changes* through its URL
/// path: not `.` or `..` either (`replidb_core::validate_path_key`). Reads
/// and deletes take any stored key, so one stored before stays reachable.
pub(crate) fn check_new_path_key(key: &str) -> ApiResult<()> {
    replidb_core::validate_path_key(key)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", e.to_string()))
}

/// A value as JSON: a string when it is UTF-8, else base64 with
/// `"encoding":"base64"` set on `obj`.
pub fn put_value(obj: &mut Map<String, Value>, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(s) => {
            obj.insert("value".into(), Value::String(s.to_string()));
        }
        Err(_) => {
            obj.insert(
                "value".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(value)),
            );
            obj.insert("encoding".into(), Value::String("base64".into()));
        }
    }
}

/// `{"key","value","lsn","epoch"}` for a stored value.
pub fn versioned_json(key: &str, v: &Versioned) -> Value {
    if v.causal {
        if let Ok(state) = replidb_causal::KeyState::decode(&v.value) {
            return super::causal::causal_json(key, &state);
        }
    }
    let mut obj = Map::new();
    obj.insert("key".into(), Value::String(key.to_string()));
    put_value(&mut obj, &v.value);
    obj.insert("lsn".into(), json!(v.lsn.0));
    obj.insert("epoch".into(), json!(v.epoch.0));
    Value::Object(obj)
}

pub(crate) fn path_and_query(uri: &OriginalUri) -> String {
    uri.0
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.0.path().to_string())
}

/// `GET /v1/kv/{key}`.
#[utoipa::path(
    get,
    path = "/v1/kv/{key}",
    tag = "kv",
    operation_id = "kv_get",
    description = "Read a key: the raw value, or JSON with `format=json`. A follower serves `eventual`/`bounded`/`min_lsn` reads itself and relays the others to the leader.",
    params(
        ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded; may contain `/`", min_length = 1),
        super::params::ReadQuery,
        ("X-Replidb-Min-Lsn" = Option<u64>, Header, description = "Same as `min_lsn` (the higher wins)"),
        ("X-Replidb-Min-Version" = Option<String>, Header, description = "Multi-leader: same as `min_version`"),
    ),
    responses(
        (status = 200, description = "The value", content(
            (super::openapi::RawBytes = "application/octet-stream"),
            (super::openapi::ValueJson = "application/json"),
        )),
        (status = 300, description = "Multi-leader/leaderless under `siblings`: concurrent versions", body = super::openapi::SiblingsResponse),
        (status = 400, description = "Bad key (`invalid_key`), unknown or invalid parameter, bad header", body = super::openapi::ErrorBody),
        (status = 404, description = "Absent (`not_found`)", body = super::openapi::ErrorBody),
        (status = 409, description = "The key is a counter, set or map (`wrong_type`)", body = super::openapi::ErrorBody),
        (status = 503, description = "Not fresh enough in time (`fallback=error`, `min_lsn`/`min_version` not reached), a strong read the leader cannot confirm, no leader or replicas reachable; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 508, description = "Relayed too many times between nodes that disagree on the leader (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn get_key(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_key(&key)?;
    let p = Params::parse(q.as_deref(), read_params_for(node.config.topology))?;
    if node.is_leaderless() {
        let opts = ReadOpts::from_params(&p, &headers)?;
        super::read::refuse_single_leader_only(&node, &opts)?;
        let (state, answered) = super::leaderless::read(&node, &key, &p).await?;
        let json = p.str("format") == Some("json");
        let mut resp = super::causal::render_register(&key, state.as_ref(), json);
        if let Ok(v) = HeaderValue::from_str(&answered.join(", ")) {
            resp.headers_mut()
                .insert(super::leaderless::REPLICAS_HEADER, v);
        }
        return Ok(resp);
    }
    if node.is_multi_leader() {
        return super::causal::kv_get(&node, &key, &p, &headers).await;
    }
    let opts = ReadOpts::from_params(&p, &headers)?;
    serve_read(&node, &opts, &uri, &headers, |n| {
        read_local(n, &key, opts.json)
    })
    .await
}

/// Plan a read and serve it: relay it to the leader, or answer from the
/// local table with `local` — for a strong read, only after confirming
/// that what was read is committed and that this node still leads.
pub(crate) async fn serve_read(
    node: &Node,
    opts: &ReadOpts,
    uri: &OriginalUri,
    headers: &HeaderMap,
    local: impl FnOnce(&Node) -> ApiResult<Response>,
) -> ApiResult<Response> {
    match plan(node, opts).await? {
        Plan::Local => local(node),
        Plan::Strong(leader, since) => {
            let answer = local(node);
            confirm_strong(node, &leader, since, opts).await?;
            answer
        }
        Plan::Leader => {
            proxy_to_leader(
                node,
                Method::GET,
                &path_and_query(uri),
                headers,
                Default::default(),
            )
            .await
        }
    }
}

/// Serve `key` from the local table.
pub fn read_local(node: &Node, key: &str, as_json: bool) -> ApiResult<Response> {
    let Some(v) = node.engine.table().get(key)? else {
        return Err(ApiError::not_found(format!("key not found: {key}")));
    };
    if v.causal {
        let kind = replidb_causal::KeyState::decode(&v.value)
            .map(|s| s.kind())
            .unwrap_or(replidb_causal::KeyKind::Register);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_type",
            format!("key {key:?} is a {kind}; read it with GET /v1/{kind}/{key}"),
        ));
    }
    // The table makes an applied record visible a moment before the
    // engine publishes its applied position, so the position alone can
    // name an LSN older than the value served; a client (or the router's
    // cookie) that carries it forward could then read backwards. Never
    // label a value older than the record that wrote it.
    let served = node.engine.positions().applied_lsn.max(v.lsn);
    let mut resp = if as_json {
        Json(versioned_json(key, &v)).into_response()
    } else {
        super::edge::answer(
            StatusCode::OK,
            "application/octet-stream",
            Body::from(v.value),
        )
    };
    resp.headers_mut()
        .insert(super::LSN_HEADER, HeaderValue::from(served.0));
    Ok(resp)
}

/// `PUT /v1/kv/{key}`.
#[utoipa::path(
    put,
    path = "/v1/kv/{key}",
    tag = "kv",
    operation_id = "kv_put",
    description = "Write a key; the body is the value (any bytes). Single-leader: only the leader writes (a follower answers 307, or forwards with --forward-writes); multi-leader: this node writes; leaderless: a replica of the key coordinates.",
    params(
        ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded", min_length = 1),
        super::params::WriteQuery,
        ("X-Replidb-Context" = Option<String>, Header, description = "Multi-leader/leaderless: the context of an earlier read; the write replaces exactly the versions it names"),
    ),
    request_body(content = super::openapi::RawBytes, content_type = "application/octet-stream", description = "The value"),
    responses(
        (status = 200, description = "Written, and the write concern met", body = super::openapi::WriteResponse),
        (status = 307, description = "Sent to a follower: `Location` names the leader's same path", body = super::openapi::NotLeaderBody, headers(("Location" = String, description = "The leader's URL for this request"))),
        (status = 400, description = "Bad key, unknown or invalid parameter, `w` above the voters (`w_exceeds_voters`), bad `X-Replidb-Context`", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time (`request_timeout`)", body = super::openapi::ErrorBody),
        (status = 409, description = "The key is a counter, set or map (`wrong_type`), or has too many siblings", body = super::openapi::ErrorBody),
        (status = 413, description = "The value is larger than --max-value-bytes (`value_too_large`)", body = super::openapi::ErrorBody),
        (status = 503, description = "This node may not write now (`no_quorum`, `fenced`, `stale_leader`, `switchover_in_progress`, `no_leader`, `min_version_not_reached`, `no_replica`); with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 504, description = "Durable here but the write concern was not met within `timeout_ms` (`committed: false`; not undone)", body = super::openapi::WriteResponse),
        (status = 508, description = "A forwarded write relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn put_key(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    check_new_path_key(&key)?;
    let value = read_body(body, node.config.max_value_bytes).await?;
    if node.is_leaderless() {
        check_key(&key)?;
        let p = Params::parse(q.as_deref(), WRITE_PARAMS)?;
        let context = super::causal::write_context(&headers)?;
        let pq = path_and_query(&uri);
        let write = replidb_causal::CausalWrite::Put {
            value: value.to_vec(),
            context,
        };
        let (resp, _) =
            super::leaderless::write(&node, &key, write, &p, &headers, (Method::PUT, &pq, value))
                .await?;
        return Ok(resp);
    }
    if node.is_multi_leader() {
        check_key(&key)?;
        let p = Params::parse(q.as_deref(), write_params_for(node.config.topology))?;
        return super::causal::kv_write(&node, &key, Some(value.to_vec()), &p, &headers).await;
    }
    let op = Op::Put {
        key: key.clone(),
        value: value.to_vec(),
    };
    write_key(&node, key, q, uri, headers, Method::PUT, value, op).await
}

/// `DELETE /v1/kv/{key}`.
#[utoipa::path(
    delete,
    path = "/v1/kv/{key}",
    tag = "kv",
    operation_id = "kv_delete",
    description = "Delete a key: 200 even if absent (`existed` says). Multi-leader/leaderless: a tombstone version.",
    params(
        ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded", min_length = 1),
        super::params::WriteQuery,
        ("X-Replidb-Context" = Option<String>, Header, description = "Multi-leader/leaderless: the context of an earlier read"),
    ),
    responses(
        (status = 200, description = "Written, and the write concern met", body = super::openapi::WriteResponse),
        (status = 307, description = "Sent to a follower: `Location` names the leader's same path", body = super::openapi::NotLeaderBody, headers(("Location" = String, description = "The leader's URL for this request"))),
        (status = 400, description = "Bad key, unknown or invalid parameter, `w` above the voters (`w_exceeds_voters`), bad `X-Replidb-Context`", body = super::openapi::ErrorBody),
        (status = 409, description = "Multi-leader and leaderless: the key is a counter, set or map (`wrong_type`: clear it on its own endpoint), or has too many siblings. Single-leader deletes a key of any kind", body = super::openapi::ErrorBody),
        (status = 503, description = "This node may not write now (`no_quorum`, `fenced`, `stale_leader`, `switchover_in_progress`, `no_leader`, `min_version_not_reached`, `no_replica`); with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 504, description = "Durable here but the write concern was not met within `timeout_ms` (`committed: false`; not undone)", body = super::openapi::WriteResponse),
        (status = 508, description = "A forwarded write relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn delete_key(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if node.is_leaderless() {
        check_key(&key)?;
        let p = Params::parse(q.as_deref(), WRITE_PARAMS)?;
        let context = super::causal::write_context(&headers)?;
        let pq = path_and_query(&uri);
        let write = replidb_causal::CausalWrite::Delete { context };
        let (resp, _) = super::leaderless::write(
            &node,
            &key,
            write,
            &p,
            &headers,
            (Method::DELETE, &pq, Default::default()),
        )
        .await?;
        return Ok(resp);
    }
    if node.is_multi_leader() {
        check_key(&key)?;
        let p = Params::parse(q.as_deref(), write_params_for(node.config.topology))?;
        return super::causal::kv_write(&node, &key, None, &p, &headers).await;
    }
    let op = Op::Delete { key: key.clone() };
    write_key(
        &node,
        key,
        q,
        uri,
        headers,
        Method::DELETE,
        Default::default(),
        op,
    )
    .await
}

/// The shared path of a single-key write: parameters, key check, leader
/// check (307 or forward), propose, answer.
#[allow(clippy::too_many_arguments)]
async fn write_key(
    node: &Node,
    key: String,
    q: Option<String>,
    uri: OriginalUri,
    headers: HeaderMap,
    method: Method,
    body: bytes::Bytes,
    op: Op,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref(), WRITE_PARAMS)?;
    let opts = write_opts(node, &p)?;
    check_key(&key)?;
    let pq = path_and_query(&uri);
    let origin = Origin {
        method,
        path_and_query: &pq,
        headers: &headers,
        body,
    };
    if let Some(resp) = not_leader_response(node, &origin).await? {
        return Ok(resp);
    }
    let out = propose(node, op, Vec::new(), opts).await?;
    Ok(write_response(Some(&key), opts, &out))
}

pub(crate) fn write_opts(node: &Node, p: &Params<'_>) -> ApiResult<WriteOpts> {
    WriteOpts::from_params(
        p,
        node.config.default_write_concern,
        node.config.default_write_timeout,
    )
}

/// A transaction's condition: the key's LSN must be `lsn` (0: absent).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TxnCondition {
    /// The key.
    key: String,
    /// The LSN that must have written it; 0 means "absent".
    lsn: u64,
}

/// `op` of a transaction operation (the handler reads it as a string, so
/// that another value is an `invalid_parameter` naming it).
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum TxnOpKind {
    Put,
    Delete,
}

/// `encoding` of a transaction put's value.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum TxnEncoding {
    Utf8,
    Base64,
}

/// One operation of a transaction.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TxnOp {
    /// `put` or `delete`.
    #[schema(inline, value_type = TxnOpKind)]
    op: String,
    /// The key.
    key: String,
    /// A put's value (required for `put`).
    #[serde(default)]
    value: Option<String>,
    /// `utf8` (default) or `base64` (the value is base64 of the bytes).
    #[serde(default)]
    #[schema(inline, value_type = Option<TxnEncoding>)]
    encoding: Option<String>,
}

/// `POST /v1/txn`: conditions, then operations applied all or nothing.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TxnBody {
    /// Every condition must hold, or nothing is written (409).
    #[serde(rename = "if", default)]
    conditions: Vec<TxnCondition>,
    /// 1..=1000 operations.
    ops: Vec<TxnOp>,
}

/// Most operations in one transaction.
pub const TXN_OPS_MAX: usize = 1000;

/// `POST /v1/txn`: conditions checked and ops applied as one record.
#[utoipa::path(
    post,
    path = "/v1/txn",
    tag = "kv",
    operation_id = "txn",
    description = "An atomic batch: every condition holds and every operation is applied as one record, or nothing is. Single-leader only (400 `not_supported` elsewhere).",
    params(super::params::WriteQuery),
    request_body(content = TxnBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied, and the write concern met", body = super::openapi::WriteResponse),
        (status = 307, description = "Sent to a follower: `Location` names the leader", body = super::openapi::NotLeaderBody, headers(("Location" = String, description = "The leader's URL for this request"))),
        (status = 400, description = "Malformed JSON, bad key, 0 or more than 1000 ops, a put without value, bad base64, invalid parameter, `not_supported` outside single-leader", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 409, description = "A condition failed (`condition_failed`, once the state it was checked against is committed at `w`), or a put would replace a typed key (`wrong_type`)", body = super::openapi::ErrorBody),
        (status = 413, description = "Body or a value too large", body = super::openapi::ErrorBody),
        (status = 503, description = "This node may not write now; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 504, description = "The write concern was not met in time (`committed: false`), or a failed condition could not be confirmed (`condition_unconfirmed`)", body = super::openapi::TimeoutBody),
        (status = 508, description = "A forwarded write relayed too many times", body = super::openapi::ErrorBody),
    ),
)]
pub async fn txn(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref(), WRITE_PARAMS)?;
    let opts = write_opts(&node, &p)?;
    if node.is_multi_leader() || node.is_leaderless() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_supported",
            format!(
                "transactions need one leader to order them; in the {} topology write keys one by one (or use the counter, set and map types)",
                node.config.topology.as_str()
            ),
        ));
    }
    let limit = node.config.max_value_bytes.saturating_mul(4).max(1 << 20);
    let raw = read_body(body, limit).await?;
    let pq = path_and_query(&uri);
    let origin = Origin {
        method: Method::POST,
        path_and_query: &pq,
        headers: &headers,
        body: raw.clone(),
    };
    if let Some(resp) = not_leader_response(&node, &origin).await? {
        return Ok(resp);
    }
    let parsed: TxnBody = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad_request(format!("malformed transaction JSON: {e}")))?;
    let (op, conditions) = build_txn(&node, parsed)?;
    let out = propose(&node, op, conditions, opts).await?;
    Ok(write_response(None, opts, &out))
}

fn build_txn(node: &Node, body: TxnBody) -> ApiResult<(Op, Vec<(String, Lsn)>)> {
    if body.ops.is_empty() || body.ops.len() > TXN_OPS_MAX {
        return Err(ApiError::bad_request(format!(
            "a transaction needs 1..={TXN_OPS_MAX} ops, got {}",
            body.ops.len()
        )));
    }
    let mut conditions = Vec::with_capacity(body.conditions.len());
    for c in body.conditions {
        check_key(&c.key)?;
        conditions.push((c.key, Lsn(c.lsn)));
    }
    let mut ops = Vec::with_capacity(body.ops.len());
    for o in body.ops {
        check_key(&o.key)?;
        match o.op.as_str() {
            "put" => {
                let text = o.value.ok_or_else(|| {
                    ApiError::bad_request(format!("put of {:?} has no value", o.key))
                })?;
                let value = match o.encoding.as_deref() {
                    None | Some("utf8") => text.into_bytes(),
                    Some("base64") => base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_err(|e| {
                            ApiError::bad_request(format!("bad base64 for {:?}: {e}", o.key))
                        })?,
                    Some(other) => {
                        return Err(ApiError::invalid_param("encoding", other, "utf8 or base64"))
                    }
                };
                if value.len() > node.config.max_value_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "value_too_large",
                        format!(
                            "value of {:?} is {} bytes; the limit is {}",
                            o.key,
                            value.len(),
                            node.config.max_value_bytes
                        ),
                    ));
                }
                ops.push(Op::Put { key: o.key, value });
            }
            "delete" => ops.push(Op::Delete { key: o.key }),
            other => return Err(ApiError::invalid_param("op", other, "put or delete")),
        }
    }
    Ok((Op::Batch(ops), conditions))
}
