//! `dyconit-chat bench`: a load generator that tells the truth about
//! latency, throughput and cost.
//!
//! N streaming clients, each on its own HTTP/2 connection as real users are
//! (or multiplexed over a few, `--connections`). After a ramp-up in
//! which they connect and open their streams, messages are sent on a fixed
//! schedule (open loop: message k is due at `k / rate` seconds, whether or
//! not earlier ones were answered), round-robin over the writers and spread
//! over the threads. Every client acknowledges each Update as it arrives
//! (one acknowledgement in flight per client; Updates that arrive meanwhile
//! are covered by the next one). Commit-to-receive latency is the receive
//! time on the local clock minus the commit time on the server's clock: exact
//! when both run on one host. At the end every client's received messages are
//! checked against the accepted ones.
//!
//! - [`histogram`]: the lock-free latency histogram.
//! - [`wire`]: a zero-copy reader of Updates, and the bench message format.
//! - [`server`]: the server as a child process (`--spawn-server`).
//! - [`report`]: the final table and the JSON report.
//! - [`counters`]: the server's own counters for the run, from its `/metrics`.
//! - [`nats`]: the same fan-out over core NATS (`--against nats://…`).
//! - `failover`: a client whose chat node is lost moves to the next one.

pub mod advice;
pub mod conn;
pub mod counters;
mod failover;
pub mod histogram;
pub mod nats;
pub mod record;
pub mod record_run;
pub mod report;
pub(crate) mod schedule;
pub mod server;
mod steps;
pub mod threads;
mod warmup;
pub mod wire;

use crate::client::clock::local_micros;
use crate::proto::chat_server_client::ChatServerClient;
use crate::proto::message_status::StatusCode;
use crate::proto::{
    Acknowledgement, Client, ConnectionStarter, MessageStatus, SentMessage, ServerTime, Thread,
};
use anyhow::{Context, bail};
use conn::Connection;
use failover::{Incarnation, Nodes};
use histogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::consistency::time::parse_duration;
use warmup::{WARM_UP_IDS, plan_run, warm_up};

/// How messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SendMode {
    /// One unary SendMessage RPC per message.
    Unary,
    /// One SendMessages stream per writer, messages pipelined on it.
    Stream,
}

const AFTER_HELP: &str = "\
Examples:
  # W1: 1,000 clients, 200 msg/s over 50 threads, 100-byte messages
  dyconit-chat bench --spawn-server --staleness 500ms --clients 1000 \\
      --rate 200 --threads 50 --size 100 --duration 30s --json w1.json
  # interest workload: 50 threads, Zipf traffic, each client active in 1,
  # against a server with the interest policy on
  # (--warm-up: each client writes once to its thread before the window)
  dyconit-chat bench --spawn-server --clients 1000 --rate 200 --threads 50 \\
      --zipf 1 --active-threads-per-client 1 --warm-up \\
      --server-arg=--interest-policy
  # 10,000 idle streaming clients: server memory per client
  dyconit-chat bench --spawn-server --clients 10000 --rate 0 --duration 20s
  # against a running local server (and measure its CPU and memory via
  # /proc; `pidof dyconit-chat` would also list chat clients and benches)
  dyconit-chat bench --server http://127.0.0.1:50051 \
      --server-pid $(pgrep -o -f 'dyconit-chat serve')

Messages go to threads bench-0, bench-1, ... (--thread-prefix; an empty
prefix with one thread is the main room), so chat users can tell them apart; on a durable server they stay
in its history. The bench warns when the server already has other clients:
they receive every bench message, and their traffic is in the figures.

The report: accepted/s, deliveries/s (messages received by all clients:
within the window, and all deliveries of the window's messages, drain
included, per second of the window), Updates/s and messages per Update,
Update bytes/s (the encoded protobuf size of each Update received, without
gRPC and HTTP/2 framing), commit->receive latency p50/p90/p99/max,
send latency (from the scheduled time to the status: open loop, so a slow
server shows here instead of being hidden), rejections by reason,
acknowledgement RPCs/s, server CPU seconds and cores (CPU s / window s) and RSS
when the server is a child (--spawn-server) or given by --server-pid.
Rates are over the send window (after ramp-up, --duration long).

--check exits 1 unless every client received every accepted message exactly
once (counted and checksummed by id), no client lost its stream, no RPC
failed, and the server counted no bound violation.

The server's own counters for the run are read from its admin port
(/metrics; --admin, by default the --server host on port 9090): bound
violations by bound and dropped clients by reason, read at the start, as the
window opens (to tell the violations of the ramp-up and warm-up apart) and at
the end. A run in which the server counted violations does not pass. When
rejections dominate, the report names the likely cause and the flag that
changes it.

Each client has its own HTTP/2 connection, as real users do;
--clients-per-connection K (or --connections N) multiplexes them, and the
report's workload line says which.

--against nats://HOST:PORT (or --spawn-nats BIN) runs the same fan-out over
core NATS for comparison: --clients subscriber connections on one subject,
one publisher at --rate with --size-byte messages, open loop; latency is
publish->receive on the local clock (core NATS has no commit time).
  dyconit-chat bench --spawn-nats ./nats-server --clients 1000 --rate 200 \\
      --size 100 --duration 30s

With several --server URLs (chat nodes of one cluster), a client whose node
is lost (connection refused or reset, UNAVAILABLE, its stream ended) moves
to the next node of the list: a new connection and a new client there, whose
first Update is the node's history (less what the client already had); up
to 4 rounds over the list with a short backoff, else the client is lost. A
unary send whose answer was lost with the node is sent again through the
next node unchanged (same name, thread, contents and timestamp), so the
cluster commits it at most once; with --mode stream the messages in flight
on the lost stream are send errors. Send-only writers do not fail over, and
with one server a client whose stream fails is lost. The report counts
failovers and resends.

--record FILE writes what every client saw and did (sends, statuses,
Updates, acknowledgements, and the server's bounds with their change log) as
a compact binary stream; `dyconit-chat check FILE` verifies the run from it.";

/// Flags of `dyconit-chat bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    /// URL of a running server (http://, or https:// for one with TLS).
    /// Several chat nodes of one cluster as URL,URL,...: the connections are
    /// spread over them in turn, and a client whose node is lost fails over
    /// to the next one (the server counters, --admin and --server-pid are
    /// the first node's)
    #[arg(
        long,
        value_name = "URL",
        required_unless_present_any = ["spawn_server", "against", "spawn_nats"]
    )]
    pub server: Option<String>,
    /// With an https:// server: trust the CA certificates in FILE (PEM)
    /// instead of the system's
    #[arg(long, value_name = "FILE", requires = "server")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Start `dyconit-chat serve` as a child process on 127.0.0.1:0 for the
    /// run (its CPU and memory are then measured alone)
    #[arg(long, conflicts_with = "server")]
    pub spawn_server: bool,
    /// With --server (or --against): the pid of that (local) server, to read
    /// its CPU time and memory from /proc
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Instead of a chat server, run the same fan-out over core NATS against
    /// the nats-server at URL (nats://HOST:PORT): --clients subscriber
    /// connections on one subject, one publisher at --rate, --size bytes,
    /// open loop; reports deliveries/s, publish->receive p50/p99, and with
    /// --server-pid the server's CPU per delivery and RSS per connection
    #[arg(long, value_name = "URL", conflicts_with_all = ["server", "spawn_server"])]
    pub against: Option<String>,
    /// Like --against, with a nats-server started from BIN on 127.0.0.1 for
    /// the run (its CPU and memory are then measured)
    #[arg(long, value_name = "BIN", conflicts_with_all = ["server", "spawn_server", "against"])]
    pub spawn_nats: Option<std::path::PathBuf>,
    /// With --server: the server's admin address, to read its own counters
    /// (bound violations, dropped clients) and its client count from /metrics
    /// [default: the --server host, port 9090]
    #[arg(long, value_name = "URL", requires = "server")]
    pub admin: Option<String>,
    /// Streaming clients
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub clients: usize,
    /// Multiplex: the clients share N HTTP/2 connections (default: each
    /// client has its own connection, as real users do)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: Option<u64>,
    /// Multiplex: K clients share each HTTP/2 connection
    #[arg(long, value_name = "K", conflicts_with = "connections", value_parser = clap::value_parser!(u64).range(1..))]
    pub clients_per_connection: Option<u64>,
    /// Aggregate send rate, messages per second (0: idle clients)
    #[arg(long, default_value_t = 100.0, value_name = "MSG_PER_S")]
    pub rate: f64,
    /// Instead of one --rate: offered load in steps, msg/s for each
    /// --duration in turn (the window is their number times --duration), sent
    /// by the same clients throughout; the report gives each step's figures
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "MSG_PER_S,...",
        conflicts_with = "rate"
    )]
    pub rate_steps: Vec<f64>,
    /// How many of the clients send (0: all); message k goes to writer k mod W
    #[arg(long, default_value_t = 0, value_name = "W")]
    pub writers: usize,
    /// The --writers are W extra clients that only send: they connect but
    /// never open ReceiveUpdates, so the run measures admission without their
    /// fan-out. The server must then keep them (raise its --ack-timeout, which
    /// also reaps clients that do not stream) and not refuse them for unseen
    /// commits (raise --order)
    #[arg(long, requires = "writers")]
    pub send_only_writers: bool,
    /// Threads the messages are spread over, uniformly (or skewed: --zipf)
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub threads: usize,
    /// Skew traffic over the threads: thread t gets weight 1/(t+1)^S (S=1:
    /// a few hot rooms, many quiet ones); 0 spreads it uniformly
    #[arg(long, default_value_t = 0.0, value_name = "S")]
    pub zipf: f64,
    /// Each client takes part in only N threads (drawn with the --zipf skew,
    /// so hot rooms have many members) and writes only there; it still
    /// receives every thread. The report adds the latency on each client's
    /// own threads. 0: every client writes anywhere
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub active_threads_per_client: usize,
    /// Before the window, each writer sends one message to its own first
    /// thread (with --active-threads-per-client; else to thread W mod T;
    /// again every 250 ms while it is refused, up to --drain), and
    /// the window starts once every client has received them all: the
    /// server then knows what each client takes part in (the interest
    /// policy) from the first second. Counted in sent/accepted and the
    /// delivery check, left out of the latencies and the window's rates
    #[arg(long)]
    pub warm_up: bool,
    /// The threads are named PREFIX0, PREFIX1, ...; an empty prefix with one
    /// thread writes to the main room
    #[arg(long, default_value = "bench-", value_name = "PREFIX")]
    pub thread_prefix: String,
    /// Bytes of contents per message (at least 16: the bench id)
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pub size: usize,
    /// How long messages are sent (the measurement window)
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub duration: Duration,
    /// Clients connect spread evenly over this time, before sending starts
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DUR")]
    pub ramp_up: Duration,
    /// Longest wait after sending stops for the last deliveries
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DUR")]
    pub drain: Duration,
    /// unary: a SendMessage RPC per message; stream: a SendMessages stream per writer
    #[arg(long, value_enum, default_value_t = SendMode::Unary)]
    pub mode: SendMode,
    /// Write the report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Exit 1 unless every accepted message reached every client exactly once
    #[arg(long)]
    pub check: bool,
    /// Record every send, status, Update and acknowledgement to FILE (a
    /// compact binary stream) for `dyconit-chat check FILE`. Chat servers
    /// only: the core NATS fan-out (--against, --spawn-nats) has no
    /// statuses or acknowledgements to record
    #[arg(long, value_name = "FILE", conflicts_with_all = ["against", "spawn_nats"])]
    pub record: Option<std::path::PathBuf>,
    /// Print no progress line
    #[arg(long)]
    pub quiet: bool,
    /// Spawned server: where it keeps messages. memory keeps the disk out of
    /// the delivery figures; durable (the server's own default) stores in a
    /// fresh temporary --data-dir, removed afterwards
    #[arg(long, value_enum, default_value = "memory")]
    pub storage: crate::server::Storage,
    /// Spawned server: default staleness bound
    #[arg(long, value_name = "DUR", requires = "spawn_server")]
    pub staleness: Option<String>,
    /// Spawned server: default numerical bound
    #[arg(long, value_name = "N", requires = "spawn_server")]
    pub numerical: Option<u64>,
    /// Spawned server: default order bound
    #[arg(long, value_name = "N", requires = "spawn_server")]
    pub order: Option<u64>,
    /// Spawned server: lease
    #[arg(long, value_name = "DUR", requires = "spawn_server")]
    pub lease: Option<String>,
    /// Spawned server: acknowledgement timeout
    #[arg(long, value_name = "DUR", requires = "spawn_server")]
    pub ack_timeout: Option<String>,
    /// Spawned server: any other `serve` flag, passed as is (repeatable), e.g.
    /// --server-arg=--history=0
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        requires = "spawn_server"
    )]
    pub server_arg: Vec<String>,
}

impl BenchArgs {
    fn server_args(&self) -> Vec<String> {
        let mut a = vec![match self.storage {
            crate::server::Storage::Memory => "--storage=memory".to_owned(),
            crate::server::Storage::Durable => "--storage=durable".to_owned(),
            crate::server::Storage::Nats => "--storage=nats".to_owned(),
        }];
        let mut flag = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                a.push(format!("--{name}={v}"));
            }
        };
        flag("staleness", self.staleness.clone());
        flag("numerical", self.numerical.map(|n| n.to_string()));
        flag("order", self.order.map(|n| n.to_string()));
        flag("lease", self.lease.clone());
        flag("ack-timeout", self.ack_timeout.clone());
        a.extend(self.server_arg.iter().cloned());
        a
    }

    /// HTTP/2 connections to open: one per client (send-only writers
    /// included) unless multiplexing was asked for.
    fn connection_count(&self) -> usize {
        let send_only = if self.send_only_writers {
            self.writers
        } else {
            0
        };
        let clients = self.clients + send_only;
        match (self.connections, self.clients_per_connection) {
            (Some(n), _) => (n as usize).min(clients),
            (None, Some(k)) => clients.div_ceil(k as usize),
            (None, None) => clients,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!("--rate must be a non-negative number");
        }
        if !self.rate_steps.iter().all(|r| r.is_finite() && *r >= 0.0) {
            bail!("--rate-steps must be non-negative numbers");
        }
        if self.size < wire::ID_CHARS {
            bail!("--size must be at least {} bytes", wire::ID_CHARS);
        }
        let longest = self.thread_prefix.len() + (self.threads.max(1) - 1).to_string().len();
        if longest > crate::consistency::bounds::MAX_THREAD_ID_BYTES {
            bail!(
                "--thread-prefix is too long: thread ids would be {longest} bytes, and the server refuses more than {}",
                crate::consistency::bounds::MAX_THREAD_ID_BYTES
            );
        }
        if !(self.zipf.is_finite() && (0.0..=10.0).contains(&self.zipf)) {
            bail!("--zipf must be between 0 and 10");
        }
        if self.active_threads_per_client > self.threads {
            bail!(
                "--active-threads-per-client {} is above --threads {}",
                self.active_threads_per_client,
                self.threads
            );
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if self.writers > self.clients && !self.send_only_writers {
            bail!("--writers cannot exceed --clients");
        }
        if self.duration.is_zero() {
            bail!("--duration must be above zero");
        }
        Ok(())
    }

    /// When each message is sent.
    pub(crate) fn schedule(&self) -> schedule::Schedule {
        let rates = if self.rate_steps.is_empty() {
            std::slice::from_ref(&self.rate)
        } else {
            &self.rate_steps[..]
        };
        schedule::Schedule::new(rates, self.duration)
    }
}

/// Where a client is.
const CONNECTING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;
/// Its node was lost: connecting to the next one.
const MOVING: u8 = 3;

/// One bench client, shared by its task, the dispatcher and the checker.
#[derive(Default)]
struct Slot {
    /// Its node, connection and numbering now (set at ramp-up, replaced by
    /// a failover). Lock rule: held only to clone or replace it.
    current: std::sync::Mutex<Option<Arc<Incarnation>>>,
    /// Signalled when the client is streaming on a new node, or failed.
    moved: tokio::sync::Notify,
    /// Bench messages received after the first Update (on any node).
    delivered: AtomicU64,
    /// Wrapping sum of `mix(id)` of those: an order-free checksum.
    checksum: AtomicU64,
    /// CONNECTING, READY, MOVING or FAILED.
    state: AtomicU8,
}

impl Slot {
    /// The client's incarnation now (`None` before ramp-up reached it).
    fn incarnation(&self) -> Option<Arc<Incarnation>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_incarnation(&self, inc: Arc<Incarnation>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(inc);
    }
}

/// Counters shared by every task.
struct Stats {
    /// Messages handed to the transport.
    dispatched: AtomicU64,
    /// Statuses received, by `StatusCode` value (0 = OK).
    statuses: [AtomicU64; 6],
    /// Wrapping sum of `mix(id)` of the accepted messages.
    accepted_checksum: AtomicU64,
    /// Sends that failed as RPCs (no status).
    send_errors: AtomicU64,
    /// Bench messages received after each client's first Update.
    deliveries: AtomicU64,
    /// Messages received without a bench id (other traffic).
    foreign: AtomicU64,
    /// Updates received after each client's first.
    updates: AtomicU64,
    /// Of those, Updates without messages (heartbeats).
    empty_updates: AtomicU64,
    /// Encoded size of those Updates, bytes (see [`wire::UpdateSummary::wire_bytes`]).
    update_bytes: AtomicU64,
    /// Acknowledgement RPCs answered.
    acks: AtomicU64,
    /// Acknowledgement RPCs that failed.
    ack_errors: AtomicU64,
    /// Clients whose stream ended or failed before the end, and that no
    /// other node took.
    lost: AtomicU64,
    /// Clients that moved to another node after theirs was lost.
    failovers: AtomicU64,
    /// Sends whose answer was lost with a node, sent again through the next.
    resends: AtomicU64,
    /// Commit -> receive, microseconds; one shard per group of clients so
    /// that a million records a second do not all hit the same counters.
    latency: Vec<Histogram>,
    /// Scheduled send time -> status received, microseconds.
    send_latency: Histogram,
    /// Commit -> receive of messages on the receiver's own threads
    /// (`--active-threads-per-client`), microseconds.
    own_latency: Histogram,
    /// Where each message goes, and who takes part where.
    plan: std::sync::OnceLock<threads::ThreadPlan>,
    /// Message k carries the id `id_base + k`.
    id_base: AtomicU64,
    /// The first error seen, for the report.
    first_error: std::sync::Mutex<Option<String>>,
    /// `--record`: where every event goes.
    recording: Option<record_run::RunRecording>,
    /// With `--rate-steps`: each step's own counters.
    steps: steps::StepStats,
}

/// Shards of the latency histogram.
const LATENCY_SHARDS: usize = 16;

impl Default for Stats {
    fn default() -> Self {
        Stats {
            dispatched: AtomicU64::new(0),
            statuses: Default::default(),
            accepted_checksum: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            empty_updates: AtomicU64::new(0),
            update_bytes: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            ack_errors: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            resends: AtomicU64::new(0),
            latency: (0..LATENCY_SHARDS).map(|_| Histogram::default()).collect(),
            send_latency: Histogram::default(),
            own_latency: Histogram::default(),
            plan: std::sync::OnceLock::new(),
            id_base: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
            recording: None,
            steps: steps::StepStats::default(),
        }
    }
}

impl Stats {
    /// The latency histogram, all shards merged.
    fn latency(&self) -> Histogram {
        Histogram::merged(&self.latency)
    }

    fn error(&self, e: String) {
        let mut g = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }

    fn accepted(&self) -> u64 {
        self.statuses[0].load(Ordering::Relaxed)
    }

    fn rejected(&self) -> u64 {
        self.statuses[1..]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// A 64-bit mixer (splitmix64), so the checksum of ids is order-free but
/// still catches a missing id replaced by another.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Counts one Update after the first (the history) in the client's slot
/// and the totals: messages of this run (with an id), their checksum and
/// latency, and messages of others.
fn count_update(update: &wire::UpdateSummary, index: usize, slot: &Slot, stats: &Stats, now: i64) {
    stats.updates.fetch_add(1, Ordering::Relaxed);
    stats
        .update_bytes
        .fetch_add(update.wire_bytes as u64, Ordering::Relaxed);
    if update.messages.is_empty() {
        stats.empty_updates.fetch_add(1, Ordering::Relaxed);
    }
    let (mut n, mut sum) = (0u64, 0u64);
    for m in &update.messages {
        if let Some(id) = m.id {
            n += 1;
            sum = sum.wrapping_add(mix(id));
        }
    }
    let foreign = update.messages.len() as u64 - n;
    if foreign > 0 {
        stats.foreign.fetch_add(foreign, Ordering::Relaxed);
    }
    // Latency is of the window's messages: warm-up writes are left out.
    let base = stats.id_base.load(Ordering::Relaxed);
    let measured =
        |m: &&wire::Delivered| m.id.is_some_and(|id| id.wrapping_sub(base) < WARM_UP_IDS);
    stats.latency[index % LATENCY_SHARDS].record_all(
        update
            .messages
            .iter()
            .filter(measured)
            .map(|m| (now - m.server_time).max(0) as u64),
    );
    if let Some(plan) = stats.plan.get().filter(|p| p.has_active()) {
        stats.own_latency.record_all(
            update
                .messages
                .iter()
                .filter(measured)
                .filter(|m| {
                    m.id.is_some_and(|id| plan.is_own(index, id.wrapping_sub(base)))
                })
                .map(|m| (now - m.server_time).max(0) as u64),
        );
    }
    stats.steps.delivered(
        index,
        update.messages.iter().filter(measured).filter_map(|m| {
            let k = m.id?.wrapping_sub(base);
            Some((k, (now - m.server_time).max(0) as u64))
        }),
    );
    slot.delivered.fetch_add(n, Ordering::Relaxed);
    slot.checksum.fetch_add(sum, Ordering::Relaxed);
    stats.deliveries.fetch_add(n, Ordering::Relaxed);
}

/// Counts the first Update on a node the client moved to: the messages of
/// its history that the client had not received on its earlier nodes.
fn count_history(update: &wire::UpdateSummary, slot: &Slot, stats: &Stats, seen: &failover::Seen) {
    let (mut n, mut sum) = (0u64, 0u64);
    for m in update.messages.iter().filter(|m| seen.fresh(m)) {
        if let Some(id) = m.id {
            n += 1;
            sum = sum.wrapping_add(mix(id));
        }
    }
    slot.delivered.fetch_add(n, Ordering::Relaxed);
    slot.checksum.fetch_add(sum, Ordering::Relaxed);
    stats.deliveries.fetch_add(n, Ordering::Relaxed);
}

/// Opens the update stream of client `id` on `conn` (decoded into
/// summaries).
async fn open_stream(
    conn: Connection,
    id: i64,
) -> anyhow::Result<tonic::Streaming<wire::UpdateSummary>> {
    // A server with a high numerical bound may batch megabytes into one
    // Update; the bench must not be the limit.
    let mut grpc = tonic::client::Grpc::new(conn).max_decoding_message_size(1 << 30);
    grpc.ready().await?;
    let stream = grpc
        .server_streaming(
            tonic::Request::new(Client { id }),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                crate::proto::RECEIVE_UPDATES_PATH,
            ),
            wire::SummaryCodec::default(),
        )
        .await?
        .into_inner();
    Ok(stream)
}

/// An acknowledgement RPC in flight.
type AckCall = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

/// Acknowledges `count` Updates of client `id` (recorded as client
/// `recorded`).
fn start_ack(conn: &Connection, stats: &Arc<Stats>, recorded: u32, id: i64, count: i64) -> AckCall {
    let mut rpc = ChatServerClient::new(conn.clone());
    let stats = stats.clone();
    if let Some(r) = &stats.recording {
        r.ack_sent(recorded as usize, count);
    }
    Box::pin(async move {
        let reply = rpc
            .acknowlegde(Acknowledgement {
                client: Some(Client { id }),
                num_updates_received: count,
                num_messages_sent: 0,
            })
            .await;
        if let Some(r) = &stats.recording {
            let at = reply.as_ref().ok().map(|t| t.get_ref().timestamp);
            r.ack_reply(recorded as usize, count, at);
        }
        reply.map(|_| ())
    })
}

/// Client `index` on one node: connects (on its first node; a failover
/// connected already), then streams and acknowledges until `stop` (`Ok`)
/// or an error. An acknowledgement that finds the node lost is an error
/// too: the client moves on.
async fn on_node(
    index: usize,
    inc: &Incarnation,
    slot: &Slot,
    stats: &Arc<Stats>,
    stop: &CancellationToken,
    seen: &mut failover::Seen,
) -> anyhow::Result<()> {
    if inc.generation == 0 {
        let id = failover::connect_rpc(index, inc.conn.clone()).await?;
        inc.id.store(id, Ordering::Relaxed);
        if let Some(r) = &stats.recording {
            r.connected(inc.recorded as usize);
        }
    }
    let id = inc.id.load(Ordering::Relaxed);
    let mut stream = open_stream(inc.conn.clone(), id).await?;
    let mut received: i64 = 0;
    let mut acked: i64 = 0;
    let mut ack: Option<AckCall> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                if let Some(r) = &stats.recording {
                    r.end(inc.recorded as usize, None);
                }
                return Ok(());
            }
            reply = async { ack.as_mut().expect("guarded").await }, if ack.is_some() => {
                ack = None;
                match reply {
                    Ok(()) => stats.acks.fetch_add(1, Ordering::Relaxed),
                    Err(s) if crate::client::failover::status_is_connection_loss(&s) => {
                        return Err(s.into());
                    }
                    Err(_) => stats.ack_errors.fetch_add(1, Ordering::Relaxed),
                };
                if received > acked {
                    acked = received;
                    ack = Some(start_ack(&inc.conn, stats, inc.recorded, id, received));
                }
            }
            item = stream.message() => {
                let Some(update) = item? else {
                    bail!("the server ended the stream");
                };
                received += 1;
                took_update(index, inc, slot, stats, seen, &update, received);
                if ack.is_none() {
                    acked = received;
                    ack = Some(start_ack(&inc.conn, stats, inc.recorded, id, received));
                }
            }
        }
    }
}

/// Records and counts Update number `received` of `inc`.
fn took_update(
    index: usize,
    inc: &Incarnation,
    slot: &Slot,
    stats: &Stats,
    seen: &mut failover::Seen,
    update: &wire::UpdateSummary,
    received: i64,
) {
    let now = local_micros();
    if let Some(r) = &stats.recording {
        r.update(inc.recorded as usize, now, update);
    }
    inc.updates.store(received, Ordering::Relaxed);
    if received == 1 {
        if inc.generation > 0 {
            count_history(update, slot, stats, seen);
        }
        slot.state.store(READY, Ordering::Relaxed);
        slot.moved.notify_waiters();
    } else {
        count_update(update, index, slot, stats, now);
    }
    seen.note(&update.messages);
}

/// Runs client `index` until `stop`: on its first node, and whenever its
/// node is lost, on the next one that takes it (with several nodes; giving
/// up after `3 x nodes` failovers without an Update between them).
async fn run_client(
    index: usize,
    slot: Arc<Slot>,
    stats: Arc<Stats>,
    nodes: Arc<Nodes>,
    stop: CancellationToken,
) {
    let mut seen = failover::Seen::default();
    // One server: no other node to go to, a lost client is lost.
    let budget = if nodes.urls.len() > 1 {
        3 * nodes.urls.len()
    } else {
        0
    };
    let mut moves_left = budget;
    let error = loop {
        let Some(inc) = slot.incarnation() else {
            return;
        };
        let Err(e) = on_node(index, &inc, &slot, &stats, &stop, &mut seen).await else {
            return;
        };
        if stop.is_cancelled() {
            slot.state.store(FAILED, Ordering::Relaxed);
            return;
        }
        if let Some(r) = &stats.recording {
            r.end(inc.recorded as usize, Some(format!("{e:#}")));
        }
        if inc.updates.load(Ordering::Relaxed) > 0 {
            moves_left = budget;
        }
        if !failover::is_loss(&e) || moves_left == 0 {
            break e;
        }
        moves_left -= 1;
        slot.state.store(MOVING, Ordering::Relaxed);
        let moved = tokio::select! {
            moved = failover::move_on(index, &nodes, &inc) => moved,
            _ = stop.cancelled() => return,
        };
        match moved {
            Ok(next) => {
                if let Some(r) = &stats.recording {
                    r.failover(inc.recorded as usize, next.recorded as usize);
                    r.connected(next.recorded as usize);
                }
                tracing::debug!(client = index, to = %nodes.urls[next.node], "failed over");
                slot.set_incarnation(Arc::new(next));
                stats.failovers.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => break e,
        }
    };
    slot.state.store(FAILED, Ordering::Relaxed);
    slot.moved.notify_waiters();
    stats.lost.fetch_add(1, Ordering::Relaxed);
    stats.error(format!("client {index}: {error:#}"));
}

/// A send-only writer: connects, and never opens its update stream (nor
/// fails over: nothing would tell it its node was lost).
async fn connect_only(index: usize, slot: Arc<Slot>, stats: Arc<Stats>) {
    let Some(inc) = slot.incarnation() else {
        return;
    };
    let mut rpc = ChatServerClient::new(inc.conn.clone());
    let mut request = tonic::Request::new(ConnectionStarter {});
    if let Ok(name) = format!("writer-{index}").parse() {
        request
            .metadata_mut()
            .insert(crate::proto::NAME_HEADER, name);
    }
    match rpc.connect(request).await {
        Ok(info) => {
            let id = info.into_inner().client.map_or(0, |c| c.id);
            inc.id.store(id, Ordering::Relaxed);
            slot.state.store(READY, Ordering::Relaxed);
            if let Some(r) = &stats.recording {
                r.connected(inc.recorded as usize);
            }
        }
        Err(e) => {
            slot.state.store(FAILED, Ordering::Relaxed);
            stats.lost.fetch_add(1, Ordering::Relaxed);
            stats.error(format!("writer {index}: {e}"));
        }
    }
}

/// Records a status for message `id`, sent on schedule at `due`.
fn record_status(stats: &Stats, status: &MessageStatus, id: u64, due: Instant) {
    stats
        .send_latency
        .record(due.elapsed().as_micros().min(u64::MAX as u128) as u64);
    if let Some(r) = &stats.recording {
        r.status(id, status);
    }
    let code = status.status_code.clamp(0, 5) as usize;
    stats.statuses[code].fetch_add(1, Ordering::Relaxed);
    let base = stats.id_base.load(Ordering::Relaxed);
    stats.steps.status(id.wrapping_sub(base), code);
    if code == StatusCode::Ok as usize {
        stats
            .accepted_checksum
            .fetch_add(mix(id), Ordering::Relaxed);
    }
}

/// A writer's open SendMessages stream: messages in, their metadata queued
/// in the same order for matching the statuses.
struct StreamWriter {
    /// Feeds the request stream.
    messages: mpsc::UnboundedSender<SentMessage>,
    /// `(id, scheduled time)` of each message, in order.
    meta: mpsc::UnboundedSender<(u64, Instant)>,
    /// The generation of the client's node it was opened on.
    generation: u64,
}

/// Builds message `id` from the client's incarnation `inc`.
fn message(inc: &Incarnation, thread: &Option<Thread>, id: u64, size: usize) -> SentMessage {
    let number = inc.sent.fetch_add(1, Ordering::Relaxed) + 1;
    SentMessage {
        thread: thread.clone(),
        contents: wire::contents(id, size),
        // Same host: the local clock is the server's clock.
        timestamp: Some(ServerTime {
            timestamp: local_micros(),
        }),
        acknowledgement: Some(Acknowledgement {
            client: Some(Client {
                id: inc.id.load(Ordering::Relaxed),
            }),
            num_updates_received: inc.updates.load(Ordering::Relaxed),
            num_messages_sent: number,
        }),
    }
}

/// One writer's `SendMessages` stream on the node of `inc`: what
/// `dispatch` feeds, and the task that records each status as it comes
/// back. If the node is lost, the messages whose statuses did not come
/// count as send errors (their outcome is not known); the writer's next
/// message opens a stream on its next node.
fn stream_writer(
    inc: &Incarnation,
    stats: &Arc<Stats>,
) -> (StreamWriter, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (meta_tx, mut meta_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let mut rpc = ChatServerClient::new(inc.conn.clone());
    let stats = stats.clone();
    let task = tokio::spawn(async move {
        let reqs = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut statuses = match rpc.send_messages(reqs).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                stats.error(format!("SendMessages: {e}"));
                return;
            }
        };
        loop {
            match statuses.message().await {
                Ok(Some(s)) => match meta_rx.recv().await {
                    Some((id, due)) => record_status(&stats, &s, id, due),
                    None => return,
                },
                Ok(None) => return,
                Err(e) => {
                    let lost = 1 + meta_rx.len() as u64;
                    stats.send_errors.fetch_add(lost, Ordering::Relaxed);
                    stats.error(format!("SendMessages: {e}"));
                    return;
                }
            }
        }
    });
    let writer = StreamWriter {
        messages: tx,
        meta: meta_tx,
        generation: inc.generation,
    };
    (writer, task)
}

/// Sends message `id` (due at `due`) with one `SendMessage` call through
/// the node of `inc`. If the node is lost before the status comes, the
/// message goes again, unchanged, through the client's next node once the
/// client is streaming there (at most [`failover::RESENDS`] times).
fn send_unary(
    slot: Arc<Slot>,
    inc: Arc<Incarnation>,
    m: SentMessage,
    (id, due): (u64, Instant),
    stats: Arc<Stats>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut inc, mut m) = (inc, m);
        for resends in 0.. {
            let mut rpc = ChatServerClient::new(inc.conn.clone());
            let e = match rpc.send_message(m.clone()).await {
                Ok(s) => return record_status(&stats, s.get_ref(), id, due),
                Err(e) => e,
            };
            let lost = crate::client::failover::status_is_connection_loss(&e);
            let next = if lost && resends < failover::RESENDS {
                let by = Instant::now() + failover::RESEND_WAIT;
                failover::next_incarnation(&slot, inc.generation, by).await
            } else {
                None
            };
            let Some(next) = next else {
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                stats.error(format!("SendMessage: {e}"));
                return;
            };
            m = failover::resent(&m, &next);
            if let Some(r) = &stats.recording {
                r.send(next.recorded as usize, &m, id, false);
            }
            stats.resends.fetch_add(1, Ordering::Relaxed);
            inc = next;
        }
    })
}

/// Sends message `id` of writer `slot` (due at `due`) through its node
/// now: unary, or on its stream (`stream`, replaced after a failover).
fn send_one(
    args: &BenchArgs,
    slot: &Arc<Slot>,
    stream: &mut Option<StreamWriter>,
    (thread, id, due): (&Option<Thread>, u64, Instant),
    stats: &Arc<Stats>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    let Some(inc) = slot.incarnation() else {
        return;
    };
    let m = message(&inc, thread, id, args.size);
    if let Some(r) = &stats.recording {
        r.send(inc.recorded as usize, &m, id, args.mode == SendMode::Stream);
    }
    stats.dispatched.fetch_add(1, Ordering::Relaxed);
    if args.mode == SendMode::Unary {
        tasks.push(send_unary(slot.clone(), inc, m, (id, due), stats.clone()));
        return;
    }
    if stream
        .as_ref()
        .is_none_or(|s| s.generation != inc.generation)
    {
        let (writer, task) = stream_writer(&inc, stats);
        tasks.push(task);
        *stream = Some(writer);
    }
    match stream {
        Some(s) if s.messages.send(m).is_ok() => {
            if s.meta.send((id, due)).is_err() {
                // Its stream failed just now: the outcome is not known.
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        _ => {
            // Its stream failed: the message is lost.
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends on schedule from `start` until `start + duration`. Returns the
/// tasks that are still waiting for statuses.
async fn dispatch(
    args: &BenchArgs,
    slots: &[Arc<Slot>],
    stats: &Arc<Stats>,
    start: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (first_writer, writers) = writer_range(args);
    let threads = bench_threads(args);
    let (id_base, plan) = plan_run(args, stats);
    let mut tasks = Vec::new();
    let mut streams: Vec<Option<StreamWriter>> = Vec::new();
    if args.mode == SendMode::Stream {
        for slot in &slots[first_writer..first_writer + writers] {
            let inc = slot.incarnation();
            match inc.filter(|_| slot.state.load(Ordering::Relaxed) == READY) {
                Some(inc) => {
                    let (writer, task) = stream_writer(&inc, stats);
                    tasks.push(task);
                    streams.push(Some(writer));
                }
                None => streams.push(None),
            }
        }
    }
    let schedule = args.schedule();
    let end = start + schedule.window();
    if schedule.total() == 0 {
        tokio::time::sleep_until(end.into()).await;
        return tasks;
    }
    // A last wake-up after the end still sends the ones that fell due
    // before it.
    let mut k: u64 = 0;
    let mut no_stream = None;
    loop {
        let now = Instant::now().min(end);
        let due_count = schedule.due_by(now.duration_since(start));
        while k < due_count {
            let due = start + schedule.due(k);
            let w = first_writer + (k % writers as u64) as usize;
            let thread = &threads[plan.thread_of(k)];
            let slot = &slots[w];
            let id = id_base.wrapping_add(k);
            k += 1;
            if slot.state.load(Ordering::Relaxed) != READY {
                continue; // a lost client (or one moving to another node) does not send
            }
            stats.steps.sent(id.wrapping_sub(id_base));
            let stream = streams.get_mut(w - first_writer).unwrap_or(&mut no_stream);
            send_one(args, slot, stream, (thread, id, due), stats, &mut tasks);
        }
        if tasks.len() > 4096 {
            tasks.retain(|t| !t.is_finished());
        }
        if now >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(streams); // ends the request streams; their tasks finish after the statuses
    tasks
}

/// Figures sampled at one instant, to compute rates over a window.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    /// When.
    at: Option<Instant>,
    /// When, on the wall clock (µs since the epoch), so that a script can
    /// line the window up with what it scraped from the server meanwhile.
    wall_micros: i64,
    /// Encoded bytes of the Updates received so far, first ones excluded.
    update_bytes: u64,
    /// Bench messages received so far (all clients).
    deliveries: u64,
    /// Updates received so far, first ones excluded.
    updates: u64,
    /// Of those, the empty ones (heartbeats).
    empty_updates: u64,
    /// Acknowledgement RPCs answered so far.
    acks: u64,
    /// Messages accepted so far.
    accepted: u64,
    /// The server process, if measured.
    server: Option<crate::sys::ProcStats>,
    /// This process (the load generator).
    generator: Option<crate::sys::ProcStats>,
    /// CPU seconds the whole machine has been busy.
    machine_busy: Option<f64>,
    /// One-minute load average.
    load: Option<f64>,
}

fn snapshot(stats: &Stats, server_pid: Option<u32>) -> Snapshot {
    Snapshot {
        at: Some(Instant::now()),
        wall_micros: crate::clock::wall_micros().0,
        update_bytes: stats.update_bytes.load(Ordering::Relaxed),
        deliveries: stats.deliveries.load(Ordering::Relaxed),
        updates: stats.updates.load(Ordering::Relaxed),
        empty_updates: stats.empty_updates.load(Ordering::Relaxed),
        acks: stats.acks.load(Ordering::Relaxed),
        accepted: stats.accepted(),
        server: server_pid.and_then(crate::sys::proc_stats),
        generator: crate::sys::proc_stats(std::process::id()),
        machine_busy: crate::sys::machine_busy_seconds(),
        load: crate::sys::load_average(),
    }
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Prints a progress line every second until `stop`.
fn progress(
    stats: Arc<Stats>,
    slots: Arc<Vec<Arc<Slot>>>,
    phase: Arc<AtomicU8>,
    duration: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let tty = crate::chat::term::is_tty(2);
    tokio::spawn(async move {
        let mut last = snapshot(&stats, None);
        let mut sending_since: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = snapshot(&stats, None);
            let dt = now
                .at
                .zip(last.at)
                .map_or(1.0, |(a, b)| a.duration_since(b).as_secs_f64())
                .max(1e-3);
            let ready = slots
                .iter()
                .filter(|s| s.state.load(Ordering::Relaxed) == READY)
                .count();
            let label = match phase.load(Ordering::Relaxed) {
                0 => "ramp-up".to_owned(),
                1 => {
                    let since = *sending_since.get_or_insert_with(Instant::now);
                    format!(
                        "{:5.1}s/{}s",
                        since.elapsed().as_secs_f64(),
                        duration.as_secs_f64()
                    )
                }
                _ => "drain".to_owned(),
            };
            let line = format!(
                "[{label}] clients {ready}/{} | sent {} ok {} rej {} err {} | {} deliveries/s, {} Updates/s, {} acks/s | p99 {:.0}ms",
                slots.len(),
                stats.dispatched.load(Ordering::Relaxed),
                stats.accepted(),
                stats.rejected(),
                stats.send_errors.load(Ordering::Relaxed),
                si((now.deliveries - last.deliveries) as f64 / dt),
                si((now.updates - last.updates) as f64 / dt),
                si((now.acks - last.acks) as f64 / dt),
                stats.latency().quantile(0.99) as f64 / 1000.0,
            );
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            last = now;
        }
        if tty {
            eprintln!();
        }
    })
}

/// Runs the benchmark. Returns whether the delivery check passed.
/// Warns when the open-file limit is likely too low for the run.
fn check_fd_limit(args: &BenchArgs) {
    let fd_limit = crate::sys::raise_fd_limit();
    let connections = args.connection_count();
    let needed = connections as u64 + 64;
    if let Some(limit) = fd_limit
        && limit < needed
    {
        eprintln!(
            "warning: the open-file limit {limit} is below the {needed} this run needs (one per connection); multiplex with --clients-per-connection"
        );
    }
}

/// The server under test: spawned (with a fresh data directory of its own
/// if durable), or the one at `--server`.
struct Target {
    spawned: Option<server::SpawnedServer>,
    data_dir: Option<std::path::PathBuf>,
    url: String,
}

impl Target {
    async fn start(args: &BenchArgs) -> anyhow::Result<Target> {
        let data_dir =
            (args.spawn_server && args.storage == crate::server::Storage::Durable).then(|| {
                let micros = crate::clock::wall_micros().0;
                std::env::temp_dir().join(format!("dyconit-bench-{}-{micros}", std::process::id()))
            });
        let spawned = if args.spawn_server {
            let exe = std::env::current_exe().context("locating this program")?;
            let mut server_args = args.server_args();
            if let Some(dir) = &data_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                server_args.push(format!("--data-dir={}", dir.display()));
            }
            Some(server::SpawnedServer::start(&exe, &server_args).await?)
        } else {
            None
        };
        let url = match (&spawned, &args.server) {
            (Some(s), _) => s.url.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => bail!("give --server URL or --spawn-server"),
        };
        Ok(Target {
            spawned,
            data_dir,
            url,
        })
    }

    /// The admin URL of the server: the spawned one's, `--admin`, or the
    /// usual port beside `--server`.
    fn admin_url(&self, args: &BenchArgs) -> String {
        match (&self.spawned, &args.admin) {
            (Some(s), _) => s.admin_url.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => counters::default_admin(self.url.split(',').next().unwrap_or_default()),
        }
    }

    /// Stops a spawned server (returning how it exited) and removes its data.
    async fn stop(self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let exit = match self.spawned {
            Some(s) => Some(s.stop(Duration::from_secs(10)).await?),
            None => None,
        };
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(exit)
    }
}

/// One slot per client, then one per send-only writer.
fn make_slots(args: &BenchArgs) -> Arc<Vec<Arc<Slot>>> {
    Arc::new((0..slot_count(args)).map(|_| Arc::default()).collect())
}

/// The clients, send-only writers included.
fn slot_count(args: &BenchArgs) -> usize {
    let send_only = if args.send_only_writers {
        args.writers
    } else {
        0
    };
    args.clients + send_only
}

/// The slots that send: `(first, count)`. Send-only writers are the slots
/// after the streaming clients.
fn writer_range(args: &BenchArgs) -> (usize, usize) {
    let writers = if args.writers == 0 {
        args.clients
    } else {
        args.writers
    };
    let first_writer = if args.send_only_writers {
        args.clients
    } else {
        0
    };
    (first_writer, writers)
}

/// The thread layout of the run (see [`threads`]).
fn plan_of(args: &BenchArgs, first_writer: usize, writers: usize) -> threads::ThreadPlan {
    let send_only = if args.send_only_writers {
        args.writers
    } else {
        0
    };
    threads::ThreadPlan::new(
        args.threads,
        args.zipf,
        args.active_threads_per_client,
        args.clients + send_only,
        (first_writer, writers),
    )
}

/// The threads messages go to; bench traffic stays out of the main room
/// unless asked for.
fn bench_threads(args: &BenchArgs) -> Vec<Option<Thread>> {
    let main_room = args.threads == 1 && args.thread_prefix.is_empty();
    (0..args.threads)
        .map(|t| {
            (!main_room).then(|| Thread {
                id: format!("{}{t}", args.thread_prefix),
            })
        })
        .collect()
}

/// Ramp-up: starts the clients (and the connect-only writers after them),
/// spread over the ramp-up time from `begun`.
async fn ramp_up(
    args: &BenchArgs,
    slots: &[Arc<Slot>],
    (channels, nodes): (&[Connection], &Arc<Nodes>),
    stats: &Arc<Stats>,
    stop: &CancellationToken,
    begun: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(slots.len());
    for (i, slot) in slots.iter().enumerate() {
        let at = begun + args.ramp_up.mul_f64(i as f64 / slots.len() as f64);
        tokio::time::sleep_until(at.into()).await;
        // Connection c is to node c mod nodes (conn::connect_spread).
        let c = i % channels.len();
        let node = c % nodes.urls.len();
        let inc = Incarnation::first(channels[c].clone(), node, i);
        slot.set_incarnation(Arc::new(inc));
        let (slot, stats) = (slot.clone(), stats.clone());
        tasks.push(if i < args.clients {
            tokio::spawn(run_client(i, slot, stats, nodes.clone(), stop.clone()))
        } else {
            tokio::spawn(connect_only(i, slot, stats))
        });
    }
    tasks
}

/// Waits (up to 30 s) until no client is still connecting; returns how many
/// of the first `clients` are ready.
async fn wait_connected(slots: &[Arc<Slot>], clients: usize) -> usize {
    let ready_by = Instant::now() + Duration::from_secs(30);
    while slots
        .iter()
        .any(|s| matches!(s.state.load(Ordering::Relaxed), CONNECTING | MOVING))
        && Instant::now() < ready_by
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slots
        .iter()
        .take(clients)
        .filter(|s| s.state.load(Ordering::Relaxed) == READY)
        .count()
}

/// Waits until every ready client (and every one moving to another node)
/// got every accepted message, or `by`.
async fn wait_delivered(slots: &[Arc<Slot>], stats: &Stats, by: Instant) {
    let accepted = stats.accepted();
    while Instant::now() < by
        && slots.iter().any(|s| {
            matches!(s.state.load(Ordering::Relaxed), READY | MOVING)
                && s.delivered.load(Ordering::Relaxed) < accepted
        })
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every ready client checked against the accepted messages: how many got
/// exactly them, and the messages missing and extra over all clients.
fn verify(slots: &[Arc<Slot>], stats: &Stats, clients: usize) -> (usize, u64, u64) {
    let accepted = stats.accepted();
    let accepted_checksum = stats.accepted_checksum.load(Ordering::Relaxed);
    let mut complete = 0;
    let mut missing = 0u64;
    let mut extra = 0u64;
    for s in slots.iter().take(clients) {
        if s.state.load(Ordering::Relaxed) != READY {
            continue;
        }
        let d = s.delivered.load(Ordering::Relaxed);
        if d == accepted && s.checksum.load(Ordering::Relaxed) == accepted_checksum {
            complete += 1;
        }
        missing += accepted.saturating_sub(d);
        extra += d.saturating_sub(accepted);
    }
    (complete, missing, extra)
}

/// Prints the report, writes it as JSON if asked; true if its checks passed.
fn emit(report: &report::Report, args: &BenchArgs) -> anyhow::Result<bool> {
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.check.passed)
}

/// Opens the run's connections, spread over the `--server` nodes, and
/// keeps the node list for the clients' failovers.
async fn open_connections(
    args: &BenchArgs,
    url: &str,
) -> anyhow::Result<(Vec<Connection>, Arc<Nodes>)> {
    let urls = crate::client::server_list(url)?;
    let tls = conn::tls_for(&urls[0], args.ca_cert.as_deref())?;
    let channels = conn::connect_spread(&urls, args.connection_count(), tls.clone()).await?;
    let nodes = Arc::new(Nodes {
        urls,
        tls,
        next_recorded: std::sync::atomic::AtomicU32::new(slot_count(args) as u32),
    });
    Ok((channels, nodes))
}

pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    args.validate()?;
    check_fd_limit(&args);
    if args.against.is_some() || args.spawn_nats.is_some() {
        return nats::run(&args).await;
    }
    let target = Target::start(&args).await?;
    let url = target.url.clone();
    let server_pid = target.spawned.as_ref().map(|s| s.pid()).or(args.server_pid);
    let connections = args.connection_count();
    let (channels, nodes) = open_connections(&args, &url).await?;
    let baseline = server_pid.and_then(crate::sys::proc_stats);
    let admin = target.admin_url(&args);
    let counters_start = counters::start(&admin).await;

    let recording = match &args.record {
        Some(path) => Some(record_run::RunRecording::start(path, &args, &url, &admin).await?),
        None => None,
    };
    let stats = Arc::new(Stats {
        recording,
        steps: steps::StepStats::new(args.schedule()),
        ..Stats::default()
    });
    let slots = make_slots(&args);
    let stop_clients = CancellationToken::new();
    let stop_progress = CancellationToken::new();
    let phase = Arc::new(AtomicU8::new(0));
    let begun = Instant::now();
    let progress_task = (!args.quiet).then(|| {
        progress(
            stats.clone(),
            slots.clone(),
            phase.clone(),
            args.schedule().window(),
            stop_progress.clone(),
        )
    });

    let conns = (&channels[..], &nodes);
    let client_tasks = ramp_up(&args, &slots, conns, &stats, &stop_clients, begun).await;
    // Every client must have its first Update before sending starts, so every
    // accepted message is after every client's baseline.
    let ready = wait_connected(&slots, args.clients).await;
    plan_run(&args, &stats);
    if args.warm_up {
        warm_up(&args, &slots, &stats).await;
    }

    // The measured window; the server's counters are read as it opens.
    let counters_window = counters::window(&admin, &counters_start).await;
    phase.store(1, Ordering::Relaxed);
    let start = Instant::now();
    let before = snapshot(&stats, server_pid);
    let send_tasks = dispatch(&args, &slots, &stats, start).await;
    let after = snapshot(&stats, server_pid);
    phase.store(2, Ordering::Relaxed);

    // Let the sends finish and the last deliveries arrive.
    let drain_by = Instant::now() + args.drain;
    for t in send_tasks {
        let _ = tokio::time::timeout_at(drain_by.into(), t).await;
    }
    wait_delivered(&slots, &stats, drain_by).await;
    let end_server = server_pid.and_then(crate::sys::proc_stats);
    let server_counters = counters::end(&admin, counters_start, counters_window).await;
    stop_progress.cancel();
    if let Some(t) = progress_task {
        let _ = t.await;
    }

    let (complete, missing, extra) = verify(&slots, &stats, args.clients);
    stop_clients.cancel();
    for t in client_tasks {
        let _ = t.await;
    }
    if let Some(r) = &stats.recording {
        record_run::finish(r, &args, &admin).await?;
    }
    drop(channels);
    let exit = target.stop().await?;

    let report = report::Report::build(report::Inputs {
        args: &args,
        url: &url,
        connections,
        ready,
        stats: &stats,
        before: &before,
        after: &after,
        baseline,
        end_server,
        accepted_checksum_ok: complete,
        missing,
        extra,
        server_exit: exit.map(|s| s.to_string()),
        server_counters,
    });
    emit(&report, &args)
}
