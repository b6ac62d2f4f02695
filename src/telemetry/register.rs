//! Registering a metric on a server's registry: shared by the modules that
//! define metrics.

use prometheus::{IntCounterVec, Opts, Registry};

/// Registers `m` on `r` and hands it back.
pub(super) fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

/// A counter by one label whose values are known in advance: each starts at
/// zero, so a rate over it exists before the first event.
pub(super) fn counter_by(
    r: &Registry,
    (name, help): (&str, &str),
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    for v in values {
        c.with_label_values(&[*v]);
    }
    register(r, c)
}
