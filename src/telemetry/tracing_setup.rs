//! The process-wide log and trace pipeline, set up once by `main`:
//!
//! - logs: `tracing-subscriber`'s formatter, behind a filter that the admin
//!   API can replace at runtime (`PUT /api/v1/log-level`);
//! - traces: when an OTLP endpoint is configured, every RPC span goes to it
//!   through a batch exporter (bounded queue, spans dropped rather than
//!   waited for, so a dead collector never slows the server).
//!
//! RPC spans (target [`RPC_SPAN_TARGET`]) are for the exporter only: log
//! lines do not carry them. Without an exporter nothing wants them, so they
//! are never built; building and formatting one per acknowledgement cost
//! the server about 6% of its CPU at 20,000 acknowledgements a second.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, reload};

/// A function that installs a filter string, or says why it cannot.
type ApplyFilter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Replaces the log filter at runtime. Cloned into the admin server.
#[derive(Clone)]
pub struct LogFilter {
    /// Applies a filter string (tracing `EnvFilter` syntax).
    apply: ApplyFilter,
    /// The filter in force, for `GET`-style reporting.
    current: Arc<std::sync::Mutex<String>>,
}

impl LogFilter {
    /// A filter control that changes nothing (tests that own no subscriber).
    pub fn detached(initial: &str) -> Self {
        LogFilter {
            apply: Arc::new(|f| EnvFilter::try_new(f).map(|_| ()).map_err(|e| e.to_string())),
            current: Arc::new(std::sync::Mutex::new(initial.to_owned())),
        }
    }

    /// Sets a new filter; returns the old one.
    pub fn set(&self, filter: &str) -> Result<String, String> {
        (self.apply)(filter)?;
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        Ok(std::mem::replace(&mut cur, filter.to_owned()))
    }

    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    /// The OTLP pipeline, if an endpoint was configured.
    provider: Option<SdkTracerProvider>,
    pub log_filter: LogFilter,
}

/// The target of the one span per RPC (`crate::server::service`).
pub const RPC_SPAN_TARGET: &str = "dyconit_chat::rpc";

/// Spans exported when tracing is on: this crate's, at info and above.
fn span_targets() -> Targets {
    Targets::new().with_target("dyconit_chat", tracing::Level::INFO)
}

/// A trace pipeline to export RPC spans through, built by the transport
/// layer (`crate::server::otlp::trace_export`, OTLP over gRPC).
pub struct TraceExport {
    pub provider: SdkTracerProvider,
    /// Where the spans go, for the log line that says so.
    pub endpoint: String,
}

/// Installs the global subscriber. `traces` turns trace export on.
pub fn init(filter: &str, traces: Option<TraceExport>) -> anyhow::Result<Telemetry> {
    let env =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    let (env, handle) = reload::Layer::new(env);
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        // Colour codes only on a terminal, not in journals or log files.
        .with_ansi(std::io::stdout().is_terminal())
        .with_filter(
            env.and(
                filter_fn(|m| !(m.is_span() && m.target() == RPC_SPAN_TARGET))
                    // Without a hint the pair would have none, and every
                    // library's trace-level span would be built to be
                    // filtered out one by one.
                    .with_max_level_hint(LevelFilter::TRACE),
            ),
        );
    let (provider, endpoint) = match traces {
        Some(t) => (Some(t.provider), Some(t.endpoint)),
        None => (None, None),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("dyconit-chat"))
            .with_filter(span_targets())
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .context("installing the log subscriber")?;
    if let Some(ep) = endpoint {
        tracing::info!(endpoint = ep.as_str(), "exporting traces over OTLP");
    }
    let log_filter = LogFilter {
        apply: Arc::new(move |f| {
            let new = EnvFilter::try_new(f).map_err(|e| e.to_string())?;
            handle.reload(new).map_err(|e| e.to_string())
        }),
        current: Arc::new(std::sync::Mutex::new(filter.to_owned())),
    };
    Ok(Telemetry {
        provider,
        log_filter,
    })
}

impl Telemetry {
    /// Flushes and stops the exporter, giving up after a short while so a
    /// dead collector cannot hold up shutdown.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let done = tokio::task::spawn_blocking(move || {
                p.shutdown_with_timeout(Duration::from_secs(2))
            });
            match tokio::time::timeout(Duration::from_secs(3), done).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "trace exporter shutdown"),
                _ => tracing::warn!("trace exporter did not shut down in time; spans may be lost"),
            }
        }
    }
}
