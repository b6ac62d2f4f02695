//! The `serve` command's flags, environment variables and TOML config file,
//! merged into a [`crate::server::Config`]. Precedence: flag or environment
//! variable, then the config file, then the built-in default.

use crate::consistency::bounds::BoundsOverride;
use crate::consistency::interest::InterestConfig;
use crate::consistency::policy::{LoadConfig, SizeConfig};
use crate::consistency::{Bounds, BoundsTable, Settings};
use crate::log::nats::NatsOptions;
use crate::log::sqlite::Retention;
use crate::server::policies::LoadSetting;
use crate::server::{Config, Storage};
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::consistency::time::parse_duration;

mod limits;
pub use limits::LimitArgs;

/// Flags of `dyconit-chat serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address of the gRPC ChatServer service [default: 127.0.0.1:50051]
    #[arg(long, env = "DYCONIT_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin HTTP port (/healthz, /readyz) [default: 127.0.0.1:9090]
    #[arg(long, env = "DYCONIT_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Once serving, write the bound addresses to FILE as JSON
    /// ({"grpc": "127.0.0.1:50051", "admin": "127.0.0.1:9090", "pid": N});
    /// written atomically, removed at shutdown. For scripts and supervisors
    /// that start the server on port 0
    #[arg(long, env = "DYCONIT_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Default staleness bound: longest commit-to-delivery time, and the oldest a
    /// message's timestamp may be on arrival [default: 500ms]
    #[arg(long, env = "DYCONIT_STALENESS", value_name = "DUR", value_parser = parse_duration)]
    pub staleness: Option<Duration>,
    /// Default numerical bound: most messages of a thread some active client has
    /// not acknowledged; writes beyond it get NUMERICAL_ERROR [default: 256]
    #[arg(long, env = "DYCONIT_NUMERICAL", value_name = "N")]
    pub numerical: Option<u64>,
    /// Default order bound: most commits a writer has not seen (plus its own
    /// earlier messages not yet arrived); writes beyond it get ORDER_ERROR [default: 32]
    #[arg(long, env = "DYCONIT_ORDER", value_name = "N")]
    pub order: Option<u64>,
    /// Lease of each Update (expirationTime - currentTime); a heartbeat Update is
    /// sent at least every half lease [default: 10s]
    #[arg(long, env = "DYCONIT_LEASE", value_name = "DUR", value_parser = parse_duration)]
    pub lease: Option<Duration>,
    /// How long Updates may stay unacknowledged, or a connected client may wait
    /// before ReceiveUpdates, before it is dropped [default: 5s]
    #[arg(long, env = "DYCONIT_ACK_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    pub ack_timeout: Option<Duration>,
    /// Most recent messages sent to a client in its first Update [default: 50]
    #[arg(long, env = "DYCONIT_HISTORY", value_name = "N")]
    pub history: Option<usize>,
    /// Longest message contents accepted, in bytes [default: 4096]
    #[arg(long, env = "DYCONIT_MAX_MESSAGE_BYTES", value_name = "N")]
    pub max_message_bytes: Option<usize>,
    /// How far in the future a message timestamp may be [default: 1s]
    #[arg(long, env = "DYCONIT_MAX_CLOCK_SKEW", value_name = "DUR", value_parser = parse_duration)]
    pub max_clock_skew: Option<Duration>,
    /// Largest Update sent, in bytes: a flush or a history holding more goes
    /// out as several consecutive Updates. At most 4194304, the receive limit
    /// of gRPC clients by default [default: 1048576, or more if one message
    /// of --max-message-bytes needs it]
    #[arg(long, env = "DYCONIT_MAX_UPDATE_BYTES", value_name = "N")]
    pub max_update_bytes: Option<usize>,
    /// A client is disconnected with RESOURCE_EXHAUSTED when a new flush for
    /// it comes while more than this many bytes of earlier Updates are still
    /// unread (it stopped reading) [default: 4194304]
    #[arg(long, env = "DYCONIT_MAX_OUTBOUND_BYTES", value_name = "N")]
    pub max_outbound_bytes: Option<usize>,
    /// Where messages are kept: durable (SQLite in --data-dir; an OK means
    /// the message is on disk) or memory (lost on restart) [default: durable]
    #[arg(long, env = "DYCONIT_STORAGE", value_enum)]
    pub storage: Option<Storage>,
    /// Directory of the durable message log, created if missing; one server
    /// per directory [default: ./data]
    #[arg(long, env = "DYCONIT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep at most this many most recent messages in the durable log; older
    /// ones are deleted in the background [default: keep all]
    #[arg(long, env = "DYCONIT_RETENTION_MESSAGES", value_name = "N")]
    pub retention_messages: Option<u64>,
    /// Delete messages older than this from the durable log, in the
    /// background (the newest message is always kept) [default: keep all]
    #[arg(long, env = "DYCONIT_RETENTION_AGE", value_name = "DUR", value_parser = parse_duration)]
    pub retention_age: Option<Duration>,
    /// Bearer token required by mutating admin API calls (PUT, DELETE) and
    /// by client listings beyond the 20 laggiest; required when
    /// --admin-listen is not a loopback address; must not be blank
    #[arg(
        long,
        env = "DYCONIT_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// A host name the admin port may be addressed by (in `Host`), besides
    /// its IP addresses and localhost; repeat for several. Requests for any
    /// other name are refused (DNS-rebinding defence)
    #[arg(
        long = "admin-host",
        env = "DYCONIT_ADMIN_HOSTS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub admin_hosts: Vec<String>,
    /// OTLP/gRPC endpoint to export traces to (e.g. http://127.0.0.1:4317);
    /// tracing is off when neither this nor OTEL_EXPORTER_OTLP_ENDPOINT is set
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Most gRPC connections open at once; more wait in the listen backlog
    /// (lowered to fit the open-files limit) [default: 10000]
    #[arg(long, env = "DYCONIT_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most HTTP/2 streams (calls in flight) on one gRPC connection
    /// [default: 1024]
    #[arg(long, env = "DYCONIT_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
    pub max_streams_per_connection: Option<u32>,
    /// How long a new connection (either port) has to send its first request
    /// (HTTP/2 preface, or an admin request head) [default: 10s]
    #[arg(long, env = "DYCONIT_HANDSHAKE_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// How long a gRPC connection may go without a request before it is
    /// closed (PINGs do not count) [default: 5m]
    #[arg(long, env = "DYCONIT_IDLE_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Serve TLS on both ports with this certificate chain (PEM); needs
    /// --tls-key. Both files are read again on SIGHUP
    #[arg(
        long,
        env = "DYCONIT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(
        long,
        env = "DYCONIT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs (PEM): mutual TLS
    #[arg(
        long,
        env = "DYCONIT_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Require a JWT on Connect (`authorization: Bearer <token>`), HS256
    /// signed with the secret in FILE (at least 32 bytes); the display name
    /// comes from its `name` (or `sub`) claim. `dyconit-chat token` makes one
    #[arg(
        long,
        env = "DYCONIT_AUTH_JWT_SECRET_FILE",
        value_name = "FILE",
        conflicts_with = "auth_jwks_file"
    )]
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// Require a JWT on Connect signed (RS256 or ES256) with a key of the
    /// JWK set in FILE (JSON, as an identity provider publishes it)
    #[arg(long, env = "DYCONIT_AUTH_JWKS_FILE", value_name = "FILE")]
    pub auth_jwks_file: Option<PathBuf>,
    /// Turn the load policy on: under pressure (the flush scheduler running
    /// late, or writes arriving close to their staleness bound) it widens
    /// staleness, numerical and order together, up to 5s,
    /// 4096 and 4096 by default ([policy.load] in the config file sets
    /// target, max_staleness, max_numerical, max_order), and narrows them
    /// back when the pressure passes
    #[arg(long, env = "DYCONIT_LOAD_POLICY")]
    pub load_policy: bool,
    /// Turn the interest policy on: a client is flushed at a thread's own
    /// staleness only on threads it takes part in (wrote to within the last
    /// 60s, or its latest message went to), and at 10x the staleness on the
    /// others, so a member of one busy room among many gets far fewer
    /// Updates ([policy.interest] sets window, recent, factor)
    #[arg(long, env = "DYCONIT_INTEREST_POLICY")]
    pub interest_policy: bool,
    /// Turn the size policy on: a thread's staleness and numerical grow
    /// with its active readers (clients that wrote to it within the last
    /// 60s or last wrote there), 2x per tenfold above 10 readers, at most
    /// 8x ([policy.size] sets from, per_decade, max_factor)
    #[arg(long, env = "DYCONIT_SIZE_POLICY")]
    pub size_policy: bool,
    /// TOML config file: any of the settings of this command (snake_case keys), plus
    /// per-thread bounds in [threads."THREAD-ID"] tables and policy settings in
    /// [policy.load], [policy.interest] and [policy.size]
    #[arg(long, env = "DYCONIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    // The flattened groups come last: each sets the help heading of every
    // flag after it.
    /// The NATS cluster (with --storage nats); boxed, as most runs leave
    /// it unset.
    #[command(flatten)]
    pub nats: Box<NatsArgs>,
    /// Thread caps and message and Connect rates.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Flags of `serve` for a cluster node (`--storage nats`).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Cluster (--storage nats)")]
pub struct NatsArgs {
    /// With --storage nats: the NATS servers, comma-separated
    /// (nats://host:4222,...; tls:// for TLS) [default: nats://127.0.0.1:4222]
    #[arg(
        long,
        env = "DYCONIT_NATS_URL",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    pub nats_url: Vec<String>,
    /// With --storage nats: the JetStream stream every chat node of the
    /// cluster shares; created if missing, checked if present [default: CHAT]
    #[arg(long, env = "DYCONIT_NATS_STREAM", value_name = "NAME")]
    pub nats_stream: Option<String>,
    /// This chat node's name in logs and its NATS connection [default: the host name]
    #[arg(long, env = "DYCONIT_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// NATS credentials file (user JWT and NKey seed)
    #[arg(long, env = "DYCONIT_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// NATS user (with --nats-password)
    #[arg(long, env = "DYCONIT_NATS_USER", value_name = "USER")]
    pub nats_user: Option<String>,
    /// NATS password (with --nats-user)
    #[arg(
        long,
        env = "DYCONIT_NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// CA certificate (PEM) to verify the NATS servers; turns TLS on
    #[arg(long, env = "DYCONIT_NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// Client certificate (PEM) for NATS mutual TLS (with --nats-key)
    #[arg(long, env = "DYCONIT_NATS_CERT", value_name = "FILE")]
    pub nats_cert: Option<PathBuf>,
    /// Client key (PEM) for NATS mutual TLS (with --nats-cert)
    #[arg(long, env = "DYCONIT_NATS_KEY", value_name = "FILE")]
    pub nats_key: Option<PathBuf>,
    /// Replicas of the stream when this node creates it [default: 3 if the
    /// NATS cluster has 3 or more servers, else 1]
    #[arg(long, env = "DYCONIT_NATS_REPLICAS", value_name = "N")]
    pub nats_replicas: Option<usize>,
    /// Longest wait for a commit through NATS before the writer is answered
    /// INTERNAL_ERROR (and for connecting at start-up) [default: 5s]
    #[arg(long, env = "DYCONIT_NATS_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    pub nats_timeout: Option<Duration>,
    /// Most writes of one thread published together as one atomic
    /// JetStream batch (one round trip and one order check for all of
    /// them; needs nats-server 2.12+ and a stream that allows atomic
    /// publishing); 1 publishes one write at a time [default: 100]
    #[arg(long, env = "DYCONIT_NATS_BATCH", value_name = "N")]
    pub nats_batch: Option<usize>,
    /// Which threads' writes this node sends to the thread's owner node to
    /// publish: contended (where racing nodes cost refusals: a write
    /// refused after a conflict within the last second), all, or off
    /// [default: contended]
    #[arg(long, env = "DYCONIT_NATS_FORWARD", value_name = "WHICH")]
    pub nats_forward: Option<crate::log::nats::Forward>,
}

/// The config file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub staleness: Option<Duration>,
    pub numerical: Option<u64>,
    pub order: Option<u64>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub lease: Option<Duration>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub ack_timeout: Option<Duration>,
    pub history: Option<usize>,
    pub max_message_bytes: Option<usize>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub max_clock_skew: Option<Duration>,
    pub max_update_bytes: Option<usize>,
    pub max_outbound_bytes: Option<usize>,
    pub storage: Option<Storage>,
    pub data_dir: Option<PathBuf>,
    pub retention_messages: Option<u64>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub retention_age: Option<Duration>,
    pub admin_token: Option<String>,
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    pub otlp_endpoint: Option<String>,
    pub max_connections: Option<usize>,
    pub max_streams_per_connection: Option<u32>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub auth_jwt_secret_file: Option<PathBuf>,
    pub auth_jwks_file: Option<PathBuf>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub handshake_timeout: Option<Duration>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub idle_timeout: Option<Duration>,
    pub max_threads: Option<usize>,
    pub max_new_threads_per_minute: Option<u32>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub thread_idle_timeout: Option<Duration>,
    pub max_messages_per_second: Option<u32>,
    pub max_connects_per_second: Option<u32>,
    /// Per-thread bound overrides; "" is the main room.
    #[serde(default)]
    pub threads: BTreeMap<String, BoundsOverride>,
    /// Policy settings.
    #[serde(default)]
    pub policy: PolicyFile,
}

/// The `[policy.*]` tables of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub load: Option<LoadPolicyFile>,
    pub interest: Option<InterestPolicyFile>,
    pub size: Option<SizePolicyFile>,
}

/// `[policy.size]`: present means on unless `enabled = false`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizePolicyFile {
    pub enabled: Option<bool>,
    pub from: Option<u64>,
    pub per_decade: Option<f64>,
    pub max_factor: Option<f64>,
}

impl SizePolicyFile {
    /// The policy from this table (`None`: off), switched on by `flag` too.
    fn setting(&self, flag: bool) -> anyhow::Result<Option<SizeConfig>> {
        let d = SizeConfig::default();
        let config = SizeConfig {
            from: self.from.unwrap_or(d.from),
            per_decade: self.per_decade.unwrap_or(d.per_decade),
            max_factor: self.max_factor.unwrap_or(d.max_factor),
        };
        config.validate().context("invalid [policy.size]")?;
        Ok((flag || self.enabled.unwrap_or(true)).then_some(config))
    }
}

/// `[policy.interest]`: present means on unless `enabled = false`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterestPolicyFile {
    pub enabled: Option<bool>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub window: Option<Duration>,
    pub recent: Option<usize>,
    pub factor: Option<f64>,
}

impl InterestPolicyFile {
    /// The policy from this table (`None`: off), switched on by `flag` too.
    fn setting(&self, flag: bool) -> anyhow::Result<Option<InterestConfig>> {
        let d = InterestConfig::default();
        let config = InterestConfig {
            window: self.window.unwrap_or(d.window),
            recent: self.recent.unwrap_or(d.recent),
            factor: self.factor.unwrap_or(d.factor),
        };
        config.validate().context("invalid [policy.interest]")?;
        Ok((flag || self.enabled.unwrap_or(true)).then_some(config))
    }
}

/// `[policy.load]`: present means on unless `enabled = false`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadPolicyFile {
    pub enabled: Option<bool>,
    pub target: Option<f64>,
    #[serde(
        default,
        with = "crate::consistency::bounds::humantime_serde_compat::option"
    )]
    pub max_staleness: Option<Duration>,
    pub max_numerical: Option<u64>,
    pub max_order: Option<u64>,
}

impl LoadPolicyFile {
    /// The setting from this table, switched on by `flag` too.
    fn setting(&self, flag: bool) -> anyhow::Result<LoadSetting> {
        let d = LoadConfig::default();
        let config = LoadConfig {
            target: self.target.unwrap_or(d.target),
            max_staleness: self.max_staleness.unwrap_or(d.max_staleness),
            max_numerical: self.max_numerical.unwrap_or(d.max_numerical),
            max_order: self.max_order.unwrap_or(d.max_order),
            ..d
        };
        config.validate().context("invalid [policy.load]")?;
        Ok(LoadSetting {
            enabled: flag || self.enabled.unwrap_or(true),
            config,
        })
    }
}

/// The merged result: the addresses to bind and the server config.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Where traces go, if anywhere.
    pub otlp_endpoint: Option<String>,
    pub config: Config,
}

impl ServeArgs {
    /// Merges flags, the config file (if any) and defaults, and validates.
    /// The consistency settings: flags over the file over the defaults.
    fn settings(&self, file: &FileConfig) -> anyhow::Result<Settings> {
        let d = Settings::default();
        let db = Bounds::default();
        let bounds = Bounds {
            staleness: self.staleness.or(file.staleness).unwrap_or(db.staleness),
            numerical: self.numerical.or(file.numerical).unwrap_or(db.numerical),
            order: self.order.or(file.order).unwrap_or(db.order),
        };
        let mut table = BoundsTable::new(bounds).context("invalid default bounds")?;
        for (thread, o) in &file.threads {
            table
                .set_thread(thread, *o)
                .with_context(|| format!("invalid bounds for thread {thread:?}"))?;
        }
        let max_message_bytes = self
            .max_message_bytes
            .or(file.max_message_bytes)
            .unwrap_or(d.max_message_bytes);
        let settings = Settings {
            bounds: table,
            lease: self.lease.or(file.lease).unwrap_or(d.lease),
            ack_timeout: self
                .ack_timeout
                .or(file.ack_timeout)
                .unwrap_or(d.ack_timeout),
            history: self.history.or(file.history).unwrap_or(d.history),
            max_message_bytes,
            max_clock_skew: self
                .max_clock_skew
                .or(file.max_clock_skew)
                .unwrap_or(d.max_clock_skew),
            max_update_bytes: self
                .max_update_bytes
                .or(file.max_update_bytes)
                .unwrap_or_else(|| Settings::default_update_bytes(max_message_bytes)),
            limits: self.limits.limits(file),
        };
        settings.validate()?;
        Ok(settings)
    }

    /// What the durable log keeps, validated.
    fn retention(&self, file: &FileConfig) -> anyhow::Result<Retention> {
        let retention = Retention {
            messages: self.retention_messages.or(file.retention_messages),
            age: self.retention_age.or(file.retention_age),
        };
        if retention.messages == Some(0) {
            bail!("retention messages 0 would delete everything; leave it unset to keep all");
        }
        if retention.age.is_some_and(|a| a < Duration::from_secs(1)) {
            bail!("retention age is below 1s");
        }
        Ok(retention)
    }

    /// The load policy: `--load-policy` and the `[policy.load]` table.
    fn load_policy(&self, file: &FileConfig) -> anyhow::Result<LoadSetting> {
        Ok(match &file.policy.load {
            Some(table) => table.setting(self.load_policy)?,
            None => LoadSetting {
                enabled: self.load_policy,
                ..LoadSetting::default()
            },
        })
    }

    /// The interest policy: `--interest-policy` and `[policy.interest]`.
    fn interest_policy(&self, file: &FileConfig) -> anyhow::Result<Option<InterestConfig>> {
        match &file.policy.interest {
            Some(table) => table.setting(self.interest_policy),
            None => Ok(self.interest_policy.then(InterestConfig::default)),
        }
    }

    /// The size policy: `--size-policy` and `[policy.size]`.
    fn size_policy(&self, file: &FileConfig) -> anyhow::Result<Option<SizeConfig>> {
        match &file.policy.size {
            Some(table) => table.setting(self.size_policy),
            None => Ok(self.size_policy.then(SizeConfig::default)),
        }
    }

    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| config_file_error(path, &text, &e))?
            }
            None => FileConfig::default(),
        };
        let settings = self.settings(&file)?;
        let dc = Config::default();
        let max_outbound_bytes = self
            .max_outbound_bytes
            .or(file.max_outbound_bytes)
            .unwrap_or(dc.max_outbound_bytes);
        if max_outbound_bytes < 1024 {
            bail!("max outbound bytes {max_outbound_bytes} is below 1024");
        }
        let retention = self.retention(&file)?;
        let load_policy = self.load_policy(&file)?;
        let interest_policy = self.interest_policy(&file)?;
        let size_policy = self.size_policy(&file)?;
        let storage = self.storage.or(file.storage).unwrap_or_default();
        let (grpc_limits, admin_limits, max_streams_per_connection) =
            self.connection_limits(&file, &dc)?;
        let tls = self.tls(&file)?;
        let auth = self.auth(&file)?;
        let nats = self.nats.options()?;
        let max_connects_per_second = self
            .limits
            .connects_per_second(&file, dc.max_connects_per_second);
        Ok(Resolved {
            otlp_endpoint: self
                .otlp_endpoint
                .clone()
                .or(file.otlp_endpoint)
                .filter(|e| !e.is_empty()),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or(([127, 0, 0, 1], 50051).into()),
            admin_listen: self
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or(([127, 0, 0, 1], 9090).into()),
            config: Config {
                settings,
                max_outbound_bytes,
                storage,
                data_dir: self
                    .data_dir
                    .clone()
                    .or(file.data_dir)
                    .unwrap_or(dc.data_dir.clone()),
                retention,
                nats,
                admin_token: self.admin_token.clone().or(file.admin_token),
                admin_hosts: if self.admin_hosts.is_empty() {
                    file.admin_hosts.clone()
                } else {
                    self.admin_hosts.clone()
                },
                grpc_limits,
                admin_limits,
                max_streams_per_connection,
                tls,
                auth,
                ready_file: self.ready_file.clone(),
                load_policy,
                interest_policy,
                size_policy,
                max_connects_per_second,
                ..dc
            },
        })
    }
}

impl ServeArgs {
    /// The token verifier, from the secret or the JWK set (read now).
    fn auth(
        &self,
        file: &FileConfig,
    ) -> anyhow::Result<Option<std::sync::Arc<crate::auth::Verifier>>> {
        use crate::auth::Verifier;
        let secret = self
            .auth_jwt_secret_file
            .clone()
            .or(file.auth_jwt_secret_file.clone());
        let jwks = self.auth_jwks_file.clone().or(file.auth_jwks_file.clone());
        let verifier = match (secret, jwks) {
            (None, None) => return Ok(None),
            (Some(s), None) => Verifier::from_secret_file(&s)?,
            (None, Some(j)) => Verifier::from_jwks_file(&j)?,
            (Some(_), Some(_)) => {
                bail!("give --auth-jwt-secret-file or --auth-jwks-file, not both")
            }
        };
        Ok(Some(std::sync::Arc::new(verifier)))
    }

    /// The TLS files, read (a missing or bad file fails the start).
    fn tls(
        &self,
        file: &FileConfig,
    ) -> anyhow::Result<Option<std::sync::Arc<crate::net::tls::TlsState>>> {
        let cert = self.tls_cert.clone().or(file.tls_cert.clone());
        let key = self.tls_key.clone().or(file.tls_key.clone());
        let client_ca = self.tls_client_ca.clone().or(file.tls_client_ca.clone());
        match (cert, key) {
            (None, None) if client_ca.is_none() => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(crate::net::tls::TlsState::load(
                crate::net::tls::TlsFiles {
                    cert,
                    key,
                    client_ca,
                },
            )?)),
            _ => bail!(
                "TLS needs both --tls-cert and --tls-key (and --tls-client-ca only with them)"
            ),
        }
    }

    /// Both ports' connection limits and the streams per connection.
    fn connection_limits(
        &self,
        file: &FileConfig,
        dc: &Config,
    ) -> anyhow::Result<(crate::net::Limits, crate::net::Limits, u32)> {
        let handshake_timeout = self
            .handshake_timeout
            .or(file.handshake_timeout)
            .unwrap_or(dc.grpc_limits.handshake_timeout);
        let grpc = crate::net::Limits {
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(dc.grpc_limits.max_connections),
            handshake_timeout,
            idle_timeout: self
                .idle_timeout
                .or(file.idle_timeout)
                .unwrap_or(dc.grpc_limits.idle_timeout),
        };
        let streams = self
            .max_streams_per_connection
            .or(file.max_streams_per_connection)
            .unwrap_or(dc.max_streams_per_connection);
        if grpc.max_connections == 0 || streams == 0 {
            bail!("max connections and max streams per connection must be at least 1");
        }
        if handshake_timeout.is_zero() || grpc.idle_timeout < handshake_timeout {
            bail!(
                "handshake timeout must be above 0 and the idle timeout at least as long (got {handshake_timeout:?} and {:?})",
                grpc.idle_timeout
            );
        }
        let admin = crate::net::Limits {
            handshake_timeout,
            ..dc.admin_limits
        };
        Ok((grpc, admin, streams))
    }
}

impl NatsArgs {
    /// The NATS settings from the flags, with defaults.
    fn options(&self) -> anyhow::Result<NatsOptions> {
        let d = NatsOptions::default();
        let urls: Vec<String> = self
            .nats_url
            .iter()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if self.nats_replicas.is_some_and(|r| !(1..=5).contains(&r)) {
            bail!("--nats-replicas must be 1 to 5 (JetStream's limit)");
        }
        let timeout = self.nats_timeout.unwrap_or(d.timeout);
        if timeout < Duration::from_millis(100) {
            bail!("--nats-timeout is below 100ms");
        }
        let max_batch = self.nats_batch.unwrap_or(d.max_batch);
        if !(1..=crate::log::nats::MAX_BATCH).contains(&max_batch) {
            bail!(
                "--nats-batch must be 1 to {} (JetStream's largest atomic batch)",
                crate::log::nats::MAX_BATCH
            );
        }
        Ok(NatsOptions {
            urls: if urls.is_empty() { d.urls } else { urls },
            stream: self.nats_stream.clone().unwrap_or(d.stream),
            node_name: self
                .node_name
                .clone()
                .unwrap_or_else(crate::log::nats::host_name),
            creds: self.nats_creds.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            ca: self.nats_ca.clone(),
            client_cert: self.nats_cert.clone(),
            client_key: self.nats_key.clone(),
            replicas: self.nats_replicas,
            timeout,
            max_batch,
            forward: self.nats_forward.unwrap_or(d.forward),
        })
    }
}

/// A config file error that names the file, the line and the key, then
/// says what is wrong (toml's own message, which for a bad duration lists
/// the accepted forms).
fn config_file_error(path: &std::path::Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let what = e.message();
    let Some(span) = e.span() else {
        return anyhow::anyhow!("config file {}: {what}", path.display());
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"'))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    // The table the key is in, for per-thread bounds.
    let table = text
        .lines()
        .take(line_no - 1)
        .filter(|l| l.trim_start().starts_with('['))
        .last()
        .map(|l| l.trim());
    match (key, table) {
        (Some(k), Some(t)) => anyhow::anyhow!(
            "config file {}, line {line_no}: key {k:?} in {t}: {what}",
            path.display()
        ),
        (Some(k), None) => anyhow::anyhow!(
            "config file {}, line {line_no}: key {k:?}: {what}",
            path.display()
        ),
        _ => anyhow::anyhow!("config file {}, line {line_no}: {what}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "staleness = \"2s\"\norder = 7\n[threads.ops]\nnumerical = 10\n[threads.\"\"]\nstaleness = \"100ms\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            order: Some(3),
            config: Some(path),
            ..Default::default()
        };
        let r = args.resolve().unwrap();
        let b = &r.config.settings.bounds;
        assert_eq!(b.default_bounds().staleness, Duration::from_secs(2));
        assert_eq!(b.default_bounds().order, 3);
        assert_eq!(b.default_bounds().numerical, 256);
        assert_eq!(b.for_thread("ops").numerical, 10);
        assert_eq!(b.for_thread("ops").staleness, Duration::from_secs(2));
        assert_eq!(b.for_thread("").staleness, Duration::from_millis(100));
        assert_eq!(r.listen.port(), 50051);
        // The command's default is the durable log in ./data.
        assert_eq!(r.config.storage, Storage::Durable);
        assert_eq!(r.config.data_dir, PathBuf::from("data"));
        assert_eq!(r.config.retention, Retention::default());
    }

    #[test]
    fn storage_settings_come_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "storage = \"memory\"\ndata_dir = \"/var/lib/chat\"\nretention_messages = 1000\nretention_age = \"7days\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let c = args.resolve().unwrap().config;
        assert_eq!(c.storage, Storage::Memory);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/chat"));
        assert_eq!(c.retention.messages, Some(1000));
        assert_eq!(c.retention.age, Some(Duration::from_secs(7 * 86400)));
        let args = ServeArgs {
            config: Some(path),
            storage: Some(Storage::Durable),
            data_dir: Some("/tmp/x".into()),
            retention_messages: Some(5),
            ..Default::default()
        };
        let c = args.resolve().unwrap().config;
        assert_eq!(c.storage, Storage::Durable);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.retention.messages, Some(5));
        let args = ServeArgs {
            retention_messages: Some(0),
            ..Default::default()
        };
        assert!(format!("{:#}", args.resolve().unwrap_err()).contains("retention"));
    }

    #[test]
    fn a_bad_config_value_names_the_key_and_the_accepted_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "order = 3\nstaleness = \"fast\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains("line 2: key \"staleness\""), "{err}");
        assert!(err.contains("invalid duration \"fast\""), "{err}");
        assert!(err.contains("\"300ms\", \"2s\""), "{err}");
        std::fs::write(&path, "[threads.\"ops\"]\nstaleness = \"soon\"\n").unwrap();
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(
            err.contains("key \"staleness\" in [threads.\"ops\"]"),
            "{err}"
        );
        std::fs::write(&path, "numerical = \"many\"\n").unwrap();
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains("key \"numerical\""), "{err}");
        assert!(err.contains("expected u64"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let args = ServeArgs {
            numerical: Some(0),
            ..Default::default()
        };
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains("numerical 0"), "{err}");
        let args = ServeArgs {
            lease: Some(Duration::from_millis(10)),
            ..Default::default()
        };
        assert!(format!("{:#}", args.resolve().unwrap_err()).contains("lease"));
    }
}
