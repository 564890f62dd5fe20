//! `GET /v1/replication` with `Upgrade: replidb-repl/1`: hand the raw
//! connection to the leader's streaming session.

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use replidb_replication::transport::{LEADER_EPOCH_HEADER, REPLICATION_PATH, UPGRADE_PROTOCOL};

use super::{ApiError, AppState};

/// Accept a follower's stream.
#[utoipa::path(
    get,
    path = "/v1/replication",
    tag = "replication",
    operation_id = "replication_stream",
    description = "A follower's replication stream: an HTTP upgrade (`Connection: Upgrade`, `Upgrade: replidb-repl/1`) into length-delimited binary frames both ways.",
    params(
        ("Upgrade" = String, Header, description = "`replidb-repl/1`"),
        ("Connection" = String, Header, description = "`Upgrade`"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the stream starts"),
        (status = 400, description = "No `Upgrade: replidb-repl/1`", body = super::openapi::ErrorBody),
        (status = 421, description = "Not the leader (`not_leader`); `Location` names the leader's replication endpoint and `X-Replidb-Epoch` this node's epoch, when it knows a leader", body = super::openapi::ErrorBody),
    ),
)]
pub async fn upgrade(State(node): State<AppState>, mut req: Request) -> Response {
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE_PROTOCOL));
    if !wants {
        return ApiError::bad_request(format!("this endpoint needs Upgrade: {UPGRADE_PROTOCOL}"))
            .into_response();
    }
    let Some(leader) = node.leader() else {
        let known = node.leader_url();
        let mut resp = ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_leader",
            format!("not the leader; the leader is {known}"),
        )
        .into_response();
        // Where to go instead, and in which epoch this node learned it: a
        // follower still pointed here (its --follow names the leader before
        // a switchover) re-points unless it has seen a newer epoch.
        if !known.is_empty() && known != node.config.advertise() {
            let location = format!("{}{REPLICATION_PATH}", known.trim_end_matches('/'));
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
                resp.headers_mut().insert(
                    HeaderName::from_static(LEADER_EPOCH_HEADER),
                    HeaderValue::from(node.engine.epoch().0),
                );
            }
        }
        return resp;
    };
    // The token the edge let in (with `--auth-file`), kept as its digest
    // so the stream can be closed if a reload takes its role away.
    let digest = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_secret)
        .map(crate::auth::Authenticator::digest);
    let auth = node.auth.clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => return tracing::warn!(error = %e, "replication upgrade failed"),
        };
        let served = leader.serve(Box::new(TokioIo::new(upgraded)));
        match (auth, digest) {
            (Some(auth), Some(digest)) => tokio::select! {
                () = served => {}
                () = replication_role_revoked(&auth, digest) => tracing::warn!(
                    "a follower's token lost the replication role in a token file reload; its stream is closed"
                ),
            },
            _ => served.await,
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "Upgrade"),
            (header::UPGRADE, UPGRADE_PROTOCOL),
        ],
    )
        .into_response()
}

/// How often an open replication stream looks for a token file reload.
const TOKEN_RECHECK_INTERVAL_MS: u64 = 1_000;

/// Resolves once a reload of the token file leaves the token with
/// `digest` without the `replication` role (removed, or narrowed): the
/// edge checked it when the stream opened, and a stream lives for days,
/// so a revoked follower must not keep acknowledging writes.
async fn replication_role_revoked(auth: &crate::auth::Authenticator, digest: [u8; 32]) {
    // Checked at once too: a reload between the request's check and the
    // upgrade would otherwise go unseen.
    let mut seen = None;
    loop {
        let now = auth.generation();
        if seen != Some(now) {
            seen = Some(now);
            let still = auth
                .authenticate_digest(&digest)
                .is_some_and(|(_, roles)| roles.contains(&crate::auth::Role::Replication));
            if !still {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(TOKEN_RECHECK_INTERVAL_MS)).await;
    }
}
