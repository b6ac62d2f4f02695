//! Soak: hours of mixed traffic with client churn against a running
//! server, watching for slow leaks and slow decay. Steady readers, writers
//! on a few threads, and a stream of visitors that connect, read for a
//! while, write a little and leave. Every `--sample` it prints the server's
//! resident memory (from `/proc/PID/status` of `--pid`), the send round
//! trip (p50 and p99 of `SendMessage` until its status), and the counts; at
//! the end it compares the first `--window` with the last one: RSS drift
//! and latency drift. `scripts/soak.sh` starts a server and runs this.
//!
//! ```sh
//! cargo run --release --example soak -- --url http://127.0.0.1:50051 \
//!     --pid "$(pidof dyconit-chat)" --duration 1h
//! ```

use clap::Parser;
use dyconit_chat::client::{ChatClient, RetryPolicy};
use dyconit_chat::proto::message_status::StatusCode;
use rand::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, sleep, sleep_until};

#[derive(Parser, Clone)]
struct Args {
    /// The server's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    /// The server's process id, for its resident memory (0: not measured).
    #[arg(long, default_value_t = 0)]
    pid: u32,
    /// How long to run (e.g. 2m, 1h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The stretch compared at the start and at the end (at most half the
    /// duration is used).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How often a line is printed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sample: Duration,
    /// Clients that stay and read for the whole run.
    #[arg(long, default_value_t = 20)]
    readers: usize,
    /// Clients that stay and write (and read).
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Messages per second of each writer.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Visitors arriving per second; each stays 2 to 20 s, sends a few
    /// messages, and leaves.
    #[arg(long, default_value_t = 2.0)]
    visitors: f64,
}

const THREADS: [&str; 4] = ["", "general", "ops", "random"];

/// What every task adds to; taken and reset at each sample.
#[derive(Default)]
struct Interval {
    /// Send round trips in this interval, in microseconds.
    rtt: Mutex<Vec<u32>>,
    ok: AtomicU64,
    rejected: AtomicU64,
    received: AtomicU64,
    joined: AtomicU64,
    failed: AtomicU64,
}

/// One printed sample.
struct Sample {
    at: Duration,
    rss_kb: u64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn send(client: &ChatClient, thread: &str, n: u64, stats: &Interval) {
    let started = Instant::now();
    match client.send(thread, &format!("soak {n}")).await {
        Ok(out) => {
            let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
            stats.rtt.lock().unwrap().push(us);
            let counter = if out.status == StatusCode::Ok {
                &stats.ok
            } else {
                &stats.rejected
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads (the library acknowledges) until the stream ends or `until`.
async fn read(client: &ChatClient, until: Option<Instant>, stats: &Interval) {
    let Ok(mut sub) = client.subscribe().await else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    loop {
        let next = match until {
            Some(t) => match tokio::time::timeout_at(t, sub.next()).await {
                Ok(n) => n,
                Err(_) => return,
            },
            None => sub.next().await,
        };
        match next {
            Some(Ok(u)) => {
                let n = u.update.message.len() as u64;
                stats.received.fetch_add(n, Ordering::Relaxed);
            }
            _ => return,
        }
    }
}

async fn connect(url: &str, name: &str) -> Option<ChatClient> {
    let mut c = ChatClient::connect(url, Some(name)).await.ok()?;
    // Each message tried once: rejections stay visible in the counts.
    c.retry = RetryPolicy::none();
    Some(c)
}

async fn writer(args: Args, index: usize, stats: Arc<Interval>) {
    let Some(client) = connect(&args.url, &format!("writer-{index}")).await else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let reading = {
        let (c, s) = (client.clone(), stats.clone());
        tokio::spawn(async move { read(&c, None, &s).await })
    };
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let mut next = Instant::now();
    for n in 0u64.. {
        send(
            &client,
            THREADS[(n as usize + index) % THREADS.len()],
            n,
            &stats,
        )
        .await;
        next += gap;
        sleep_until(next).await;
    }
    reading.abort();
}

/// A visitor: connects, reads for 2 to 20 s, sends a few, leaves.
async fn visitor(url: String, n: u64, stats: Arc<Interval>) {
    let Some(client) = connect(&url, &format!("visitor-{n}")).await else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    stats.joined.fetch_add(1, Ordering::Relaxed);
    let stay = Duration::from_millis(rand::rng().random_range(2_000..20_000));
    let until = Instant::now() + stay;
    let (c, s) = (client.clone(), stats.clone());
    let reading = tokio::spawn(async move { read(&c, Some(until), &s).await });
    for i in 0..3 {
        sleep(stay / 4).await;
        send(
            &client,
            THREADS[(n + i) as usize % THREADS.len()],
            i,
            &stats,
        )
        .await;
    }
    let _ = reading.await;
}

fn rss_kb(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Takes one interval's figures, prints its line, and returns the sample.
fn take_sample(args: &Args, stats: &Interval, started: Instant) -> Sample {
    let mut rtt = std::mem::take(&mut *stats.rtt.lock().unwrap());
    rtt.sort_unstable();
    let s = Sample {
        at: started.elapsed(),
        rss_kb: rss_kb(args.pid),
        p50_ms: quantile(&rtt, 0.5),
        p99_ms: quantile(&rtt, 0.99),
    };
    let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed);
    println!(
        "{:>7.0}s  rss {:>8} kB  send p50 {:>7.2} ms  p99 {:>7.2} ms  ok {:>6}  rejected {:>5}  received {:>8}  visitors {:>4}  failed {}",
        s.at.as_secs_f64(),
        s.rss_kb,
        s.p50_ms,
        s.p99_ms,
        take(&stats.ok),
        take(&stats.rejected),
        take(&stats.received),
        take(&stats.joined),
        take(&stats.failed),
    );
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One figure of a sample, for the report.
type Figure = fn(&Sample) -> f64;

/// The first window against the last: medians of the samples in each.
fn report(samples: &[Sample], args: &Args) {
    let window = args.window.min(args.duration / 2);
    let end = samples.last().map_or(Duration::ZERO, |s| s.at);
    let first: Vec<&Sample> = samples.iter().filter(|s| s.at <= window).collect();
    let last: Vec<&Sample> = samples.iter().filter(|s| s.at + window >= end).collect();
    let m = |set: &[&Sample], f: Figure| median(set.iter().map(|s| f(s)).collect());
    println!(
        "\nfirst {} against last {} ({} and {} samples, medians):",
        humantime::format_duration(window),
        humantime::format_duration(window),
        first.len(),
        last.len()
    );
    let rows: [(&str, Figure, &str); 3] = [
        ("server RSS", |s| s.rss_kb as f64 / 1024.0, "MB"),
        ("send p50", |s| s.p50_ms, "ms"),
        ("send p99", |s| s.p99_ms, "ms"),
    ];
    for (name, f, unit) in rows {
        let (a, b) = (m(&first, f), m(&last, f));
        println!(
            "  {name:<10} {a:>9.2} {unit} -> {b:>9.2} {unit}  drift {:+.2} {unit} ({:+.1}%)",
            b - a,
            (b - a) / a * 100.0
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stats = Arc::new(Interval::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.readers {
        let (url, s) = (args.url.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            if let Some(c) = connect(&url, &format!("reader-{i}")).await {
                read(&c, None, &s).await;
            }
        }));
    }
    for i in 0..args.writers {
        tasks.push(tokio::spawn(writer(args.clone(), i, stats.clone())));
    }
    let (url, s, rate) = (args.url.clone(), stats.clone(), args.visitors);
    tasks.push(tokio::spawn(async move {
        let gap = Duration::from_secs_f64(1.0 / rate.max(0.01));
        for n in 0u64.. {
            tokio::spawn(visitor(url.clone(), n, s.clone()));
            sleep(gap).await;
        }
    }));
    let mut samples = Vec::new();
    let mut next = started + args.sample;
    while next <= started + args.duration {
        sleep_until(next).await;
        samples.push(take_sample(&args, &stats, started));
        next += args.sample;
    }
    for t in tasks {
        t.abort();
    }
    report(&samples, &args);
    Ok(())
}
