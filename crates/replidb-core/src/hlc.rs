//! Hybrid logical clock and the clock abstraction.
//!
//! An [`Hlc`] is `(wall_ms, logical)`: it stays close to physical time (so a
//! follower can say how many milliseconds behind it is) yet never goes
//! backwards, even if the wall clock does, and it can absorb timestamps seen
//! from other nodes, up to [`HLC_MAX_OFFSET_MS`] ahead of our own clock.
//!
//! # Two clocks, never confused
//! A [`Clock`] gives two readings. [`Clock::now_ms`] is wall time: it may
//! jump (NTP steps, an operator's `date -s`) and differs between machines,
//! so it is used only for HLC stamps and for display. [`Clock::mono_ms`] is
//! monotonic: it never goes backwards, but its origin is arbitrary and
//! private to one process, so it is used for every deadline, timeout and
//! lag, and never compared across nodes. Cross-node lag is carried as an
//! *age* (a duration measured on the sender's monotonic clock) that the
//! receiver adds to its own monotonic reading.

use serde::{Deserialize, Serialize};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Largest amount, in ms, by which a peer's HLC timestamp may run ahead of
/// our wall clock and still be absorbed by [`HlcClock::observe`]. A peer
/// further ahead has a broken clock: absorbing its stamps would drag every
/// later local stamp into its future. (CockroachDB's default maximum
/// offset is the same 500 ms.)
pub const HLC_MAX_OFFSET_MS: u64 = 500;

/// Source of time. Protocol code reads time only through this trait so a
/// simulation can drive it and tests can skew it.
pub trait Clock: Send + Sync + 'static {
    /// Wall clock: milliseconds since the Unix epoch. May jump; differs
    /// between nodes. For HLC stamps and display only.
    fn now_ms(&self) -> u64;

    /// Monotonic clock: milliseconds since an arbitrary origin fixed for
    /// the life of the process. Never goes backwards. For deadlines,
    /// timeouts and lag; meaningless on another node.
    fn mono_ms(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
    fn mono_ms(&self) -> u64 {
        (**self).mono_ms()
    }
}

/// The operating system's clocks: `SystemTime` and `Instant`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// Origin of [`SystemClock::mono_ms`]: the first reading in this process.
static MONO_ORIGIN: OnceLock<Instant> = OnceLock::new();

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn mono_ms(&self) -> u64 {
        let origin = *MONO_ORIGIN.get_or_init(Instant::now);
        u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock whose wall reading is off by `wall_offset_ms` (and may be
/// stepped at run time) while its monotonic reading is the inner clock's:
/// a machine with a wrong or jumping wall clock. For tests of everything
/// that must not depend on wall clocks agreeing.
#[derive(Debug)]
pub struct SkewedClock<C: Clock> {
    inner: C,
    wall_offset_ms: std::sync::atomic::AtomicI64,
}

impl<C: Clock> SkewedClock<C> {
    /// `inner` with its wall clock moved by `wall_offset_ms` (negative =
    /// behind).
    pub fn new(inner: C, wall_offset_ms: i64) -> Self {
        SkewedClock {
            inner,
            wall_offset_ms: std::sync::atomic::AtomicI64::new(wall_offset_ms),
        }
    }

    /// Step the wall clock to a new offset from the inner clock.
    pub fn set_wall_offset_ms(&self, wall_offset_ms: i64) {
        self.wall_offset_ms
            .store(wall_offset_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl<C: Clock> Clock for SkewedClock<C> {
    fn now_ms(&self) -> u64 {
        let off = self
            .wall_offset_ms
            .load(std::sync::atomic::Ordering::SeqCst);
        self.inner.now_ms().saturating_add_signed(off)
    }

    fn mono_ms(&self) -> u64 {
        self.inner.mono_ms()
    }
}

/// A peer timestamp [`HlcClock::observe`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "peer timestamp {seen_ms} ms is {ahead_ms} ms ahead of our clock; the maximum offset is {HLC_MAX_OFFSET_MS} ms"
)]
pub struct ClockOffsetError {
    /// The refused timestamp's wall part.
    pub seen_ms: u64,
    /// How far ahead of our wall clock it was.
    pub ahead_ms: u64,
}

/// A hybrid-logical-clock timestamp. Ordered by `wall_ms`, then `logical`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Physical component: milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical counter that breaks ties within one millisecond.
    pub logical: u32,
}

/// Issues monotonically increasing [`Hlc`] timestamps from a [`Clock`].
pub struct HlcClock<C: Clock> {
    clock: C,
    // A std Mutex: the critical section is a few instructions and never
    // awaits, so an async mutex would only add overhead.
    last: Mutex<Hlc>,
}

impl<C: Clock> HlcClock<C> {
    /// A clock that starts at the wall time.
    pub fn new(clock: C) -> Self {
        HlcClock {
            clock,
            last: Mutex::new(Hlc::default()),
        }
    }

    /// A new timestamp, strictly greater than every one issued or observed.
    pub fn now(&self) -> Hlc {
        let wall = self.clock.now_ms();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let next = if wall > last.wall_ms {
            Hlc {
                wall_ms: wall,
                logical: 0,
            }
        } else {
            Hlc {
                wall_ms: last.wall_ms,
                logical: last.logical + 1,
            }
        };
        *last = next;
        next
    }

    /// Absorb a timestamp seen from another node so later ones exceed it,
    /// unless it is more than [`HLC_MAX_OFFSET_MS`] ahead of our wall clock:
    /// then it is refused and our clock is left alone (the caller decides
    /// whether that is fatal; for a replicated record it is not, the record
    /// keeps its stamp).
    pub fn observe(&self, seen: Hlc) -> Result<(), ClockOffsetError> {
        let wall = self.clock.now_ms();
        let ahead_ms = seen.wall_ms.saturating_sub(wall);
        if ahead_ms > HLC_MAX_OFFSET_MS {
            return Err(ClockOffsetError {
                seen_ms: seen.wall_ms,
                ahead_ms,
            });
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if seen > *last {
            *last = seen;
        }
        Ok(())
    }

    /// Absorb a timestamp unconditionally, however far ahead.
    ///
    /// For the causal topologies: a version a node has applied must order
    /// before every version it writes afterwards, or last-writer-wins could
    /// let an older write beat a causally later one; so a peer's stamp is
    /// absorbed even when its clock runs ahead (our timestamps then run
    /// ahead with it — the price HLC pays for a bad clock elsewhere).
    pub fn absorb(&self, seen: Hlc) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if seen > *last {
            *last = seen;
        }
    }

    /// The underlying physical clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[derive(Clone)]
    struct Manual(Arc<AtomicU64>);
    impl Clock for Manual {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
        fn mono_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn never_goes_backwards() {
        let t = Arc::new(AtomicU64::new(100));
        let hlc = HlcClock::new(Manual(t.clone()));
        let a = hlc.now();
        let b = hlc.now();
        assert!(b > a);
        t.store(50, Ordering::SeqCst); // wall clock steps back
        let c = hlc.now();
        assert!(c > b);
        assert_eq!(c.wall_ms, 100);
        hlc.observe(Hlc {
            wall_ms: 500,
            logical: 3,
        })
        .unwrap();
        let d = hlc.now();
        assert_eq!(
            d,
            Hlc {
                wall_ms: 500,
                logical: 4
            }
        );
    }

    #[test]
    fn peer_too_far_ahead_is_refused() {
        let t = Arc::new(AtomicU64::new(10_000));
        let hlc = HlcClock::new(Manual(t.clone()));
        let before = hlc.now();
        let far = Hlc {
            wall_ms: 10_000 + HLC_MAX_OFFSET_MS + 1,
            logical: 0,
        };
        assert_eq!(
            hlc.observe(far),
            Err(ClockOffsetError {
                seen_ms: far.wall_ms,
                ahead_ms: HLC_MAX_OFFSET_MS + 1
            })
        );
        // Our stamps did not jump into the peer's future.
        let after = hlc.now();
        assert!(after > before && after.wall_ms == 10_000);
        // Within the offset it is absorbed.
        let near = Hlc {
            wall_ms: 10_000 + HLC_MAX_OFFSET_MS,
            logical: 0,
        };
        hlc.observe(near).unwrap();
        assert!(hlc.now() > near);
    }

    #[test]
    fn skewed_clock_moves_wall_time_only() {
        let t = Arc::new(AtomicU64::new(100_000));
        let c = SkewedClock::new(Manual(t), -30_000);
        assert_eq!(c.now_ms(), 70_000);
        assert_eq!(c.mono_ms(), 100_000);
        c.set_wall_offset_ms(30_000);
        assert_eq!(c.now_ms(), 130_000);
        assert_eq!(c.mono_ms(), 100_000);
    }
}
