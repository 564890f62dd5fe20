//! Operations: `/health`, `/status`, `/metrics`, `/admin/*`, and the
//! internal catch-up call read repair uses.

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use replidb_core::Lsn;
use serde_json::{json, Value};

use super::params::Params;
use super::{ApiError, ApiResult, AppState};
use crate::node::{Node, Role};

/// Health as `/health` reports it: `(healthy, body)`.
pub fn health_of(node: &Node, want_role: Option<&str>, max_lag_ms: Option<u64>) -> (bool, Value) {
    let role = node.role();
    let now = node.clock.now_ms();
    let (mut healthy, lag_ms, last_sync, mut error, drift) = match &role {
        Role::Leader(l) => {
            let drift = l
                .replicas()
                .iter()
                .map(|r| r.lag_records)
                .max()
                .unwrap_or(0);
            let why = l.writable().err().map(|w| match w {
                replidb_replication::NotWritable::Fenced => {
                    "leader without a valid lease".to_string()
                }
                replidb_replication::NotWritable::Paused => "switchover in progress".to_string(),
                replidb_replication::NotWritable::Stale => {
                    "stale leader: a newer epoch exists".to_string()
                }
                replidb_replication::NotWritable::NoQuorum => {
                    "leader has not heard from a majority of voters (check-quorum)".to_string()
                }
            });
            (why.is_none(), 0u64, now, why, drift)
        }
        Role::Follower(f) => {
            let s = f.status();
            let limit = node.config.health_max_lag.as_millis() as u64;
            // Silence on the monotonic clock: a stepped wall clock must
            // not make a live stream look dead (or a dead one live).
            let silent_ms = f.silent_ms();
            let mut why = None;
            if !s.connected && s.leader_url.is_empty() && silent_ms > limit {
                why = Some(format!("no leader known for {silent_ms} ms"));
            } else if !s.connected && silent_ms > limit {
                why = Some(format!(
                    "disconnected from leader {} for {} ms: {}",
                    s.leader_url,
                    silent_ms,
                    s.last_error
                        .clone()
                        .unwrap_or_else(|| "never connected".into())
                ));
            } else if s.lag_ms > limit {
                why = Some(format!("lag {} ms exceeds {} ms", s.lag_ms, limit));
            }
            let applied = node.engine.positions().applied_lsn;
            let drift = s.leader_last_lsn.0.saturating_sub(applied.0);
            (why.is_none(), s.lag_ms, s.last_sync_ms, why, drift)
        }
    };
    if let Some(why) = node.engine.failure() {
        healthy = false;
        error = Some(format!("engine failed, restart required: {why}"));
    }
    if let Some(want) = want_role {
        if want != role.name() {
            healthy = false;
            error.get_or_insert_with(|| format!("role is {}, not {want}", role.name()));
        }
    }
    if let Some(max) = max_lag_ms {
        if lag_ms > max {
            healthy = false;
            error.get_or_insert_with(|| format!("lag {lag_ms} ms exceeds max_lag_ms {max}"));
        }
    }
    let body = json!({
        "healthy": healthy,
        "role": role.name(),
        "lag_seconds": lag_ms as f64 / 1000.0,
        "last_sync": last_sync as f64 / 1000.0,
        "error": error,
        "outbox_drift": drift,
    });
    (healthy, body)
}

/// `GET /health[?role=leader|follower][&max_lag_ms=N]`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "ops",
    operation_id = "health",
    description = "Health for load balancers: 200 when healthy (and, if asked, of that role and within that lag), else 503 with the same body saying why.",
    params(
        ("role" = Option<String>, Query, description = "`leader` or `follower`: healthy only in that role"),
        ("max_lag_ms" = Option<u64>, Query, description = "Healthy only within this lag"),
    ),
    responses(
        (status = 200, description = "Healthy", body = super::openapi::HealthResponse),
        (status = 400, description = "Unknown or invalid parameter", body = super::openapi::ErrorBody),
        (status = 503, description = "Not healthy (the body says why)", body = super::openapi::HealthResponse),
    ),
)]
pub async fn health(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref(), &["role", "max_lag_ms"])?;
    let want = p.str("role");
    if let Some(r) = want {
        if r != "leader" && r != "follower" {
            return Err(ApiError::invalid_param("role", r, "leader or follower"));
        }
    }
    let max = p.parse_as::<u64>("max_lag_ms", "milliseconds")?;
    let (ok, body) = health_of(&node, want, max);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(body)).into_response())
}

/// The `/status` document.
pub fn status_of(node: &Node) -> Value {
    let role = node.role();
    let pos = node.engine.positions();
    let meta = node.engine.meta();
    let fsync = match node.config.fsync {
        replidb_wal::FsyncPolicy::Always => "always",
        replidb_wal::FsyncPolicy::Never => {
            "never (NOT DURABLE: acknowledged writes can be lost on a crash)"
        }
    };
    let mut doc = json!({
        "id": node.config.id,
        "url": node.config.advertise(),
        "role": role.name(),
        "epoch": meta.epoch.0,
        "epoch_history": meta.history.entries.iter().map(|(e, l)| json!([e.0, l.0])).collect::<Vec<_>>(),
        "last_lsn": pos.flush_lsn.0,
        "flush_lsn": pos.flush_lsn.0,
        "applied_lsn": pos.applied_lsn.0,
        "first_lsn": pos.first_lsn.0,
        "durable_lsn": pos.durable_lsn.0,
        "wal_bytes": pos.wal_bytes,
        "fsync": fsync,
        "storage": node.engine.table().backend_name(),
    });
    doc["storage_error"] = json!(node.engine.failure());
    // The log's position as elections compare it: (last epoch, lsn).
    doc["position"] = json!([
        meta.history.position_of(pos.flush_lsn).epoch.0,
        pos.flush_lsn.0
    ]);
    doc["voting_set"] = json!(node.core.voting_set().urls());
    doc["topology"] = json!(node.config.topology.as_str());
    if node.is_leaderless() {
        doc["ring"] = super::leaderless::status(node);
        doc["peers"] = super::leaderless::peers(node);
    }
    if node.is_multi_leader() {
        let peers: Vec<_> = node.peer_streams().iter().map(|p| p.status()).collect();
        let mut origins: serde_json::Map<String, Value> = node
            .engine
            .origin_positions()
            .into_iter()
            .map(|(o, l)| (o, json!(l.0)))
            .collect();
        // A peer that has written nothing yet has no position in the table;
        // it is still an origin, at 0, once its stream has said who it is.
        for origin in peers.iter().filter_map(|p| p.origin.clone()) {
            origins.entry(origin).or_insert(json!(0));
        }
        doc["origins"] = Value::Object(origins);
        doc["peers"] = json!(peers);
        doc["conflict_policy"] = json!(node.config.conflict_policy.fingerprint());
        doc["conflicts"] = json!(node.engine.table().causal_stats().conflicts);
    }
    doc["coordinator"] = node.coordinator().status();
    match role {
        Role::Leader(l) => {
            // The epoch this node leads, not the highest it has seen: a
            // leader that has just adopted a successor's epoch (and is
            // about to step down) must not look like a second leader of it.
            doc["epoch"] = json!(l.epoch().0);
            doc["highest_epoch_seen"] = json!(meta.epoch.0);
            doc["writable"] = json!(l.writable().is_ok());
            doc["leader"] = json!(node.config.advertise());
            doc["commit_lsn"] = json!(l.commit_lsn().0);
            doc["changes_applied"] = json!(pos.applied_lsn.0);
            doc["connected"] = json!(true);
            doc["error_count"] = json!(0);
            doc["last_error"] = Value::Null;
            doc["voters"] = json!(l.voters());
            doc["followers"] = json!(l.replicas());
        }
        Role::Follower(f) => {
            let s = f.status();
            doc["leader"] = json!(s.leader_url);
            doc["leader_id"] = json!(s.leader_id);
            doc["commit_lsn"] = json!(s.commit_lsn.0);
            doc["changes_applied"] = json!(s.changes_applied);
            doc["connected"] = json!(s.connected);
            doc["error_count"] = json!(s.error_count);
            doc["last_error"] = json!(s.last_error);
            doc["lag_ms"] = json!(s.lag_ms);
            doc["leader_last_lsn"] = json!(s.leader_last_lsn.0);
            doc["last_sync"] = json!(s.last_sync_ms as f64 / 1000.0);
            doc["snapshots_installed"] = json!(s.snapshots_installed);
            doc["rollback_records"] = json!(s.rollback_records);
            // The codec the leader compresses this stream with (null
            // before the first handshake).
            doc["replication_compression"] = json!(s.compression);
        }
    }
    doc
}

/// `GET /status`.
#[utoipa::path(
    get,
    path = "/status",
    tag = "ops",
    operation_id = "status",
    description = "The node's role, positions, epoch history, followers (leader), peers and ring (other topologies).",
    responses(
        (status = 200, description = "The status", body = super::openapi::StatusResponse),
        (status = 400, description = "A query parameter (it takes none: `unknown_parameter`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn status(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    // A parameter here is a guess at an option that does not exist
    // (`?pretty`, `?role=`): say so rather than answer as if it worked.
    Params::parse(q.as_deref(), &[])?;
    Ok(Json(status_of(&node)))
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    description = "Prometheus text format.",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
        (status = 400, description = "A query parameter (it takes none: `unknown_parameter`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn metrics(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    Params::parse(q.as_deref(), &[])?;
    crate::metrics::refresh_gauges(&node);
    Ok((
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response())
}

/// `POST /internal/catch-up?lsn=N`: apply up to `N` now (read repair).
#[utoipa::path(
    post,
    path = "/internal/catch-up",
    tag = "internal",
    operation_id = "internal_catch_up",
    description = "A follower applies its log up to `lsn` now, skipping its artificial delay (read repair). On the leader, a no-op.",
    params(("lsn" = Option<u64>, Query, description = "The LSN to reach")),
    responses(
        (status = 200, description = "Where it got", body = super::openapi::CatchUpResponse),
        (status = 400, description = "Unknown or invalid parameter", body = super::openapi::ErrorBody),
        (status = 503, description = "The follower could not catch up", body = super::openapi::ErrorBody),
    ),
)]
pub async fn catch_up(State(node): State<AppState>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref(), &["lsn"])?;
    let lsn = Lsn(p.parse_as::<u64>("lsn", "an LSN")?.unwrap_or(0));
    let applied = match node.follower() {
        Some(f) => f
            .catch_up(lsn, Duration::from_secs(2))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?,
        None => node.engine.positions().applied_lsn,
    };
    Ok(Json(json!({"applied_lsn": applied.0, "reached": applied >= lsn})).into_response())
}

/// `GET /internal/digest`: a digest of the table with the LSN it covers,
/// so tests and operators can compare replicas (invariant 4).
#[utoipa::path(
    get,
    path = "/internal/digest",
    tag = "internal",
    operation_id = "internal_digest",
    description = "A digest of the table with the LSN it covers, to compare replicas.",
    responses(
        (status = 200, description = "The digest", body = super::openapi::DigestResponse),
        (status = 503, description = "The table kept changing; retry", body = super::openapi::ErrorBody),
    ),
)]
pub async fn digest(State(node): State<AppState>) -> ApiResult<Response> {
    // Read the LSN on both sides of the digest: equal means no apply ran
    // in between, so the digest describes exactly that LSN.
    for _ in 0..100 {
        let before = node.engine.table().applied_lsn();
        let table = node.engine.table().clone();
        let digest = tokio::task::spawn_blocking(move || table.digest())
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        if node.engine.table().applied_lsn() == before {
            let len = node.engine.table().len()?;
            return Ok(
                Json(json!({"applied_lsn": before.0, "digest": digest, "keys": len}))
                    .into_response(),
            );
        }
    }
    Err(ApiError::unavailable("table kept changing; try again"))
}

/// Unknown routes: a JSON 404; a key path with an empty key
/// (`/v1/kv/`, `/v1/counter/`...) is a 400 `invalid_key`, as any other bad
/// key is.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    if empty_key_route(uri.path()).is_some() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_key",
            "the key is empty: a key is 1..=1024 bytes of UTF-8 after the endpoint's path (/v1/kv/{key})",
        );
    }
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such endpoint")
}

/// The route template a key path with an empty key (`/v1/kv/`...) belongs
/// to: the router matches no route for it, but its 400 is counted under
/// the key's route in the metrics rather than as `unmatched`.
pub(super) fn empty_key_route(path: &str) -> Option<&'static str> {
    match path {
        "/v1/kv/" => Some("/v1/kv/{*key}"),
        "/v1/counter/" => Some("/v1/counter/{*key}"),
        "/v1/set/" => Some("/v1/set/{*key}"),
        "/v1/map/" => Some("/v1/map/{*key}"),
        _ => None,
    }
}
