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

use super::params::{Params, ReadOpts, WriteOpts, READ_PARAMS, WRITE_PARAMS};
use super::read::{confirm_strong, plan, proxy_to_leader, Plan};
use super::write::{not_leader_response, propose, read_body, write_response, Origin};
use super::{ApiError, ApiResult, AppState};
use crate::node::Node;

/// Most items a scan returns, whatever `limit` asks.
pub const SCAN_LIMIT_MAX: usize = 10_000;

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
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_key",
                format!("keys are 1..=1024 bytes of UTF-8; this one is not: {e}"),
            )),
        }
    }
}

pub(crate) fn check_key(key: &str) -> ApiResult<()> {
    validate_key(key)
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
pub async fn get_key(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check_key(&key)?;
    let p = Params::parse(q.as_deref(), READ_PARAMS)?;
    if node.is_leaderless() {
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
    if as_json {
        return Ok(Json(versioned_json(key, &v)).into_response());
    }
    let mut resp = Response::new(Body::from(v.value));
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// `PUT /v1/kv/{key}`.
pub async fn put_key(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
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
        let p = Params::parse(q.as_deref(), WRITE_PARAMS)?;
        return super::causal::kv_write(&node, &key, Some(value.to_vec()), &p, &headers).await;
    }
    let op = Op::Put {
        key: key.clone(),
        value: value.to_vec(),
    };
    write_key(&node, key, q, uri, headers, Method::PUT, value, op).await
}

/// `DELETE /v1/kv/{key}`.
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
        let p = Params::parse(q.as_deref(), WRITE_PARAMS)?;
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

pub(crate) fn write_opts(node: &Node, p: &Params) -> ApiResult<WriteOpts> {
    WriteOpts::from_params(
        p,
        node.config.default_write_concern,
        node.config.default_write_timeout,
    )
}

/// `GET /v1/kv?prefix=P&limit=N`: a JSON array in key order.
pub async fn scan(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut allowed = READ_PARAMS.to_vec();
    allowed.extend(["prefix", "limit", "start_after"]);
    let p = Params::parse(q.as_deref(), &allowed)?;
    let opts = ReadOpts::from_params(&p, &headers)?;
    let limit = p
        .parse_as::<usize>("limit", "a positive integer")?
        .unwrap_or(1000);
    if limit == 0 || limit > SCAN_LIMIT_MAX {
        return Err(ApiError::invalid_param(
            "limit",
            &limit.to_string(),
            &format!("1..={SCAN_LIMIT_MAX}"),
        ));
    }
    super::causal::wait_for_token(&node, &p, &headers, opts.wait).await?;
    serve_read(&node, &opts, &uri, &headers, |n| {
        let items =
            n.engine
                .table()
                .scan(p.str("prefix").unwrap_or(""), p.str("start_after"), limit)?;
        // A causal key holding only a tombstone is absent, as for a read.
        let list: Vec<Value> = items
            .iter()
            .filter(|(_, v)| {
                !(v.causal
                    && replidb_causal::KeyState::decode(&v.value).is_ok_and(|s| s.is_absent()))
            })
            .map(|(k, v)| versioned_json(k, v))
            .collect();
        Ok(Json(Value::Array(list)).into_response())
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnCondition {
    key: String,
    lsn: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnOp {
    op: String,
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(rename = "if", default)]
    conditions: Vec<TxnCondition>,
    ops: Vec<TxnOp>,
}

/// Most operations in one transaction.
pub const TXN_OPS_MAX: usize = 1000;

/// `POST /v1/txn`: conditions checked and ops applied as one record.
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
            "transactions need one leader to order them; in the multi-leader topology write keys one by one (or use the counter, set and map types)",
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
