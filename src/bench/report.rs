//! The benchmark's report: a table for people and JSON for scripts.

use super::{BenchArgs, SendMode, Snapshot, Stats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// What [`Report::build`] needs.
pub(super) struct Inputs<'a> {
    /// The flags of the run.
    pub args: &'a BenchArgs,
    /// The server's URL.
    pub url: &'a str,
    /// HTTP/2 connections the clients shared.
    pub connections: usize,
    /// Clients that got their first Update.
    pub ready: usize,
    /// The counters of the run.
    pub stats: &'a Stats,
    /// At the start of the send window.
    pub before: &'a Snapshot,
    /// At its end.
    pub after: &'a Snapshot,
    /// The server before any client connected.
    pub baseline: Option<crate::sys::ProcStats>,
    /// The server after the drain.
    pub end_server: Option<crate::sys::ProcStats>,
    /// Clients whose messages matched the accepted ones exactly.
    pub accepted_checksum_ok: usize,
    /// Accepted messages missing, summed over clients.
    pub missing: u64,
    /// Messages beyond the accepted ones, summed over clients.
    pub extra: u64,
    /// How the spawned server exited.
    pub server_exit: Option<String>,
    /// The server's own counters for the run, or why they were not read.
    pub server_counters: Result<super::counters::ServerCounters, String>,
}

/// The run's parameters, as given.
#[derive(Debug, Serialize)]
pub struct Config {
    /// The server's URL.
    pub server: String,
    /// Whether the bench started it (`--spawn-server`).
    pub spawned_server: bool,
    /// Streaming clients.
    pub clients: usize,
    /// HTTP/2 connections they shared.
    pub connections: usize,
    /// Scheduled aggregate send rate (with `--rate-steps`, the mean over
    /// the window).
    pub rate_per_s: f64,
    /// The rates of `--rate-steps`, each for `duration_s` (empty: one rate).
    pub rate_steps: Vec<f64>,
    /// Clients that sent.
    pub writers: usize,
    /// The writers only send (they do not stream).
    pub send_only_writers: bool,
    /// Threads the messages were spread over.
    pub threads: usize,
    /// Zipf skew of traffic over the threads (0: uniform).
    pub zipf: f64,
    /// Threads each client takes part in (0: all).
    pub active_threads_per_client: usize,
    /// Each writer wrote once before the window (`--warm-up`).
    pub warm_up: bool,
    /// Bytes of contents per message.
    pub message_bytes: usize,
    /// Length of the send window asked for.
    pub duration_s: f64,
    /// Time the clients took to connect, before sending.
    pub ramp_up_s: f64,
    /// Unary SendMessage or SendMessages streams.
    pub mode: SendMode,
    /// Flags the spawned server got.
    pub server_args: Vec<String>,
}

pub use super::histogram::Latency;

/// The server's cost, read from /proc.
#[derive(Debug, Serialize)]
pub struct ServerCost {
    /// CPU seconds (user + system) during the send window.
    pub cpu_seconds: f64,
    /// `cpu_seconds` / window: cores used on average.
    pub cores: f64,
    /// Resident memory after the run.
    pub rss_bytes: u64,
    /// Peak resident memory over the server's life.
    pub peak_rss_bytes: u64,
    /// Resident memory before the clients connected.
    pub baseline_rss_bytes: Option<u64>,
    /// Peak RSS / clients.
    pub peak_rss_per_client_bytes: f64,
    /// (Peak RSS - baseline) / clients.
    pub added_rss_per_client_bytes: Option<f64>,
}

/// The delivery check.
#[derive(Debug, Serialize)]
pub struct Check {
    /// Messages accepted (status OK).
    pub accepted: u64,
    /// Clients that received exactly the accepted messages (count and
    /// checksum of ids), after their first Update.
    pub clients_complete: usize,
    /// Clients that connected.
    pub clients_ready: usize,
    /// Clients asked for.
    pub clients: usize,
    /// Clients whose stream failed or ended early.
    pub clients_lost: u64,
    /// Accepted messages missing, summed over clients.
    pub missing: u64,
    /// Messages received beyond the accepted ones, summed over clients.
    pub extra: u64,
    /// Sends that failed as RPCs.
    pub send_errors: u64,
    /// Bound violations the server counted during the run.
    pub server_violations: u64,
    /// Every client received every accepted message once, and nothing failed.
    pub passed: bool,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// Everything measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The run's parameters.
    pub config: Config,
    /// Length of the send window, seconds.
    pub window_s: f64,
    /// Start and end of the send window on the wall clock, µs since the
    /// epoch: for lining it up with what a script scraped meanwhile.
    pub window_wall_micros: (i64, i64),
    /// Messages sent (handed to the transport).
    pub sent: u64,
    /// Messages accepted (status OK), the whole run.
    pub accepted: u64,
    /// Accepted per second over the window.
    pub accepted_per_s: f64,
    /// Rejections by status name.
    pub rejections: BTreeMap<String, u64>,
    /// Bench messages received per second over the window, all clients.
    pub deliveries_per_s: f64,
    /// Bench messages received over the whole run, drain included; equals
    /// accepted x clients when the check passes.
    pub deliveries_total: u64,
    /// `deliveries_total` per second of the send window: the delivery rate
    /// the window's load was carried at, without the dip of the first
    /// staleness period (nothing is due yet) that `deliveries_per_s` has.
    pub deliveries_per_window_s: f64,
    /// Updates received per second over the window (first ones excluded).
    pub updates_per_s: f64,
    /// Encoded bytes of the Updates received per second over the window
    /// (first ones excluded): the size of each protobuf `Update` as the
    /// client decoded it, without the 5-byte gRPC frame header and the
    /// HTTP/2 and TLS framing around it.
    pub update_bytes_per_s: f64,
    /// Deliveries per Update in the window (heartbeats included).
    pub messages_per_update: f64,
    /// Share of Updates in the window that were empty heartbeats.
    pub empty_update_share: f64,
    /// Acknowledgement RPCs answered per second over the window.
    pub acks_per_s: f64,
    /// Acknowledgement RPCs that failed.
    pub ack_errors: u64,
    /// Clients that moved to another node of `--server` after theirs was
    /// lost (each move counted).
    pub failovers: u64,
    /// Sends whose answer was lost with a node, sent again unchanged
    /// through the client's next node.
    pub resends: u64,
    /// Commit -> receive (same-host clock).
    pub latency: Latency,
    /// Scheduled send time -> status received.
    pub send_latency: Latency,
    /// Commit -> receive of messages on each receiver's own threads, with
    /// `--active-threads-per-client`.
    pub own_thread_latency: Option<Latency>,
    /// Messages received without a bench id (other traffic on the server).
    pub foreign_messages: u64,
    /// The server's CPU and memory, when it could be measured.
    pub server: Option<ServerCost>,
    /// CPU cores the load generator itself used in the window (it shares
    /// the machine with a local server).
    pub generator_cores: Option<f64>,
    /// Cores that other processes on the machine used in the window (busy
    /// CPU minus the server and the generator): noise in the figures.
    pub other_cores: Option<f64>,
    /// One-minute load average at the start and the end of the window.
    pub load_average: (Option<f64>, Option<f64>),
    /// How the spawned server exited.
    pub server_exit: Option<String>,
    /// The server's own counters for the run (bound violations, dropped
    /// clients), read from its /metrics; `None` if they could not be read.
    pub server_counters: Option<super::counters::ServerCounters>,
    /// Why the server's counters are missing, if they are.
    pub server_counters_error: Option<String>,
    /// What dominant rejections most likely mean, and the flag to change.
    pub notes: Vec<String>,
    /// Each step's figures, with `--rate-steps`.
    pub steps: Vec<super::steps::StepReport>,
    /// The delivery check.
    pub check: Check,
}

/// The offered load as the table shows it.
fn offered(c: &Config) -> String {
    if c.rate_steps.is_empty() {
        return format!("{} msg/s", c.rate_per_s);
    }
    let steps: Vec<String> = c.rate_steps.iter().map(f64::to_string).collect();
    format!("{} msg/s for {} s each", steps.join(", "), c.duration_s)
}

/// The server's CPU and memory over the window, when its process was read.
fn server_cost(i: &Inputs<'_>, window: f64) -> Option<ServerCost> {
    match (i.before.server, i.after.server, i.end_server) {
        (Some(sb), Some(sa), end) => {
            let end = end.unwrap_or(sa);
            let clients = i.args.clients as f64;
            Some(ServerCost {
                cpu_seconds: sa.cpu_seconds - sb.cpu_seconds,
                cores: (sa.cpu_seconds - sb.cpu_seconds) / window,
                rss_bytes: end.rss_bytes,
                peak_rss_bytes: end.peak_rss_bytes,
                baseline_rss_bytes: i.baseline.map(|p| p.rss_bytes),
                peak_rss_per_client_bytes: end.peak_rss_bytes as f64 / clients,
                added_rss_per_client_bytes: i
                    .baseline
                    .map(|p| end.peak_rss_bytes.saturating_sub(p.rss_bytes) as f64 / clients),
            })
        }
        _ => None,
    }
}

impl Config {
    /// The run's settings as the report records them.
    fn of(i: &Inputs<'_>) -> Config {
        Config {
            server: i.url.to_owned(),
            spawned_server: i.args.spawn_server,
            clients: i.args.clients,
            connections: i.connections,
            rate_per_s: if i.args.rate_steps.is_empty() {
                i.args.rate
            } else {
                let s = i.args.schedule();
                s.total() as f64 / s.window().as_secs_f64()
            },
            rate_steps: i.args.rate_steps.clone(),
            writers: if i.args.writers == 0 {
                i.args.clients
            } else {
                i.args.writers
            },
            send_only_writers: i.args.send_only_writers,
            threads: i.args.threads,
            zipf: i.args.zipf,
            active_threads_per_client: i.args.active_threads_per_client,
            warm_up: i.args.warm_up,
            message_bytes: i.args.size,
            duration_s: i.args.duration.as_secs_f64(),
            ramp_up_s: i.args.ramp_up.as_secs_f64(),
            mode: i.args.mode,
            server_args: if i.args.spawn_server {
                i.args.server_args()
            } else {
                Vec::new()
            },
        }
    }
}

impl Report {
    pub(super) fn build(i: Inputs<'_>) -> Report {
        let (a, b, s) = (i.after, i.before, i.stats);
        let window = match (a.at, b.at) {
            (Some(x), Some(y)) => x.duration_since(y).as_secs_f64().max(1e-9),
            _ => 1e-9,
        };
        let rate = |x: u64, y: u64| x.saturating_sub(y) as f64 / window;
        let updates = a.updates.saturating_sub(b.updates);
        let deliveries = a.deliveries.saturating_sub(b.deliveries);
        let rejections = super::steps::rejections(&s.statuses);
        let server = server_cost(&i, window);
        let accepted = s.accepted();
        let send_errors = s.send_errors.load(Ordering::Relaxed);
        let server_violations = i.server_counters.as_ref().map_or(0, |c| c.violations());
        let notes = super::advice::explain(
            &rejections,
            s.dispatched.load(Ordering::Relaxed),
            i.args.threads,
        );
        let lost = s.lost.load(Ordering::Relaxed);
        let first_error = s
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Report {
            config: Config::of(&i),
            window_s: window,
            window_wall_micros: (b.wall_micros, a.wall_micros),
            sent: s.dispatched.load(Ordering::Relaxed),
            accepted,
            accepted_per_s: rate(a.accepted, b.accepted),
            rejections,
            deliveries_per_s: rate(a.deliveries, b.deliveries),
            deliveries_total: s.deliveries.load(Ordering::Relaxed),
            // Deliveries before the window (of --warm-up writes) are not
            // the window's.
            deliveries_per_window_s: s
                .deliveries
                .load(Ordering::Relaxed)
                .saturating_sub(b.deliveries) as f64
                / window,
            updates_per_s: rate(a.updates, b.updates),
            update_bytes_per_s: rate(a.update_bytes, b.update_bytes),
            messages_per_update: if updates == 0 {
                0.0
            } else {
                deliveries as f64 / updates as f64
            },
            empty_update_share: if updates == 0 {
                0.0
            } else {
                a.empty_updates.saturating_sub(b.empty_updates) as f64 / updates as f64
            },
            acks_per_s: rate(a.acks, b.acks),
            ack_errors: s.ack_errors.load(Ordering::Relaxed),
            failovers: s.failovers.load(Ordering::Relaxed),
            resends: s.resends.load(Ordering::Relaxed),
            latency: Latency::of(&s.latency()),
            send_latency: Latency::of(&s.send_latency),
            own_thread_latency: (i.args.active_threads_per_client > 0)
                .then(|| Latency::of(&s.own_latency)),
            foreign_messages: s.foreign.load(Ordering::Relaxed),
            server,
            generator_cores: a
                .generator
                .zip(b.generator)
                .map(|(x, y)| (x.cpu_seconds - y.cpu_seconds) / window),
            other_cores: other_cores(a, b, window),
            load_average: (b.load, a.load),
            server_exit: i.server_exit,
            server_counters_error: i.server_counters.as_ref().err().cloned(),
            server_counters: i.server_counters.ok(),
            notes,
            steps: s.steps.report(b.wall_micros),
            check: Check {
                accepted,
                clients_complete: i.accepted_checksum_ok,
                clients_ready: i.ready,
                clients: i.args.clients,
                clients_lost: lost,
                missing: i.missing,
                extra: i.extra,
                send_errors,
                server_violations,
                passed: i.accepted_checksum_ok == i.args.clients
                    && server_violations == 0
                    && lost == 0
                    && send_errors == 0
                    && s.ack_errors.load(Ordering::Relaxed) == 0,
                first_error,
            },
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let c = &self.config;
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "{k:<28} {v}");
        };
        row(
            "workload",
            format!(
                "{} clients on {} connections ({}), {} by {} writers over {} thread(s), {} B, {:?}",
                c.clients,
                c.connections,
                connection_mode(c),
                offered(c),
                c.writers,
                c.threads,
                c.message_bytes,
                c.mode
            ),
        );
        if c.zipf > 0.0 || c.active_threads_per_client > 0 {
            row(
                "threads",
                format!(
                    "zipf s={}, each client active in {} (0 = all){}",
                    c.zipf,
                    c.active_threads_per_client,
                    if c.warm_up {
                        ", each writer wrote once before the window"
                    } else {
                        ""
                    }
                ),
            );
        }
        row(
            "server",
            format!("{} {}", c.server, c.server_args.join(" ")),
        );
        row("window", format!("{:.1} s", self.window_s));
        for (i, st) in self.steps.iter().enumerate() {
            row(&format!("step {}", i + 1), st.summary());
        }
        row(
            "sent / accepted",
            format!("{} / {}", self.sent, self.accepted),
        );
        row("accepted/s", format!("{:.1}", self.accepted_per_s));
        row(
            "rejections",
            if self.rejections.is_empty() {
                "none".into()
            } else {
                self.rejections
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        self.delivery_rows(&mut row);
        row("acknowledgement RPCs/s", format!("{:.1}", self.acks_per_s));
        if self.failovers > 0 {
            row(
                "failovers",
                format!(
                    "{} (clients that moved to another node), {} sends resent there",
                    self.failovers, self.resends
                ),
            );
        }
        self.cost_rows(&mut row);
        self.server_counter_rows(&mut row);
        for note in &self.notes {
            row("why", note.clone());
        }
        let k = &self.check;
        row(
            "delivery check",
            format!(
                "{}: {}/{} clients got all {} accepted messages; {} lost, {} missing, {} extra, {} send errors, {} bound violations counted by the server",
                if k.passed { "PASSED" } else { "FAILED" },
                k.clients_complete,
                k.clients,
                k.accepted,
                k.clients_lost,
                k.missing,
                k.extra,
                k.send_errors,
                k.server_violations
            ),
        );
        if let Some(e) = &k.first_error {
            row("first error", e.clone());
        }
        t
    }

    /// Deliveries, Updates and their bytes per second.
    fn delivery_rows(&self, row: &mut impl FnMut(&str, String)) {
        row(
            "deliveries/s",
            format!(
                "{:.0} in the window; all {} deliveries of its messages: {:.0} per window second",
                self.deliveries_per_s, self.deliveries_total, self.deliveries_per_window_s
            ),
        );
        row(
            "Updates/s",
            format!(
                "{:.1} ({:.2} messages per Update, {:.1}% heartbeats)",
                self.updates_per_s,
                self.messages_per_update,
                self.empty_update_share * 100.0
            ),
        );
        row(
            "Update bytes/s",
            format!(
                "{:.1} MB/s of encoded Updates ({:.0} B per Update)",
                self.update_bytes_per_s / 1e6,
                self.update_bytes_per_s / self.updates_per_s.max(1e-9)
            ),
        );
    }

    /// Latencies, and what the run cost the server, the generator and the
    /// rest of the machine.
    fn cost_rows(&self, row: &mut impl FnMut(&str, String)) {
        let l = &self.latency;
        row(
            "commit->receive ms",
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  (n={})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            ),
        );
        if let Some(l) = &self.own_thread_latency {
            row(
                "  on own threads ms",
                format!(
                    "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  (n={})",
                    l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
                ),
            );
        }
        let l = &self.send_latency;
        row(
            "send (scheduled->status) ms",
            format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            ),
        );
        match &self.server {
            Some(s) => {
                row(
                    "server CPU",
                    format!("{:.2} s = {:.3} cores", s.cpu_seconds, s.cores),
                );
                row(
                    "server RSS",
                    format!(
                        "{:.1} MiB now, {:.1} MiB peak, {:.1} KiB peak per client{}",
                        s.rss_bytes as f64 / 1048576.0,
                        s.peak_rss_bytes as f64 / 1048576.0,
                        s.peak_rss_per_client_bytes / 1024.0,
                        s.added_rss_per_client_bytes
                            .map(|x| format!(" ({:.1} KiB above baseline)", x / 1024.0))
                            .unwrap_or_default()
                    ),
                );
            }
            None => row(
                "server CPU/RSS",
                "not measured (remote; give --server-pid for a local server)".into(),
            ),
        }
        if let Some(g) = self.generator_cores {
            row("load generator CPU", format!("{g:.3} cores"));
        }
        if let Some(o) = self.other_cores {
            row(
                "other processes' CPU",
                format!(
                    "{o:.3} cores (load average {} -> {})",
                    self.load_average
                        .0
                        .map_or("?".into(), |l| format!("{l:.2}")),
                    self.load_average
                        .1
                        .map_or("?".into(), |l| format!("{l:.2}"))
                ),
            );
        }
    }

    /// The server's own counters: violations by bound, drops by reason.
    fn server_counter_rows(&self, row: &mut impl FnMut(&str, String)) {
        let Some(c) = &self.server_counters else {
            let why = self.server_counters_error.clone().unwrap_or_default();
            row("server counters", why);
            return;
        };
        let list = |m: &BTreeMap<String, u64>| {
            let shown: Vec<String> = m
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            if shown.is_empty() {
                "none".to_owned()
            } else {
                shown.join(", ")
            }
        };
        let before = match c.violations_before_window {
            Some(n) if n > 0 => format!(" ({n} of them before the window)"),
            _ => String::new(),
        };
        row(
            "server: bound violations",
            format!("{}{before}", list(&c.bound_violations)),
        );
        row("server: clients dropped", list(&c.clients_dropped));
        if let Some(n) = c.other_clients_at_start.filter(|n| *n > 0) {
            row(
                "server: other clients",
                format!("{n} connected before the run"),
            );
        }
    }
}

/// Cores that other processes on the machine used between `b` and `a`:
/// busy CPU minus the server and the generator.
fn other_cores(a: &Snapshot, b: &Snapshot, window: f64) -> Option<f64> {
    a.machine_busy.zip(b.machine_busy).map(|(x, y)| {
        let busy = (x - y) / window;
        let own = |p: Option<crate::sys::ProcStats>, q: Option<crate::sys::ProcStats>| {
            p.zip(q)
                .map_or(0.0, |(p, q)| (p.cpu_seconds - q.cpu_seconds) / window)
        };
        (busy - own(a.server, b.server) - own(a.generator, b.generator)).max(0.0)
    })
}

/// How the clients were connected, for the table.
fn connection_mode(c: &Config) -> String {
    let clients = c.clients + if c.send_only_writers { c.writers } else { 0 };
    if c.connections >= clients {
        "one per client".into()
    } else {
        format!(
            "multiplexed, up to {} clients per connection",
            clients.div_ceil(c.connections.max(1))
        )
    }
}
