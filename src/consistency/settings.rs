//! Every tunable of the consistency core, validated in one place.

use super::bounds::{BoundsError, BoundsTable};
use super::limits::Limits;
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
    /// Largest encoded Update the server sends, in bytes: a flush or a
    /// history holding more goes out as several consecutive Updates (see
    /// [`super::parts`]). One message alone may exceed it only when it is
    /// larger itself; [`Settings::validate`] keeps that below
    /// [`CLIENT_RECEIVE_LIMIT`].
    pub max_update_bytes: usize,
    /// The thread caps and the message rate (see [`super::limits`]).
    pub limits: Limits,
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
            max_update_bytes: DEFAULT_UPDATE_BYTES,
            limits: Limits::default(),
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
    #[error(
        "max update bytes {0} is outside {min}..={max} (gRPC clients refuse messages over \
         4 MiB unless told otherwise)",
        min = MIN_UPDATE_BYTES,
        max = CLIENT_RECEIVE_LIMIT
    )]
    MaxUpdateBytes(usize),
    #[error(
        "one message of max message bytes {message} makes an Update of up to {update} bytes, \
         above max update bytes {limit}: raise --max-update-bytes or lower --max-message-bytes"
    )]
    MessageAboveUpdate {
        message: usize,
        update: usize,
        limit: usize,
    },
    #[error("max threads {0} is outside 1..=10000000")]
    MaxThreads(usize),
    #[error("thread idle timeout {0:?} is outside 1s..=1d")]
    ThreadIdleTimeout(Duration),
    #[error("max messages per second {0} is above 1000000 (0 means no limit)")]
    MaxMessagesPerSecond(u32),
}

pub const MAX_HISTORY: usize = 100_000;
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The receive limit gRPC stacks apply by default (grpcio, grpc-go,
/// grpc-java and tonic all refuse a message over 4 MiB): no Update may be
/// larger, or such clients could not read their stream.
pub const CLIENT_RECEIVE_LIMIT: usize = 4 << 20;

/// The default Update limit: a quarter of what clients accept, so a client
/// with a lower limit of its own still reads it, and one Update is a small
/// part of a client's outbound queue (4 MiB by default).
pub const DEFAULT_UPDATE_BYTES: usize = 1 << 20;

/// The smallest Update limit accepted: below it, a flush of ordinary
/// messages would be split into many tiny Updates.
pub const MIN_UPDATE_BYTES: usize = 16 << 10;

impl Settings {
    /// The Update limit to use when none was given: [`DEFAULT_UPDATE_BYTES`],
    /// or more if one message of `max_message_bytes` needs it.
    pub fn default_update_bytes(max_message_bytes: usize) -> usize {
        DEFAULT_UPDATE_BYTES.max(super::parts::largest_single_update(max_message_bytes))
    }

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
        if !(MIN_UPDATE_BYTES..=CLIENT_RECEIVE_LIMIT).contains(&self.max_update_bytes) {
            return Err(SettingsError::MaxUpdateBytes(self.max_update_bytes));
        }
        // History is split by bytes as well as by count, so any history
        // reaches a client as long as its largest message fits an Update.
        let update = super::parts::largest_single_update(self.max_message_bytes);
        if update > self.max_update_bytes {
            return Err(SettingsError::MessageAboveUpdate {
                message: self.max_message_bytes,
                update,
                limit: self.max_update_bytes,
            });
        }
        self.bounds.default_bounds().validate()?;
        self.validate_limits()
    }

    fn validate_limits(&self) -> Result<(), SettingsError> {
        let l = &self.limits;
        if !(1..=10_000_000).contains(&l.max_threads) {
            return Err(SettingsError::MaxThreads(l.max_threads));
        }
        let idle = Duration::from_secs(1)..=Duration::from_secs(86_400);
        if !idle.contains(&l.thread_idle_timeout) {
            return Err(SettingsError::ThreadIdleTimeout(l.thread_idle_timeout));
        }
        if l.max_messages_per_second > 1_000_000 {
            return Err(SettingsError::MaxMessagesPerSecond(
                l.max_messages_per_second,
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with(max_message_bytes: usize, max_update_bytes: usize) -> Settings {
        Settings {
            max_message_bytes,
            max_update_bytes,
            ..Settings::default()
        }
    }

    #[test]
    fn the_update_limit_stays_within_what_clients_accept() {
        assert!(Settings::default().validate().is_ok());
        assert_eq!(
            with(4096, CLIENT_RECEIVE_LIMIT + 1).validate(),
            Err(SettingsError::MaxUpdateBytes(CLIENT_RECEIVE_LIMIT + 1))
        );
        assert!(with(4096, MIN_UPDATE_BYTES - 1).validate().is_err());
    }

    #[test]
    fn the_largest_message_must_fit_one_update() {
        // The default limit grows to carry one message of the largest size.
        let auto = Settings::default_update_bytes(MAX_MESSAGE_BYTES);
        assert!(auto > DEFAULT_UPDATE_BYTES && auto <= CLIENT_RECEIVE_LIMIT);
        assert!(with(MAX_MESSAGE_BYTES, auto).validate().is_ok());
        let err = with(MAX_MESSAGE_BYTES, 64 << 10).validate().unwrap_err();
        assert!(matches!(err, SettingsError::MessageAboveUpdate { .. }));
        assert!(err.to_string().contains("--max-update-bytes"), "{err}");
    }
}
