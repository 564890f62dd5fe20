//! Shared vocabulary of replidb: the types every other crate speaks.
//!
//! Nothing here does IO, except [`durable`]: the one helper every crate
//! uses to write a file that must survive a crash. The types are small and
//! `Copy` where they can be, and units live in the type (an [`Lsn`] is not
//! an [`Epoch`] is not a count).
//!
//! - [`Lsn`], [`Epoch`], [`NodeId`]: positions, terms and names.
//! - [`Op`] and [`Record`]: what a write-ahead-log record carries.
//! - [`Hlc`] and [`HlcClock`]: hybrid logical clock timestamps stamped on
//!   every record (wall-clock milliseconds plus a logical counter), so that
//!   lag can be measured in time and later topologies can order writes.
//! - [`Clock`]: the only way protocol code reads the time, so a simulation
//!   can substitute its own: a wall reading (HLC stamps, display) and a
//!   monotonic one (every deadline, timeout and lag).
//! - [`duration`]: parsing of `250ms` / `2s` / `1m` and `DUR..DUR` ranges.
//! - [`text`]: wording shared by every command's output (`1 leader`,
//!   `2 leaders`).

pub mod durable;
pub mod duration;
pub use duration::{parse_duration, DurationError, DurationRange};
mod hlc;
pub mod text;
mod types;

pub use hlc::{
    Clock, ClockOffsetError, Hlc, HlcClock, SkewedClock, SystemClock, HLC_MAX_OFFSET_MS,
};
pub use types::{
    validate_key, validate_path_key, Epoch, EpochHistory, KeyError, Lsn, NodeId, Op, Position,
    Record, Versioned, WriteConcern, WriteConcernError, EPOCH_JUMP_MAX, MAX_KEY_BYTES,
    TXN_VALUES_MAX, VALUE_BYTES_MAX,
};
