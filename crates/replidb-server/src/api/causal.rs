//! Causal keys: `/v1/kv` in the multi-leader topology, the counter, set
//! and map types (every topology), and the conflict log.
//!
//! Reads answer with `X-Replidb-Context` (the causal context a later write
//! sends back to say what it has seen) and `X-Replidb-Min-Version` (what
//! this node has applied of every origin: a read-your-writes token for any
//! other node). Writes answer with the token of their own record.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{OriginalUri, RawQuery, State};

use super::kv::KeyPath;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use replidb_causal::vector::{decode_context, encode_context, vector_json};
use replidb_causal::{CausalWrite, KeyKind, KeyState, MinVersion, VersionVector};
use replidb_core::Lsn;
use replidb_engine::Proposal;
use serde_json::{json, Map, Value};

use super::kv::{check_key, path_and_query, put_value, serve_read, write_opts};
use super::params::{read_params_for, write_params_for, Params, ReadOpts, WriteOpts};
use super::write::{not_leader_response, propose_with, read_body, Origin, WriteOutcome};
use super::{ApiError, ApiResult, AppState};
use crate::node::Node;

/// The causal context header.
pub const CONTEXT_HEADER: &str = "x-replidb-context";
/// The read-your-writes token header across origins.
pub const MIN_VERSION_HEADER: &str = "x-replidb-min-version";
/// Most set members or map fields one request may change.
pub const CHANGES_PER_REQUEST_MAX: usize = 1000;
/// How long a multi-leader write waits for the `X-Replidb-Min-Version` it
/// carries before it is refused (503).
pub const TOKEN_WAIT_WRITE: Duration = Duration::from_millis(1000);
/// Most attempts of a single-leader typed `DELETE` whose key keeps
/// changing between its type check and its delete.
pub const TYPED_DELETE_ATTEMPTS_MAX: usize = 100;
/// Most conflicts one `/v1/conflicts` answer lists.
pub const CONFLICTS_LIMIT_MAX: usize = 1000;

/// The key's causal state here (`None`: absent). A plain value (single-
/// leader `/v1/kv`) is refused for a typed endpoint.
fn read_state(node: &Node, key: &str, want: KeyKind) -> ApiResult<Option<KeyState>> {
    match node.engine.table().get(key)? {
        None => Ok(None),
        Some(v) if v.causal => {
            let state = KeyState::decode(&v.value)
                .map_err(|e| ApiError::internal(format!("stored state of {key:?}: {e}")))?;
            if state.kind() != want {
                return Err(wrong_type(key, state.kind(), want));
            }
            Ok(Some(state))
        }
        Some(_) if want == KeyKind::Register => Ok(None),
        Some(_) => Err(wrong_type(key, KeyKind::Register, want)),
    }
}

fn wrong_type(key: &str, is: KeyKind, want: KeyKind) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "wrong_type",
        format!("key {key:?} is a {is}, not a {want} (use /v1/{is}/{key})"),
    )
}

/// This node's applied position of every origin, as a token.
fn node_token(node: &Node) -> MinVersion {
    MinVersion(
        node.engine
            .origin_positions()
            .into_iter()
            .map(|(o, l)| (o, l.0))
            .collect(),
    )
}

fn set_header(resp: &mut Response, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// The `min_version` a read asks for (query and every header; the higher
/// entry of each origin wins, so a second token can only make the read
/// stricter, as with `min_lsn`).
fn requested_min_version(p: &Params<'_>, headers: &HeaderMap) -> ApiResult<MinVersion> {
    let bad = |e: replidb_causal::TokenError| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_min_version",
            e.to_string(),
        )
    };
    let mut want = MinVersion::parse(p.str("min_version").unwrap_or("")).map_err(bad)?;
    for h in headers.get_all(MIN_VERSION_HEADER) {
        let s = h
            .to_str()
            .map_err(|_| ApiError::bad_request("X-Replidb-Min-Version is not visible ASCII"))?;
        want.merge(&MinVersion::parse(s).map_err(bad)?);
    }
    Ok(want)
}

/// Multi-leader read-your-writes for scans and writes: wait (up to `wait`)
/// for the `min_version` the request carries (query, if `p` allows it, or
/// header). A write waits too, so that a session's write on this node is
/// made against state that includes its earlier writes elsewhere (an
/// increment or a remove builds on what it saw).
pub(crate) async fn wait_for_token(
    node: &Node,
    p: &Params<'_>,
    headers: &HeaderMap,
    wait: Duration,
) -> ApiResult<()> {
    if !node.is_multi_leader() {
        return Ok(());
    }
    wait_min_version(node, &requested_min_version(p, headers)?, wait).await
}

/// Wait (up to `wait`) until this node has applied what `want` names from
/// every origin; else 503 with `Retry-After`.
async fn wait_min_version(node: &Node, want: &MinVersion, wait: Duration) -> ApiResult<()> {
    if want.is_empty() {
        return Ok(());
    }
    refuse_foreign_origins(node, want)?;
    let as_token = |positions: &BTreeMap<String, replidb_core::Lsn>| -> BTreeMap<String, u64> {
        positions.iter().map(|(o, l)| (o.clone(), l.0)).collect()
    };
    // Woken by every batch applied, not polled: the wait ends the moment
    // the last record it needs is visible.
    // Positions only grow, so what it returns is what the check below finds.
    node.engine
        .wait_origins(wait, |have| want.unmet(&as_token(have)).is_none())
        .await;
    let have: BTreeMap<String, u64> = node_token(node).0;
    let Some((origin, asked, applied)) = want.unmet(&have) else {
        return Ok(());
    };
    Err(min_version_not_reached(format!(
        "this node has applied {origin}'s log up to lsn {applied}, below the {asked} min_version asks, after {} ms; retry, or read from {origin}",
        wait.as_millis()
    )))
}

/// 503 `min_version_not_reached` with `Retry-After: 1`: the token may be
/// met later (or by another node), so the client may retry.
fn min_version_not_reached(message: String) -> ApiError {
    ApiError::retry_later("min_version_not_reached", message)
}

/// At once, a 503 that says so, for a `min_version` naming an origin this
/// node does not replicate from: waiting for it ended in a 503 that told
/// the client to read from a node that does not exist (a token kept from
/// another cluster, or a typo). Decided only while every peer has told us
/// its node ID; a peer never reached yet might be that origin, so then the
/// request waits as usual.
fn refuse_foreign_origins(node: &Node, want: &MinVersion) -> ApiResult<()> {
    let peers = node.peer_streams();
    let mut known: std::collections::BTreeSet<String> =
        node.engine.origin_positions().into_keys().collect();
    known.insert(node.config.id.clone());
    for p in peers {
        match p.status().origin {
            Some(o) => {
                known.insert(o);
            }
            None => return Ok(()),
        }
    }
    let foreign: Vec<&str> = want
        .0
        .iter()
        .filter(|(o, lsn)| **lsn > 0 && !known.contains(*o))
        .map(|(o, _)| o.as_str())
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    // 503, not 400: the token may name a member this node has not been
    // given yet (a rolling `--peers` change), and the CLI drops a saved
    // token that a cluster refuses this way.
    Err(min_version_not_reached(format!(
        "min_version names {}, which this node does not replicate from (origins: {}); a token from another cluster, or a member added since this node started?",
        foreign.join(", "),
        known.into_iter().collect::<Vec<_>>().join(", ")
    )))
}

/// The causal context of a write: the `X-Replidb-Context` header, if sent.
///
/// Sent twice, it is refused (400 `invalid_context`) rather than one copy
/// picked: the context says which versions the write supersedes, and
/// neither copy, nor their join, is known to be what the client read.
pub(crate) fn write_context(headers: &HeaderMap) -> ApiResult<Option<VersionVector>> {
    let mut sent = headers.get_all(CONTEXT_HEADER).iter();
    let Some(h) = sent.next() else {
        return Ok(None);
    };
    if sent.next().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_context",
            "X-Replidb-Context is sent more than once; send the one context the value was read with",
        ));
    }
    let s = h
        .to_str()
        .map_err(|_| ApiError::bad_request("X-Replidb-Context is not visible ASCII"))?;
    decode_context(s)
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_context", e.to_string()))
}

/// Multi-leader `GET /v1/kv/{key}`: the value, or 300 with siblings.
pub async fn kv_get(
    node: &Node,
    key: &str,
    p: &Params<'_>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let opts = ReadOpts::from_params(p, headers)?;
    super::read::refuse_single_leader_only(node, &opts)?;
    wait_min_version(node, &requested_min_version(p, headers)?, opts.wait).await?;
    let token = node_token(node).to_string();
    let state = read_state(node, key, KeyKind::Register)?;
    let mut resp = render_register(key, state.as_ref(), opts.json);
    set_header(&mut resp, MIN_VERSION_HEADER, &token);
    Ok(resp)
}

/// A plain causal key as a read answers it: the value (raw, or JSON with
/// `format=json`), 300 with the siblings, or 404; with its context.
pub fn render_register(key: &str, state: Option<&KeyState>, as_json: bool) -> Response {
    let context = state.map(KeyState::context).unwrap_or_default();
    let mut resp = match state {
        Some(KeyState::Register(r)) if r.versions.len() > 1 => {
            let siblings: Vec<Value> = r
                .versions
                .iter()
                .map(|v| {
                    let mut o = Map::new();
                    match &v.value {
                        Some(b) => put_value(&mut o, b),
                        None => {
                            o.insert("value".into(), Value::Null);
                            o.insert("deleted".into(), Value::Bool(true));
                        }
                    }
                    o.insert("origin".into(), json!(v.dot.origin));
                    o.insert("hlc".into(), json!(v.hlc));
                    o.insert("version".into(), vector_json(&v.vector()));
                    Value::Object(o)
                })
                .collect();
            let body =
                json!({"key": key, "siblings": siblings, "context": encode_context(&context)});
            (StatusCode::MULTIPLE_CHOICES, Json(body)).into_response()
        }
        Some(s @ KeyState::Register(r)) if !s.is_absent() => {
            let v = &r.versions[0];
            let value = v.value.clone().unwrap_or_default();
            if as_json {
                let mut o = Map::new();
                o.insert("key".into(), json!(key));
                put_value(&mut o, &value);
                o.insert("origin".into(), json!(v.dot.origin));
                o.insert("lsn".into(), json!(v.dot.counter));
                o.insert("hlc".into(), json!(v.hlc));
                o.insert("version".into(), vector_json(&v.vector()));
                o.insert("context".into(), json!(encode_context(&context)));
                Json(Value::Object(o)).into_response()
            } else {
                let mut r = Response::new(Body::from(value));
                set_header(&mut r, "content-type", "application/octet-stream");
                r
            }
        }
        Some(s) if s.kind() != KeyKind::Register => {
            wrong_type(key, s.kind(), KeyKind::Register).into_response()
        }
        _ => ApiError::not_found(format!("key not found: {key}")).into_response(),
    };
    if !context.is_empty() {
        set_header(&mut resp, CONTEXT_HEADER, &encode_context(&context));
    }
    resp
}

/// A causal write on this node: sequence it, wait for the write concern,
/// answer with origin, version and token.
async fn causal_write(
    node: &Node,
    key: &str,
    write: CausalWrite,
    opts: WriteOpts,
) -> ApiResult<(WriteOutcome, replidb_engine::Committed, Response)> {
    let policy = node.config.conflict_policy.policy_for(key);
    let k = key.to_string();
    let (out, committed) = propose_with(
        node,
        move |epoch| Proposal::causal(k, write, policy, Some(epoch)),
        key.to_string(),
        opts,
    )
    .await?;
    let resp = super::write::write_response(Some(key), opts, &out);
    Ok((out, committed, resp))
}

/// Add origin, version, context and token to a write's answer.
async fn finish_write(
    node: &Node,
    mut resp: Response,
    lsn: u64,
    committed: &replidb_engine::Committed,
    extra: impl FnOnce(&mut Map<String, Value>),
) -> ApiResult<Response> {
    let status = resp.status();
    let body = axum::body::to_bytes(std::mem::take(resp.body_mut()), 1 << 20)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut obj: Map<String, Value> = serde_json::from_slice(&body).unwrap_or_default();
    obj.insert("origin".into(), json!(node.config.id));
    if let Some(v) = &committed.version {
        obj.insert("version".into(), vector_json(v));
    }
    extra(&mut obj);
    let mut out = (status, Json(Value::Object(obj))).into_response();
    for (k, v) in resp.headers() {
        if k != "content-length" && k != "content-type" {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    set_header(
        &mut out,
        MIN_VERSION_HEADER,
        &format!("{}:{lsn}", node.config.id),
    );
    if let Some(state) = &committed.state {
        let ctx = state.context();
        if !ctx.is_empty() {
            set_header(&mut out, CONTEXT_HEADER, &encode_context(&ctx));
        }
    }
    Ok(out)
}

/// Multi-leader `PUT`/`DELETE /v1/kv/{key}`.
pub async fn kv_write(
    node: &Node,
    key: &str,
    value: Option<Vec<u8>>,
    p: &Params<'_>,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let opts = write_opts(node, p)?;
    let context = write_context(headers)?;
    wait_for_token(node, p, headers, TOKEN_WAIT_WRITE).await?;
    let write = match value {
        Some(value) => CausalWrite::Put { value, context },
        None => CausalWrite::Delete { context },
    };
    let (out, committed, resp) = causal_write(node, key, write, opts).await?;
    finish_write(node, resp, out.lsn.0, &committed, |_| {}).await
}

/// Common front of a typed write: parameters, key, leader check (single-
/// leader 307), body.
struct TypedWrite {
    /// Write options (not leaderless: there `w` counts replicas).
    opts: Option<WriteOpts>,
    params: Params<'static>,
    path_and_query: String,
    method: Method,
    body: bytes::Bytes,
}

async fn typed_front(
    node: &Node,
    key: &str,
    q: Option<String>,
    uri: &OriginalUri,
    headers: &HeaderMap,
    method: Method,
    body: Body,
) -> ApiResult<Result<TypedWrite, Response>> {
    let p = Params::parse(q.as_deref(), write_params_for(node.config.topology))?;
    let opts = if node.is_leaderless() {
        None
    } else {
        Some(write_opts(node, &p)?)
    };
    if method == Method::DELETE {
        check_key(key)?;
    } else {
        super::kv::check_new_path_key(key)?;
    }
    let body = read_body(body, node.config.max_value_bytes).await?;
    let pq = path_and_query(uri);
    let origin = Origin {
        method: method.clone(),
        path_and_query: &pq,
        headers,
        body: body.clone(),
    };
    if let Some(resp) = not_leader_response(node, &origin).await? {
        return Ok(Err(resp));
    }
    Ok(Ok(TypedWrite {
        opts,
        params: p.into_owned(),
        path_and_query: pq,
        method,
        body,
    }))
}

/// Whether a write's answer may show the key's state: with tokens on, only
/// to a token that also has the `read` role. A write-only token could
/// otherwise read any counter, set or map back through a write that
/// changes nothing (a delta of 0, adding and removing one member).
fn may_read(node: &Node, headers: &HeaderMap) -> bool {
    let Some(auth) = node.auth.as_ref() else {
        return true;
    };
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth.authorize(header, crate::auth::Role::Read).is_ok()
}

/// Run a typed write: leaderless through the replicas, else on this node.
/// `extra` adds the key's state after the write (when known here, and the
/// caller [`may_read`]) to the answer.
async fn typed_write(
    node: &std::sync::Arc<Node>,
    key: &str,
    write: CausalWrite,
    tw: TypedWrite,
    headers: &HeaderMap,
    extra: impl FnOnce(&mut Map<String, Value>, Option<&KeyState>),
) -> ApiResult<Response> {
    let readable = may_read(node, headers);
    let extra = |o: &mut Map<String, Value>, s: Option<&KeyState>| {
        if readable {
            extra(o, s);
        }
    };
    if node.is_leaderless() {
        let (resp, state) = super::leaderless::write(
            node,
            key,
            write,
            &tw.params,
            headers,
            (tw.method, &tw.path_and_query, tw.body),
        )
        .await?;
        if state.is_none() {
            return Ok(resp); // handed to a replica, answered by it
        }
        return add_fields(resp, |o| extra(o, state.as_ref())).await;
    }
    let opts = tw
        .opts
        .ok_or_else(|| ApiError::internal("write options missing"))?;
    wait_for_token(node, &tw.params, headers, TOKEN_WAIT_WRITE).await?;
    let (out, committed, resp) = causal_write(node, key, write, opts).await?;
    finish_write(node, resp, out.lsn.0, &committed, |o| {
        extra(o, committed.state.as_ref())
    })
    .await
}

/// Add fields to a JSON answer, keeping its status and headers.
async fn add_fields(
    mut resp: Response,
    f: impl FnOnce(&mut Map<String, Value>),
) -> ApiResult<Response> {
    let status = resp.status();
    let body = axum::body::to_bytes(std::mem::take(resp.body_mut()), 1 << 20)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut obj: Map<String, Value> = serde_json::from_slice(&body).unwrap_or_default();
    f(&mut obj);
    let mut out = (status, Json(Value::Object(obj))).into_response();
    for (k, v) in resp.headers() {
        if k != "content-length" && k != "content-type" {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed {what} body: {e}")))
}

/// Serve a typed read: single-leader through the read path (consistency
/// options apply), multi-leader locally after `min_version`.
async fn typed_read(
    node: &std::sync::Arc<Node>,
    key: &str,
    q: Option<String>,
    uri: &OriginalUri,
    headers: &HeaderMap,
    kind: KeyKind,
    render: fn(&str, Option<&KeyState>) -> Value,
) -> ApiResult<Response> {
    check_key(key)?;
    let p = Params::parse(q.as_deref(), read_params_for(node.config.topology))?;
    let opts = ReadOpts::from_params(&p, headers)?;
    let local = |n: &Node| -> ApiResult<Response> {
        let state = read_state(n, key, kind)?;
        let mut resp = Json(render(key, state.as_ref())).into_response();
        set_header(&mut resp, MIN_VERSION_HEADER, &node_token(n).to_string());
        Ok(resp)
    };
    if node.is_leaderless() {
        super::read::refuse_single_leader_only(node, &opts)?;
        let (state, answered) = super::leaderless::read(node, key, &p).await?;
        if let Some(s) = &state {
            if s.kind() != kind {
                return Err(wrong_type(key, s.kind(), kind));
            }
        }
        let mut resp = Json(render(key, state.as_ref())).into_response();
        set_header(
            &mut resp,
            super::leaderless::REPLICAS_HEADER,
            &answered.join(", "),
        );
        return Ok(resp);
    }
    if node.is_multi_leader() {
        super::read::refuse_single_leader_only(node, &opts)?;
        wait_min_version(node, &requested_min_version(&p, headers)?, opts.wait).await?;
        return local(node);
    }
    serve_read(node, &opts, uri, headers, local).await
}

fn counter_json(key: &str, s: Option<&KeyState>) -> Value {
    json!({"key": key, "value": s.and_then(KeyState::counter_value).unwrap_or(0)})
}

fn set_json(key: &str, s: Option<&KeyState>) -> Value {
    json!({"key": key, "members": s.and_then(KeyState::set_members).unwrap_or_default()})
}

fn map_json(_key: &str, s: Option<&KeyState>) -> Value {
    Value::Object(s.and_then(KeyState::map_object).unwrap_or_default())
}

/// `POST /v1/counter/{key}`'s body.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CounterBody {
    /// How much to add (negative: subtract).
    delta: i64,
}

/// `POST /v1/counter/{key}` `{"delta": N}`.
#[utoipa::path(
    post,
    path = "/v1/counter/{key}",
    tag = "types",
    operation_id = "counter_add",
    description = "Add `delta` (may be negative) to a PN-counter.",
    params(
        ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded", min_length = 1),
        super::params::WriteQuery,
        ("X-Replidb-Min-Version" = Option<String>, Header, description = "Multi-leader: wait (up to 1 s) until this node has applied this much of each origin"),
    ),
    request_body(content = CounterBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied, and the write concern met", body = super::openapi::CounterWriteResponse),
        (status = 307, description = "Single-leader, sent to a follower: `Location` names the leader", body = super::openapi::NotLeaderBody, headers(("Location" = String, description = "The leader's URL for this request"))),
        (status = 400, description = "Bad key, malformed body, nothing or too much to change, unknown or invalid parameter", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 409, description = "The key holds another type (`wrong_type`), or the delta would take the counter out of the 64-bit signed range (`counter_overflow`)", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than --max-value-bytes", body = super::openapi::ErrorBody),
        (status = 503, description = "This node may not write now; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 504, description = "The write concern was not met in time (`committed: false`; not undone)", body = super::openapi::CounterWriteResponse),
        (status = 508, description = "Relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn counter_post(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let tw = match typed_front(&node, &key, q, &uri, &headers, Method::POST, body).await? {
        Ok(tw) => tw,
        Err(resp) => return Ok(resp),
    };
    let b: CounterBody = parse_json(&tw.body, "counter")?;
    typed_write(
        &node,
        &key,
        CausalWrite::Counter { delta: b.delta },
        tw,
        &headers,
        |o, s| {
            o.insert("value".into(), json!(s.and_then(KeyState::counter_value)));
        },
    )
    .await
}

/// `GET /v1/counter/{key}` → `{"value": N}` (0 when absent).
#[utoipa::path(
    get,
    path = "/v1/counter/{key}",
    tag = "types",
    operation_id = "counter_get",
    description = "A PN-counter's value (0 when absent).",
    params(
        ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded", min_length = 1),
        super::params::ReadQuery,
        ("X-Replidb-Min-Lsn" = Option<u64>, Header, description = "Same as `min_lsn`"),
        ("X-Replidb-Min-Version" = Option<String>, Header, description = "Multi-leader: same as `min_version`"),
    ),
    responses(
        (status = 200, description = "The counter", body = super::openapi::CounterResponse),
        (status = 400, description = "Bad key, unknown or invalid parameter, bad header", body = super::openapi::ErrorBody),
        (status = 409, description = "The key holds another type (`wrong_type`)", body = super::openapi::ErrorBody),
        (status = 503, description = "Not fresh enough in time, no leader or replicas reachable; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 508, description = "Relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn counter_get(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    typed_read(
        &node,
        &key,
        q,
        &uri,
        &headers,
        KeyKind::Counter,
        counter_json,
    )
    .await
}

/// `POST /v1/set/{key}`'s body.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetBody {
    /// Members to add.
    #[serde(default)]
    add: Vec<String>,
    /// Members to remove (those this node has seen).
    #[serde(default)]
    remove: Vec<String>,
}

/// `POST /v1/set/{key}` `{"add": [..], "remove": [..]}`.
#[utoipa::path(
    post,
    path = "/v1/set/{key}",
    tag = "types",
    operation_id = "set_update",
    description = "Add and remove members of an observed-remove set (at most 1000 changes).",
    params(
        ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded", min_length = 1),
        super::params::WriteQuery,
        ("X-Replidb-Min-Version" = Option<String>, Header, description = "Multi-leader: wait (up to 1 s) until this node has applied this much of each origin"),
    ),
    request_body(content = SetBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied, and the write concern met", body = super::openapi::SetWriteResponse),
        (status = 307, description = "Single-leader, sent to a follower: `Location` names the leader", body = super::openapi::NotLeaderBody, headers(("Location" = String, description = "The leader's URL for this request"))),
        (status = 400, description = "Bad key, malformed body, nothing or too much to change, unknown or invalid parameter", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 409, description = "The key holds another type (`wrong_type`)", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than --max-value-bytes", body = super::openapi::ErrorBody),
        (status = 503, description = "This node may not write now; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 504, description = "The write concern was not met in time (`committed: false`; not undone)", body = super::openapi::SetWriteResponse),
        (status = 508, description = "Relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn set_post(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let tw = match typed_front(&node, &key, q, &uri, &headers, Method::POST, body).await? {
        Ok(tw) => tw,
        Err(resp) => return Ok(resp),
    };
    let b: SetBody = parse_json(&tw.body, "set")?;
    if b.add.len() + b.remove.len() > CHANGES_PER_REQUEST_MAX {
        return Err(ApiError::bad_request(format!(
            "at most {CHANGES_PER_REQUEST_MAX} members may change in one request"
        )));
    }
    if b.add.is_empty() && b.remove.is_empty() {
        return Err(ApiError::bad_request("nothing to add or remove"));
    }
    let write = CausalWrite::Set {
        add: b.add,
        remove: b.remove,
    };
    typed_write(&node, &key, write, tw, &headers, |o, s| {
        o.insert("members".into(), json!(s.and_then(KeyState::set_members)));
    })
    .await
}

/// `GET /v1/set/{key}` → `{"members": [..]}` (sorted; empty when absent).
#[utoipa::path(
    get,
    path = "/v1/set/{key}",
    tag = "types",
    operation_id = "set_get",
    description = "A set's members, sorted (empty when absent).",
    params(
        ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded", min_length = 1),
        super::params::ReadQuery,
        ("X-Replidb-Min-Lsn" = Option<u64>, Header, description = "Same as `min_lsn`"),
        ("X-Replidb-Min-Version" = Option<String>, Header, description = "Multi-leader: same as `min_version`"),
    ),
    responses(
        (status = 200, description = "The members", body = super::openapi::SetResponse),
        (status = 400, description = "Bad key, unknown or invalid parameter, bad header", body = super::openapi::ErrorBody),
        (status = 409, description = "The key holds another type (`wrong_type`)", body = super::openapi::ErrorBody),
        (status = 503, description = "Not fresh enough in time, no leader or replicas reachable; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 508, description = "Relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn set_get(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    typed_read(&node, &key, q, &uri, &headers, KeyKind::Set, set_json).await
}

/// `PATCH /v1/map/{key}`: a JSON object of fields; `null` removes one.
#[utoipa::path(
    patch,
    path = "/v1/map/{key}",
    tag = "types",
    operation_id = "map_patch",
    description = "Set fields of a map (LWW per field on HLC); a `null` field is removed. 1..=1000 fields.",
    params(
        ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded", min_length = 1),
        super::params::WriteQuery,
        ("X-Replidb-Min-Version" = Option<String>, Header, description = "Multi-leader: wait (up to 1 s) until this node has applied this much of each origin"),
    ),
    request_body(content = Object, content_type = "application/json", description = "Fields to set; `null` removes"),
    responses(
        (status = 200, description = "Applied, and the write concern met", body = super::openapi::MapWriteResponse),
        (status = 307, description = "Single-leader, sent to a follower: `Location` names the leader", body = super::openapi::NotLeaderBody, headers(("Location" = String, description = "The leader's URL for this request"))),
        (status = 400, description = "Bad key, malformed body, nothing or too much to change, unknown or invalid parameter", body = super::openapi::ErrorBody),
        (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
        (status = 409, description = "The key holds another type (`wrong_type`)", body = super::openapi::ErrorBody),
        (status = 413, description = "Body larger than --max-value-bytes", body = super::openapi::ErrorBody),
        (status = 503, description = "This node may not write now; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 504, description = "The write concern was not met in time (`committed: false`; not undone)", body = super::openapi::MapWriteResponse),
        (status = 508, description = "Relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn map_patch(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let tw = match typed_front(&node, &key, q, &uri, &headers, Method::PATCH, body).await? {
        Ok(tw) => tw,
        Err(resp) => return Ok(resp),
    };
    let b: Map<String, Value> = parse_json(&tw.body, "map (a JSON object)")?;
    if b.is_empty() || b.len() > CHANGES_PER_REQUEST_MAX {
        return Err(ApiError::bad_request(format!(
            "a map patch sets 1..={CHANGES_PER_REQUEST_MAX} fields"
        )));
    }
    let fields = b
        .into_iter()
        .map(|(k, v)| (k, (!v.is_null()).then_some(v)))
        .collect();
    typed_write(
        &node,
        &key,
        CausalWrite::Map { fields },
        tw,
        &headers,
        |o, s| {
            o.insert("map".into(), json!(s.and_then(KeyState::map_object)));
        },
    )
    .await
}

/// `GET /v1/map/{key}` → the merged object (`{}` when absent).
#[utoipa::path(
    get,
    path = "/v1/map/{key}",
    tag = "types",
    operation_id = "map_get",
    description = "A map as a JSON object (`{}` when absent).",
    params(
        ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded", min_length = 1),
        super::params::ReadQuery,
        ("X-Replidb-Min-Lsn" = Option<u64>, Header, description = "Same as `min_lsn`"),
        ("X-Replidb-Min-Version" = Option<String>, Header, description = "Multi-leader: same as `min_version`"),
    ),
    responses(
        (status = 200, description = "The map", body = Object),
        (status = 400, description = "Bad key, unknown or invalid parameter, bad header", body = super::openapi::ErrorBody),
        (status = 409, description = "The key holds another type (`wrong_type`)", body = super::openapi::ErrorBody),
        (status = 503, description = "Not fresh enough in time, no leader or replicas reachable; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 508, description = "Relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn map_get(
    State(node): State<AppState>,
    KeyPath(key): KeyPath,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    typed_read(&node, &key, q, &uri, &headers, KeyKind::Map, map_json).await
}

/// Delete a counter, set or map: in the single-leader topology a delete
/// that removes the key (it is then free for any kind); in the causal
/// topologies an observed-remove reset ([`CausalWrite::Clear`]): the key
/// keeps its kind and reads as empty, and what other nodes add
/// concurrently survives, as a concurrent add survives a set's remove.
async fn typed_delete(
    node: &std::sync::Arc<Node>,
    key: &str,
    (q, uri, headers, body): (Option<String>, OriginalUri, HeaderMap, Body),
    kind: KeyKind,
    render: fn(&str, Option<&KeyState>) -> (&'static str, Value),
) -> ApiResult<Response> {
    let tw = match typed_front(node, key, q, &uri, &headers, Method::DELETE, body).await? {
        Ok(tw) => tw,
        Err(resp) => return Ok(resp),
    };
    if !node.is_leaderless() && !node.is_multi_leader() {
        let opts = tw
            .opts
            .ok_or_else(|| ApiError::internal("write options missing"))?;
        // A key of another kind is refused, as a write to it would be. The
        // delete is conditioned on the key being as it was checked, so a
        // write that made it another kind meanwhile is not deleted with it.
        for _ in 0..TYPED_DELETE_ATTEMPTS_MAX {
            read_state(node, key, kind)?;
            let held = node.engine.table().get(key)?.map_or(Lsn::ZERO, |v| v.lsn);
            let op = replidb_core::Op::Delete {
                key: key.to_string(),
            };
            match super::propose(node, op, vec![(key.to_string(), held)], opts).await {
                Ok(out) => return Ok(super::write::write_response(Some(key), opts, &out)),
                Err(e) if e.code == "condition_failed" => continue,
                Err(e) => return Err(e),
            }
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "condition_failed",
            format!("{key:?} changed under {TYPED_DELETE_ATTEMPTS_MAX} attempts in a row to delete it; nothing was deleted, retry"),
        ));
    }
    typed_write(
        node,
        key,
        CausalWrite::Clear { kind },
        tw,
        &headers,
        |o, s| {
            let (field, value) = render(key, s);
            o.insert(field.into(), value);
        },
    )
    .await
}

/// One `DELETE /v1/{kind}/{key}` handler and its OpenAPI description:
/// the three differ in the kind, the field their answer renders, and words.
macro_rules! typed_delete_handler {
    (
        $name:ident, $path:literal, $op:literal, $description:literal,
        $answer:ty, $kind:expr, $field:literal, $render:expr
    ) => {
        #[doc = concat!("`DELETE ", $path, "`.")]
        #[utoipa::path(
            delete,
            path = $path,
            tag = "types",
            operation_id = $op,
            description = $description,
            params(
                ("key" = String, Path, description = "The key: 1..=1024 bytes of UTF-8, percent-encoded", min_length = 1),
                super::params::WriteQuery,
                ("X-Replidb-Min-Version" = Option<String>, Header, description = "Multi-leader: wait (up to 1 s) until this node has applied this much of each origin"),
            ),
            responses(
                (status = 200, description = "Deleted or emptied (`existed` says whether there was anything), and the write concern met", body = $answer),
                (status = 307, description = "Single-leader, sent to a follower: `Location` names the leader", body = super::openapi::NotLeaderBody, headers(("Location" = String, description = "The leader's URL for this request"))),
                (status = 400, description = "Bad key, unknown or invalid parameter", body = super::openapi::ErrorBody),
                (status = 408, description = "The request body did not arrive in time", body = super::openapi::ErrorBody),
                (status = 409, description = "The key holds another type (`wrong_type`), or kept changing (`condition_failed`)", body = super::openapi::ErrorBody),
                (status = 413, description = "Body larger than --max-value-bytes", body = super::openapi::ErrorBody),
                (status = 503, description = "This node may not write now; with `Retry-After`", body = super::openapi::ErrorBody),
                (status = 504, description = "The write concern was not met in time (`committed: false`; not undone)", body = $answer),
                (status = 508, description = "Relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
            ),
        )]
        pub async fn $name(
            State(node): State<AppState>,
            KeyPath(key): KeyPath,
            RawQuery(q): RawQuery,
            uri: OriginalUri,
            headers: HeaderMap,
            body: Body,
        ) -> ApiResult<Response> {
            typed_delete(&node, &key, (q, uri, headers, body), $kind, |_, s| {
                ($field, json!($render(s)))
            })
            .await
        }
    };
}

typed_delete_handler!(
    counter_delete,
    "/v1/counter/{key}",
    "counter_delete",
    "Single-leader: delete the counter (the key is then free for any kind). Multi-leader and leaderless: reset it, taking back the value this node has seen (increments made concurrently elsewhere survive; the key stays a counter).",
    super::openapi::CounterWriteResponse,
    KeyKind::Counter,
    "value",
    |s: Option<&KeyState>| s.and_then(KeyState::counter_value).unwrap_or(0)
);

typed_delete_handler!(
    set_delete,
    "/v1/set/{key}",
    "set_delete",
    "Single-leader: delete the set (the key is then free for any kind). Multi-leader and leaderless: remove every member this node has seen (members added concurrently elsewhere survive; the key stays a set).",
    super::openapi::SetWriteResponse,
    KeyKind::Set,
    "members",
    |s: Option<&KeyState>| s.and_then(KeyState::set_members).unwrap_or_default()
);

typed_delete_handler!(
    map_delete,
    "/v1/map/{key}",
    "map_delete",
    "Single-leader: delete the map (the key is then free for any kind). Multi-leader and leaderless: remove every field this node has seen (each field is last-writer-wins, so one written later elsewhere survives; the key stays a map).",
    super::openapi::MapWriteResponse,
    KeyKind::Map,
    "map",
    |s: Option<&KeyState>| s.and_then(KeyState::map_object).unwrap_or_default()
);

/// `GET /v1/conflicts?limit=N&prefix=P`: newest resolved conflicts here.
#[utoipa::path(
    get,
    path = "/v1/conflicts",
    tag = "types",
    operation_id = "conflicts",
    description = "The newest conflicts this node resolved (empty in single-leader mode).",
    params(
        ("limit" = Option<u64>, Query, description = "Most conflicts (default 100)", minimum = 1, maximum = 1000),
        ("prefix" = Option<String>, Query, description = "Only keys starting with this"),
    ),
    responses(
        (status = 200, description = "The conflicts, newest first", body = Vec<super::openapi::ConflictJson>),
        (status = 400, description = "Unknown or invalid parameter", body = super::openapi::ErrorBody),
    ),
)]
pub async fn conflicts(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref(), &["limit", "prefix"])?;
    let limit = p
        .parse_as::<usize>("limit", "a positive integer")?
        .unwrap_or(100);
    if limit == 0 || limit > CONFLICTS_LIMIT_MAX {
        return Err(ApiError::invalid_param(
            "limit",
            &limit.to_string(),
            &format!("1..={CONFLICTS_LIMIT_MAX}"),
        ));
    }
    let list = node
        .engine
        .table()
        .conflicts(p.str("prefix").unwrap_or(""), limit)?;
    let out: Vec<Value> = list
        .iter()
        .map(|c| {
            let versions: Vec<Value> = c
                .versions
                .iter()
                .map(|v| {
                    let mut o = Map::new();
                    match &v.value {
                        Some(b) => put_value(&mut o, b),
                        None => {
                            o.insert("value".into(), Value::Null);
                        }
                    }
                    o.insert("origin".into(), json!(v.origin));
                    o.insert("hlc".into(), json!(v.hlc));
                    o.insert("version".into(), vector_json(&v.version));
                    Value::Object(o)
                })
                .collect();
            json!({
                "key": c.key,
                "policy": c.policy,
                "at": c.at,
                "versions": versions,
                "kept": c.kept.as_ref().map(|d| d.to_string()),
            })
        })
        .collect();
    Ok(Json(Value::Array(out)).into_response())
}

/// A stored value as scan output: a causal key's live value (one version),
/// its siblings, or its type's rendering.
pub fn causal_json(key: &str, state: &KeyState) -> Value {
    match state {
        KeyState::Register(r) => {
            let live: Vec<&replidb_causal::Version> = r.live().collect();
            let mut o = Map::new();
            o.insert("key".into(), json!(key));
            if live.len() == 1 && r.versions.len() == 1 {
                if let Some(b) = &live[0].value {
                    put_value(&mut o, b);
                }
                o.insert("origin".into(), json!(live[0].dot.origin));
                o.insert("version".into(), vector_json(&live[0].vector()));
            } else {
                o.insert("siblings".into(), json!(r.versions.len()));
                o.insert("context".into(), json!(encode_context(&r.context())));
            }
            Value::Object(o)
        }
        other => json!({"key": key, "type": other.kind().as_str(), "value": other.render()}),
    }
}
