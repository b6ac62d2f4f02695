//! Metrics, logs and traces.
//!
//! - [`metrics`]: the Prometheus registry and every `chat_*` metric (the
//!   registry is created per server and passed in; nothing is global).
//! - [`limits`]: the resource limits' refusals and the threads held.
//! - [`tracing_setup`]: the log subscriber, its runtime-adjustable filter,
//!   and the optional OTLP trace pipeline (its gRPC exporter is built in
//!   `crate::server::otlp`).
//! - [`cluster_metrics`]: a cluster node's `chat_nats_*` and `chat_cluster_*` metrics.
//! - [`scheduler_thread`]: the flush scheduler thread's CPU time and
//!   run-queue wait, read from `/proc` at each scrape.
//! - `register`: the registering helpers the metric modules share.

pub mod cluster_metrics;
pub mod limits;
pub mod metrics;
mod register;
pub mod scheduler_thread;
pub mod tracing_setup;
