//! The server's clock, until the hub carries an injected [`crate::clock::Clock`].

use crate::consistency::Micros;
use std::time::Duration;

/// Now, in microseconds since the Unix epoch.
pub fn now() -> Micros {
    crate::clock::wall_micros()
}

/// How long from now until `at` (zero if it has passed).
pub fn until(at: Micros) -> Duration {
    at.since(now())
}
