//! The wall clock: the one place the program reads the system time.
//!
//! The server reads it through a [`Clock`] handle that is passed in (see
//! `server::Config::clock`), so a test can run a server on a clock of its
//! own; the client library, the log's retention and the bench read
//! [`wall_micros`] directly.

use crate::consistency::Micros;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The system's wall clock, in microseconds since the Unix epoch (0 before
/// the epoch, `i64::MAX` in the far future).
pub fn wall_micros() -> Micros {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Micros(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
}

/// The server's clock. Cheap to clone. The default is the system clock;
/// [`Clock::offset`] runs ahead of (or behind) it, as a server whose clock
/// disagrees with its clients' would.
#[derive(Clone)]
pub struct Clock {
    /// Where "now" comes from.
    source: Arc<dyn Fn() -> Micros + Send + Sync>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::from_fn(wall_micros)
    }

    /// The system clock shifted by `micros` (negative: behind).
    pub fn offset(micros: i64) -> Clock {
        Clock::from_fn(move || Micros(wall_micros().0.saturating_add(micros)))
    }

    /// A clock that reads `source`. It should not go backwards by much: the
    /// engine tolerates it, but deadlines computed from it move too.
    pub fn from_fn(source: impl Fn() -> Micros + Send + Sync + 'static) -> Clock {
        Clock {
            source: Arc::new(source),
        }
    }

    /// Now, in microseconds since the Unix epoch on this clock.
    pub fn now(&self) -> Micros {
        (self.source)()
    }

    /// How long from now until `at` on this clock (zero if it has passed).
    pub fn until(&self, at: Micros) -> Duration {
        at.since(self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock").field("now", &self.now()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_clock_runs_ahead_of_the_wall_clock() {
        let ahead = Clock::offset(3_600_000_000);
        let before = wall_micros();
        let t = ahead.now();
        let after = wall_micros();
        assert!(t.0 >= before.0 + 3_600_000_000 && t.0 <= after.0 + 3_600_000_000);
        assert_eq!(ahead.until(before), Duration::ZERO);
    }
}
