//! The cluster's metrics (`chat_nats_*`, `chat_cluster_*`): what a chat
//! node on a NATS JetStream stream measures of its publishes, its consumer
//! and the writes it forwards.
//!
//! They are registered in every storage mode (at zero outside `nats`), so a
//! dashboard or rule that names them parses everywhere; they move only on a
//! node with `--storage nats`.

use super::register::{counter_by, register};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Registry};

/// Why a publish attempt failed, as the `kind` label says it. Bounded: the
/// client library's error kinds, folded.
pub const PUBLISH_ERROR_KINDS: [&str; 5] = [
    "timeout",
    "no_stream",
    "connection",
    "wrong_last_sequence",
    "other",
];

/// A chat node's view of the stream. Cheap to clone (every field is a handle).
#[derive(Clone)]
pub struct ClusterMetrics {
    /// Publish → JetStream acknowledgement, per commit, resends included.
    pub publish_seconds: Histogram,
    /// Admission → a write's first publish: the time it waited behind its
    /// thread's earlier writes on this node.
    pub queue_seconds: Histogram,
    /// Writes per atomic batch JetStream stored (a thread's queued writes
    /// published in one round trip).
    pub batch_writes: Histogram,
    /// Publish attempts that failed, by kind ([`PUBLISH_ERROR_KINDS`]).
    pub publish_errors: IntCounterVec,
    /// Publishes sent again with the same `Nats-Msg-Id` after a failed
    /// attempt (JetStream stores such a message once).
    pub publish_retries: IntCounter,
    /// Publishes refused because the thread had a newer commit than the one
    /// admission was decided on (optimistic concurrency on the thread's
    /// subject), each followed by a new decision.
    pub order_conflicts: IntCounter,
    /// Stream commits this node has not applied yet (the stream's last
    /// sequence minus this node's), at the latest probe.
    pub consumer_lag_messages: IntGauge,
    /// Commit (stored in the stream) → applied by this node, per commit: the
    /// part of the staleness bound the cluster itself uses up.
    pub apply_delay_seconds: Histogram,
    /// Conflicts on a thread's subject by what followed
    /// ([`CONFLICT_OUTCOMES`]).
    pub publish_conflicts: IntCounterVec,
    /// Writes forwarded to their thread's owner node, by its answer
    /// ([`FORWARD_OUTCOMES`]).
    pub forwarded_writes: IntCounterVec,
}

/// What followed a conflict, as `chat_cluster_publish_conflicts_total`'s
/// `then` label says it.
pub const CONFLICT_OUTCOMES: [&str; 3] = ["retried", "refused", "gave_up"];

/// The answers to a forwarded write, as
/// `chat_cluster_forwarded_writes_total`'s `outcome` label says them.
pub const FORWARD_OUTCOMES: [&str; 6] = [
    "stored",
    "refused",
    "undecided",
    "failed",
    "no_owner",
    "no_answer",
];

impl ClusterMetrics {
    pub fn new(r: &Registry) -> Self {
        let publish_errors = counter_by(
            r,
            (
                "chat_nats_publish_errors_total",
                "JetStream publish attempts that failed, by kind (timeout, no_stream, connection, wrong_last_sequence, other).",
            ),
            "kind",
            &PUBLISH_ERROR_KINDS,
        );
        let (publish_conflicts, forwarded_writes) = cluster_counters(r);
        ClusterMetrics {
            publish_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "chat_nats_publish_seconds",
                        "Time from publishing a commit to JetStream's acknowledgement (stored on a quorum), resends included.",
                    )
                    .buckets(buckets()),
                )
                .expect("valid metric"),
            ),
            queue_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "chat_nats_queue_seconds",
                        "Time from a write's admission to its first publish: waiting behind its thread's earlier writes on this node.",
                    )
                    .buckets(buckets()),
                )
                .expect("valid metric"),
            ),
            batch_writes: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "chat_nats_batch_writes",
                        "Writes per atomic batch JetStream stored: one thread's queued writes published in one round trip.",
                    )
                    .buckets(vec![2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0]),
                )
                .expect("valid metric"),
            ),
            publish_errors,
            publish_retries: register(
                r,
                IntCounter::new(
                    "chat_nats_publish_retries_total",
                    "Publishes sent again with the same Nats-Msg-Id after a failed or unanswered attempt.",
                )
                .expect("valid metric"),
            ),
            order_conflicts: register(
                r,
                IntCounter::new(
                    "chat_nats_order_conflicts_total",
                    "Publishes refused because their thread had a newer commit than admission saw; decided again.",
                )
                .expect("valid metric"),
            ),
            consumer_lag_messages: register(
                r,
                IntGauge::new(
                    "chat_nats_consumer_lag_messages",
                    "Stream commits this node has not applied yet, at the latest probe (every 500 ms).",
                )
                .expect("valid metric"),
            ),
            apply_delay_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "chat_nats_apply_delay_seconds",
                        "Time from a commit being stored in the stream to this node applying it.",
                    )
                    .buckets(buckets()),
                )
                .expect("valid metric"),
            ),
            publish_conflicts,
            forwarded_writes,
        }
    }

    /// Counts a conflict under what followed it ([`CONFLICT_OUTCOMES`]).
    pub fn conflict(&self, then: &str) {
        self.publish_conflicts.with_label_values(&[then]).inc();
    }

    /// Counts `n` forwarded writes under the owner's answer
    /// ([`FORWARD_OUTCOMES`]).
    pub fn forwarded(&self, outcome: &str, n: usize) {
        self.forwarded_writes
            .with_label_values(&[outcome])
            .inc_by(n as u64);
    }

    /// Counts a failed publish attempt under its kind.
    pub fn publish_error(&self, kind: &str) {
        self.publish_errors.with_label_values(&[kind]).inc();
    }
}

/// Seconds from 0.5 ms to ~8 s: a loopback publish takes about a
/// millisecond, a leader election several seconds.
fn buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0005, 2.0, 15).expect("valid buckets")
}

/// The cluster's `chat_cluster_*` counters: publish conflicts and
/// forwarded writes.
fn cluster_counters(r: &Registry) -> (IntCounterVec, IntCounterVec) {
    let publish_conflicts = counter_by(
        r,
        (
            "chat_cluster_publish_conflicts_total",
            "Publishes JetStream refused because another node committed to the thread first (wrong last subject sequence), by what followed: retried after catching up, refused by a bound decided again, or gave up after too many in a row.",
        ),
        "then",
        &CONFLICT_OUTCOMES,
    );
    let forwarded_writes = counter_by(
        r,
        (
            "chat_cluster_forwarded_writes_total",
            "Writes this node forwarded to their thread's owner node to publish (see --nats-forward), by the owner's answer: stored, refused (order or numerical bound), undecided (then published here), failed, no_owner (no node took the forward: published here), or no_answer (none within 1 s: published here).",
        ),
        "outcome",
        &FORWARD_OUTCOMES,
    );
    (publish_conflicts, forwarded_writes)
}
