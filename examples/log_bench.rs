//! Storage benchmark: accepted messages per second through the real
//! gRPC server on loopback, memory versus durable storage, with 1 and 64
//! concurrent writers, each writer a client with its own connection and one
//! `SendMessages` stream (on its own thread) that keeps up to `--window`
//! messages in flight. Any rejection is counted and printed.
//!
//! ```sh
//! cargo run --release --example log_bench -- --runs 5 --seconds 3
//! ```
//!
//! The server runs in this process on its own tokio runtime (as `serve` would,
//! two worker threads on this machine), the writers on another; all traffic
//! crosses loopback TCP. Every run of every configuration starts a fresh
//! server (durable ones in a fresh temporary data directory). Modes alternate
//! within each run so both see the same machine noise. Prints every run and
//! the medians, and the durable/memory ratio per writer count.

use dyconit_chat::consistency::{Bounds, BoundsTable};
use dyconit_chat::node::{self, Listeners};
use dyconit_chat::proto::chat_server_client::ChatServerClient;
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::proto::{
    Acknowledgement, Client, ConnectionStarter, SentMessage, ServerTime, Thread,
};
use dyconit_chat::server::{Config, Storage};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// Command-line options (all optional).
struct Options {
    /// Writer counts to measure.
    writers: Vec<usize>,
    /// Storage modes to measure.
    modes: Vec<Storage>,
    /// Runs per configuration (the median is reported).
    runs: usize,
    /// Measured seconds per run.
    seconds: f64,
    /// Unmeasured seconds before measuring (connections warm, batches formed).
    warmup: f64,
    /// Messages in flight per writer stream.
    window: usize,
    /// Bytes of contents per message.
    size: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        writers: vec![1, 64],
        modes: vec![Storage::Memory, Storage::Durable],
        runs: 5,
        seconds: 3.0,
        warmup: 1.0,
        window: 64,
        size: 64,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--writers" => {
                o.writers = value()?
                    .split(',')
                    .map(|w| w.trim().parse().map_err(|e| bad(&e)))
                    .collect::<Result<_, _>>()?
            }
            "--modes" => {
                o.modes = value()?
                    .split(',')
                    .map(|m| match m.trim() {
                        "memory" => Ok(Storage::Memory),
                        "durable" => Ok(Storage::Durable),
                        other => Err(format!("unknown mode {other}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--runs" => o.runs = value()?.parse().map_err(|e| bad(&e))?,
            "--seconds" => o.seconds = value()?.parse().map_err(|e| bad(&e))?,
            "--warmup" => o.warmup = value()?.parse().map_err(|e| bad(&e))?,
            "--window" => o.window = value()?.parse().map_err(|e| bad(&e))?,
            "--size" => o.size = value()?.parse().map_err(|e| bad(&e))?,
            "-h" | "--help" => {
                return Err(
                    "usage: log_bench [--writers 1,64] [--modes memory,durable] \
                     [--runs 5] [--seconds 3] [--warmup 1] [--window 64] [--size 64]"
                        .into(),
                );
            }
            other => return Err(format!("unknown flag {other} (try --help)")),
        }
    }
    if o.runs == 0 || o.window == 0 || o.size == 0 || o.writers.contains(&0) {
        return Err("runs, window, size and writers must be positive".into());
    }
    Ok(o)
}

fn now_micros() -> i64 {
    dyconit_chat::client::clock::local_micros()
}

/// The server config of a benchmark run: every writer writes its own thread
/// (writers do not stream, so commits by others in a shared thread would
/// grow their order error without bound), bounds wide enough that every
/// well-formed message is accepted, and no reaping during the run.
fn bench_config(storage: Storage, data_dir: &std::path::Path) -> Config {
    let mut c = Config {
        storage,
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    c.settings.bounds = BoundsTable::new(Bounds {
        staleness: Duration::from_secs(5),
        numerical: 1_000_000,
        order: 1_000_000,
    })
    .expect("valid bounds");
    c.settings.ack_timeout = Duration::from_secs(3600);
    c.settings.lease = Duration::from_secs(3600);
    c
}

/// One writer: connect, then stream messages with `window` in flight until
/// `stop`; counts OKs into `ok` and anything else into `other`.
async fn writer(
    url: String,
    thread: String,
    window: usize,
    contents: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    other: Arc<AtomicU64>,
) -> Result<(), String> {
    let channel = Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut rpc = ChatServerClient::new(channel);
    let id = rpc
        .connect(ConnectionStarter {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .client
        .ok_or("no client id")?
        .id;
    let (tx, rx) = tokio::sync::mpsc::channel::<SentMessage>(window);
    let permits = Arc::new(Semaphore::new(window));
    let producer = {
        let permits = permits.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(p) = permits.acquire().await else {
                    return;
                };
                p.forget();
                n += 1;
                let m = SentMessage {
                    thread: Some(Thread { id: thread.clone() }),
                    contents: contents.clone(),
                    timestamp: Some(ServerTime {
                        timestamp: now_micros(),
                    }),
                    acknowledgement: Some(Acknowledgement {
                        client: Some(Client { id }),
                        num_updates_received: 0,
                        num_messages_sent: n,
                    }),
                };
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut statuses = rpc
        .send_messages(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    while let Some(s) = statuses.next().await {
        match s {
            Ok(s) if s.status_code == StatusCode::Ok as i32 => ok.fetch_add(1, Ordering::Relaxed),
            Ok(s) => {
                if other.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("first rejection: status code {}", s.status_code);
                }
                0
            }
            Err(e) => return Err(e.to_string()),
        };
        permits.add_permits(1);
    }
    let _ = producer.await;
    Ok(())
}

/// Result of one run.
struct RunResult {
    /// Accepted messages per second over the measured interval.
    rate: f64,
    /// Non-OK statuses seen during the whole run.
    rejected: u64,
    /// Group-commit figures of a durable run (batches, sizes, commit time).
    storage: String,
}

fn run_once(
    o: &Options,
    storage: Storage,
    writers: usize,
    clients: &tokio::runtime::Runtime,
) -> Result<RunResult, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-server")
        .build()
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (url, server, health) = server_rt
        .block_on(async {
            let grpc = TcpListener::bind("127.0.0.1:0").await?;
            let admin = TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", grpc.local_addr()?);
            let config = bench_config(storage, dir.path());
            let health = config.storage_health.clone();
            let task = tokio::spawn(node::run(Listeners { grpc, admin }, config, async {
                let _ = stop_rx.await;
            }));
            Ok::<_, std::io::Error>((url, task, health))
        })
        .map_err(|e| e.to_string())?;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let contents = "x".repeat(o.size);
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            clients.spawn(writer(
                url.clone(),
                format!("w{i}"),
                o.window,
                contents.clone(),
                stop.clone(),
                ok.clone(),
                other.clone(),
            ))
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(o.warmup));
    let (t0, n0) = (Instant::now(), ok.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs_f64(o.seconds));
    let (t1, n1) = (Instant::now(), ok.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    let mut failure = None;
    for t in tasks {
        match clients.block_on(t) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let _ = stop_tx.send(());
    match server_rt.block_on(server) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failure = Some(format!("server: {e:#}")),
        Err(e) => failure = Some(format!("server task: {e}")),
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let batches = health.batches_total.load(Ordering::Relaxed);
    let storage = (batches > 0).then(|| {
        let messages = health.messages_total.load(Ordering::Relaxed);
        let micros = health.commit_micros_total.load(Ordering::Relaxed);
        format!(
            "; {batches} batches, mean {:.0} msgs, max {}, mean commit {:.2} ms",
            messages as f64 / batches as f64,
            health.max_batch_messages.load(Ordering::Relaxed),
            micros as f64 / batches as f64 / 1000.0
        )
    });
    Ok(RunResult {
        rate: (n1 - n0) as f64 / (t1 - t0).as_secs_f64(),
        rejected: other.load(Ordering::Relaxed),
        storage: storage.unwrap_or_default(),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mode_name(s: Storage) -> &'static str {
    match s {
        Storage::Memory => "memory",
        Storage::Durable => "durable",
        Storage::Nats => "nats",
    }
}

fn main() -> std::process::ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let clients = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()
        .expect("client runtime");
    println!(
        "log_bench: {} run(s) x {:.1}s measured (+{:.1}s warm-up), window {}, {} B messages",
        o.runs, o.seconds, o.warmup, o.window, o.size
    );
    // rates[(mode, writers)] across runs
    let mut rates: Vec<((Storage, usize), Vec<f64>)> = Vec::new();
    for &w in &o.writers {
        for &m in &o.modes {
            rates.push(((m, w), Vec::new()));
        }
    }
    for run in 1..=o.runs {
        for &w in &o.writers {
            for &m in &o.modes {
                match run_once(&o, m, w, &clients) {
                    Ok(r) => {
                        println!(
                            "run {run}: {:>7} {:>3} writer(s): {:>10.0} msg/s accepted ({} rejected){}",
                            mode_name(m),
                            w,
                            r.rate,
                            r.rejected,
                            r.storage
                        );
                        if let Some((_, v)) = rates.iter_mut().find(|(k, _)| *k == (m, w)) {
                            v.push(r.rate);
                        }
                    }
                    Err(e) => {
                        eprintln!("run {run}: {} {w} writer(s) failed: {e}", mode_name(m));
                        return std::process::ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    println!("\nmedians over {} runs (accepted msg/s):", o.runs);
    println!("| writers | memory | durable | durable / memory |");
    println!("|---:|---:|---:|---:|");
    for &w in &o.writers {
        let mut get = |m: Storage| {
            rates
                .iter_mut()
                .find(|(k, _)| *k == (m, w))
                .filter(|(_, v)| !v.is_empty())
                .map(|(_, v)| median(v))
        };
        let mem = get(Storage::Memory);
        let dur = get(Storage::Durable);
        let fmt = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.0}"));
        let ratio = match (mem, dur) {
            (Some(m), Some(d)) if m > 0.0 => format!("{:.0}%", 100.0 * d / m),
            _ => "-".into(),
        };
        println!("| {w} | {} | {} | {ratio} |", fmt(mem), fmt(dur));
    }
    std::process::ExitCode::SUCCESS
}
