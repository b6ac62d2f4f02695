//! Server time as the protocol carries it: microseconds since the Unix epoch.
//!
//! The pure core never reads a clock; callers pass a [`Micros`] in. Only the
//! server edge (`crate::server::clock`) turns the system clock into one.

use std::time::Duration;

/// Parses a human duration ("300ms", "2s", "1m", "1h 30m"): every flag,
/// config key and admin field that takes a duration goes through here. The
/// error shows the accepted forms, since "expected number at 0" alone does
/// not tell a user what to write.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!(
            "invalid duration {text:?} ({e}): write a number and a unit, \
             such as \"300ms\", \"2s\", \"1m\" or \"1h 30m\""
        )
    })
}

/// A point on the server's clock, in microseconds since the Unix epoch.
///
/// Signed because the wire type (`ServerTime.timestamp`) is `int64` and a
/// client may send anything, including negative values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(pub i64);

impl Micros {
    /// The latest representable time; used as "never".
    pub const MAX: Micros = Micros(i64::MAX);

    /// `self + d`, saturating instead of overflowing.
    pub fn plus(self, d: Duration) -> Micros {
        Micros(self.0.saturating_add(duration_micros(d)))
    }

    /// `self - d`, saturating instead of overflowing.
    pub fn minus(self, d: Duration) -> Micros {
        Micros(self.0.saturating_sub(duration_micros(d)))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Micros) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

/// A duration in whole microseconds, saturating at `i64::MAX`.
pub fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
