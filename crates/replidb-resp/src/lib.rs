//! replidb-resp: the Redis serialization protocol, RESP2 and RESP3, as a
//! codec with no knowledge of what the commands mean.
//!
//! - [`Value`]: one protocol value, RESP3's types included.
//! - [`encode`]: a value to bytes, for a connection speaking RESP2 or
//!   RESP3 ([`Protocol`]); RESP3-only types are written in their RESP2 form
//!   on a RESP2 connection, the way Redis downgrades them.
//! - [`CommandDecoder`]: client requests (arrays of bulk strings, or inline
//!   lines such as `PING\r\n` typed into telnet) decoded incrementally from
//!   a growing `BytesMut`, zero-copy for bulk arguments.
//! - [`ValueDecoder`]: any value, incrementally (what a client or a test
//!   reads from a server).
//!
//! # Wire format
//! Every value starts with a type byte and ends its header line with CRLF:
//!
//! | byte | type | body |
//! | --- | --- | --- |
//! | `+` | simple string | text to CRLF |
//! | `-` | error | text to CRLF |
//! | `:` | integer | signed decimal |
//! | `$` | bulk string | length, CRLF, bytes, CRLF (`$-1` = RESP2 null) |
//! | `*` | array | count, then that many values (`*-1` = RESP2 null) |
//! | `_` | null (RESP3) | empty line |
//! | `#` | boolean (RESP3) | `t` or `f` |
//! | `,` | double (RESP3) | decimal, `inf`, `-inf`, `nan` |
//! | `(` | big number (RESP3) | signed decimal of any length |
//! | `!` | bulk error (RESP3) | like a bulk string |
//! | `=` | verbatim string (RESP3) | like a bulk string, `fmt:` first |
//! | `%` | map (RESP3) | pair count, then key, value, key, value… |
//! | `~` | set (RESP3) | like an array |
//! | `>` | push (RESP3) | like an array |
//!
//! # Invariants
//! - Decoding never panics and never allocates more than the input it has
//!   seen plus what its [`Limits`] allow: a declared length or count is
//!   checked against the limits *before* anything is reserved for it, so a
//!   hostile `*2147483647\r\n` is an error, not an allocation.
//! - A decoder consumes bytes only for a complete value; on `Ok(None)` the
//!   buffer is untouched and the caller reads more. A hint remembers how
//!   many bytes the value needs at least, so a large bulk string arriving
//!   in pieces is not re-scanned on every read.
//! - `encode` then decode gives back the same value (RESP3, and RESP2 for
//!   the RESP2 types); simple strings and errors cannot carry CR or LF, so
//!   `encode` replaces them with spaces rather than break the framing.
//!
//! # Left out
//! Attributes (`|`) and streamed strings and aggregates (`$?`, `*?`) are
//! refused: no server this crate talks to or serves sends them to a client
//! that did not ask, and replidb never asks.

mod command;
mod decode;
mod encode;
mod error;
mod value;

pub use command::{encode_command, CommandDecoder};
pub use decode::ValueDecoder;
pub use encode::encode;
pub use error::DecodeError;
pub use value::{Protocol, Value};

/// Default most elements in one command or aggregate.
pub const ARGS_MAX: usize = 4096;
/// Default largest bulk string, in bytes.
pub const BULK_BYTES_MAX: usize = 1024 * 1024;
/// Default longest inline command or simple-string line, in bytes (Redis'
/// own inline limit).
pub const INLINE_BYTES_MAX: usize = 64 * 1024;
/// Default largest whole command or value, in bytes.
pub const FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Default deepest nesting of aggregates a value may have.
pub const DEPTH_MAX: usize = 32;
/// Longest length or count line (`*4096`, `$1048576`): a 64-bit number,
/// its sign and some slack. Longer is garbage, refused before buffering it.
pub const LENGTH_LINE_BYTES_MAX: usize = 32;

// A bulk string must fit in a frame, and an inline line is a frame too.
const _: () = assert!(BULK_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(INLINE_BYTES_MAX <= FRAME_BYTES_MAX);

/// What a decoder accepts. Every limit is checked on the declared length
/// or count, before the bytes arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most elements in a command, or in one aggregate of a value (a map
    /// counts its pairs).
    pub args_max: usize,
    /// Largest bulk string (also bulk errors and verbatim strings).
    pub bulk_bytes_max: usize,
    /// Longest inline command line, and longest simple string, error or
    /// big number line.
    pub inline_bytes_max: usize,
    /// Largest command or value as a whole, headers included.
    pub frame_bytes_max: usize,
    /// Deepest nesting of aggregates in a value (commands are flat).
    pub depth_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            args_max: ARGS_MAX,
            bulk_bytes_max: BULK_BYTES_MAX,
            inline_bytes_max: INLINE_BYTES_MAX,
            frame_bytes_max: FRAME_BYTES_MAX,
            depth_max: DEPTH_MAX,
        }
    }
}
