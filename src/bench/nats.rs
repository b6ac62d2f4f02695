//! `bench --against nats://HOST:PORT` (or `--spawn-nats BIN`): the bench's
//! fan-out workload over core NATS, as a yardstick for our own figures.
//!
//! N subscriber connections (one `async-nats` client each, as our clients
//! have one HTTP/2 connection each) subscribe to one subject; one more
//! connection publishes `--rate` messages a second of `--size` bytes on an
//! open-loop schedule (message k is due at k / rate, whatever happened to the
//! ones before). Core NATS has no commit: a message's latency is its receive
//! time minus the time just before it was published, both on the local
//! clock. There are no bounds, no acknowledgements and no history: this is
//! the floor a pure fan-out broker sets, not the same service.
//!
//! The figures are the ones our bench reports: deliveries/s, latency
//! p50/p99, the server's CPU per delivery and RSS per connection (from
//! `/proc/PID`), and the load generator's own CPU.

use super::BenchArgs;
use super::histogram::Histogram;
use crate::client::clock::local_micros;
use crate::sys::{ProcStats, proc_stats};
use anyhow::{Context, bail};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// The one subject every subscriber listens on.
const SUBJECT: &str = "dyconit.bench.fanout";

/// Subscribers connecting at once during the ramp-up.
const CONNECT_CONCURRENCY: usize = 64;

/// A `nats-server` the bench started (`--spawn-nats`); killed on drop.
struct SpawnedNats {
    child: std::process::Child,
    url: String,
}

impl Drop for SpawnedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SpawnedNats {
    /// Starts `bin` on a free loopback port and waits (up to 20 s) until it
    /// accepts connections.
    async fn start(bin: &std::path::Path) -> anyhow::Result<SpawnedNats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        // The server says nothing we could wait on without parsing its log;
        // its port opening is the event.
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on port {port} within 20 s",
                    bin.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(SpawnedNats { child, url })
    }

    fn pid(&self) -> Option<u32> {
        Some(self.child.id())
    }
}

/// Counters the subscriber tasks share.
#[derive(Default)]
struct Counts {
    /// Bench messages received, all subscribers.
    deliveries: AtomicU64,
    /// Receive time minus publish time, µs; one shard per group of
    /// subscribers (as in the gRPC bench).
    latency: Vec<Histogram>,
}

const SHARDS: usize = 16;

/// The message: the bench id and the publish time (16 hex digits each),
/// padded with `x` to `size` bytes.
fn payload(id: u64, at: i64, size: usize) -> bytes::Bytes {
    let mut s = format!("{id:016x}{:016x}", at as u64);
    s.extend(std::iter::repeat_n('x', size.saturating_sub(32)));
    bytes::Bytes::from(s)
}

/// The publish time in a payload, if it is one of ours.
fn published_at(p: &[u8]) -> Option<i64> {
    let hex = std::str::from_utf8(p.get(16..32)?).ok()?;
    u64::from_str_radix(hex, 16).ok().map(|t| t as i64)
}

/// Connects one subscriber and counts what it receives until `stop`.
async fn subscriber(
    url: String,
    index: usize,
    counts: Arc<Counts>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("bench-{index}"))
        .connect(&url)
        .await
        .with_context(|| format!("subscriber {index}: connecting to {url}"))?;
    let mut sub = client.subscribe(SUBJECT).await?;
    // The subscription is registered on the server once a flush returns.
    client.flush().await?;
    Ok(tokio::spawn(async move {
        let shard = &counts.latency[index % SHARDS];
        loop {
            let m = tokio::select! {
                _ = stop.cancelled() => break,
                m = sub.next() => m,
            };
            let Some(m) = m else { break };
            let now = local_micros();
            if let Some(at) = published_at(&m.payload) {
                shard.record((now - at).max(0) as u64);
                counts.deliveries.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(client);
    }))
}

/// Publishes `rate` messages a second for `duration`, open loop. Returns the
/// number published.
async fn publish(url: &str, args: &BenchArgs) -> anyhow::Result<u64> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("publisher: connecting to {url}"))?;
    let start = tokio::time::Instant::now();
    let total = (args.rate * args.duration.as_secs_f64()).round() as u64;
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / args.rate);
        tokio::time::sleep_until(due).await;
        let body = payload(k, local_micros(), args.size);
        client.publish(SUBJECT, body).await?;
    }
    client.flush().await?;
    tokio::time::sleep_until(start + args.duration).await;
    Ok(total)
}

/// The report, for people and (`--json`) scripts.
#[derive(Debug, Serialize)]
pub struct NatsReport {
    pub server: String,
    pub subscribers: usize,
    pub rate_per_s: f64,
    pub message_bytes: usize,
    pub window_s: f64,
    pub published: u64,
    /// Deliveries expected: published x subscribers.
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub latency: super::report::Latency,
    /// The server's CPU over the send window (with `--spawn-nats` or
    /// `--server-pid`).
    pub server_cpu_s: Option<f64>,
    pub server_cores: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    pub server_rss_bytes: Option<u64>,
    /// RSS added by the subscribers, per connection (after they connected,
    /// minus before).
    pub server_rss_per_connection_bytes: Option<f64>,
    /// CPU cores the load generator used in the window.
    pub generator_cores: Option<f64>,
    pub load_average: Option<f64>,
}

impl NatsReport {
    fn table(&self) -> String {
        let l = &self.latency;
        let opt = |v: Option<f64>, unit: &str| {
            v.map_or("not measured".into(), |v| format!("{v:.3}{unit}"))
        };
        [
            format!("nats fan-out bench against {}", self.server),
            format!(
                "workload: {} subscriber connections, 1 subject, {} msg/s of {} B, {:.1} s window",
                self.subscribers, self.rate_per_s, self.message_bytes, self.window_s
            ),
            format!(
                "published {}; deliveries {} of {} ({:.0}/s)",
                self.published, self.deliveries, self.expected_deliveries, self.deliveries_per_s
            ),
            format!(
                "publish->receive ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  (n={})",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
            ),
            format!(
                "server CPU: {} ({} cores), {} per delivery",
                opt(self.server_cpu_s, " s"),
                opt(self.server_cores, ""),
                opt(self.server_cpu_us_per_delivery, " µs")
            ),
            format!(
                "server RSS: {} MiB, {} KiB per connection above baseline",
                self.server_rss_bytes
                    .map_or("?".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
                opt(self.server_rss_per_connection_bytes.map(|b| b / 1024.0), "")
            ),
            format!(
                "load generator CPU: {} cores",
                opt(self.generator_cores, "")
            ),
            format!("load average: {}", opt(self.load_average, "")),
        ]
        .join("\n")
    }
}

/// Where the server is and how to measure it.
async fn target(args: &BenchArgs) -> anyhow::Result<(Option<SpawnedNats>, String, Option<u32>)> {
    match (&args.spawn_nats, &args.against) {
        (Some(bin), _) => {
            let s = SpawnedNats::start(bin).await?;
            let (url, pid) = (s.url.clone(), s.pid());
            Ok((Some(s), url, pid))
        }
        (None, Some(url)) => {
            if !url.starts_with("nats://") {
                bail!("--against takes a nats://HOST:PORT URL, not {url:?}");
            }
            Ok((None, url.clone(), args.server_pid))
        }
        (None, None) => bail!("give --against nats://HOST:PORT or --spawn-nats BIN"),
    }
}

/// Connects every subscriber (at most [`CONNECT_CONCURRENCY`] at once).
async fn connect_all(
    url: &str,
    n: usize,
    counts: &Arc<Counts>,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        if pending.len() >= CONNECT_CONCURRENCY
            && let Some(r) = pending.join_next().await
        {
            tasks.push(r??);
        }
        pending.spawn(subscriber(url.to_owned(), i, counts.clone(), stop.clone()));
    }
    while let Some(r) = pending.join_next().await {
        tasks.push(r??);
    }
    Ok(tasks)
}

/// Runs the NATS bench. `Ok(false)` if deliveries were missing.
pub async fn run(args: &BenchArgs) -> anyhow::Result<bool> {
    if args.rate <= 0.0 {
        bail!("the NATS bench needs --rate above 0");
    }
    if args.size < 32 {
        bail!("the NATS bench needs --size of at least 32 bytes (the id and the publish time)");
    }
    let (spawned, url, pid) = target(args).await?;
    let stats = |p: Option<u32>| p.and_then(proc_stats);
    let baseline = stats(pid);
    let counts = Arc::new(Counts {
        latency: (0..SHARDS).map(|_| Histogram::default()).collect(),
        ..Counts::default()
    });
    let stop = CancellationToken::new();
    let tasks = connect_all(&url, args.clients, &counts, &stop).await?;
    if !args.quiet {
        eprintln!("{} subscribers connected to {url}", args.clients);
    }
    let me = Some(std::process::id());
    let (before, gen_before) = (stats(pid), stats(me));
    let started = Instant::now();
    let published = publish(&url, args).await?;
    let window = started.elapsed().as_secs_f64();
    let (after, gen_after) = (stats(pid), stats(me));
    let delivered_in_window = counts.deliveries.load(Ordering::Relaxed);
    let expected = published * args.clients as u64;
    let drain_until = Instant::now() + args.drain;
    while counts.deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    drop(spawned);
    let report = build(Built {
        args,
        url,
        window,
        published,
        delivered_in_window,
        counts: &counts,
        server: (baseline, before, after),
        generator: (gen_before, gen_after),
    });
    println!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.deliveries == report.expected_deliveries)
}

/// What [`build`] needs.
struct Built<'a> {
    args: &'a BenchArgs,
    url: String,
    window: f64,
    published: u64,
    delivered_in_window: u64,
    counts: &'a Counts,
    /// The server before the subscribers, at the window's start and end.
    server: (Option<ProcStats>, Option<ProcStats>, Option<ProcStats>),
    generator: (Option<ProcStats>, Option<ProcStats>),
}

fn build(b: Built<'_>) -> NatsReport {
    let deliveries = b.counts.deliveries.load(Ordering::Relaxed);
    let (base, before, after) = b.server;
    let cpu = before
        .zip(after)
        .map(|(x, y)| y.cpu_seconds - x.cpu_seconds);
    let clients = b.args.clients as f64;
    let latency = Histogram::merged(&b.counts.latency);
    NatsReport {
        server: b.url,
        subscribers: b.args.clients,
        rate_per_s: b.args.rate,
        message_bytes: b.args.size,
        window_s: b.window,
        published: b.published,
        expected_deliveries: b.published * b.args.clients as u64,
        deliveries,
        deliveries_per_s: b.delivered_in_window as f64 / b.window,
        latency: super::report::Latency::of(&latency),
        server_cpu_s: cpu,
        server_cores: cpu.map(|c| c / b.window),
        server_cpu_us_per_delivery: cpu
            .filter(|_| b.delivered_in_window > 0)
            .map(|c| c * 1e6 / b.delivered_in_window as f64),
        server_rss_bytes: after.map(|a| a.rss_bytes),
        server_rss_per_connection_bytes: base
            .zip(before)
            .map(|(x, y)| y.rss_bytes.saturating_sub(x.rss_bytes) as f64 / clients),
        generator_cores: (b.generator.0)
            .zip(b.generator.1)
            .map(|(x, y)| (y.cpu_seconds - x.cpu_seconds) / b.window),
        load_average: crate::sys::load_average(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_its_publish_time_and_size() {
        let p = payload(7, 1_700_000_000_123_456, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(published_at(&p), Some(1_700_000_000_123_456));
        assert_eq!(published_at(b"short"), None);
    }
}
