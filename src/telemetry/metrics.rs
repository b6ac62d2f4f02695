//! Every metric the server exports, in one registry that is passed in.
//!
//! Names follow the Prometheus conventions: prefix `chat_`, base units
//! (seconds, bytes), `_total` for counters. The per-client labels are bounded:
//! only the top-K laggards carry a `client` label, and it holds the public
//! handle, never the capability id. `docs/operations.md` lists each metric.

use super::register::{counter_by, register};
use crate::consistency::{DropReason, Rejection};
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
    /// What the policies measure and decide.
    pub policy: PolicyMetrics,
    /// The flush scheduler's lateness and what is done about it.
    pub scheduler: SchedulerMetrics,
    /// A cluster node's publishes and consumer (`chat_nats_*`).
    pub cluster: super::cluster_metrics::ClusterMetrics,
    /// Refusals by the resource limits, and the threads held.
    pub limits: super::limits::LimitMetrics,
}

/// The flush scheduler's timeliness (`chat_flush_*`); its lateness is one
/// of the load policy's signals.
#[derive(Clone)]
pub struct SchedulerMetrics {
    /// How late the flush scheduler ran after the engine's earliest
    /// deadline, at each run.
    pub lateness: Histogram,
    /// The scheduler's recent delay allowance: flushes come due this long
    /// before their bound where it exceeds the fixed safety margin.
    pub lead: Gauge,
    /// Scheduler polls run by a request because the scheduler thread was
    /// late for them.
    pub polls_taken_over: IntCounter,
    /// The flush scheduler thread's CPU time and run-queue wait.
    pub thread: super::scheduler_thread::SchedulerThreadTimes,
}

impl SchedulerMetrics {
    fn new(r: &Registry) -> Self {
        SchedulerMetrics {
            lateness: histogram(
                r,
                (
                    "chat_flush_lateness_seconds",
                    "How late the flush scheduler ran after the earliest deadline it had (one of the load policy's two signals).",
                ),
                prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
            ),
            lead: float_gauge(
                r,
                (
                    "chat_flush_lead_seconds",
                    "The largest delay of the last 8 s between a flush falling due and the scheduler running it (a busy machine, or commits made deliverable late by the store), and half as much again: flushes come due this long before their staleness bound where it exceeds the fixed safety margin (at most half the bound).",
                ),
            ),
            polls_taken_over: counter(
                r,
                (
                    "chat_flush_polls_taken_over_total",
                    "Flush scheduler polls run by a request (an acknowledgement, a write, a stored batch) that found the scheduler thread more than 3 ms late for them.",
                ),
            ),
            thread: register(r, super::scheduler_thread::SchedulerThreadTimes::new()),
        }
    }
}

/// The policies' signals and decisions (`chat_policy_*`).
#[derive(Clone)]
pub struct PolicyMetrics {
    /// The pressure a policy measured last, by policy (its target is 1/2 of
    /// the safety margin by default; see docs/operations.md).
    pub pressure: GaugeVec,
    /// The load policy's signals as measured last, by signal
    /// (`flush_lateness` in safety margins, `write_age` in shares of the
    /// staleness bound); the pressure is the larger.
    pub signal: GaugeVec,
    /// The factor a policy scales the bounds by (1 = the operator's), by
    /// policy.
    pub scale: GaugeVec,
    /// 1 while a policy wants to widen the bounds further but is at its
    /// ceiling, or finds that widening saves no work, by policy.
    pub at_ceiling: IntGaugeVec,
    /// Steps a policy took, by policy and direction (raise, lower).
    pub steps: IntCounterVec,
    /// Streaming clients that take part in at least one thread (the
    /// interest policy flushes them at its own bounds there).
    pub interest_clients: IntGauge,
    /// (client, thread) pairs flushed at the thread's own bounds by the
    /// interest policy; every other pair gets the looser bounds.
    pub interest_pairs: IntGauge,
}

impl PolicyMetrics {
    fn new(r: &Registry) -> Self {
        let steps = counter_vec(
            r,
            (
                "chat_policy_steps_total",
                "Bound changes made by a policy, by policy and step (raise = widened, lower = narrowed back).",
            ),
            &["policy", "step"],
        );
        for step in ["raise", "lower"] {
            steps.with_label_values(&["load", step]);
        }
        let m = PolicyMetrics {
            pressure: float_gauge_vec(
                r,
                (
                    "chat_policy_pressure",
                    "The pressure a policy measured last (1 = the bounds about to be broken), by policy.",
                ),
                &["policy"],
            ),
            signal: float_gauge_vec(
                r,
                (
                    "chat_policy_signal",
                    "The load policy's signals as measured last: flush_lateness in safety margins, write_age in shares of the staleness bound (90th percentiles of a second).",
                ),
                &["signal"],
            ),
            scale: float_gauge_vec(
                r,
                (
                    "chat_policy_scale",
                    "The factor a policy scales the bounds by (1 = the operator's bounds), by policy.",
                ),
                &["policy"],
            ),
            at_ceiling: gauge_vec(
                r,
                (
                    "chat_policy_at_ceiling",
                    "1 while a policy would widen the bounds further but is at its ceiling, or finds that widening saves no work, by policy.",
                ),
                &["policy"],
            ),
            steps,
            interest_clients: gauge(
                r,
                (
                    "chat_policy_interest_clients",
                    "Streaming clients the interest policy sees taking part in at least one thread.",
                ),
            ),
            interest_pairs: gauge(
                r,
                (
                    "chat_policy_interest_pairs",
                    "(client, thread) pairs the interest policy flushes at the thread's own bounds.",
                ),
            ),
        };
        m.export_initial();
        m
    }

    /// Exported from the start, so dashboards and alerts have a series
    /// whether or not the policy is on.
    fn export_initial(&self) {
        self.pressure.with_label_values(&["load"]).set(0.0);
        for signal in ["flush_lateness", "write_age"] {
            self.signal.with_label_values(&[signal]).set(0.0);
        }
        self.scale.with_label_values(&["load"]).set(1.0);
        self.at_ceiling.with_label_values(&["load"]).set(0);
        self.scale.with_label_values(&["interest"]).set(1.0);
        self.scale.with_label_values(&["size"]).set(1.0);
        for step in ["raise", "lower"] {
            self.steps.with_label_values(&["size", step]);
        }
    }
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
        let commit_seconds = register(
            r,
            prometheus::Counter::new(
                "chat_storage_commit_seconds_total",
                "Time spent storing batches (transaction and fsync).",
            )
            .expect("valid metric"),
        );
        StorageMetrics {
            healthy: gauge(
                r,
                (
                    "chat_storage_healthy",
                    "1 while the message log accepts writes, 0 from a failed write until one succeeds.",
                ),
            ),
            write_errors: counter(
                r,
                (
                    "chat_storage_write_errors_total",
                    "Failed batch writes and failed recovery probes of the message log.",
                ),
            ),
            failed_messages: counter(
                r,
                (
                    "chat_storage_failed_messages_total",
                    "Messages answered INTERNAL_ERROR because storing them failed.",
                ),
            ),
            batches: counter(
                r,
                (
                    "chat_storage_batches_total",
                    "Batches stored by the message log (one transaction and one fsync each).",
                ),
            ),
            messages: counter(
                r,
                (
                    "chat_storage_messages_total",
                    "Messages stored by the message log.",
                ),
            ),
            commit_seconds,
            batch_messages_max: gauge(
                r,
                (
                    "chat_storage_batch_messages_max",
                    "The largest batch stored so far, in messages.",
                ),
            ),
            retention_deleted: counter(
                r,
                (
                    "chat_storage_retention_deleted_total",
                    "Messages deleted by retention (count or age).",
                ),
            ),
            maintenance_errors: counter(
                r,
                (
                    "chat_storage_maintenance_errors_total",
                    "Failed retention or checkpoint passes of the message log.",
                ),
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

/// A metric's name and help text: the table below holds one per metric, so
/// `Metrics::new` reads as a list of what is registered.
type Spec = (&'static str, &'static str);

fn counter(r: &Registry, (name, help): Spec) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(r: &Registry, (name, help): Spec, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(r: &Registry, (name, help): Spec) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

fn float_gauge(r: &Registry, (name, help): Spec) -> Gauge {
    register(r, Gauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(r: &Registry, (name, help): Spec, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn float_gauge_vec(r: &Registry, (name, help): Spec, labels: &[&str]) -> GaugeVec {
    register(
        r,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(r: &Registry, (name, help): Spec, buckets: Vec<f64>) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(r, Histogram::with_opts(opts).expect("valid metric"))
}

fn histogram_vec(
    r: &Registry,
    (name, help): Spec,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(r, HistogramVec::new(opts, labels).expect("valid metric"))
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

/// The `bound` label values of `chat_bound_violations_total`.
pub const VIOLATED_BOUNDS: [&str; 2] = ["staleness", "lease"];
/// The `scope` label values of `chat_bound_changes_total`.
pub const CHANGE_SCOPES: [&str; 2] = ["default", "thread"];

const MESSAGES_ACCEPTED: Spec = ("chat_messages_accepted_total", "Messages committed.");
const MESSAGES_REJECTED: Spec = ("chat_messages_rejected_total", "Writes refused, by reason.");
const CLIENTS_CONNECTED: Spec = ("chat_clients_connected", "Clients connected.");
const CLIENTS_ACTIVE: Spec = (
    "chat_clients_active",
    "Clients streaming and acknowledging in time.",
);
const UPDATES_SENT: Spec = (
    "chat_updates_sent_total",
    "Updates sent, heartbeats included.",
);
const UPDATE_MESSAGES: Spec = ("chat_update_messages", "Messages per Update.");
const MESSAGES_DELIVERED: Spec = (
    "chat_messages_delivered_total",
    "Messages put on client streams, summed over clients.",
);
const DELIVERY_LATENCY: Spec = (
    "chat_delivery_latency_seconds",
    "Commit to flush time of the oldest message in each non-empty Update.",
);
const ACK_LAG_MESSAGES: Spec = (
    "chat_ack_lag_messages",
    "Messages sent to a client and not yet acknowledged, at each acknowledgement.",
);
const ACK_LAG_SECONDS: Spec = (
    "chat_ack_lag_seconds",
    "Time from an Update being sent to its acknowledgement.",
);
const ACK_LAG_MESSAGES_MAX: Spec = (
    "chat_ack_lag_messages_max",
    "Largest number of messages sent to one client and not acknowledged.",
);
const ACK_LAG_SECONDS_MAX: Spec = (
    "chat_ack_lag_seconds_max",
    "Age of the oldest unacknowledged Update among clients.",
);
const PENDING_MESSAGES: Spec = (
    "chat_pending_messages",
    "Committed messages not yet flushed, summed over streaming clients.",
);
const NUMERICAL_ERROR: Spec = (
    "chat_conit_numerical_error",
    "Committed messages some active client has not acknowledged (largest conit of the tier).",
);
const ORDER_ERROR: Spec = (
    "chat_conit_order_error",
    "Order error measured by the latest admission decision of the tier.",
);
const ORDER_ERROR_OBSERVED: Spec = (
    "chat_admission_order_error",
    "Order errors measured at admission.",
);
const BOUND: Spec = (
    "chat_bound",
    "Bounds in force: staleness_seconds, numerical (messages), order (messages), by tier (default, or a thread with its own bounds).",
);
const BOUND_CHANGES: Spec = (
    "chat_bound_changes_total",
    "Bound changes applied at runtime, by scope (default or thread).",
);
const BOUND_VIOLATIONS: Spec = (
    "chat_bound_violations_total",
    "Promises broken: staleness = a message flushed later than its staleness bound after commit; lease = an Update sent after the previous Update expired.",
);
const CLIENTS_DROPPED: Spec = ("chat_clients_dropped_total", "Clients removed, by reason.");
const RPC_REQUESTS: Spec = ("chat_rpc_requests_total", "RPCs by method and gRPC code.");
const RPC_DURATION: Spec = (
    "chat_rpc_duration_seconds",
    "RPC latency by method and gRPC code.",
);
const CLIENT_LAG: Spec = (
    "chat_client_ack_lag_messages",
    "Acknowledgement lag in messages of the laggiest clients, by public handle.",
);

/// Seconds buckets from 0.1 ms to ~3 s, for RPC latencies.
fn rpc_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")
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
        let drop_reasons = DropReason::ALL.map(DropReason::as_str);
        let method_code = &["method", "code"];
        Metrics {
            messages_accepted: counter(&r, MESSAGES_ACCEPTED),
            messages_rejected: counter_by(&r, MESSAGES_REJECTED, "reason", &Rejection::REASONS),
            clients_connected: gauge(&r, CLIENTS_CONNECTED),
            clients_active: gauge(&r, CLIENTS_ACTIVE),
            updates_sent: counter(&r, UPDATES_SENT),
            update_messages: histogram(&r, UPDATE_MESSAGES, count_buckets()),
            messages_delivered: counter(&r, MESSAGES_DELIVERED),
            delivery_latency: histogram(&r, DELIVERY_LATENCY, seconds_buckets()),
            ack_lag_messages: histogram(&r, ACK_LAG_MESSAGES, count_buckets()),
            ack_lag_seconds: histogram(&r, ACK_LAG_SECONDS, seconds_buckets()),
            ack_lag_messages_max: gauge(&r, ACK_LAG_MESSAGES_MAX),
            ack_lag_seconds_max: float_gauge(&r, ACK_LAG_SECONDS_MAX),
            pending_messages: gauge(&r, PENDING_MESSAGES),
            numerical_error: gauge_vec(&r, NUMERICAL_ERROR, &["tier"]),
            order_error: gauge_vec(&r, ORDER_ERROR, &["tier"]),
            order_error_observed: histogram(&r, ORDER_ERROR_OBSERVED, count_buckets()),
            bound: float_gauge_vec(&r, BOUND, &["bound", "tier"]),
            bound_changes: counter_by(&r, BOUND_CHANGES, "scope", &CHANGE_SCOPES),
            bound_violations: counter_by(&r, BOUND_VIOLATIONS, "bound", &VIOLATED_BOUNDS),
            clients_dropped: counter_by(&r, CLIENTS_DROPPED, "reason", &drop_reasons),
            rpc_requests: counter_vec(&r, RPC_REQUESTS, method_code),
            rpc_duration: histogram_vec(&r, RPC_DURATION, method_code, rpc_buckets()),
            client_lag: gauge_vec(&r, CLIENT_LAG, &["client"]),
            storage: StorageMetrics::new(&r),
            policy: PolicyMetrics::new(&r),
            scheduler: SchedulerMetrics::new(&r),
            cluster: super::cluster_metrics::ClusterMetrics::new(&r),
            limits: super::limits::LimitMetrics::new(&r),
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
