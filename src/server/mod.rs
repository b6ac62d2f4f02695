//! The gRPC server: the `ChatServer` service, the client registry, and the
//! flush scheduler, around the pure engine in `crate::consistency`.
//!
//! - [`hub`]: the shared state every RPC and the scheduler go through.
//! - [`service`]: the tonic service (request/response mapping only).
//! - `grpc`: the gRPC listener with the chat, health and reflection services.
//! - [`updates`]: `ReceiveUpdates` served from pre-encoded, shared bytes.
//! - [`outbox`]: each client's bounded outbound queue and stream.
//! - [`scheduler`]: the one thread that wakes at the engine's next deadline.
//! - [`writer`]: the group-commit thread that makes messages durable.
//! - `signals`: what the load policy measures, recorded where it happens.
//! - [`cluster`]: a node of a cluster: publishes to and consumes the shared
//!   NATS JetStream stream (`--storage nats`).
//! - [`convert`]: wire types to and from core types.
//! - [`error`]: why the hub refused a request, in its own terms.
//! - `grants`: the thread permissions of clients whose token restricts them.
//! - `reflection`: gRPC server reflection (v1 and v1alpha) for tools.
//! - [`propagation`]: W3C `traceparent` from gRPC metadata and between nodes.
//! - [`otlp`]: the OTLP/gRPC trace exporter.

pub mod cluster;
pub mod convert;
pub mod error;
mod grants;
mod grpc;
pub mod hub;
pub mod listener;
pub mod otlp;
pub mod outbox;
pub mod policies;
pub mod propagation;
mod reflection;
pub mod scheduler;
pub mod service;
mod signals;
pub mod updates;
pub mod writer;

use crate::consistency::{Engine, Settings};
use crate::log::sqlite::{Maintenance, Retention, SqliteLog};
use crate::log::{Log, StorageHealth, memory::MemoryLog};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

pub(crate) use grpc::GrpcServer;

/// Everything [`crate::node::run`] needs besides its listeners.
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
    /// Where to write the bound addresses as JSON once serving (`serve
    /// --ready-file`), for programs that start the server on port 0.
    pub ready_file: Option<PathBuf>,
    /// The load policy: off unless `--load-policy` or `[policy.load]`.
    pub load_policy: policies::LoadSetting,
    /// The interest policy: off (`None`) unless `--interest-policy` or
    /// `[policy.interest]`.
    pub interest_policy: Option<crate::consistency::interest::InterestConfig>,
    /// The size policy: off (`None`) unless `--size-policy` or
    /// `[policy.size]`.
    pub size_policy: Option<crate::consistency::policy::SizeConfig>,
    /// The server's clock: the system clock, unless a test brings its own.
    pub clock: crate::clock::Clock,
    /// Connects one peer address may make per second (bursts of five
    /// seconds' worth); 0: no limit.
    pub max_connects_per_second: u32,
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
            ready_file: None,
            load_policy: policies::LoadSetting::default(),
            interest_policy: None,
            size_policy: None,
            clock: crate::clock::Clock::system(),
            max_connects_per_second: crate::net::rate::DEFAULT_CONNECTS_PER_SECOND,
        }
    }
}

/// The running storage machinery, stopped at the end of serving.
pub(crate) struct StorageTasks {
    /// The group-commit writer thread (durable storage only).
    writer: Option<std::thread::JoinHandle<()>>,
    /// The retention thread (durable storage with a retention policy).
    maintenance: Option<Maintenance>,
    /// The publisher and consumer of the shared stream (NATS storage).
    cluster: Option<cluster::Tasks>,
}

/// Opens the configured log and builds the hub (and, for durable storage,
/// starts the writer and retention threads).
pub(crate) async fn open_storage(
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
                config.clock.clone(),
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
                config.clock.clone(),
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

/// Entries the in-memory log keeps (for history; older ones are forgotten).
const MEMORY_LOG_CAPACITY: usize = 100_000;

impl StorageTasks {
    /// Waits (up to `grace`) for the writer to store what is queued and
    /// exit, and stops the retention thread. Call after the hub's
    /// `stop_writer`.
    pub(crate) async fn stop(self, grace: Duration) {
        let StorageTasks {
            writer,
            maintenance,
            cluster,
        } = self;
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
    }
}
