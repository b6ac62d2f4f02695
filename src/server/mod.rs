//! The gRPC server: the `ChatServer` service, the client registry, and the
//! flush scheduler, around the pure engine in `crate::consistency`.
//!
//! - [`hub`]: the shared state every RPC and the scheduler go through.
//! - [`service`]: the tonic service (request/response mapping only).
//! - `grpc`: the gRPC listener with the chat, health and reflection services.
//! - [`updates`]: `ReceiveUpdates` served from pre-encoded, shared bytes.
//! - [`outbox`]: each client's bounded outbound queue and stream.
//! - [`scheduler`]: the one task that wakes at the engine's next deadline.
//! - [`writer`]: the group-commit thread that makes messages durable.
//! - [`convert`]: wire types to and from core types.
//! - [`error`]: why the hub refused a request, in its own terms.

pub mod convert;
pub mod error;
mod grpc;
pub mod hub;
pub mod outbox;
pub mod policies;
pub mod scheduler;
pub mod service;
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
    /// The storage health counters `run` updates: the caller keeps a clone
    /// to read them (the metrics layer, tests).
    pub storage_health: Arc<StorageHealth>,
    /// Bearer token required by mutating admin calls; required when the
    /// admin port listens beyond loopback.
    pub admin_token: Option<String>,
    /// Runtime control of the log filter (`PUT /api/v1/log-level`); `None`
    /// when the process's subscriber is not ours to change (tests).
    pub log_filter: Option<crate::telemetry::tracing_setup::LogFilter>,
    /// Where to write the bound addresses as JSON once serving (`serve
    /// --ready-file`), for programs that start the server on port 0.
    pub ready_file: Option<PathBuf>,
    /// The load policy: off unless `--load-policy` or `[policy.load]`.
    pub load_policy: policies::LoadSetting,
    /// The server's clock: the system clock, unless a test brings its own.
    pub clock: crate::clock::Clock,
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
            data_dir: PathBuf::from("data"),
            retention: Retention::default(),
            retention_interval: Duration::from_secs(1),
            storage_health: Arc::new(StorageHealth::default()),
            admin_token: None,
            log_filter: None,
            ready_file: None,
            load_policy: policies::LoadSetting::default(),
            clock: crate::clock::Clock::system(),
        }
    }
}

/// The running storage machinery, stopped at the end of serving.
pub(crate) struct StorageTasks {
    /// The group-commit writer thread (durable storage only).
    writer: Option<std::thread::JoinHandle<()>>,
    /// The retention thread (durable storage with a retention policy).
    maintenance: Option<Maintenance>,
}

/// Opens the configured log and builds the hub (and, for durable storage,
/// starts the writer and retention threads).
pub(crate) fn open_storage(
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
        } = self;
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
