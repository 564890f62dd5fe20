//! `GET /v1/replication` with `Upgrade: replidb-repl/1`: hand the raw
//! connection to the leader's streaming session.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use replidb_replication::transport::UPGRADE_PROTOCOL;

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
        (status = 421, description = "Not the leader (`not_leader`)", body = super::openapi::ErrorBody),
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
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_leader",
            format!("not the leader; the leader is {}", node.leader_url()),
        )
        .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => leader.serve(Box::new(TokioIo::new(upgraded))).await,
            Err(e) => tracing::warn!(error = %e, "replication upgrade failed"),
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
