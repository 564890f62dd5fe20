//! Simulated time for the protocol's [`Clock`].

use std::sync::atomic::{AtomicU64, Ordering};

use replidb_core::Clock;

/// 2025-01-01T00:00:00Z: every run's wall clock starts here, so HLC
/// timestamps (and every lag computed from them) are the same on every run.
pub const EPOCH_MS: u64 = 1_735_689_600_000;

/// Wall-clock milliseconds as turmoil sees them: [`EPOCH_MS`] plus the
/// simulation's elapsed virtual time on the host that asks.
///
/// Outside the simulation (the end-of-run checks) it answers the last time
/// it gave, so it never goes backwards and never reads the real clock.
#[derive(Debug, Default)]
pub struct SimClock {
    last: AtomicU64,
}

impl SimClock {
    /// A clock at [`EPOCH_MS`].
    pub fn new() -> Self {
        SimClock {
            last: AtomicU64::new(EPOCH_MS),
        }
    }

    /// Milliseconds since the start of the run.
    pub fn elapsed_ms(&self) -> u64 {
        self.now_ms() - EPOCH_MS
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        match turmoil::sim_elapsed() {
            Some(d) => {
                let now = EPOCH_MS + d.as_millis() as u64;
                self.last.fetch_max(now, Ordering::Relaxed).max(now)
            }
            None => self.last.load(Ordering::Relaxed),
        }
    }

    /// Simulated time since the start of the run: the same virtual time
    /// as the wall clock, without the epoch.
    fn mono_ms(&self) -> u64 {
        self.elapsed_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_simulation_time_stands_still() {
        let c = SimClock::new();
        assert_eq!(c.now_ms(), EPOCH_MS);
        assert_eq!(c.elapsed_ms(), 0);
    }
}
