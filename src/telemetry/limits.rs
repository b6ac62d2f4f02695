//! Metrics of the resource limits (`chat_limit_*`, `chat_threads`).

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Every `limit` label of [`LimitMetrics::refusals`].
pub const LIMITS: [&str; 4] = [
    "messages_per_second",
    "connects_per_second",
    "threads",
    "new_threads_per_minute",
];

/// Counts of refusals by limit, and the threads held.
#[derive(Clone)]
pub struct LimitMetrics {
    /// Requests refused with RESOURCE_EXHAUSTED, by `limit`.
    pub refusals: IntCounterVec,
    /// Threads the server holds in memory (what `--max-threads` caps).
    pub threads: IntGauge,
    /// Refusal log lines are limited to one a second (a client over its rate
    /// would otherwise turn each refused message into a log line): when the
    /// last one was written, in microseconds, and how many were left out.
    last_log: Arc<AtomicI64>,
    unlogged: Arc<AtomicU64>,
}

impl LimitMetrics {
    pub fn new(r: &Registry) -> Self {
        let refusals = IntCounterVec::new(
            Opts::new(
                "chat_limit_refusals_total",
                "Requests refused with RESOURCE_EXHAUSTED by a resource limit, by limit (messages_per_second, connects_per_second, threads, new_threads_per_minute).",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let threads = IntGauge::new(
            "chat_threads",
            "Threads held in memory: written within the thread idle timeout, or with messages some client has not acknowledged (capped by --max-threads).",
        )
        .expect("valid metric");
        r.register(Box::new(refusals.clone()))
            .expect("unique metric");
        r.register(Box::new(threads.clone()))
            .expect("unique metric");
        for l in LIMITS {
            refusals.with_label_values(&[l]);
        }
        LimitMetrics {
            refusals,
            threads,
            last_log: Arc::new(AtomicI64::new(i64::MIN)),
            unlogged: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts a refusal by `limit` at `now_micros`; returns `Some(n)` when it
    /// should be logged, `n` being the refusals left unlogged before it.
    pub fn refused(&self, limit: &str, now_micros: i64) -> Option<u64> {
        self.refusals.with_label_values(&[limit]).inc();
        let last = self.last_log.load(Ordering::Relaxed);
        if now_micros.saturating_sub(last) < 1_000_000
            || self
                .last_log
                .compare_exchange(last, now_micros, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.unlogged.swap(0, Ordering::Relaxed))
    }
}
