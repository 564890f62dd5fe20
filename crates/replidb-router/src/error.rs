//! The router's own errors, grouped by how a client should react, and
//! their JSON shape (`{"error":{"code","message"}}`, as a node's).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error the router answers itself (a node's errors are relayed as
/// they are).
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Retry later: no node claims leadership (or none answers).
    #[error("no leader is known (nodes: {nodes})")]
    NoLeader {
        /// The configured nodes, for the message.
        nodes: String,
    },
    /// Retry later: the chosen node could not be reached, even after one
    /// retry.
    #[error("node {node} unreachable: {reason}")]
    Unreachable {
        /// Node id or URL.
        node: String,
        /// What failed.
        reason: String,
        /// A write reached the node before the exchange broke: it may have
        /// happened, so the answer (502) must not invite a blind retry.
        outcome_unknown: bool,
    },
    /// The node did not answer in time; a write may or may not have
    /// happened.
    #[error("node {node} did not answer within {timeout_ms} ms")]
    Timeout {
        /// Node id or URL.
        node: String,
        /// The limit.
        timeout_ms: u64,
    },
    /// Bad input: the body exceeds the limit.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
        /// The body is a value (`PUT /v1/kv/{key}`): coded
        /// `value_too_large`, as the node codes it.
        is_value: bool,
    },
    /// Bad input: the body could not be read.
    #[error("cannot read the request body: {0}")]
    BadBody(String),
    /// Bad input: a path a node serves but the router does not route
    /// (admin calls other than switchover, internal ones, the conflict
    /// log, the OpenAPI document: each addresses one node).
    #[error(
        "the router does not route {path}: it addresses one node, so send it to a node directly (of the admin endpoints the router forwards only POST /admin/switchover, to the leader)"
    )]
    NotRouted {
        /// The path.
        path: String,
    },
    /// Bad input: a path that is no endpoint at all, on a node or the
    /// router (`/v1/nope`): the same 404 `no_route` a node answers.
    #[error("no such endpoint: {path}")]
    NoRoute {
        /// The path.
        path: String,
    },
    /// Bad input: `X-Replidb-Home` names no node of the router's list.
    #[error("X-Replidb-Home {name:?} is none of the nodes (by id or URL): {nodes}")]
    UnknownHome {
        /// The name given.
        name: String,
        /// The configured nodes, for the message.
        nodes: String,
    },
    /// Bad input: a query parameter's value is not one the endpoint takes.
    #[error("invalid {name}={value:?}: expected {expected}")]
    InvalidParameter {
        /// The parameter.
        name: String,
        /// Its value.
        value: String,
        /// What it takes.
        expected: &'static str,
    },
    /// Bad input: a query parameter the endpoint does not take (a typo is
    /// refused rather than ignored, as nodes do).
    #[error("unknown parameter {name:?} (this endpoint takes: {known})")]
    UnknownParameter {
        /// The parameter.
        name: String,
        /// The ones it takes.
        known: &'static str,
    },
    /// Bad input: an empty key (`/v1/kv/`), as a node refuses it.
    #[error("the key is empty: a key is 1..=1024 bytes of UTF-8 after the endpoint's path (/v1/kv/{{key}})")]
    EmptyKey,
    /// Bad input: a dot segment (`.`, `..`, or a `%2e` spelling) in a
    /// key's path, which forwarding would remove (and a node refuses
    /// `.` and `..` as keys).
    #[error("the key's path {path:?} has a dot segment (`.` or `..`), which URL clients and the router's forwarding remove; percent-encode a `/` in a key as %2F")]
    DotSegment {
        /// The request path.
        path: String,
    },
    /// Bad input: known path, wrong method.
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// The router could not build a request or response (a bug or a
    /// malformed node URL).
    #[error("internal router error: {0}")]
    Internal(String),
}

impl RouterError {
    /// HTTP status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            RouterError::NoLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            // A write that may have happened: 502, which clients do not
            // retry (a retried increment would count twice).
            RouterError::Unreachable {
                outcome_unknown: true,
                ..
            } => (StatusCode::BAD_GATEWAY, "outcome_unknown"),
            // Never reached, or a read: 503 like no leader (retry after a
            // moment; a failover may be under way).
            RouterError::Unreachable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "node_unreachable")
            }
            RouterError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "node_timeout"),
            RouterError::BodyTooLarge { is_value: true, .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
            }
            RouterError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            RouterError::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            RouterError::UnknownHome { .. } => (StatusCode::BAD_REQUEST, "unknown_home"),
            RouterError::InvalidParameter { .. } => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            RouterError::UnknownParameter { .. } => (StatusCode::BAD_REQUEST, "unknown_parameter"),
            RouterError::EmptyKey | RouterError::DotSegment { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_key")
            }
            // Not `not_found`, which clients read as "no such key".
            RouterError::NotRouted { .. } => (StatusCode::NOT_FOUND, "not_routed"),
            RouterError::NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route"),
            RouterError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            RouterError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for RouterError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_leader_is_a_503_with_retry_after() {
        let r = RouterError::NoLeader {
            nodes: "http://a:1".into(),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
    }

    /// A write that reached a node before the exchange broke may have
    /// happened: not the 503 that clients retry (an increment would count
    /// twice), unlike a node never reached.
    #[test]
    fn only_a_write_that_may_have_happened_is_not_retryable() {
        let err = |outcome_unknown| RouterError::Unreachable {
            node: "n1".into(),
            reason: "connection reset".into(),
            outcome_unknown,
        };
        assert_eq!(
            err(true).status_and_code(),
            (StatusCode::BAD_GATEWAY, "outcome_unknown")
        );
        assert!(!err(true)
            .into_response()
            .headers()
            .contains_key("retry-after"));
        let r = err(false).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
