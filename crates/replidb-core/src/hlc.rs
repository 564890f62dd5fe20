//! Hybrid logical clock and the clock abstraction.
//!
//! An [`Hlc`] is `(wall_ms, logical)`: it stays close to physical time (so a
//! follower can say how many milliseconds behind it is) yet never goes
//! backwards, even if the wall clock does, and it can absorb timestamps seen
//! from other nodes (multi-leader will need that).

use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Source of wall-clock time in milliseconds since the Unix epoch. Protocol
/// code reads time only through this trait so a simulation can drive it.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
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

    /// Absorb a timestamp seen from another node so later ones exceed it.
    pub fn observe(&self, seen: Hlc) {
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
        });
        let d = hlc.now();
        assert_eq!(
            d,
            Hlc {
                wall_ms: 500,
                logical: 4
            }
        );
    }
}
