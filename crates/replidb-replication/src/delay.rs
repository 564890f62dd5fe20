//! The artificial apply delay of followers (`--replication-delay`) and of
//! multi-leader peers (`--link-delay`): each received batch becomes due a
//! random time from the range after it arrived, but never before an
//! earlier batch, so the origin's order is kept.

use std::sync::Mutex;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use replidb_core::DurationRange;
use tokio::time::Instant;

/// When received batches may be applied.
pub(crate) struct ApplySchedule {
    range: DurationRange,
    rng: Mutex<rand::rngs::StdRng>,
    last_due: Mutex<Instant>,
}

impl ApplySchedule {
    /// Delays drawn from `range` with a generator seeded by `seed`.
    pub(crate) fn new(range: DurationRange, seed: u64) -> Self {
        ApplySchedule {
            range,
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            last_due: Mutex::new(Instant::now()),
        }
    }

    /// When a batch received now may be applied.
    pub(crate) fn next_due(&self) -> Instant {
        let now = Instant::now();
        let delay = if self.range.is_zero() {
            Duration::ZERO
        } else {
            let u: f64 = self.rng.lock().unwrap_or_else(|e| e.into_inner()).random();
            self.range.pick(u)
        };
        let mut last = self.last_due.lock().unwrap_or_else(|e| e.into_inner());
        let due = (now + delay).max(*last);
        *last = due;
        due
    }
}
