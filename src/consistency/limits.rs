//! The limits that keep one client from holding the server's memory or time:
//! the laggard rule, the thread caps (in total and new per client), and the
//! per-client message rate. Pure like the rest of the core: every check takes
//! the current server time.

use super::Seq;
use super::bounds::BoundsTable;
use super::conit::ConitLog;
use super::time::{Micros, duration_micros};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The limits' settings (part of [`super::Settings`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Most threads held in memory at once; a write that would add one more
    /// is refused.
    pub max_threads: usize,
    /// Most threads one client may add per minute (a token bucket with a
    /// burst of this many, refilled evenly over the minute); 0: no limit.
    pub max_new_threads_per_minute: u32,
    /// A thread without a commit for this long, and with nothing left that
    /// any client has not acknowledged, is forgotten (it no longer counts
    /// toward `max_threads`; its history stays in the log).
    pub thread_idle_timeout: Duration,
    /// Messages one client may send per second, on average; 0: no limit.
    pub max_messages_per_second: u32,
}

/// How many seconds of the message rate a client may send at once.
pub const MESSAGE_BURST_SECONDS: f64 = 5.0;

/// Default of [`Limits::max_threads`].
pub const DEFAULT_MAX_THREADS: usize = 10_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_threads: DEFAULT_MAX_THREADS,
            max_new_threads_per_minute: 60,
            thread_idle_timeout: Duration::from_secs(60),
            max_messages_per_second: 1000,
        }
    }
}

impl Limits {
    /// The message bucket's size: [`MESSAGE_BURST_SECONDS`] of the rate, at
    /// least one message.
    pub fn message_burst(&self) -> f64 {
        (self.max_messages_per_second as f64 * MESSAGE_BURST_SECONDS).max(1.0)
    }
}

/// Which limit refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The client is above its message rate; a token comes after `wait_micros`.
    MessageRate { per_second: u32, wait_micros: i64 },
    /// The server holds `max` threads already.
    Threads { max: usize },
    /// The client added its `per_minute` new threads already.
    NewThreads { per_minute: u32 },
}

impl Limit {
    /// The `limit` label of the refusal metric.
    pub fn label(self) -> &'static str {
        match self {
            Limit::MessageRate { .. } => "messages_per_second",
            Limit::Threads { .. } => "threads",
            Limit::NewThreads { .. } => "new_threads_per_minute",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Limit::MessageRate {
                per_second,
                wait_micros,
            } => write!(
                f,
                "message rate limit: at most {per_second} messages per second per client \
                 (bursts of {}); send again in {} ms",
                (per_second as f64 * MESSAGE_BURST_SECONDS).max(1.0) as u64,
                (wait_micros + 999) / 1000
            ),
            Limit::Threads { max } => write!(
                f,
                "thread limit: the server holds {max} active threads; write to an existing \
                 thread, or later when idle threads are freed"
            ),
            Limit::NewThreads { per_minute } => write!(
                f,
                "new-thread limit: at most {per_minute} new threads per minute per client"
            ),
        }
    }
}

/// A token bucket: up to `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Micros,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Micros) -> Self {
        TokenBucket {
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token at `now`, or says how many microseconds until one is
    /// there. A clock that went back refills nothing.
    pub fn take(&mut self, rate: f64, burst: f64, now: Micros) -> Result<(), i64> {
        let elapsed = now.0.saturating_sub(self.at.0).max(0) as f64 / 1e6;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err((((1.0 - self.tokens) / rate) * 1e6).ceil() as i64)
    }

    /// True when the bucket has refilled completely by `now`: it is then
    /// the same as a fresh one and need not be kept.
    pub fn is_full(&self, rate: f64, burst: f64, now: Micros) -> bool {
        let elapsed = now.0.saturating_sub(self.at.0).max(0) as f64 / 1e6;
        self.tokens + elapsed * rate >= burst
    }
}

/// One client's buckets, made on first use.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientBuckets {
    messages: Option<TokenBucket>,
    new_threads: Option<TokenBucket>,
}

impl ClientBuckets {
    /// Takes a message token, if the rate is limited.
    pub fn take_message(&mut self, limits: &Limits, now: Micros) -> Result<(), Limit> {
        let per_second = limits.max_messages_per_second;
        if per_second == 0 {
            return Ok(());
        }
        let rate = per_second as f64;
        let burst = limits.message_burst();
        self.messages
            .get_or_insert_with(|| TokenBucket::full(burst, now))
            .take(rate, burst, now)
            .map_err(|wait_micros| Limit::MessageRate {
                per_second,
                wait_micros,
            })
    }

    /// Takes a new-thread token, if new threads are limited.
    pub fn take_new_thread(&mut self, limits: &Limits, now: Micros) -> Result<(), Limit> {
        let per_minute = limits.max_new_threads_per_minute;
        if per_minute == 0 {
            return Ok(());
        }
        let burst = per_minute as f64;
        self.new_threads
            .get_or_insert_with(|| TokenBucket::full(burst, now))
            .take(burst / 60.0, burst, now)
            .map_err(|_| Limit::NewThreads { per_minute })
    }
}

/// The threads the server holds, with their last commit time: what the
/// thread caps count. A thread leaves when it has been idle for the idle
/// timeout and no client has anything of it left to acknowledge (its conit
/// record is gone); it comes back with its next write.
#[derive(Debug, Default)]
pub struct ThreadRegistry {
    last_commit: HashMap<Arc<str>, Micros>,
    /// When [`ThreadRegistry::sweep`] next looks for idle threads.
    next_sweep: Micros,
}

impl ThreadRegistry {
    pub fn len(&self) -> usize {
        self.last_commit.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_commit.is_empty()
    }

    pub fn contains(&self, thread: &str) -> bool {
        self.last_commit.contains_key(thread)
    }

    /// Records a commit to `thread` at `at`.
    pub fn touch(&mut self, thread: &Arc<str>, at: Micros) {
        match self.last_commit.get_mut(&**thread) {
            Some(t) => *t = (*t).max(at),
            None => {
                self.last_commit.insert(thread.clone(), at);
            }
        }
    }

    /// Forgets the threads idle for `idle` whose conit has no record left,
    /// at most every quarter of `idle` (a scan of every thread) unless
    /// `force`d. Returns how many were forgotten.
    pub fn sweep(
        &mut self,
        now: Micros,
        idle: Duration,
        conits: &HashMap<Arc<str>, ConitLog>,
        force: bool,
    ) -> usize {
        if now < self.next_sweep && !force {
            return 0;
        }
        let step = (idle / 4).max(Duration::from_millis(100));
        self.next_sweep = now.plus(step);
        let before = self.last_commit.len();
        let cutoff = now.0.saturating_sub(duration_micros(idle));
        self.last_commit
            .retain(|t, at| at.0 > cutoff || conits.contains_key(t));
        before - self.last_commit.len()
    }

    /// When the next sweep is due.
    pub fn next_sweep(&self) -> Micros {
        self.next_sweep
    }
}

/// Where a client stands, for the laggard rule.
#[derive(Debug, Clone, Copy)]
pub struct Lag {
    /// The highest commit it acknowledged.
    pub acked_pos: Seq,
    /// The highest commit sent to it.
    pub delivered: Seq,
    /// When its oldest unacknowledged Update was sent, if any.
    pub oldest_unacked: Option<Micros>,
}

/// The laggard rule: a streaming client is a laggard when an Update sent to
/// it has gone unacknowledged for longer than `ack_timeout` while it has at
/// least half of some thread's numerical bound of that thread's messages
/// sent and unacknowledged.
///
/// Such a client acknowledges now and then (so the ack timeout, which only
/// asks for progress, never fires) but never catches up: the server sends
/// it Updates faster than it acknowledges them. It sits at the low end of
/// the numerical error and holds every writer of its threads at or near
/// `NUMERICAL_ERROR`, and its unacknowledged messages are kept for it. A
/// client that keeps up acknowledges each Update within a round trip, far
/// inside the ack timeout. Half the bound, not the whole: a writer held back
/// lets the laggard's count sink just below the bound and rise again with
/// each acknowledgement, so it is rarely at the bound when looked at.
///
/// Cheap for a client that keeps up: no thread is looked at unless an
/// Update is overdue.
pub fn is_laggard(
    c: &Lag,
    conits: &HashMap<Arc<str>, ConitLog>,
    bounds: &BoundsTable,
    ack_timeout: Duration,
    now: Micros,
) -> bool {
    let overdue = c
        .oldest_unacked
        .is_some_and(|sent| now.since(sent) > ack_timeout);
    overdue
        && conits.iter().any(|(t, log)| {
            let behind = log.count_between(c.acked_pos, c.delivered);
            behind > 0 && behind.saturating_mul(2) >= bounds.for_thread(t).numerical
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Micros = Micros(1_700_000_000_000_000);

    fn at(ms: i64) -> Micros {
        Micros(T0.0 + ms * 1000)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = TokenBucket::full(3.0, T0);
        for _ in 0..3 {
            assert_eq!(b.take(10.0, 3.0, T0), Ok(()));
        }
        // One token every 100 ms at 10 per second.
        assert_eq!(b.take(10.0, 3.0, T0), Err(100_000));
        assert_eq!(b.take(10.0, 3.0, at(50)), Err(50_000));
        assert_eq!(b.take(10.0, 3.0, at(100)), Ok(()));
        // A clock that went back refills nothing.
        assert!(b.take(10.0, 3.0, at(0)).is_err());
        assert!(!b.is_full(10.0, 3.0, at(200)));
        assert!(b.is_full(10.0, 3.0, at(400)));
    }

    #[test]
    fn client_buckets_are_off_at_zero() {
        let limits = Limits {
            max_messages_per_second: 0,
            max_new_threads_per_minute: 0,
            ..Limits::default()
        };
        let mut b = ClientBuckets::default();
        for _ in 0..100_000 {
            assert!(b.take_message(&limits, T0).is_ok());
            assert!(b.take_new_thread(&limits, T0).is_ok());
        }
    }

    #[test]
    fn new_threads_refill_over_the_minute() {
        let limits = Limits {
            max_new_threads_per_minute: 6,
            ..Limits::default()
        };
        let mut b = ClientBuckets::default();
        for _ in 0..6 {
            assert!(b.take_new_thread(&limits, T0).is_ok());
        }
        let refused = b.take_new_thread(&limits, T0);
        assert_eq!(refused, Err(Limit::NewThreads { per_minute: 6 }));
        assert!(b.take_new_thread(&limits, at(9_000)).is_err());
        assert!(b.take_new_thread(&limits, at(10_000)).is_ok());
    }

    #[test]
    fn a_laggard_has_an_update_overdue_and_half_a_bound_unacknowledged() {
        use super::super::Bounds;
        let bounds = BoundsTable::new(Bounds {
            numerical: 8,
            ..Bounds::default()
        })
        .unwrap();
        let mut conits: HashMap<Arc<str>, ConitLog> = HashMap::new();
        let log = conits.entry("t".into()).or_default();
        for seq in 1..=10 {
            log.push(seq, T0);
        }
        let timeout = Duration::from_secs(3);
        let lag = |acked_pos, oldest_ms: Option<i64>| Lag {
            acked_pos,
            delivered: 10,
            oldest_unacked: oldest_ms.map(at),
        };
        let now = at(10_000);
        // Far behind with an Update older than the timeout.
        assert!(is_laggard(
            &lag(6, Some(6_999)),
            &conits,
            &bounds,
            timeout,
            now
        ));
        // Not overdue: it may still be catching up.
        assert!(!is_laggard(
            &lag(0, Some(7_000)),
            &conits,
            &bounds,
            timeout,
            now
        ));
        assert!(!is_laggard(&lag(0, None), &conits, &bounds, timeout, now));
        // Overdue, but less than half the bound behind.
        assert!(!is_laggard(
            &lag(7, Some(0)),
            &conits,
            &bounds,
            timeout,
            now
        ));
    }

    #[test]
    fn the_registry_forgets_only_idle_threads_without_records() {
        let mut r = ThreadRegistry::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        r.touch(&a, T0);
        r.touch(&b, T0);
        r.touch(&c, at(50_000));
        let mut conits = HashMap::new();
        conits.insert(b.clone(), ConitLog::default());
        let idle = Duration::from_secs(60);
        assert_eq!(r.sweep(at(59_999), idle, &conits, true), 0);
        // `a` is idle; `b` still has a record some client needs; `c` is recent.
        assert_eq!(r.sweep(at(60_000), idle, &conits, true), 1);
        assert!(!r.contains("a") && r.contains("b") && r.contains("c"));
        // Not forced: no second scan before a quarter of the idle time.
        conits.clear();
        assert_eq!(r.sweep(at(60_001), idle, &conits, false), 0);
        assert_eq!(r.sweep(at(200_000), idle, &conits, false), 2);
        assert!(r.is_empty());
    }
}
