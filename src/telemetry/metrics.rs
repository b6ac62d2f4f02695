//! Every metric the server exports, in one registry that is passed in.
//!
//! Names follow the Prometheus conventions: prefix `chat_`, base units
//! (seconds, bytes), `_total` for counters. The per-client labels are bounded:
//! only the top-K laggards carry a `client` label, and it holds the public
//! handle, never the capability id. `docs/operations.md` lists each metric.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Most clients exported with a `client` label (the laggiest ones).
pub const TOP_LAGGARDS: usize = 10;

/// The server's metrics. Cheap to clone (every field is a handle).
#[derive(Clone)]
pub struct Metrics {
    /// Where everything below is registered; `/metrics` gathers it.
    pub registry: Registry,
    /// Messages committed (retries of accepted messages not counted again).
    pub messages_accepted: IntCounter,
    /// Writes refused, by reason: order, numerical, staleness, client, internal.
    pub messages_rejected: IntCounterVec,
    /// Clients connected (waiting for or holding a stream).
    pub clients_connected: IntGauge,
    /// Clients with an open stream that acknowledge in time.
    pub clients_active: IntGauge,
    /// Updates put on streams (heartbeats included).
    pub updates_sent: IntCounter,
    /// Messages per Update.
    pub update_messages: Histogram,
    /// Messages put on streams, summed over clients.
    pub messages_delivered: IntCounter,
    /// Commit → flush time of the oldest message of each non-empty Update:
    /// the one that decides whether the staleness bound held.
    pub delivery_latency: Histogram,
    /// Messages sent to a client but not acknowledged, observed at each ack.
    pub ack_lag_messages: Histogram,
    /// Time from an Update being sent to its acknowledgement.
    pub ack_lag_seconds: Histogram,
    /// The largest acknowledgement lag among clients, in messages.
    pub ack_lag_messages_max: IntGauge,
    /// The age of the oldest unacknowledged Update among clients.
    pub ack_lag_seconds_max: Gauge,
    /// Committed messages not yet flushed, summed over streaming clients.
    pub pending_messages: IntGauge,
    /// Current numerical error by conit tier ("default", or the thread id
    /// of a thread with its own bounds).
    pub numerical_error: IntGaugeVec,
    /// Order error measured by the latest admission decision, by conit tier.
    pub order_error: IntGaugeVec,
    /// Order errors measured at admission.
    pub order_error_observed: Histogram,
    /// The bound values in force, by bound and tier.
    pub bound: GaugeVec,
    /// Bound changes applied at runtime, by scope (default or thread).
    pub bound_changes: IntCounterVec,
    /// Broken promises, by bound: `staleness` (a message flushed later than
    /// its staleness after commit), `lease` (an Update after the previous
    /// Update's expiration time).
    pub bound_violations: IntCounterVec,
    /// Clients removed, by reason.
    pub clients_dropped: IntCounterVec,
    /// RPCs by method and gRPC status code.
    pub rpc_requests: IntCounterVec,
    /// RPC latency by method and gRPC status code (for streams: until the
    /// stream was opened or refused).
    pub rpc_duration: HistogramVec,
    /// Acknowledgement lag in messages of the laggiest clients, by handle.
    pub client_lag: IntGaugeVec,
    /// The message log's health and throughput, copied from its
    /// `StorageHealth` at each scrape.
    pub storage: StorageMetrics,
}

/// The message log's figures (see `crate::log::health::StorageHealth`).
#[derive(Clone)]
pub struct StorageMetrics {
    /// 1 while writes succeed, 0 from a failed write until one succeeds.
    pub healthy: IntGauge,
    /// Failed batch writes and failed recovery probes.
    pub write_errors: IntCounter,
    /// Messages answered INTERNAL_ERROR because storing them failed.
    pub failed_messages: IntCounter,
    /// Batches stored (one transaction and one fsync each).
    pub batches: IntCounter,
    /// Messages stored.
    pub messages: IntCounter,
    /// Time spent storing batches.
    pub commit_seconds: prometheus::Counter,
    /// The largest batch stored so far.
    pub batch_messages_max: IntGauge,
    /// Messages deleted by retention.
    pub retention_deleted: IntCounter,
    /// Failed retention or checkpoint passes.
    pub maintenance_errors: IntCounter,
}

impl StorageMetrics {
    fn new(r: &Registry) -> Self {
        let commit_seconds = prometheus::Counter::new(
            "chat_storage_commit_seconds_total",
            "Time spent storing batches (transaction and fsync).",
        )
        .expect("valid metric");
        r.register(Box::new(commit_seconds.clone()))
            .expect("unique metric");
        StorageMetrics {
            healthy: gauge(
                r,
                "chat_storage_healthy",
                "1 while the message log accepts writes, 0 from a failed write until one succeeds.",
            ),
            write_errors: counter(
                r,
                "chat_storage_write_errors_total",
                "Failed batch writes and failed recovery probes of the message log.",
            ),
            failed_messages: counter(
                r,
                "chat_storage_failed_messages_total",
                "Messages answered INTERNAL_ERROR because storing them failed.",
            ),
            batches: counter(
                r,
                "chat_storage_batches_total",
                "Batches stored by the message log (one transaction and one fsync each).",
            ),
            messages: counter(
                r,
                "chat_storage_messages_total",
                "Messages stored by the message log.",
            ),
            commit_seconds,
            batch_messages_max: gauge(
                r,
                "chat_storage_batch_messages_max",
                "The largest batch stored so far, in messages.",
            ),
            retention_deleted: counter(
                r,
                "chat_storage_retention_deleted_total",
                "Messages deleted by retention (count or age).",
            ),
            maintenance_errors: counter(
                r,
                "chat_storage_maintenance_errors_total",
                "Failed retention or checkpoint passes of the message log.",
            ),
        }
    }

    /// Copies the log's figures in (counters advance by the difference).
    pub fn observe(&self, h: &crate::log::health::StorageHealth) {
        use std::sync::atomic::Ordering::Relaxed;
        fn advance(c: &IntCounter, now: u64) {
            c.inc_by(now.saturating_sub(c.get()));
        }
        self.healthy.set(h.is_healthy() as i64);
        advance(&self.write_errors, h.write_errors_total.load(Relaxed));
        advance(&self.failed_messages, h.failed_messages_total.load(Relaxed));
        advance(&self.batches, h.batches_total.load(Relaxed));
        advance(&self.messages, h.messages_total.load(Relaxed));
        let secs = h.commit_micros_total.load(Relaxed) as f64 / 1e6;
        self.commit_seconds
            .inc_by((secs - self.commit_seconds.get()).max(0.0));
        self.batch_messages_max
            .set(h.max_batch_messages.load(Relaxed) as i64);
        advance(
            &self.retention_deleted,
            h.retention_deleted_total.load(Relaxed),
        );
        advance(
            &self.maintenance_errors,
            h.maintenance_errors_total.load(Relaxed),
        );
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// Seconds buckets from 1 ms to ~16 s.
fn seconds_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets")
}

/// Count buckets 0, 1, 2, 4, … 4096.
fn count_buckets() -> Vec<f64> {
    let mut b = vec![0.0];
    b.extend(prometheus::exponential_buckets(1.0, 2.0, 13).expect("valid buckets"));
    b
}

impl Metrics {
    /// A fresh registry with every metric, plus the process collector.
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector");
        let reasons = ["order", "numerical", "staleness", "client", "internal"];
        let messages_rejected = counter_vec(
            &r,
            "chat_messages_rejected_total",
            "Writes refused, by reason.",
            &["reason"],
        );
        for reason in reasons {
            messages_rejected.with_label_values(&[reason]);
        }
        let bound_violations = counter_vec(
            &r,
            "chat_bound_violations_total",
            "Promises broken: staleness = a message flushed later than its staleness bound after commit; lease = an Update sent after the previous Update expired.",
            &["bound"],
        );
        for b in ["staleness", "lease"] {
            bound_violations.with_label_values(&[b]);
        }
        let clients_dropped = counter_vec(
            &r,
            "chat_clients_dropped_total",
            "Clients removed, by reason.",
            &["reason"],
        );
        for reason in [
            "ack_timeout",
            "never_streamed",
            "slow_consumer",
            "stream_closed",
            "shutdown",
        ] {
            clients_dropped.with_label_values(&[reason]);
        }
        let bound_changes = counter_vec(
            &r,
            "chat_bound_changes_total",
            "Bound changes applied at runtime, by scope (default or thread).",
            &["scope"],
        );
        for scope in ["default", "thread"] {
            bound_changes.with_label_values(&[scope]);
        }
        let bound = GaugeVec::new(
            Opts::new(
                "chat_bound",
                "Bounds in force: staleness_seconds, numerical (messages), order (messages), by tier (default, or a thread with its own bounds).",
            ),
            &["bound", "tier"],
        )
        .expect("valid metric");
        r.register(Box::new(bound.clone())).expect("unique metric");
        let rpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "chat_rpc_duration_seconds",
                "RPC latency by method and gRPC code.",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
            &["method", "code"],
        )
        .expect("valid metric");
        r.register(Box::new(rpc_duration.clone()))
            .expect("unique metric");
        let ack_lag_seconds_max = Gauge::new(
            "chat_ack_lag_seconds_max",
            "Age of the oldest unacknowledged Update among clients.",
        )
        .expect("valid metric");
        r.register(Box::new(ack_lag_seconds_max.clone()))
            .expect("unique metric");
        Metrics {
            messages_accepted: counter(&r, "chat_messages_accepted_total", "Messages committed."),
            messages_rejected,
            clients_connected: gauge(&r, "chat_clients_connected", "Clients connected."),
            clients_active: gauge(
                &r,
                "chat_clients_active",
                "Clients streaming and acknowledging in time.",
            ),
            updates_sent: counter(
                &r,
                "chat_updates_sent_total",
                "Updates sent, heartbeats included.",
            ),
            update_messages: histogram(
                &r,
                "chat_update_messages",
                "Messages per Update.",
                count_buckets(),
            ),
            messages_delivered: counter(
                &r,
                "chat_messages_delivered_total",
                "Messages put on client streams, summed over clients.",
            ),
            delivery_latency: histogram(
                &r,
                "chat_delivery_latency_seconds",
                "Commit to flush time of the oldest message in each non-empty Update.",
                seconds_buckets(),
            ),
            ack_lag_messages: histogram(
                &r,
                "chat_ack_lag_messages",
                "Messages sent to a client and not yet acknowledged, at each acknowledgement.",
                count_buckets(),
            ),
            ack_lag_seconds: histogram(
                &r,
                "chat_ack_lag_seconds",
                "Time from an Update being sent to its acknowledgement.",
                seconds_buckets(),
            ),
            ack_lag_messages_max: gauge(
                &r,
                "chat_ack_lag_messages_max",
                "Largest number of messages sent to one client and not acknowledged.",
            ),
            ack_lag_seconds_max,
            pending_messages: gauge(
                &r,
                "chat_pending_messages",
                "Committed messages not yet flushed, summed over streaming clients.",
            ),
            numerical_error: gauge_vec(
                &r,
                "chat_conit_numerical_error",
                "Committed messages some active client has not acknowledged (largest conit of the tier).",
                &["tier"],
            ),
            order_error: gauge_vec(
                &r,
                "chat_conit_order_error",
                "Order error measured by the latest admission decision of the tier.",
                &["tier"],
            ),
            order_error_observed: histogram(
                &r,
                "chat_admission_order_error",
                "Order errors measured at admission.",
                count_buckets(),
            ),
            bound,
            bound_changes,
            bound_violations,
            clients_dropped,
            rpc_requests: counter_vec(
                &r,
                "chat_rpc_requests_total",
                "RPCs by method and gRPC code.",
                &["method", "code"],
            ),
            rpc_duration,
            client_lag: gauge_vec(
                &r,
                "chat_client_ack_lag_messages",
                "Acknowledgement lag in messages of the laggiest clients, by public handle.",
                &["client"],
            ),
            storage: StorageMetrics::new(&r),
            registry: r,
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
