//! The gRPC server: the `ChatServer` service, the client registry, and the
//! flush scheduler, around the pure engine in `crate::consistency`.
//!
//! - [`hub`]: the shared state every RPC and the scheduler go through.
//! - [`service`]: the tonic service (request/response mapping only).
//! - [`outbox`]: each client's bounded outbound queue and stream.
//! - [`scheduler`]: the one task that wakes at the engine's next deadline.
//! - [`convert`]: wire types to and from core types.
//! - [`clock`]: the one place the wall clock is read.

pub mod clock;
pub mod convert;
pub mod hub;
pub mod outbox;
pub mod scheduler;
pub mod service;

use crate::admin;
use crate::consistency::{Engine, Settings};
use crate::log::{Log, memory::MemoryLog};
use crate::proto::chat_server_server::ChatServerServer;
use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// Where the message log lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// In memory: fast, and gone on restart.
    #[default]
    Memory,
}

/// Everything `run` needs besides its listeners.
#[derive(Debug, Clone)]
pub struct Config {
    /// The consistency tunables and bounds.
    pub settings: Settings,
    /// Bytes of Updates queued for one client before it is cut off.
    pub max_outbound_bytes: usize,
    /// How long shutdown waits for open RPCs before it stops anyway.
    pub shutdown_grace: Duration,
    pub storage: Storage,
    /// Bearer token required by mutating admin calls; required when the
    /// admin port listens beyond loopback.
    pub admin_token: Option<String>,
    /// Runtime control of the log filter (`PUT /api/v1/log-level`); `None`
    /// when the process's subscriber is not ours to change (tests).
    pub log_filter: Option<crate::telemetry::tracing_setup::LogFilter>,
}

impl std::fmt::Debug for crate::telemetry::tracing_setup::LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LogFilter").field(&self.current()).finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Settings::default(),
            max_outbound_bytes: 4 << 20,
            shutdown_grace: Duration::from_secs(5),
            storage: Storage::Memory,
            admin_token: None,
            log_filter: None,
        }
    }
}

/// The sockets the server serves on, bound by the caller (port 0 works).
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

/// Entries the in-memory log keeps (for history; older ones are forgotten).
const MEMORY_LOG_CAPACITY: usize = 100_000;

/// Serves until `shutdown` completes, then drains: flushes every pending
/// Update, ends the streams, and returns.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.settings.validate().context("invalid settings")?;
    let grpc_addr = listeners.grpc.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    if !admin_addr.ip().is_loopback() && config.admin_token.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!(
            "refusing to serve the admin API on non-loopback address {admin_addr} without --admin-token (it can change bounds)"
        );
    }
    let metrics = crate::telemetry::metrics::Metrics::new();

    let log: Arc<dyn Log> = match config.storage {
        Storage::Memory => Arc::new(MemoryLog::new(MEMORY_LOG_CAPACITY)),
    };
    let head = log.head()?;
    let recent = log.recent(config.settings.history)?;
    let engine = Engine::new(config.settings.clone(), head, recent);
    let hub = hub::Hub::new(engine, log, config.max_outbound_bytes, metrics.clone());

    let stop = CancellationToken::new();
    let ready = admin::Readiness::default();

    let scheduler = tokio::spawn(scheduler::run(hub.clone(), stop.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ChatServerServer<service::ChatService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let chat = ChatServerServer::new(service::ChatService::new(hub.clone(), stop.clone()));

    let grpc_stop = stop.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(chat)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listeners.grpc),
                grpc_stop.cancelled_owned(),
            ),
    );
    let admin_stop = stop.clone();
    let admin_state = admin::AdminState {
        ready: ready.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        token: config
            .admin_token
            .clone()
            .filter(|t| !t.is_empty())
            .map(Arc::from),
        log_filter: config
            .log_filter
            .clone()
            .unwrap_or_else(|| crate::telemetry::tracing_setup::LogFilter::detached("info")),
        started: std::time::Instant::now(),
    };
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        admin_state,
        admin_stop.cancelled_owned(),
    ));

    ready.set(true);
    tracing::info!(%grpc_addr, %admin_addr, "dyconit-chat serving");

    shutdown.await;
    tracing::info!("shutting down: flushing pending updates and ending streams");
    ready.set(false);
    health
        .set_not_serving::<ChatServerServer<service::ChatService>>()
        .await;
    hub.drain();
    stop.cancel();
    let grace = config.shutdown_grace;
    match tokio::time::timeout(grace, grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!(?grace, "open RPCs did not finish within the grace period"),
    }
    let _ = tokio::time::timeout(grace, admin).await;
    let _ = scheduler.await;
    tracing::info!("stopped");
    Ok(())
}
