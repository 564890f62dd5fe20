//! [`Value`], one protocol value, and [`Protocol`], the version a
//! connection speaks.

use bytes::Bytes;

/// The protocol version of a connection: RESP2 until the client sends
/// `HELLO 3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, every connection's start.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

impl Protocol {
    /// The number `HELLO` names it by.
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// One RESP value. The RESP3-only variants are written in their RESP2 form
/// on a RESP2 connection (see [`crate::encode`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `+OK`: short text without CR or LF.
    Simple(String),
    /// `-ERR message`: the first word is the error code by convention.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nfoo`: binary-safe bytes.
    Bulk(Bytes),
    /// `*N`: any values.
    Array(Vec<Value>),
    /// Nothing: `_` in RESP3, `$-1` in RESP2 (which also has `*-1`, decoded
    /// as this too).
    Null,
    /// `#t` / `#f` (RESP3); RESP2: `:1` / `:0`.
    Boolean(bool),
    /// `,3.14` (RESP3); RESP2: a bulk string of the number.
    Double(f64),
    /// `(12345678901234567890` (RESP3), the digits with an optional sign;
    /// RESP2: a bulk string.
    BigNumber(String),
    /// `!len\r\nmessage` (RESP3); RESP2: a simple error.
    BulkError(Bytes),
    /// `=len\r\ntxt:text` (RESP3), with its three-letter format; RESP2: a
    /// bulk string of the text.
    Verbatim {
        /// `txt` or `mkd`.
        format: [u8; 3],
        /// The text after `fmt:`.
        text: Bytes,
    },
    /// `%N` pairs (RESP3); RESP2: a flat array key, value, key, value…
    Map(Vec<(Value, Value)>),
    /// `~N` (RESP3); RESP2: an array.
    Set(Vec<Value>),
    /// `>N` out-of-band data (RESP3); RESP2: an array.
    Push(Vec<Value>),
}

impl Value {
    /// `+OK`.
    pub fn ok() -> Value {
        Value::Simple("OK".to_string())
    }

    /// A simple string.
    pub fn simple(s: impl Into<String>) -> Value {
        Value::Simple(s.into())
    }

    /// An error whose text is `message` (give the code as its first word:
    /// `"ERR something"`).
    pub fn error(message: impl Into<String>) -> Value {
        Value::Error(message.into())
    }

    /// A bulk string.
    pub fn bulk(b: impl Into<Bytes>) -> Value {
        Value::Bulk(b.into())
    }

    /// A bulk string copied from `s`.
    pub fn bulk_str(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Whether this is an error (simple or bulk).
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_) | Value::BulkError(_))
    }
}
