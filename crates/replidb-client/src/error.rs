//! The client's one error type, grouped by how a caller reacts to it.

use crate::types::{Sibling, WriteResult};

/// Result alias for every client call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Everything a replidb call can fail with.
///
/// The variants are grouped by what the caller does next:
/// - fix the input: [`ClientError::InvalidUrl`], [`ClientError::InvalidInput`];
/// - look at what the server said: [`ClientError::Api`],
///   [`ClientError::ConditionFailed`], [`ClientError::NotCommitted`];
/// - merge and write back: [`ClientError::Siblings`];
/// - retry later or elsewhere: [`ClientError::Connect`],
///   [`ClientError::Timeout`], [`ClientError::TooManyRedirects`];
/// - report a bug or a wrong URL: [`ClientError::Decode`],
///   [`ClientError::Transport`].
///
/// ```no_run
/// # async fn demo() {
/// use replidb_client::{Client, ClientError, WriteOptions};
/// let client = Client::new("http://127.0.0.1:7000").unwrap();
/// match client.put("k", "v", &WriteOptions::majority()).await {
///     Ok(w) => println!("committed at lsn {}", w.lsn),
///     // The write is in the leader's log but did not reach enough nodes in
///     // time: it may still replicate, or be rolled back by a failover.
///     Err(ClientError::NotCommitted(w)) => eprintln!("only {} acks", w.acks),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL (or a `Location` header) is not a usable http(s) URL.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The refused text.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The request was refused before it was sent (for example an empty key).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The server answered with an error body `{"error":{"code","message"}}`
    /// (or with an unexpected status and no such body).
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// HTTP status code.
        status: u16,
        /// Machine-readable code, e.g. `value_too_large`; `http_<status>`
        /// when the body carried none.
        code: String,
        /// Human-readable explanation from the server.
        message: String,
    },
    /// A transaction's `if` condition did not hold (HTTP 409); nothing was
    /// written.
    #[error("transaction condition failed: {message}")]
    ConditionFailed {
        /// The server's explanation.
        message: String,
    },
    /// The write is in the leader's log but its write concern was not met in
    /// time (HTTP 504). It is not undone: it may still replicate, or be
    /// rolled back by a failover if it reached fewer than a majority.
    #[error(
        "write not committed: lsn {} reached {} node(s), write concern {} not met in time",
        .0.lsn, .0.acks, .0.w
    )]
    // Boxed: a write result is large, and every `Result` of the crate
    // carries this enum.
    NotCommitted(Box<WriteResult>),
    /// The key holds concurrent versions (HTTP 300, multi-leader with the
    /// `siblings` policy): no single value to return. Merge the siblings
    /// the way the application understands them and write the result with
    /// [`WriteOptions::context`](crate::WriteOptions) set to `context`; that
    /// write replaces exactly these versions.
    ///
    /// ```no_run
    /// # async fn demo(client: replidb_client::Client) -> replidb_client::Result<()> {
    /// use replidb_client::{ClientError, WriteOptions};
    /// match client.get("cart:1", &Default::default()).await {
    ///     Err(ClientError::Siblings { siblings, context, .. }) => {
    ///         let merged: Vec<&str> = siblings.iter().filter_map(|s| s.as_str()).collect();
    ///         let opts = WriteOptions { context: Some(context), ..Default::default() };
    ///         client.put("cart:1", merged.join(","), &opts).await?;
    ///     }
    ///     other => println!("{:?}", other?),
    /// }
    /// # Ok(()) }
    /// ```
    #[error("key {key:?} has {} concurrent versions (siblings); merge them and write back with their context", .siblings.len())]
    Siblings {
        /// The key read.
        key: String,
        /// Every concurrent version.
        siblings: Vec<Sibling>,
        /// The causal context covering them all (`X-Replidb-Context`).
        context: String,
    },
    /// No connection could be made, even after retries.
    // The cause is left to `source()` (not repeated here), so that error
    // reporters walking the chain print it once.
    #[error("cannot connect to {url}")]
    Connect {
        /// The URL that was tried last.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The request did not complete within the client's timeout.
    #[error("request to {url} timed out")]
    Timeout {
        /// The URL that timed out.
        url: String,
    },
    /// More `307` hops than [`ClientOptions::max_redirects`](crate::ClientOptions).
    #[error("too many redirects (last location {last})")]
    TooManyRedirects {
        /// The last `Location` seen.
        last: String,
    },
    /// The server's answer could not be understood (wrong URL, or a
    /// server/client version mismatch).
    #[error("cannot decode response: {0}")]
    Decode(String),
    /// Any other transport failure (connection reset mid-response, ...).
    #[error("transport error")]
    Transport(#[source] reqwest::Error),
}

impl ClientError {
    /// The HTTP status the server answered with, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::ConditionFailed { .. } => Some(409),
            ClientError::NotCommitted(_) => Some(504),
            ClientError::Siblings { .. } => Some(300),
            _ => None,
        }
    }

    /// The server's error code (`value_too_large`, ...), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for failures that a later retry might not hit (connection
    /// refused, timeout, 503). The client already retried these
    /// `ClientOptions::retries` times before returning them.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Timeout { .. }
                | ClientError::Api { status: 503, .. }
        )
    }
}
