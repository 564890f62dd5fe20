//! Errors a command answers with. Each renders as a Redis error line: the
//! first word is the code clients match on (`ERR`, `READONLY`, `NOPROTO`,
//! `WRONGPASS`), the rest says what happened.

use replidb_resp::Value;

use crate::api::ApiError;

/// Why a command was refused or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RespError {
    /// No such command.
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand {
        /// The name as sent (shortened).
        name: String,
        /// The first arguments, quoted (shortened).
        args: String,
    },
    /// No such subcommand of a container command (`CLIENT`, `COMMAND`,
    /// `CONFIG`).
    #[error("ERR unknown subcommand '{sub}'. Try {command} HELP.")]
    UnknownSubcommand {
        /// `CLIENT`, `COMMAND`...
        command: &'static str,
        /// The subcommand as sent (shortened).
        sub: String,
    },
    /// The argument count does not fit the command.
    #[error("ERR wrong number of arguments for '{0}' command")]
    WrongArity(String),
    /// Options that do not parse or contradict each other.
    #[error("ERR syntax error")]
    Syntax,
    /// An argument or a stored value that should be an integer is not.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// An increment past `i64`.
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    /// `DECRBY key -9223372036854775808`: the negated amount is no `i64`.
    #[error("ERR decrement would overflow")]
    DecrementOverflow,
    /// A `HELLO` option that does not parse.
    #[error("ERR Syntax error in HELLO option '{0}'")]
    HelloOption(String),
    /// A value longer than `--max-value-bytes` (within the request's limit;
    /// a longer request is a protocol error).
    #[error("ERR value of {len_bytes} bytes exceeds the limit of {limit_bytes} bytes (--max-value-bytes)")]
    ValueTooLarge {
        /// The value's length.
        len_bytes: usize,
        /// `--max-value-bytes`.
        limit_bytes: usize,
    },
    /// A key the node cannot store (empty, too long, not UTF-8).
    #[error("ERR invalid key: {0}")]
    InvalidKey(String),
    /// A write sent to a follower.
    #[error("READONLY You can't write against a read only replica. leader: {leader}")]
    ReadOnly {
        /// The leader's URL, or why none is known.
        leader: String,
    },
    /// A feature replidb does not have (expiry, other databases...).
    #[error("ERR {0}")]
    Unsupported(String),
    /// A string command on a counter, set or map (Redis's `WRONGTYPE`);
    /// the detail names the kind and its HTTP endpoint.
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value: {0}")]
    WrongType(String),
    /// A request past one of the listener's limits.
    #[error("ERR {0}")]
    Limit(String),
    /// `HELLO` with a protocol version other than 2 or 3.
    #[error("NOPROTO unsupported protocol version")]
    NoProto,
    /// `AUTH password` while the node requires none.
    #[error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")]
    NoPassword,
    /// `AUTH user password` for a user other than `default`.
    #[error("WRONGPASS invalid username-password pair or user is disabled.")]
    WrongPass,
    /// A command before `AUTH` on a node that requires tokens.
    #[error("NOAUTH Authentication required.")]
    NoAuth,
    /// `HELLO` without `AUTH` before authenticating, on a node that
    /// requires tokens.
    #[error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")]
    HelloNoAuth,
    /// An authenticated token without the role the command needs.
    #[error("NOPERM User {token} has no permissions to run the '{command}' command")]
    NoPerm {
        /// The token's name.
        token: String,
        /// The command.
        command: String,
    },
    /// `SELECT` of a database other than 0.
    #[error("ERR DB index is out of range")]
    DbIndex,
    /// A `SCAN` cursor this node did not hand out (or has forgotten).
    #[error("ERR invalid cursor")]
    InvalidCursor,
    /// `CLIENT SETNAME` with spaces or control characters.
    #[error("ERR Client names cannot contain spaces, newlines or special characters.")]
    BadClientName,
    /// `CLIENT SETINFO` of an attribute other than `LIB-NAME`/`LIB-VER`.
    #[error("ERR Unrecognized option '{0}'")]
    UnrecognizedOption(String),
    /// `CLIENT SETINFO` with spaces or control characters in the value.
    #[error("ERR {0} cannot contain spaces, newlines or special characters.")]
    BadLibInfo(&'static str),
    /// A command between `MULTI` and `EXEC`/`DISCARD`: replidb has no
    /// transactions over this port, so it is refused rather than queued
    /// (and `EXEC` then aborts: no part of the transaction runs).
    #[error("ERR transactions (MULTI) are not supported: command not queued, EXEC will abort and nothing will run (MSET, or POST /v1/txn over HTTP, is an atomic batch)")]
    InRefusedMulti,
    /// `MULTI` after a refused `MULTI`.
    #[error("ERR MULTI calls can not be nested")]
    NestedMulti,
    /// `EXEC` after a refused `MULTI`: nothing was run.
    #[error("EXECABORT Transaction discarded because of previous errors.")]
    ExecAbort,
    /// `EXEC` or `DISCARD` without `MULTI`.
    #[error("ERR {0} without MULTI")]
    WithoutMulti(&'static str),
    /// `WAIT` on a follower.
    #[error("ERR WAIT cannot be used with replica instances.")]
    WaitOnReplica,
    /// `WAIT` with a timeout that is not an integer (Redis's wording).
    #[error("ERR timeout is not an integer or out of range")]
    TimeoutNotInteger,
    /// `WAIT` with a negative timeout.
    #[error("ERR timeout is negative")]
    NegativeTimeout,
    /// A compare-and-set write whose condition failed: retried inside the
    /// command, never sent to a client as is.
    #[error("ERR condition failed")]
    ConditionFailed,
    /// A compare-and-set write that kept losing its race.
    #[error(
        "ERR key '{key}' changed under {attempts} attempts in a row; nothing was written, retry"
    )]
    Contention {
        /// The key (one of them).
        key: String,
        /// Attempts made.
        attempts: usize,
    },
    /// The write is durable on the leader but the node's default write
    /// concern was not met in time.
    #[error("ERR write_concern_timeout: {}", crate::api::concern_shortfall(*acks, w, *may_roll_back))]
    NotCommitted {
        /// Nodes holding it.
        acks: usize,
        /// The concern.
        w: String,
        /// Whether a failover could still roll it back.
        may_roll_back: bool,
    },
    /// The node refused or failed (not leading any more, no quorum, fenced,
    /// storage failure...): its API error code and message.
    #[error("ERR {code}: {message}")]
    Node {
        /// The HTTP API's error code (`no_quorum`, `fenced`, ...).
        code: &'static str,
        /// What happened.
        message: String,
    },
}

impl RespError {
    /// The error as a protocol value.
    pub fn to_value(&self) -> Value {
        Value::Error(self.to_string())
    }
}

impl From<ApiError> for RespError {
    fn from(e: ApiError) -> Self {
        if e.code == "condition_failed" {
            return RespError::ConditionFailed;
        }
        if e.code == "wrong_type" {
            return RespError::WrongType(e.message);
        }
        RespError::Node {
            code: e.code,
            message: e.message,
        }
    }
}

impl From<replidb_storage::StorageError> for RespError {
    fn from(e: replidb_storage::StorageError) -> Self {
        ApiError::from(e).into()
    }
}

/// Result of a command.
pub type RespResult<T> = Result<T, RespError>;
