//! `GET /openapi.json`: the OpenAPI 3 document of the node's HTTP API,
//! generated at build time by `utoipa` from the `#[utoipa::path]`
//! annotations on the handlers themselves, so a handler and its
//! description sit side by side and change together.
//!
//! Which operations need a token, and which role, is not written per
//! operation: [`SecurityFromAccess`] asks [`crate::auth::access`] — the
//! very function the token middleware asks — for every documented method
//! and path, and adds the bearer requirement and the 401/403 answers to
//! exactly the operations it guards.
//!
//! The response bodies below are the JSON shapes the handlers build (most
//! build them with `serde_json::json!`, so these types exist only to
//! describe them); request bodies are the handlers' own `Deserialize`
//! types. `tests/openapi.rs` checks the document against the running
//! router and fuzzes a node from it with schemathesis.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::auth::{access, Access};

/// The JSON error every handler answers with: `{"error": {"code", "message"}}`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // describes `ApiError`'s JSON; never built
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_key`, `value_too_large`,
    /// `unknown_parameter`, `no_quorum`, ...).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// A write sent to a follower: 307 with `Location` at the leader's same
/// path, and this body.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct NotLeaderBody {
    /// `not_leader`.
    pub error: ErrorDetail,
    /// The leader's URL.
    pub leader: String,
}

/// A write's answer (200 committed, 504 when the write concern was not met
/// in time; the write is not undone).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct WriteResponse {
    /// The key written (absent for a transaction).
    pub key: Option<String>,
    /// The record's LSN (in the origin's log).
    pub lsn: u64,
    /// The record's epoch.
    pub epoch: u64,
    /// Nodes (or, leaderless, replicas) that hold it durably.
    pub acks: u64,
    /// The write concern asked for: `"1"`, `"majority"`, `"all"`, a number
    /// as a string; leaderless: the number of replicas W.
    #[schema(schema_with = string_or_integer)]
    pub w: Value,
    /// Whether the write concern was met.
    pub committed: bool,
    /// For a delete: whether the key existed.
    pub existed: Option<bool>,
    /// `write_concern_timeout` on a 504.
    pub error: Option<ErrorDetail>,
    /// Multi-leader and leaderless: the node whose log holds the write.
    pub origin: Option<String>,
    /// Multi-leader and leaderless: the key's new version vector.
    #[schema(value_type = Option<Object>)]
    pub version: Option<Value>,
    /// Leaderless: the replicas that hold the write.
    pub replicas: Option<Vec<String>>,
}

/// A counter write's answer: a [`WriteResponse`] with the new value.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CounterWriteResponse {
    /// The write.
    #[schema(inline)]
    #[serde(flatten)]
    pub write: WriteResponse,
    /// The counter after the write, when this node knows it.
    pub value: Option<i64>,
}

/// A set write's answer: a [`WriteResponse`] with the new members.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SetWriteResponse {
    /// The write.
    #[schema(inline)]
    #[serde(flatten)]
    pub write: WriteResponse,
    /// The members after the write, sorted, when this node knows them.
    pub members: Option<Vec<String>>,
}

/// A map write's answer: a [`WriteResponse`] with the merged map.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct MapWriteResponse {
    /// The write.
    #[schema(inline)]
    #[serde(flatten)]
    pub write: WriteResponse,
    /// The map after the write, when this node knows it.
    #[schema(value_type = Option<Object>)]
    pub map: Option<Value>,
}

/// A stored value as JSON (`format=json`, scans, the seed reads).
///
/// Single-leader: `key`, `value`, `lsn`, `epoch`. A value that is not
/// UTF-8 is base64 with `"encoding": "base64"`. A causal key adds
/// `origin`, `version`, `hlc` and `context`; one with concurrent versions
/// shows `siblings` (their count, in a scan) instead of a value; a typed
/// key (scan) shows its `type` and its rendering as `value`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ValueJson {
    /// The key.
    pub key: String,
    /// The value: a string (UTF-8 or base64); a typed key's rendering in a
    /// scan.
    #[schema(value_type = Option<Value>)]
    pub value: Option<Value>,
    /// `base64` when the value is not UTF-8.
    pub encoding: Option<String>,
    /// The LSN that wrote it.
    pub lsn: Option<u64>,
    /// The epoch that wrote it.
    pub epoch: Option<u64>,
    /// Causal keys: the origin of the version.
    pub origin: Option<String>,
    /// Causal keys: the version's hybrid logical clock stamp.
    #[schema(value_type = Option<Object>)]
    pub hlc: Option<Value>,
    /// Causal keys: the version vector.
    #[schema(value_type = Option<Object>)]
    pub version: Option<Value>,
    /// Causal keys: the context to send back as `X-Replidb-Context`.
    pub context: Option<String>,
    /// Scans of causal keys: how many concurrent versions.
    pub siblings: Option<u64>,
    /// Scans of typed keys: `counter`, `set` or `map`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// A seed read's answer: [`ValueJson`] plus who served it.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SeedReadResponse {
    /// The value.
    #[schema(inline)]
    #[serde(flatten)]
    pub value: ValueJson,
    /// The id of the node whose copy this is.
    pub node: String,
    /// `/follower-read`: the follower's number.
    pub replica: Option<u64>,
}

/// One node's view in a `/read-with-repair` answer.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct RepairNode {
    /// Node id.
    pub id: String,
    /// The LSN of its copy of the key (0: absent).
    pub lsn: Option<u64>,
    /// Whether its copy differed from the leader's.
    pub stale: Option<bool>,
    /// Whether it was brought up to date.
    pub repaired: Option<bool>,
    /// `false` when it did not answer.
    pub reachable: Option<bool>,
}

/// `/read-with-repair`: the newest version, and what was repaired.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct RepairResponse {
    /// The value.
    #[schema(inline)]
    #[serde(flatten)]
    pub value: ValueJson,
    /// The leader's id.
    pub node: String,
    /// Ids of the nodes brought up to date.
    pub repaired: Vec<String>,
    /// Every node asked.
    pub nodes: Vec<RepairNode>,
}

/// `/read-with-repair` of an absent key: a 404 that still lists what was
/// repaired.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct RepairNotFound {
    /// `not_found`.
    pub error: ErrorDetail,
    /// Ids of the nodes brought up to date.
    pub repaired: Vec<String>,
    /// Every node asked.
    pub nodes: Vec<RepairNode>,
}

/// One concurrent version of a key (300 answers, the conflict log).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SiblingJson {
    /// The value (`null`: a delete).
    pub value: Option<String>,
    /// `base64` when the value is not UTF-8.
    pub encoding: Option<String>,
    /// `true` for a delete.
    pub deleted: Option<bool>,
    /// The node that wrote it.
    pub origin: String,
    /// Its hybrid logical clock stamp.
    #[schema(value_type = Object)]
    pub hlc: Value,
    /// Its version vector.
    #[schema(value_type = Object)]
    pub version: Value,
}

/// 300 Multiple Choices: concurrent versions under the `siblings` policy.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SiblingsResponse {
    /// The key.
    pub key: String,
    /// Every concurrent version.
    pub siblings: Vec<SiblingJson>,
    /// The context that replaces them all when written back.
    pub context: String,
}

/// `GET /v1/counter/{key}`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CounterResponse {
    /// The key.
    pub key: String,
    /// The counter (0 when absent).
    pub value: i64,
}

/// `GET /v1/set/{key}`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SetResponse {
    /// The key.
    pub key: String,
    /// The members, sorted (empty when absent).
    pub members: Vec<String>,
}

/// A resolved conflict (`GET /v1/conflicts`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ConflictJson {
    /// The key.
    pub key: String,
    /// The policy that resolved it.
    pub policy: String,
    /// When (HLC stamp or time, as the conflict log keeps it).
    #[schema(value_type = Value)]
    pub at: Value,
    /// The versions that met.
    pub versions: Vec<SiblingJson>,
    /// The dot of the version kept, if one was.
    pub kept: Option<String>,
}

/// `GET /health` (200 healthy, 503 not).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct HealthResponse {
    /// Whether the node is healthy (and matches `role`/`max_lag_ms`).
    pub healthy: bool,
    /// `leader` or `follower`.
    pub role: String,
    /// Replication lag in seconds (0 on the leader).
    pub lag_seconds: f64,
    /// Last sync, seconds since the Unix epoch.
    pub last_sync: f64,
    /// Why it is unhealthy.
    pub error: Option<String>,
    /// Records written but not yet applied downstream.
    pub outbox_drift: u64,
}

/// A follower as the leader sees it (`/status` `followers`).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FollowerJson {
    /// Follower id.
    pub id: String,
    /// Follower URL.
    pub addr: String,
    /// `streaming`, `catching_up`, `snapshot` or `disconnected`.
    pub state: String,
    /// Highest LSN sent.
    pub sent_lsn: u64,
    /// Highest LSN it reported durable.
    pub flush_lsn: u64,
    /// Highest LSN it reported applied.
    pub applied_lsn: u64,
    /// Records it has not applied.
    pub lag_records: u64,
    /// Age of the oldest record it has not applied.
    pub lag_ms: u64,
    /// `sync`, `quorum` or `async`.
    pub sync: String,
}

/// `GET /status`. The fields every node has are required; the others
/// depend on the role and the topology.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct StatusResponse {
    /// Node id.
    pub id: String,
    /// The URL it advertises.
    pub url: String,
    /// `leader` or `follower`.
    pub role: String,
    /// Its epoch.
    pub epoch: u64,
    /// `[[epoch, first lsn], ...]`.
    #[schema(value_type = Vec<Vec<u64>>)]
    pub epoch_history: Value,
    /// Last LSN in its log.
    pub last_lsn: u64,
    /// Last durable LSN.
    pub flush_lsn: u64,
    /// Last applied LSN.
    pub applied_lsn: u64,
    /// Committed LSN (majority-durable).
    pub commit_lsn: u64,
    /// First LSN still in its log.
    pub first_lsn: u64,
    /// LSN covered by a checkpoint.
    pub durable_lsn: u64,
    /// WAL size.
    pub wal_bytes: u64,
    /// `always`, or `never (NOT DURABLE...)`.
    pub fsync: String,
    /// Table backend.
    pub storage: String,
    /// Set when the engine failed.
    pub storage_error: Option<String>,
    /// `[last epoch, lsn]`: the log position elections compare.
    #[schema(value_type = Vec<u64>)]
    pub position: Value,
    /// Member URLs a majority is counted over.
    pub voting_set: Vec<String>,
    /// `single-leader`, `multi-leader` or `leaderless`.
    pub topology: String,
    /// The leader's URL (empty when none is known).
    pub leader: String,
    /// Records applied.
    pub changes_applied: u64,
    /// Whether it is connected to its leader (always on the leader).
    pub connected: bool,
    /// Replication errors seen.
    pub error_count: u64,
    /// The last one.
    pub last_error: Option<String>,
    /// The coordinator's state.
    #[schema(value_type = Value)]
    pub coordinator: Value,
    /// Leader: whether it accepts writes now.
    pub writable: Option<bool>,
    /// Leader: the highest epoch it has seen.
    pub highest_epoch_seen: Option<u64>,
    /// Leader: voters counted for majorities.
    pub voters: Option<u64>,
    /// Leader: its followers.
    pub followers: Option<Vec<FollowerJson>>,
    /// Follower: its leader's id.
    pub leader_id: Option<String>,
    /// Follower: its lag.
    pub lag_ms: Option<u64>,
    /// Follower: the leader's last LSN it knows.
    pub leader_last_lsn: Option<u64>,
    /// Follower: last sync, seconds since the Unix epoch.
    pub last_sync: Option<f64>,
    /// Follower: snapshots installed.
    pub snapshots_installed: Option<u64>,
    /// Follower: records a rewind removed.
    pub rollback_records: Option<u64>,
    /// Multi-leader: applied LSN per origin.
    #[schema(value_type = Option<Object>)]
    pub origins: Option<Value>,
    /// Multi-leader: peer streams.
    #[schema(value_type = Option<Vec<Object>>)]
    pub peers: Option<Value>,
    /// Multi-leader: the conflict policies' fingerprint.
    pub conflict_policy: Option<String>,
    /// Multi-leader: conflicts resolved, per policy.
    #[schema(value_type = Option<Object>)]
    pub conflicts: Option<Value>,
    /// Leaderless: the ring, hints and anti-entropy.
    #[schema(value_type = Option<Object>)]
    pub ring: Option<Value>,
}

/// `POST /admin/promote`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct PromoteResponse {
    /// Whether this call promoted the node (`false`: already the leader).
    pub promoted: bool,
    /// The epoch it leads.
    pub epoch: u64,
    /// Why nothing was done.
    pub message: Option<String>,
    /// `[last epoch, lsn]` of its log when promoted.
    #[schema(value_type = Option<Vec<u64>>)]
    pub position: Option<Value>,
    /// Voting members that answered (itself included).
    pub members_answered: Option<u64>,
    /// Voting members counted.
    pub voters: Option<u64>,
    /// Whether `force=true` skipped the checks.
    pub forced: Option<bool>,
    /// Peers told of the new leader.
    pub announcing_to: Option<Vec<String>>,
}

/// `POST /admin/forget`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ForgetResponse {
    /// The URL removed from the voting set.
    pub forgotten: String,
    /// The voting set now.
    pub voting_set: Vec<String>,
}

/// `POST /admin/follow`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FollowResponse {
    /// The leader now followed.
    pub following: String,
    /// True when this node was the leader and stepped down (without a
    /// hand-over: writes resume once the node it follows leads).
    pub stepped_down: bool,
}

/// `POST /admin/fence`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct FenceResponse {
    /// Whether the node re-pointed (`false`: the announced leader is this
    /// node).
    pub fenced: bool,
    /// Why nothing was done.
    pub message: Option<String>,
    /// The leader now followed.
    pub following: Option<String>,
    /// The announced epoch.
    pub epoch: Option<u64>,
    /// Whether this node led before.
    pub was_leader: Option<bool>,
}

/// `POST /admin/switchover`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct SwitchoverResponse {
    /// The new leader's id.
    pub switched_to: String,
    /// The LSN it had caught up to.
    pub lsn: u64,
    /// How long writes paused.
    pub write_pause_ms: u64,
    /// Present (true) when the node asked for already leads: nothing was
    /// handed over and writes did not pause.
    pub already_leader: Option<bool>,
}

/// `POST /internal/catch-up`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CatchUpResponse {
    /// The node's applied LSN now.
    pub applied_lsn: u64,
    /// Whether it reached the asked LSN.
    pub reached: bool,
}

/// `GET /internal/digest`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct DigestResponse {
    /// The LSN the digest covers.
    pub applied_lsn: u64,
    /// The table's digest.
    pub digest: String,
    /// Keys in the table.
    pub keys: u64,
}

/// `POST /internal/replica`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ReplicaMerged {
    /// The key.
    pub key: String,
    /// Always `true`.
    pub merged: bool,
}

/// An entry of `GET /internal/scan`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ScanEntry {
    /// The key.
    pub key: String,
    /// Its encoded causal state, base64 (URL-safe, unpadded); absent when
    /// the key holds none.
    pub state: Option<String>,
}

/// `POST /internal/hint`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct HintStored {
    /// Always `true`.
    pub hinted: bool,
}

/// `GET /internal/hints`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct HintsPending {
    /// The key.
    pub key: String,
    /// Hints held for it.
    pub pending: u64,
}

/// `POST /internal/collect`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Collected {
    /// Always `true`.
    pub collected: bool,
    /// `true` when the key was already gone.
    pub absent: Option<bool>,
}

/// A raw value: any bytes.
#[derive(Serialize, ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct RawBytes(Vec<u8>);

/// A 504 of a transaction: a [`WriteResponse`] with `committed: false`,
/// or an [`ErrorBody`] (`condition_unconfirmed`). Both carry `error`, so
/// the schema is `anyOf`, not `oneOf`.
pub struct TimeoutBody;

impl utoipa::PartialSchema for TimeoutBody {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::AnyOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("WriteResponse"))
            .item(utoipa::openapi::Ref::from_schema_name("ErrorBody"))
            .into()
    }
}

impl ToSchema for TimeoutBody {
    fn schemas(schemas: &mut Vec<(String, RefOr<utoipa::openapi::schema::Schema>)>) {
        schemas.push((
            "WriteResponse".into(),
            <WriteResponse as utoipa::PartialSchema>::schema(),
        ));
        schemas.push((
            "ErrorBody".into(),
            <ErrorBody as utoipa::PartialSchema>::schema(),
        ));
        schemas.push((
            "ErrorDetail".into(),
            <ErrorDetail as utoipa::PartialSchema>::schema(),
        ));
    }
}

/// `w`: a string (single- and multi-leader) or a number (leaderless).
fn string_or_integer() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .into()
}

/// The whole document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "replidb node HTTP API",
        description = "Every node (and, for /v1 and the seed endpoints, the router) serves this API on its one --listen port. Errors are JSON: {\"error\": {\"code\", \"message\"}}. With --auth-file, every operation but /health and /openapi.json (and /metrics with --metrics-open) needs `Authorization: Bearer SECRET` of a token with the role the operation names: 401 without one, 403 without the role. Any path no endpoint has answers 404 `no_route`; past --max-connections a connection is answered 503 `too_many_connections`; an oversized request head 431.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::kv::get_key,
        super::kv::put_key,
        super::kv::delete_key,
        super::scan::scan,
        super::kv::txn,
        super::causal::counter_get,
        super::causal::counter_post,
        super::causal::set_get,
        super::causal::set_post,
        super::causal::map_get,
        super::causal::map_patch,
        super::causal::counter_delete,
        super::causal::set_delete,
        super::causal::map_delete,
        super::causal::conflicts,
        super::seed::write,
        super::seed::write_with_quorum,
        super::seed::read,
        super::seed::follower_read,
        super::seed::read_with_repair,
        super::ops::health,
        super::ops::status,
        super::ops::metrics,
        openapi_json,
        super::admin::promote,
        super::admin::forget,
        super::admin::follow,
        super::admin::fence,
        super::admin::switchover,
        super::ops::catch_up,
        super::ops::digest,
        super::leaderless::replica_get,
        super::leaderless::replica_put,
        super::leaderless::replica_scan,
        super::leaderless::hint_put,
        super::leaderless::hints_for,
        super::leaderless::collect,
        super::leaderless::ae_leaves,
        super::leaderless::ae_bucket,
        super::repl::upgrade,
        crate::dashboard::page,
        crate::dashboard::page_slash,
        crate::dashboard::events,
        crate::dashboard::state,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&SecurityFromAccess, &NodeHeaders),
    tags(
        (name = "kv", description = "Key-value reads, writes, scans and transactions"),
        (name = "types", description = "Causal types: counters, sets, maps, and the conflict log"),
        (name = "seed", description = "Seed-compatible endpoints (JSON bodies)"),
        (name = "ops", description = "Health, status, metrics and this document"),
        (name = "admin", description = "Operator actions"),
        (name = "internal", description = "What nodes ask of each other"),
        (name = "replication", description = "The replication stream"),
        (name = "dashboard", description = "The live dashboard"),
    )
)]
pub struct ApiDoc;

/// Adds the bearer scheme, and to every operation that
/// [`crate::auth::access`] guards, its security requirement, the role in
/// its description and the 401/403 answers.
pub struct SecurityFromAccess;

/// The security scheme's name in the document.
pub const BEARER: &str = "bearer";

impl Modify for SecurityFromAccess {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token secret from the node's --auth-file (only when it has one)",
                    ))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops: [(Method, &mut Option<Operation>); 5] = [
                (Method::GET, &mut item.get),
                (Method::PUT, &mut item.put),
                (Method::POST, &mut item.post),
                (Method::DELETE, &mut item.delete),
                (Method::PATCH, &mut item.patch),
            ];
            for (method, op) in ops {
                let Some(op) = op.as_mut() else { continue };
                // `access` sees request paths, not templates: any key will do.
                let concrete = path.replace("{key}", "k");
                let note = match access(&method, &concrete, false) {
                    Access::Open => {
                        op.security = Some(Vec::new());
                        "Open: no token needed, even with --auth-file.".to_string()
                    }
                    Access::Needs(role) => {
                        op.security =
                            Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
                        let error = RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"));
                        for (status, what) in [
                            ("401", "With --auth-file: no token, or an unknown one (`unauthenticated`, with `WWW-Authenticate: Bearer`)"),
                            ("403", "With --auth-file: the token lacks the role (`forbidden`)"),
                        ] {
                            op.responses.responses.entry(status.to_string()).or_insert_with(|| {
                                ResponseBuilder::new()
                                    .description(what)
                                    .content(
                                        "application/json",
                                        utoipa::openapi::ContentBuilder::new()
                                            .schema(Some(error.clone()))
                                            .build(),
                                    )
                                    .into()
                            });
                        }
                        let open = if access(&method, &concrete, true) == Access::Open {
                            " (open with --metrics-open)"
                        } else {
                            ""
                        };
                        format!("With --auth-file: needs a token with the `{role}` role{open}.")
                    }
                };
                let description = match op.description.take() {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{note}"),
                    _ => note,
                };
                op.description = Some(description);
            }
        }
    }
}

/// Adds the headers the `node_headers` middleware puts on every answer
/// that passed the token check (all but 401/403), and `Retry-After` on
/// every refusal (503) but `/health`'s.
pub struct NodeHeaders;

impl Modify for NodeHeaders {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::Header;
        use utoipa::openapi::{Object, Type};
        let header = |ty: Type, text: &str| {
            let mut h = Header::new(Object::with_type(ty));
            h.description = Some(text.to_string());
            h
        };
        let node = [
            (
                "X-Replidb-Node",
                header(Type::String, "The id of the node that answered"),
            ),
            (
                "X-Replidb-Role",
                header(Type::String, "`leader` or `follower`"),
            ),
            ("X-Replidb-Epoch", header(Type::Integer, "The node's epoch")),
            (
                "X-Replidb-Lsn",
                header(Type::Integer, "The node's applied LSN, or a write's LSN"),
            ),
            (
                "X-Replidb-Lag-Ms",
                header(Type::Integer, "A follower's lag estimate (0 on the leader)"),
            ),
        ];
        let retry = header(Type::Integer, "Seconds to wait before retrying");
        for (path, item) in doc.paths.paths.iter_mut() {
            // `/health`'s 503 is a health report, not a refusal to retry.
            let refusals_say_when = path != "/health";
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for (status, response) in op.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    if status == "401" || status == "403" {
                        // Refused before `node_headers`: no positions.
                        continue;
                    }
                    for (name, h) in &node {
                        response
                            .headers
                            .entry(name.to_string())
                            .or_insert_with(|| h.clone());
                    }
                    if status == "503" && refusals_say_when {
                        response
                            .headers
                            .entry("Retry-After".to_string())
                            .or_insert_with(|| retry.clone());
                    }
                }
            }
        }
    }
}

/// The document as JSON text, built once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        // Serializing a document of plain strings and maps cannot fail;
        // an empty object would still be a clear failure for any reader.
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".to_string())
    })
}

/// Every `(METHOD, path)` the document describes, paths as OpenAPI
/// templates (`/v1/kv/{key}`).
pub fn documented_operations() -> BTreeMap<String, Vec<String>> {
    let doc = ApiDoc::openapi();
    let mut out = BTreeMap::new();
    for (path, item) in &doc.paths.paths {
        let mut methods = Vec::new();
        for (name, op) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
            ("HEAD", &item.head),
            ("OPTIONS", &item.options),
            ("TRACE", &item.trace),
        ] {
            if op.is_some() {
                methods.push(name.to_string());
            }
        }
        out.insert(path.clone(), methods);
    }
    out
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    operation_id = "openapi",
    description = "This document (OpenAPI 3), generated from the handlers' annotations. It describes the API and holds no data.",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> Response {
    let mut resp = document_json().to_string().into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_and_names_every_registered_route() {
        let doc: Value = serde_json::from_str(document_json()).expect("the document is JSON");
        let version = doc["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3."), "openapi version {version:?}");
        let documented: std::collections::BTreeSet<String> =
            documented_operations().into_keys().collect();
        let registered = super::super::registered_paths();
        // The introspection must see the routes, or the comparison below
        // would pass vacuously (e.g. if axum's Debug output changed).
        assert!(registered.contains("/v1/kv/{key}") && registered.contains("/status"));
        assert_eq!(
            registered, documented,
            "every routed path is documented and every documented path is routed"
        );
    }

    #[test]
    fn guarded_operations_declare_the_bearer_scheme_and_their_refusals() {
        let doc: Value = serde_json::from_str(document_json()).expect("JSON");
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
        let put = &doc["paths"]["/v1/kv/{key}"]["put"];
        assert_eq!(put["security"][0][BEARER], serde_json::json!([]));
        assert!(put["responses"]["401"].is_object() && put["responses"]["403"].is_object());
        for open in ["/health", "/openapi.json"] {
            let get = &doc["paths"][open]["get"];
            assert_eq!(get["security"], serde_json::json!([]), "{open} is open");
            assert!(
                get["responses"]["401"].is_null(),
                "{open} never answers 401"
            );
        }
    }
}
