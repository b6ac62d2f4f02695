//! The gRPC server: the `ChatServer` service, the client registry, and the
//! flush scheduler, around the pure engine in `crate::consistency`.
//!
//! - [`hub`]: the shared state every RPC and the scheduler go through.
//! - [`service`]: the tonic service (request/response mapping only).
//! - [`updates`]: `ReceiveUpdates` served from pre-encoded, shared bytes.
//! - [`outbox`]: each client's bounded outbound queue and stream.
//! - [`scheduler`]: the one task that wakes at the engine's next deadline.
//! - [`writer`]: the group-commit thread that makes messages durable.
//! - [`cluster`]: a node of a cluster: publishes to and consumes the shared
//!   NATS JetStream stream (`--storage nats`).
//! - [`convert`]: wire types to and from core types.
//! - [`clock`]: the one place the wall clock is read.
//! - `reflection`: gRPC server reflection (v1 and v1alpha) for tools.

pub mod clock;
pub mod cluster;
pub mod convert;
pub mod hub;
pub mod listener;
pub mod outbox;
mod reflection;
pub mod scheduler;
pub mod service;
pub mod updates;
pub mod writer;

use crate::admin;
use crate::consistency::{Engine, Settings};
use crate::log::sqlite::{Maintenance, Retention, SqliteLog};
use crate::log::{Log, StorageHealth, memory::MemoryLog};
use crate::proto::chat_server_server::ChatServerServer;
use anyhow::Context;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the message log lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk in --data-dir (SQLite, WAL): an OK means the message is
    /// fsynced; history and sequence numbers survive restarts.
    #[default]
    Durable,
    /// In memory: fast, and gone on restart.
    Memory,
    /// In a NATS JetStream stream shared by every chat node of a cluster
    /// (--nats-url): one commit order for all nodes; an OK means the message
    /// is stored on a quorum of NATS servers.
    Nats,
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
    /// Which log stores messages. `Config::default()` says memory, so an
    /// embedding program or a test never writes files by accident; the
    /// `serve` command defaults to durable.
    pub storage: Storage,
    /// The directory of the durable log (created if missing).
    pub data_dir: PathBuf,
    /// What the durable log keeps (by count and age); everything if unset.
    pub retention: Retention,
    /// How often the retention pass runs.
    pub retention_interval: Duration,
    /// The NATS cluster and stream (`Storage::Nats`).
    pub nats: crate::log::nats::NatsOptions,
    /// The storage health counters `run` updates: the caller keeps a clone
    /// to read them (the metrics layer, tests).
    pub storage_health: Arc<StorageHealth>,
    /// Bearer token required by mutating admin calls; required when the
    /// admin port listens beyond loopback.
    pub admin_token: Option<String>,
    /// Runtime control of the log filter (`PUT /api/v1/log-level`); `None`
    /// when the process's subscriber is not ours to change (tests).
    pub log_filter: Option<crate::telemetry::tracing_setup::LogFilter>,
    /// Host names the admin port answers to besides IP addresses and
    /// `localhost` (DNS-rebinding defence).
    pub admin_hosts: Vec<String>,
    /// Checks bearer tokens on `Connect`; `None`: names are self-asserted
    /// (`x-chat-name`).
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// TLS for both ports, if configured (reloaded by the caller, e.g. on
    /// SIGHUP).
    pub tls: Option<Arc<crate::net::tls::TlsState>>,
    /// Connection cap and deadlines of the gRPC port.
    pub grpc_limits: crate::net::Limits,
    /// Connection cap and deadlines of the admin port.
    pub admin_limits: crate::net::Limits,
    /// HTTP/2 streams one gRPC connection may have open at once
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_connection: u32,
}

/// Default HTTP/2 streams per connection: a client needs one for its
/// Updates plus one per call in flight; the bench puts 100 clients on a
/// connection. An open stream costs the server about 8 KB (100,000 of
/// them took 820 MB), so this bounds one connection to about 8 MB.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 1024;

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
            data_dir: PathBuf::from("data"),
            retention: Retention::default(),
            retention_interval: Duration::from_secs(1),
            nats: Default::default(),
            storage_health: Arc::new(StorageHealth::default()),
            admin_token: None,
            log_filter: None,
            admin_hosts: Vec::new(),
            auth: None,
            tls: None,
            grpc_limits: crate::net::Limits::default(),
            admin_limits: crate::net::Limits {
                max_connections: crate::net::DEFAULT_MAX_ADMIN_CONNECTIONS,
                ..crate::net::Limits::default()
            },
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// The running storage machinery `run` stops at the end.
struct StorageTasks {
    /// The group-commit writer thread (durable storage only).
    writer: Option<std::thread::JoinHandle<()>>,
    /// The retention thread (durable storage with a retention policy).
    maintenance: Option<Maintenance>,
    /// The publisher and consumer of the shared stream (NATS storage).
    cluster: Option<cluster::Tasks>,
}

/// Opens the configured log and builds the hub (and, for durable storage,
/// starts the writer and retention threads).
async fn open_storage(
    config: &Config,
    health: &Arc<StorageHealth>,
    metrics: &crate::telemetry::metrics::Metrics,
) -> anyhow::Result<(Arc<hub::Hub>, StorageTasks)> {
    let settings = config.settings.clone();
    match config.storage {
        Storage::Memory => {
            let mut log = MemoryLog::new(MEMORY_LOG_CAPACITY);
            let engine = Engine::new(settings, log.head()?, log.recent(config.settings.history)?);
            let hub = hub::Hub::new(
                engine,
                hub::Sink::Immediate(Box::new(log)),
                config.max_outbound_bytes,
                metrics.clone(),
            );
            tracing::info!(storage = "memory", "message log in memory: lost on restart");
            Ok((
                hub,
                StorageTasks {
                    writer: None,
                    maintenance: None,
                    cluster: None,
                },
            ))
        }
        Storage::Nats => {
            let (hub, tasks) = cluster::open(config, health, metrics)
                .await
                .context("joining the NATS cluster")?;
            Ok((
                hub,
                StorageTasks {
                    writer: None,
                    maintenance: None,
                    cluster: Some(tasks),
                },
            ))
        }
        Storage::Durable => {
            let mut log = SqliteLog::open(&config.data_dir).context("opening the message log")?;
            let head = log.head().context("reading the message log")?;
            let recent = log
                .recent(config.settings.history)
                .context("reading the message log")?;
            tracing::info!(
                storage = "durable",
                path = %log.path().display(),
                head,
                history = recent.len(),
                "message log opened"
            );
            let engine = Engine::new(settings, head, recent);
            let hub = hub::Hub::new(
                engine,
                hub::Sink::Writer,
                config.max_outbound_bytes,
                metrics.clone(),
            );
            let writer = writer::spawn(hub.clone(), Box::new(log), head, health.clone())
                .context("starting the log writer thread")?;
            let maintenance = Maintenance::start(
                &config.data_dir,
                config.retention,
                config.retention_interval,
                health.clone(),
            );
            Ok((
                hub,
                StorageTasks {
                    writer: Some(writer),
                    maintenance: Some(maintenance),
                    cluster: None,
                },
            ))
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

/// The two ports' acceptors, their caps lowered to fit the open-files
/// limit (so the cap, not `accept`, refuses the connection too many).
fn acceptors(
    listeners: Listeners,
    config: &Config,
    metrics: &crate::telemetry::metrics::Metrics,
) -> (crate::net::Acceptor, crate::net::Acceptor) {
    use crate::net::{Acceptor, NetMetrics, Protocol};
    let net = NetMetrics::new(&metrics.registry);
    let (mut grpc, mut admin) = (config.grpc_limits, config.admin_limits);
    let fd_limit = crate::sys::raise_fd_limit();
    let scale =
        crate::net::fit_to_descriptors(grpc.max_connections + admin.max_connections, fd_limit);
    if scale < 1.0 {
        grpc.max_connections = ((grpc.max_connections as f64 * scale) as usize).max(1);
        admin.max_connections = ((admin.max_connections as f64 * scale) as usize).max(1);
        tracing::warn!(
            ?fd_limit,
            grpc = grpc.max_connections,
            admin = admin.max_connections,
            "connection caps lowered to fit the open-files limit"
        );
    }
    (
        Acceptor::new(listeners.grpc, grpc, Protocol::Http2, "grpc", net.clone()),
        Acceptor::new(listeners.admin, admin, Protocol::Bytes, "admin", net),
    )
}

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
    if config
        .admin_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        anyhow::bail!(
            "the admin token is blank: give a real secret, or none on a loopback address"
        );
    }
    if !admin_addr.ip().is_loopback() && config.admin_token.is_none() {
        anyhow::bail!(
            "refusing to serve the admin API on non-loopback address {admin_addr} without --admin-token (it can change bounds)"
        );
    }
    let metrics = crate::telemetry::metrics::Metrics::new();
    let (grpc_acceptor, admin_acceptor) = acceptors(listeners, &config, &metrics);

    let storage_health = config.storage_health.clone();
    let (hub, storage) = open_storage(&config, &storage_health, &metrics).await?;

    let stop = CancellationToken::new();
    let ready = admin::Readiness::default();

    let scheduler = tokio::spawn(scheduler::run(hub.clone(), stop.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ChatServerServer<service::ChatService>>()
        .await;
    let mut service = service::ChatService::new(hub.clone(), stop.clone());
    match &config.auth {
        Some(v) => {
            tracing::info!(keys = %v.source, "authentication on: Connect needs a JWT, names come from it");
            let m = crate::auth::AuthMetrics::new(&metrics.registry);
            service = service.with_auth(v.clone(), m);
        }
        None => tracing::warn!(
            "authentication is OFF: anyone who reaches the gRPC port may connect, and names are self-asserted (x-chat-name); use --auth-jwt-secret-file or --auth-jwks-file"
        ),
    }
    let chat = updates::ChatRoutes::new(service);

    let grpc_stop = stop.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(config.max_streams_per_connection)
            .add_service(health_service)
            .add_service(reflection::v1()?)
            .add_service(reflection::v1alpha()?)
            .add_service(chat)
            .serve_with_incoming_shutdown(
                listener::incoming(grpc_acceptor, config.tls.clone()),
                grpc_stop.cancelled_owned(),
            ),
    );
    let admin_stop = stop.clone();
    let admin_state = admin::AdminState {
        ready: ready.clone(),
        storage: storage_health.clone(),
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
        hosts: config.admin_hosts.clone().into(),
    };
    let admin = tokio::spawn(admin::serve(
        admin_acceptor,
        admin_state,
        admin_stop.cancelled_owned(),
        config.admin_limits.handshake_timeout,
        config.tls.clone(),
    ));

    ready.set(true);
    tracing::info!(%grpc_addr, %admin_addr, "dyconit-chat serving");

    shutdown.await;
    tracing::info!("shutting down: flushing pending updates and ending streams");
    ready.set(false);
    health
        .set_not_serving::<ChatServerServer<service::ChatService>>()
        .await;
    let grace = config.shutdown_grace;
    // What was accepted before the signal is stored, then delivered.
    if !hub.wait_settled(grace).await {
        tracing::warn!(?grace, "messages still being stored at shutdown");
    }
    hub.drain();
    stop.cancel();
    match tokio::time::timeout(grace, grpc).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!(?grace, "open RPCs did not finish within the grace period"),
    }
    let _ = tokio::time::timeout(grace, admin).await;
    let _ = scheduler.await;
    // No RPC is left to submit: the writer stores what is queued and exits.
    hub.stop_writer();
    let StorageTasks {
        writer,
        maintenance,
        cluster,
    } = storage;
    if let Some(c) = cluster {
        c.stop().await;
    }
    let joined = tokio::task::spawn_blocking(move || {
        if let Some(w) = writer {
            let _ = w.join();
        }
        if let Some(m) = maintenance {
            m.stop();
        }
    });
    if tokio::time::timeout(grace, joined).await.is_err() {
        tracing::warn!(
            ?grace,
            "the log writer did not finish within the grace period"
        );
    }
    tracing::info!("stopped");
    Ok(())
}
