//! Every tunable of the consistency core, validated in one place.

use super::bounds::{BoundsError, BoundsTable};
use std::time::Duration;

/// The tunables the core decides with. Bounds can change while running;
/// the rest are fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default and per-thread bounds.
    pub bounds: BoundsTable,
    /// `Update.expirationTime - Update.currentTime`; the next Update is sent
    /// no later than half of it after the previous one.
    pub lease: Duration,
    /// How long Updates may stay unacknowledged (and how long a connected
    /// client may take to start `ReceiveUpdates`) before it is dropped.
    pub ack_timeout: Duration,
    /// Most recent messages sent in a client's first Update.
    pub history: usize,
    /// Longest `contents` accepted, in bytes.
    pub max_message_bytes: usize,
    /// How far in the future a `SentMessage.timestamp` may be.
    pub max_clock_skew: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bounds: BoundsTable::default(),
            lease: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(5),
            history: 50,
            max_message_bytes: 4096,
            max_clock_skew: Duration::from_secs(1),
        }
    }
}

/// Why a setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Bounds(#[from] BoundsError),
    #[error("lease {0:?} is outside 100ms..=1h")]
    Lease(Duration),
    #[error("ack timeout {0:?} is outside 100ms..=1h")]
    AckTimeout(Duration),
    #[error("history {0} is above 100000")]
    History(usize),
    #[error("max message bytes {0} is outside 1..=1048576")]
    MaxMessageBytes(usize),
    #[error("max clock skew {0:?} is above 1h")]
    MaxClockSkew(Duration),
}

pub const MAX_HISTORY: usize = 100_000;
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

impl Settings {
    pub fn validate(&self) -> Result<(), SettingsError> {
        let range = Duration::from_millis(100)..=Duration::from_secs(3600);
        if !range.contains(&self.lease) {
            return Err(SettingsError::Lease(self.lease));
        }
        if !range.contains(&self.ack_timeout) {
            return Err(SettingsError::AckTimeout(self.ack_timeout));
        }
        if self.history > MAX_HISTORY {
            return Err(SettingsError::History(self.history));
        }
        if !(1..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(SettingsError::MaxMessageBytes(self.max_message_bytes));
        }
        if self.max_clock_skew > Duration::from_secs(3600) {
            return Err(SettingsError::MaxClockSkew(self.max_clock_skew));
        }
        self.bounds.default_bounds().validate()?;
        Ok(())
    }
}

/// How much earlier than a deadline `d` after some event the core acts, so
/// that timer and scheduling delays do not push a delivery past its bound:
/// an eighth of `d`, at most 20 ms.
pub fn safety_margin(d: Duration) -> Duration {
    (d / 8).min(Duration::from_millis(20))
}

/// How far ahead of their shared flush deadline the `members` clients of one
/// delivery cursor are spread, for a conit whose staleness bound is `d`:
/// 20 µs per client (about what the server spends on one Update and its
/// acknowledgement, so roughly the time it takes to send them all), at most
/// a sixteenth of `d`.
///
/// Clients that were sent the same commits share a deadline. Flushed in one
/// instant, thousands of them make one burst of Updates that queues behind
/// itself (and delays the writes arriving meanwhile). Instead each client
/// flushes up to this much earlier, by a share that is drawn afresh for
/// every flush (see `engine::spread_rank`). While groups are large they
/// split, and the groups drift apart from one cycle to the next until the
/// load is even; small groups are hardly spread, so a few clients do not
/// pay for it in extra Updates (at most 1/16 more in any case).
pub fn flush_spread(d: Duration, members: usize) -> Duration {
    let per_client = Duration::from_micros(20);
    (d / 16).min(per_client.saturating_mul(u32::try_from(members).unwrap_or(u32::MAX)))
}
