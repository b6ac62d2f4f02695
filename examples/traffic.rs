//! Live traffic against a running server, for the dashboard and its browser
//! tests (`tests/browser/`): readers that acknowledge promptly, writers that
//! send at a steady pace on a few threads (each message tried once, so
//! rejections stay visible), one slow client that acknowledges late (a
//! laggard), and optionally a client that comes and goes (drops).
//!
//! ```sh
//! cargo run --example traffic -- --url http://127.0.0.1:50051 --seconds 60
//! ```
//!
//! It stops by itself after `--seconds`, or as soon as the server is gone.
//! Each second it prints one line of totals.

use clap::Parser;
use dyconit_chat::client::{ChatClient, RetryPolicy};
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::proto::{Acknowledgement, Client};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::{Instant, sleep, sleep_until};

/// What traffic to make.
#[derive(Parser, Clone)]
struct Args {
    /// The server's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    /// Clients that only read (and acknowledge at once).
    #[arg(long, default_value_t = 4)]
    readers: usize,
    /// Clients that write (and read).
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Messages per second of each writer.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Threads the writers take turns on ("" is the main room).
    #[arg(long, value_delimiter = ',', default_value = ",general,ops")]
    threads: Vec<String>,
    /// How often the slow client acknowledges, in milliseconds (0: no slow client).
    #[arg(long, default_value_t = 1500)]
    slow_ack_ms: u64,
    /// Every this many seconds a client connects, streams for a while and
    /// leaves (0: none).
    #[arg(long, default_value_t = 0)]
    churn_seconds: u64,
    /// How long to run, in seconds (at most an hour).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
}

/// Totals, shared by every task and printed each second.
#[derive(Default)]
struct Totals {
    /// Messages accepted.
    ok: AtomicU64,
    /// Rejected `ORDER_ERROR`.
    order: AtomicU64,
    /// Rejected `NUMERICAL_ERROR`.
    numerical: AtomicU64,
    /// Rejected `STALENESS`.
    staleness: AtomicU64,
    /// Any other status.
    other: AtomicU64,
    /// Messages received by the readers.
    received: AtomicU64,
}

/// Reads (and, through the client library, acknowledges) until the stream ends.
async fn read(client: ChatClient, totals: Arc<Totals>) -> anyhow::Result<()> {
    let mut sub = client.subscribe().await?;
    while let Some(update) = sub.next().await {
        let update = update?;
        totals
            .received
            .fetch_add(update.update.message.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

async fn write(
    client: ChatClient,
    args: Args,
    index: usize,
    totals: Arc<Totals>,
) -> anyhow::Result<()> {
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    // Stagger the writers so their messages interleave.
    sleep(gap.mul_f64(index as f64 / args.writers.max(1) as f64)).await;
    let mut next = Instant::now();
    for n in 0u64.. {
        let thread = &args.threads[(n as usize + index) % args.threads.len().max(1)];
        let outcome = client
            .send(thread, &format!("message {n} from writer {index}"))
            .await?;
        let counter = match outcome.status {
            StatusCode::Ok => &totals.ok,
            StatusCode::OrderError => &totals.order,
            StatusCode::NumericalError => &totals.numerical,
            StatusCode::Staleness => &totals.staleness,
            _ => &totals.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        next += gap;
        sleep_until(next).await;
    }
    Ok(())
}

/// Streams, and acknowledges only every `every`: a laggard.
async fn slow(client: ChatClient, every: Duration) -> anyhow::Result<()> {
    let mut rpc = client.rpc();
    let mut stream = rpc
        .receive_updates(Client { id: client.id() })
        .await?
        .into_inner();
    let mut received = 0i64;
    let mut ack_at = Instant::now() + every;
    loop {
        tokio::select! {
            update = stream.message() => match update? {
                Some(_) => received += 1,
                None => return Ok(()),
            },
            _ = sleep_until(ack_at) => {
                rpc.acknowlegde(Acknowledgement {
                    client: Some(Client { id: client.id() }),
                    num_updates_received: received,
                    num_messages_sent: 0,
                })
                .await?;
                ack_at = Instant::now() + every;
            }
        }
    }
}

/// A client that streams for two thirds of `period`, leaves, and comes back.
async fn churn(url: String, period: Duration, totals: Arc<Totals>) -> anyhow::Result<()> {
    loop {
        let client = ChatClient::connect(&url, Some("visitor")).await?;
        let stay = tokio::time::timeout(period.mul_f64(2.0 / 3.0), read(client, totals.clone()));
        if let Ok(result) = stay.await {
            result?;
        }
        sleep(period.mul_f64(1.0 / 3.0)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.threads.is_empty(), "--threads lists no thread");
    let totals = Arc::new(Totals::default());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.readers {
        let c = ChatClient::connect(&args.url, Some(&format!("reader-{i}"))).await?;
        tasks.spawn(read(c, totals.clone()));
    }
    for i in 0..args.writers {
        let mut c = ChatClient::connect(&args.url, Some(&format!("writer-{i}"))).await?;
        c.retry = RetryPolicy::none();
        tasks.spawn(read(c.clone(), totals.clone()));
        tasks.spawn(write(c, args.clone(), i, totals.clone()));
    }
    if args.slow_ack_ms > 0 {
        // The name is markup on purpose: a page must show it as text.
        let c = ChatClient::connect(&args.url, Some("<i>slow</i>")).await?;
        tasks.spawn(slow(c, Duration::from_millis(args.slow_ack_ms)));
    }
    if args.churn_seconds > 0 {
        let period = Duration::from_secs(args.churn_seconds);
        tasks.spawn(churn(args.url.clone(), period, totals.clone()));
    }
    println!(
        "traffic: running for {} s against {}",
        args.seconds, args.url
    );
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = sleep_until(end) => break,
            _ = tick.tick() => {
                let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
                println!(
                    "traffic: ok={} order={} numerical={} staleness={} other={} received={}",
                    t(&totals.ok), t(&totals.order), t(&totals.numerical),
                    t(&totals.staleness), t(&totals.other), t(&totals.received),
                );
            }
            done = tasks.join_next(), if !tasks.is_empty() => {
                // A task only ends when the server is gone (or refused us).
                if let Some(Ok(Err(e))) = done {
                    anyhow::bail!("traffic: stopping: {e:#}");
                }
            }
        }
    }
    println!("traffic: done");
    Ok(())
}
