//! Metrics of the listening ports, registered beside the server's own.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// Counters and gauges of both ports, labelled `port` = `grpc` | `admin`.
/// Cheap to clone (every field is a handle).
#[derive(Clone)]
pub struct NetMetrics {
    /// Connections open now.
    pub open: IntGaugeVec,
    /// Failed `accept` calls (typically: out of file descriptors).
    pub accept_errors: IntCounterVec,
    /// Times a connection had to wait because the cap was reached.
    pub cap_reached: IntCounterVec,
    /// Connections closed by a deadline, by `reason`
    /// (`handshake_timeout`, `idle_timeout`).
    pub timed_out: IntCounterVec,
    /// TLS handshakes that failed (bad or missing client certificate, not
    /// TLS at all, ...).
    pub tls_failures: IntCounterVec,
}

impl NetMetrics {
    /// Registers the metrics in `r` (once per registry).
    pub fn new(r: &Registry) -> NetMetrics {
        let open = IntGaugeVec::new(
            Opts::new("chat_connections_open", "Connections open, by port."),
            &["port"],
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let m = NetMetrics {
            accept_errors: counter(
                "chat_accept_errors_total",
                "Failed accepts (e.g. out of file descriptors), by port; each is followed by a pause.",
                &["port"],
            ),
            cap_reached: counter(
                "chat_connection_cap_reached_total",
                "Connections that waited in the listen backlog because the port's connection cap was reached.",
                &["port"],
            ),
            timed_out: counter(
                "chat_connections_timed_out_total",
                "Connections closed for not starting in time (handshake_timeout) or for going without requests (idle_timeout), by port and reason.",
                &["port", "reason"],
            ),
            tls_failures: counter(
                "chat_tls_handshake_failures_total",
                "TLS handshakes that failed (not TLS, no or a wrong client certificate, no common protocol), by port.",
                &["port"],
            ),
            open,
        };
        r.register(Box::new(m.open.clone())).expect("unique metric");
        for port in ["grpc", "admin"] {
            m.open.with_label_values(&[port]);
            m.accept_errors.with_label_values(&[port]);
            m.cap_reached.with_label_values(&[port]);
            m.tls_failures.with_label_values(&[port]);
            for reason in ["handshake_timeout", "idle_timeout"] {
                m.timed_out.with_label_values(&[port, reason]);
            }
        }
        m
    }
}
