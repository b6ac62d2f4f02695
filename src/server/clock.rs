//! The one place the server reads the wall clock.

use crate::consistency::Micros;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in microseconds since the Unix epoch.
pub fn now() -> Micros {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Micros(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
}

/// How long from now until `at` (zero if it has passed).
pub fn until(at: Micros) -> Duration {
    at.since(now())
}
