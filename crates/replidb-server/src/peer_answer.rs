//! Reading another member's HTTP answer with a bound on its size.
//!
//! Every answer a node reads from a peer (a replica's state, a scan page,
//! anti-entropy leaves and buckets, a relayed response, a status) is read
//! through [`bytes()`] or [`json`] with a byte limit named for what it holds,
//! so a peer that misbehaves — a bug, a different version, a stolen token —
//! costs this node at most that limit of memory per request, never what
//! the peer chooses to send. The limit is checked against `Content-Length`
//! before anything is read and against the bytes as they arrive.

use bytes::{Bytes, BytesMut};

/// Why a peer's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PeerAnswerError {
    /// The answer is (or says it is) longer than the limit; nothing past
    /// the limit was read.
    #[error("{url} answered more than {limit_bytes} bytes")]
    TooLarge {
        /// The peer's request URL.
        url: String,
        /// The limit, in bytes.
        limit_bytes: usize,
    },
    /// The connection failed or timed out while the body was read.
    #[error("reading the answer of {url}: {source}")]
    Transport {
        /// The peer's request URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The body is not the JSON the caller expected.
    #[error("{url} answered JSON that does not fit: {source}")]
    Json {
        /// The peer's request URL.
        url: String,
        /// Cause.
        source: serde_json::Error,
    },
}

/// The whole body of `answer`, at most `limit_bytes` long.
///
/// # Errors
/// [`PeerAnswerError::TooLarge`] past the limit (by `Content-Length` or by
/// what arrived), [`PeerAnswerError::Transport`] if reading fails.
pub async fn bytes(
    mut answer: reqwest::Response,
    limit_bytes: usize,
) -> Result<Bytes, PeerAnswerError> {
    let too_large = |answer: &reqwest::Response| PeerAnswerError::TooLarge {
        url: answer.url().to_string(),
        limit_bytes,
    };
    let declared = answer.content_length();
    if declared.is_some_and(|n| n > limit_bytes as u64) {
        return Err(too_large(&answer));
    }
    // Room for what the peer declared (already checked), else grown as
    // chunks arrive: a false small length costs nothing but regrowth.
    let mut body = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    loop {
        match answer.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit_bytes {
                    return Err(too_large(&answer));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(source) => {
                return Err(PeerAnswerError::Transport {
                    url: answer.url().to_string(),
                    source,
                })
            }
        }
    }
}

/// The body of `answer` parsed as JSON, at most `limit_bytes` long.
///
/// # Errors
/// As [`bytes()`], and [`PeerAnswerError::Json`] when the body does not
/// parse as `T`.
pub async fn json<T: serde::de::DeserializeOwned>(
    answer: reqwest::Response,
    limit_bytes: usize,
) -> Result<T, PeerAnswerError> {
    let url = answer.url().to_string();
    let body = bytes(answer, limit_bytes).await?;
    serde_json::from_slice(&body).map_err(|source| PeerAnswerError::Json { url, source })
}

/// Limit for a control answer (a `/status`, `/health` or `/metrics`, a
/// fence's answer, anti-entropy leaves): a few KiB in practice.
pub const CONTROL_ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server that answers `body`, with or without a
    /// `Content-Length` (chunked without).
    async fn serve_once(body: Vec<u8>, with_length: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = if with_length {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
            } else {
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
            };
            let _ = s.write_all(head.as_bytes()).await;
            if with_length {
                let _ = s.write_all(&body).await;
            } else {
                for part in body.chunks(1000) {
                    let _ = s
                        .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                        .await;
                    let _ = s.write_all(part).await;
                    let _ = s.write_all(b"\r\n").await;
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            }
        });
        format!("http://{addr}/")
    }

    async fn get(url: &str) -> reqwest::Response {
        let tls = replidb_tls::client_config_for(None, None).unwrap();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .build()
            .unwrap();
        client.get(url).send().await.unwrap()
    }

    #[tokio::test]
    async fn an_answer_within_the_limit_is_read_whole() {
        for with_length in [true, false] {
            let url = serve_once(vec![7u8; 5000], with_length).await;
            let r = get(&url).await;
            let b = bytes(r, 5000).await.unwrap();
            assert_eq!(b.len(), 5000, "with_length={with_length}");
        }
    }

    #[tokio::test]
    async fn an_answer_past_the_limit_is_refused_either_way() {
        for with_length in [true, false] {
            let url = serve_once(vec![7u8; 5001], with_length).await;
            let r = get(&url).await;
            let e = bytes(r, 5000).await.unwrap_err();
            assert!(
                matches!(
                    e,
                    PeerAnswerError::TooLarge {
                        limit_bytes: 5000,
                        ..
                    }
                ),
                "with_length={with_length}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn json_that_does_not_fit_is_a_json_error() {
        let url = serve_once(b"{\"a\":1}".to_vec(), true).await;
        let r = get(&url).await;
        let e = json::<Vec<u64>>(r, 100).await.unwrap_err();
        assert!(matches!(e, PeerAnswerError::Json { .. }), "{e}");
    }
}
