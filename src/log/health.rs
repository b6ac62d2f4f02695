//! Storage health as plain atomics: the writer updates them, `/readyz` reads
//! `healthy`, and the metrics layer can export the counters (e.g. as
//! `chat_storage_healthy`, `chat_storage_write_errors_total`, ...) without
//! this module depending on a metrics crate.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Health and throughput counters of the message log. Shared as
/// `Arc<StorageHealth>`; every field is safe to read at any time.
#[derive(Debug)]
pub struct StorageHealth {
    /// False from a failed write until a later write or probe succeeds; the
    /// admin port reports not ready while false.
    pub healthy: AtomicBool,
    /// Failed writes: batches that could not be stored, and failed probes
    /// (recovery attempts) while unhealthy.
    pub write_errors_total: AtomicU64,
    /// Messages answered `INTERNAL_ERROR` because storing failed (their own
    /// batch, or an earlier pending one they were admitted behind).
    pub failed_messages_total: AtomicU64,
    /// Batches stored: one transaction and one fsync each (group commit).
    pub batches_total: AtomicU64,
    /// Messages stored.
    pub messages_total: AtomicU64,
    /// Time spent storing batches (transaction plus fsync), microseconds:
    /// divided by `batches_total` it gives the mean commit latency.
    pub commit_micros_total: AtomicU64,
    /// The largest batch stored so far, in messages.
    pub max_batch_messages: AtomicU64,
    /// Messages deleted by retention (count or age).
    pub retention_deleted_total: AtomicU64,
    /// Failed retention or checkpoint passes (they do not affect `healthy`).
    pub maintenance_errors_total: AtomicU64,
    /// The most recent storage error, for `/readyz` and operators.
    pub last_error: Mutex<Option<String>>,
    /// Set while a cluster node is left out by the other nodes (its
    /// acknowledgement reports do not reach them): not ready then, however
    /// well the log itself answers.
    pub excluded: AtomicBool,
}

impl Default for StorageHealth {
    fn default() -> Self {
        StorageHealth {
            healthy: AtomicBool::new(true),
            write_errors_total: AtomicU64::new(0),
            failed_messages_total: AtomicU64::new(0),
            batches_total: AtomicU64::new(0),
            messages_total: AtomicU64::new(0),
            commit_micros_total: AtomicU64::new(0),
            max_batch_messages: AtomicU64::new(0),
            retention_deleted_total: AtomicU64::new(0),
            maintenance_errors_total: AtomicU64::new(0),
            last_error: Mutex::new(None),
            excluded: AtomicBool::new(false),
        }
    }
}

impl StorageHealth {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst) && !self.excluded.load(Ordering::SeqCst)
    }

    /// Whether the node is left out of its cluster.
    pub fn is_excluded(&self) -> bool {
        self.excluded.load(Ordering::SeqCst)
    }

    /// Leaves the node out (`Some(why)`) or lets it back in (`None`).
    pub fn set_excluded(&self, why: Option<&str>) {
        if let Some(why) = why {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_owned());
        }
        self.excluded.store(why.is_some(), Ordering::SeqCst);
    }

    /// The most recent storage error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A batch of `messages` was stored in `micros`.
    pub fn record_batch(&self, messages: u64, micros: u64) {
        self.batches_total.fetch_add(1, Ordering::Relaxed);
        self.messages_total.fetch_add(messages, Ordering::Relaxed);
        self.commit_micros_total
            .fetch_add(micros, Ordering::Relaxed);
        self.max_batch_messages
            .fetch_max(messages, Ordering::Relaxed);
    }

    /// A write or probe failed with `error`. Returns true if this turned the
    /// storage unhealthy.
    pub fn record_error(&self, error: &str) -> bool {
        self.write_errors_total.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
        self.healthy.swap(false, Ordering::SeqCst)
    }

    /// `n` messages were answered `INTERNAL_ERROR` because storing failed.
    pub fn record_failed_messages(&self, n: u64) {
        self.failed_messages_total.fetch_add(n, Ordering::Relaxed);
    }

    /// A write or probe went through. Returns true if this recovered.
    pub fn record_healthy(&self) -> bool {
        !self.healthy.swap(true, Ordering::SeqCst)
    }

    /// A retention or checkpoint pass failed.
    pub fn record_maintenance_error(&self, error: &str) {
        self.maintenance_errors_total
            .fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
    }
}
