//! `GET /v1/kv`: scans of keys in order, paged by count and by bytes,
//! answered at most [`SCANS_IN_FLIGHT_MAX`](crate::node::SCANS_IN_FLIGHT_MAX)
//! at a time per node, each holding its slot until the connection has
//! taken its answer.

use axum::body::Body;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::kv::{serve_read, versioned_json};
use super::params::{read_params_for, Params, ReadOpts};
use super::{ApiError, ApiResult, AppState};
use crate::node::Node;

/// Most items a scan returns, whatever `limit` asks.
pub const SCAN_LIMIT_MAX: usize = 10_000;
/// Default `--scan-page-bytes`: bytes of keys and values after which a
/// scan page ends even if it holds fewer than `limit` entries (it then
/// carries [`SCAN_TRUNCATED_HEADER`]); ten thousand values of up to
/// `--max-value-bytes` each must not be held in one answer. The page
/// includes the entry that reaches it.
pub const SCAN_PAGE_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// Largest `--scan-page-bytes`. Peers' pages are read with limits sized
/// from it, so members configured differently still read each other's.
pub const SCAN_PAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Header on a scan page that `--scan-page-bytes` ended before `limit`
/// entries: `bytes`.
pub const SCAN_TRUNCATED_HEADER: &str = "x-replidb-scan-truncated";
/// Header on a scan page after which more keys may follow: the
/// `start_after` of the next page, percent-encoded (every byte but ASCII
/// letters and digits). Absent: the range has ended. It is the last key
/// the node examined, which is not always the page's last key: a deleted
/// causal key (a tombstone) is examined but not listed.
pub const SCAN_CONTINUE_HEADER: &str = "x-replidb-scan-continue-after";

/// A slot to answer a scan in ([`Node::start_scan`]), or 503
/// `too_many_scans`.
fn scan_slot(node: &Node) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    node.start_scan().ok_or_else(|| {
        ApiError::retry_later(
            "too_many_scans",
            format!(
                "this node is answering {} scans already, the most it answers at once; retry shortly",
                crate::node::SCANS_IN_FLIGHT_MAX
            ),
        )
    })
}

/// A scan page's JSON answer, holding `slot` until the connection has
/// taken the last of it ([`SlotBody`]), marked [`SCAN_TRUNCATED_HEADER`]
/// when the page was cut by bytes.
fn scan_answer(
    list: &[Value],
    cut_by_bytes: bool,
    continue_after: Option<&str>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> ApiResult<Response> {
    let json = serde_json::to_vec(list).map_err(|e| ApiError::internal(e.to_string()))?;
    let body = SlotBody {
        data: bytes::Bytes::from(json),
        slot: Some(slot),
        deadline: std::time::Instant::now() + SCAN_SEND_TIMEOUT,
    };
    let mut answer = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::new(body),
    )
        .into_response();
    if let Some(key) = continue_after {
        let encoded =
            percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        // Percent-encoded text is visible ASCII, always a header value.
        if let Ok(v) = axum::http::HeaderValue::from_str(&encoded) {
            answer
                .headers_mut()
                .insert(axum::http::HeaderName::from_static(SCAN_CONTINUE_HEADER), v);
        }
    }
    Ok(mark_truncated(answer, cut_by_bytes))
}

/// Bytes of a scan's answer handed to the connection at a time: the
/// connection asks for the next piece as it sends, so the slot is held
/// until about the whole answer is on its way.
const SCAN_SEND_CHUNK_BYTES: usize = 64 * 1024;
/// Longest a scan's answer may take to be sent; a client that reads it
/// slower is cut off (its connection closed) and the slot freed, checked
/// whenever the connection asks for more.
const SCAN_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A response body that holds a scan slot until its last piece is taken.
struct SlotBody {
    data: bytes::Bytes,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    deadline: std::time::Instant,
}

impl axum::body::HttpBody for SlotBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        if self.data.is_empty() {
            self.slot = None;
            return Poll::Ready(None);
        }
        if std::time::Instant::now() > self.deadline {
            self.slot = None;
            self.data = bytes::Bytes::new();
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the scan's answer was not read in time",
            ))));
        }
        let n = self.data.len().min(SCAN_SEND_CHUNK_BYTES);
        let piece = self.data.split_to(n);
        if self.data.is_empty() {
            self.slot = None;
        }
        Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.data.len() as u64)
    }
}

/// `answer` with [`SCAN_TRUNCATED_HEADER`] when the page was cut by bytes.
pub(crate) fn mark_truncated(mut answer: Response, cut_by_bytes: bool) -> Response {
    if cut_by_bytes {
        answer.headers_mut().insert(
            axum::http::HeaderName::from_static(SCAN_TRUNCATED_HEADER),
            axum::http::HeaderValue::from_static("bytes"),
        );
    }
    answer
}

/// `GET /v1/kv?prefix=P&limit=N`: a JSON array in key order.
#[utoipa::path(
    get,
    path = "/v1/kv",
    tag = "kv",
    operation_id = "kv_scan",
    description = "Scan keys in order, with the read options of a single read.",
    params(
        super::params::ScanQuery,
        super::params::ReadQuery,
        ("X-Replidb-Min-Lsn" = Option<u64>, Header, description = "Same as `min_lsn`"),
        ("X-Replidb-Min-Version" = Option<String>, Header, description = "Multi-leader: same as `min_version`"),
    ),
    responses(
        (status = 200, description = "The items, in key order: at most `limit`, and fewer once their keys and values pass `--scan-page-bytes`; then the page carries `X-Replidb-Scan-Truncated: bytes`. While more keys may follow, `X-Replidb-Scan-Continue-After` names the next page's `start_after`", body = Vec<super::openapi::ValueJson>,
            headers(
                ("X-Replidb-Scan-Truncated" = String, description = "`bytes`: the page ended at the node's byte budget before `limit` entries"),
                ("X-Replidb-Scan-Continue-After" = String, description = "More keys may follow: the next page's `start_after`, percent-encoded; absent when the range has ended"),
            )),
        (status = 400, description = "Unknown or invalid parameter, `limit` out of 1..=10000", body = super::openapi::ErrorBody),
        (status = 503, description = "Not fresh enough in time, no leader reachable, `too_many_scans` (8 being answered); leaderless: `not_enough_replicas`; with `Retry-After`", body = super::openapi::ErrorBody),
        (status = 508, description = "Relayed too many times (`proxy_loop`)", body = super::openapi::ErrorBody),
    ),
)]
pub async fn scan(
    State(node): State<AppState>,
    RawQuery(q): RawQuery,
    uri: OriginalUri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // A leaderless scan takes `r` (below), as a leaderless read does.
    let mut allowed = read_params_for(node.config.topology).to_vec();
    allowed.extend(["prefix", "limit", "start_after"]);
    let p = Params::parse(q.as_deref(), &allowed)?;
    let opts = ReadOpts::from_params(&p, &headers)?;
    let limit = super::leaderless::scan_limit(&p)?;
    if node.is_leaderless() {
        super::read::refuse_single_leader_only(&node, &opts)?;
        let slot = scan_slot(&node)?;
        let (list, cut_by_bytes) = super::leaderless::coverage_scan(
            &node,
            &p,
            p.str("prefix").unwrap_or(""),
            p.str("start_after"),
            limit,
        )
        .await?;
        let continue_after = (cut_by_bytes || list.len() >= limit)
            .then(|| list.last().and_then(|e| e["key"].as_str()))
            .flatten();
        return scan_answer(&list, cut_by_bytes, continue_after, slot);
    }
    super::causal::wait_for_token(&node, &p, &headers, opts.wait).await?;
    serve_read(&node, &opts, &uri, &headers, |n| {
        let slot = scan_slot(n)?;
        let page = n.engine.table().scan_page(
            p.str("prefix").unwrap_or(""),
            p.str("start_after"),
            limit,
            n.config.scan_page_bytes,
        )?;
        // A causal key holding only a tombstone is absent, as for a read.
        let list: Vec<Value> = page
            .entries
            .iter()
            .filter(|(_, v)| {
                !(v.causal
                    && replidb_causal::KeyState::decode(&v.value).is_ok_and(|s| s.is_absent()))
            })
            .map(|(k, v)| versioned_json(k, v))
            .collect();
        let continue_after = page
            .may_continue(limit)
            .then(|| page.entries.last().map(|(k, _)| k.as_str()))
            .flatten();
        scan_answer(&list, page.cut_by_bytes, continue_after, slot)
    })
    .await
}
