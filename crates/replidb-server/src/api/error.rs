//! The JSON error shape: `{"error": {"code": "...", "message": "..."}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Seconds for a `Retry-After` header (503s).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 with code `invalid_parameter`.
    pub fn invalid_param(name: &str, value: &str, expected: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("invalid value {value:?} for parameter {name:?}: expected {expected}"),
        )
    }

    /// 404 with code `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 with `Retry-After: 1`: a refusal that may be lifted within a
    /// second (no quorum yet, a promote or a switchover in progress).
    pub fn retry_later(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after_s = Some(1);
        e
    }

    /// 503 with code `unavailable` and a `Retry-After`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::retry_later("unavailable", message)
    }

    /// 500 with code `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            // The request body may be only partly read (too large, or still
            // on its way when its time ran out); the server will drop
            // the connection after this answer, so say so: a client that
            // pooled it would otherwise send its next request into a closed
            // socket (hyper's `IncompleteMessage`).
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> Self {
        match e {
            crate::auth::AuthError::Unauthenticated(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
            }
            crate::auth::AuthError::Forbidden { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string())
            }
        }
    }
}

impl From<replidb_engine::EngineError> for ApiError {
    fn from(e: replidb_engine::EngineError) -> Self {
        use replidb_engine::EngineError as E;
        match e {
            E::Causal(replidb_causal::PrepareError::TooManySiblings { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "too_many_siblings", e.to_string())
            }
            E::Causal(replidb_causal::PrepareError::CounterOverflow { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "counter_overflow", e.to_string())
            }
            E::Causal(replidb_causal::PrepareError::WrongType { .. }) | E::TypedKey { .. } => {
                ApiError::new(StatusCode::CONFLICT, "wrong_type", e.to_string())
            }
            E::ConditionFailed { .. } => {
                ApiError::new(StatusCode::CONFLICT, "condition_failed", e.to_string())
            }
            E::Stopped(_) => ApiError::unavailable(e.to_string()),
            E::NotLeaderOfEpoch { .. } => ApiError::retry_later("stale_leader", e.to_string()),
            E::TableAheadOfLog { .. } => ApiError::retry_later("resyncing", e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<replidb_storage::StorageError> for ApiError {
    fn from(e: replidb_storage::StorageError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_before_the_whole_body_was_read_says_the_connection_closes() {
        for status in [StatusCode::PAYLOAD_TOO_LARGE, StatusCode::REQUEST_TIMEOUT] {
            let resp = ApiError::new(status, "x", "y").into_response();
            assert_eq!(
                resp.headers()[axum::http::header::CONNECTION],
                "close",
                "{status}"
            );
        }
        let resp = ApiError::new(StatusCode::BAD_REQUEST, "x", "y").into_response();
        assert!(!resp.headers().contains_key(axum::http::header::CONNECTION));
    }
}
