//! Why bytes are not a valid request or value.

/// A protocol violation. A server answers it with `-ERR Protocol error:
/// ...` and closes the connection, as Redis does: after a framing error it
/// cannot know where the next request starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A byte that starts no RESP type.
    #[error("unexpected type byte {0:?}")]
    UnknownType(char),
    /// A request array whose element is not a bulk string.
    #[error("expected '$', got {0:?}")]
    ExpectedBulk(char),
    /// A count that is not a number, or negative where that means nothing.
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    /// A bulk length that is not a number, or negative where that means
    /// nothing.
    #[error("invalid bulk length")]
    InvalidBulkLength,
    /// More elements than [`crate::Limits::args_max`].
    #[error("too many elements: {len} (the limit is {max})")]
    TooManyElements {
        /// Declared count.
        len: i64,
        /// The limit.
        max: usize,
    },
    /// A bulk string larger than [`crate::Limits::bulk_bytes_max`].
    #[error("bulk string of {len} bytes exceeds the limit of {max} bytes")]
    BulkTooLarge {
        /// Declared length.
        len: i64,
        /// The limit.
        max: usize,
    },
    /// A request or value larger than [`crate::Limits::frame_bytes_max`].
    #[error("request exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The limit.
        max: usize,
    },
    /// An inline request with no newline within
    /// [`crate::Limits::inline_bytes_max`].
    #[error("inline request longer than {max} bytes")]
    InlineTooLong {
        /// The limit.
        max: usize,
    },
    /// A header, simple string or number line with no CRLF in sight.
    #[error("line longer than {max} bytes")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
    /// An inline request whose quotes do not close.
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A line or bulk string not terminated by CRLF.
    #[error("missing CRLF")]
    MissingCrlf,
    /// An integer (or big number) line that is not one.
    #[error("invalid integer")]
    InvalidInteger,
    /// A double line that is not one.
    #[error("invalid double")]
    InvalidDouble,
    /// A boolean line other than `t` or `f`.
    #[error("invalid boolean")]
    InvalidBoolean,
    /// A null (`_`) line with content.
    #[error("invalid null")]
    InvalidNull,
    /// A verbatim string without its `fmt:` prefix.
    #[error("invalid verbatim string")]
    InvalidVerbatim,
    /// A simple string or error that is not UTF-8, or holds a CR.
    #[error("invalid simple string")]
    InvalidSimple,
    /// Aggregates nested deeper than [`crate::Limits::depth_max`].
    #[error("aggregates nested deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
}
