//! Durations as the contract writes them: `250ms`, `2s`, `1m`, and ranges
//! `DUR..DUR` (uniformly random between the two, used for artificial lag).

use std::str::FromStr;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number with a unit.
    #[error("invalid duration {input:?}: expected a number with a unit, like 250ms, 2s or 1m")]
    Invalid {
        /// The refused text.
        input: String,
    },
    /// A range `LO..HI` whose low end is above its high end.
    #[error("invalid duration range {input:?}: the range is reversed ({lo} is more than {hi}); write the shorter one first, like {hi}..{lo}")]
    Reversed {
        /// The refused text.
        input: String,
        /// The first bound, as written.
        lo: String,
        /// The second bound, as written.
        hi: String,
    },
}

/// Parse `250ms`, `2s`, `1m`, `1h` (a bare number is milliseconds).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError::Invalid {
        input: s.to_string(),
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    if !n.is_finite() || n < 0.0 {
        return Err(err());
    }
    let ms = match unit.trim() {
        "" | "ms" => n,
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return Err(err()),
    };
    Ok(Duration::from_micros((ms * 1000.0) as u64))
}

/// A fixed duration or a uniform range `lo..hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DurationRange {
    /// Lower bound (inclusive).
    pub lo: Duration,
    /// Upper bound (inclusive); equal to `lo` for a fixed duration.
    pub hi: Duration,
}

impl DurationRange {
    /// A fixed duration.
    pub fn fixed(d: Duration) -> Self {
        DurationRange { lo: d, hi: d }
    }

    /// True if both bounds are zero.
    pub fn is_zero(&self) -> bool {
        self.hi.is_zero()
    }

    /// Pick a duration given a uniform sample `u` in `[0, 1)`.
    pub fn pick(&self, u: f64) -> Duration {
        let span = self.hi.saturating_sub(self.lo);
        self.lo + span.mul_f64(u.clamp(0.0, 1.0))
    }
}

impl FromStr for DurationRange {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once("..") {
            Some((a, b)) => {
                let (lo, hi) = (parse_duration(a)?, parse_duration(b)?);
                if hi < lo {
                    return Err(DurationError::Reversed {
                        input: s.to_string(),
                        lo: a.trim().to_string(),
                        hi: b.trim().to_string(),
                    });
                }
                Ok(DurationRange { lo, hi })
            }
            None => Ok(DurationRange::fixed(parse_duration(s)?)),
        }
    }
}

impl std::fmt::Display for DurationRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}ms", self.lo.as_millis())
        } else {
            write!(f, "{}ms..{}ms", self.lo.as_millis(), self.hi.as_millis())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_millis(10));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn a_reversed_range_says_so() {
        let e = "2s..1s".parse::<DurationRange>().unwrap_err().to_string();
        assert!(e.contains("reversed") && e.contains("1s..2s"), "{e}");
        assert!(!e.contains("expected a number"), "{e}");
        let e = "2s..soon".parse::<DurationRange>().unwrap_err().to_string();
        assert!(e.contains("expected a number with a unit"), "{e}");
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn parses_ranges() {
        let r: DurationRange = "100ms..500ms".parse().unwrap();
        assert_eq!(r.lo, Duration::from_millis(100));
        assert_eq!(r.hi, Duration::from_millis(500));
        assert_eq!(r.pick(0.5), Duration::from_millis(300));
        assert!("500ms..100ms".parse::<DurationRange>().is_err());
        let f: DurationRange = "2s".parse().unwrap();
        assert_eq!(f.pick(0.9), Duration::from_secs(2));
    }
}
