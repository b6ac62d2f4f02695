//! JetStream alone, as a yardstick for the cluster rows of
//! `docs/benchmarks.md`: how many messages a second the same NATS servers
//! store when nothing but a publisher uses them.
//!
//! ```sh
//! urls=$(bash tests/cluster/nats-cluster.sh start /tmp/js)
//! target/release/examples/jetstream_publish --url "$urls" --replicas 3 \
//!     --mode window --watch-pids "$(cat /tmp/js/n*.pid | paste -sd,)"
//! bash tests/cluster/nats-cluster.sh stop /tmp/js
//! ```
//!
//! It creates a fresh stream (`YARDSTICK`, file storage, the given
//! replicas, subjects `yard.>`), publishes 100-byte messages over 64
//! subjects for `--seconds`, each with its own `Nats-Msg-Id` as a chat node
//! sends them, and prints the stored messages per second, its own CPU and
//! that of the `--watch-pids` processes (the nats-servers) over the run.
//!
//! Three modes:
//! - `window`: up to `--window` publishes in flight at once over all
//!   subjects. The most JetStream stores when nothing orders the writes.
//! - `per-subject`: one publish in flight per subject, each carrying the
//!   subject's expected last sequence (the previous acknowledgement), as a
//!   chat node decides a thread's writes against its last commit. The most
//!   JetStream stores under the check that makes the order bound exact,
//!   without batches.
//! - `batch`: as `per-subject`, but each publish is an atomic batch of
//!   `--batch` messages whose first message carries the check, as a chat
//!   node publishes a thread's queued writes (the stream is created with
//!   `allow_atomic`; nats-server 2.12+).
//!
//! `--consumers N` also reads the whole stream with N ordered consumers,
//! each on its own connection, as N chat nodes do; the run then prints
//! how many messages each consumer read.

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use dyconit_chat::log::nats::publish_batch;
use dyconit_chat::sys::proc_stats;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// How the publisher publishes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Window,
    PerSubject,
    Batch,
}

/// Command-line options.
struct Options {
    url: String,
    replicas: usize,
    mode: Mode,
    batch: usize,
    consumers: usize,
    window: usize,
    subjects: usize,
    seconds: u64,
    size: usize,
    watch: Vec<u32>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        url: "nats://127.0.0.1:4222".into(),
        replicas: 1,
        mode: Mode::Window,
        batch: 8,
        consumers: 0,
        window: 1024,
        subjects: 64,
        seconds: 10,
        size: 100,
        watch: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--url" => o.url = value()?,
            "--replicas" => o.replicas = value()?.parse()?,
            "--mode" => {
                o.mode = match value()?.as_str() {
                    "window" => Mode::Window,
                    "per-subject" => Mode::PerSubject,
                    "batch" => Mode::Batch,
                    other => anyhow::bail!("unknown mode {other}: window, per-subject or batch"),
                }
            }
            "--batch" => o.batch = value()?.parse::<usize>()?.max(1),
            "--consumers" => o.consumers = value()?.parse()?,
            "--window" => o.window = value()?.parse()?,
            "--subjects" => o.subjects = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--size" => o.size = value()?.parse()?,
            "--watch-pids" => {
                o.watch = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            other => anyhow::bail!(
                "unknown flag {other}; flags: --url --replicas --mode window|per-subject|batch --batch --consumers --window --subjects --seconds --size --watch-pids"
            ),
        }
    }
    Ok(o)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let servers = o
        .url
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    let js = jetstream::new(async_nats::connect(servers.clone()).await?);
    create_stream(&js, &o).await?;
    let mut read = Vec::new();
    for _ in 0..o.consumers {
        read.push(consume(&servers).await?);
    }
    let cpu = || -> Vec<f64> {
        std::iter::once(std::process::id())
            .chain(o.watch.iter().copied())
            .map(|pid| proc_stats(pid).map_or(0.0, |s| s.cpu_seconds))
            .collect()
    };
    let stored = Arc::new(AtomicU64::new(0));
    // Publishes not acknowledged (timed out, or refused by the check).
    let failed = Arc::new(AtomicU64::new(0));
    let (before, started) = (cpu(), Instant::now());
    let until = started + Duration::from_secs(o.seconds);
    let payload = bytes::Bytes::from(vec![b'x'; o.size]);
    match o.mode {
        Mode::Window => window(&js, &o, &payload, until, &stored, &failed).await?,
        Mode::PerSubject | Mode::Batch => {
            per_subject(&js, &o, &payload, until, &stored, &failed).await
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = stored.load(Ordering::Relaxed);
    println!(
        "mode {:?} batch {} replicas {} consumers {} stored {n} in {elapsed:.1} s: {:.0} msg/s ({} not acknowledged)",
        o.mode,
        if o.mode == Mode::Batch { o.batch } else { 1 },
        o.replicas,
        o.consumers,
        n as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    let cores: Vec<String> = cpu()
        .iter()
        .zip(&before)
        .map(|(a, b)| format!("{:.2}", (a - b) / elapsed))
        .collect();
    println!("cores over the run: publisher {}", cores.join(" / "));
    if !read.is_empty() {
        report_consumers(&read, n, started).await;
    }
    js.delete_stream("YARDSTICK").await?;
    Ok(())
}

/// A fresh `YARDSTICK` stream (atomic batches allowed in `batch` mode).
async fn create_stream(js: &jetstream::Context, o: &Options) -> anyhow::Result<()> {
    let _ = js.delete_stream("YARDSTICK").await;
    let config = stream::Config {
        name: "YARDSTICK".into(),
        subjects: vec!["yard.>".into()],
        storage: stream::StorageType::File,
        num_replicas: o.replicas,
        allow_atomic_publish: o.mode == Mode::Batch,
        ..Default::default()
    };
    // A cluster that just started may still be electing its meta leader.
    let until = Instant::now() + Duration::from_secs(30);
    while let Err(e) = js.create_stream(config.clone()).await {
        if Instant::now() > until {
            return Err(e.into());
        }
        eprintln!("creating the stream: {e}; asking again");
    }
    Ok(())
}

/// Reads the whole stream with an ordered consumer on a connection of its
/// own, counting the messages read.
async fn consume(servers: &[async_nats::ServerAddr]) -> anyhow::Result<Arc<AtomicU64>> {
    let js = jetstream::new(async_nats::connect(servers.to_vec()).await?);
    let stream = js.get_stream("YARDSTICK").await?;
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await?
        .messages()
        .await?;
    let read = Arc::new(AtomicU64::new(0));
    let count = read.clone();
    tokio::spawn(async move {
        while let Some(Ok(_)) = messages.next().await {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(read)
}

/// Waits (up to 30 s) until every consumer has read the `stored` messages,
/// and prints what each read and when the last caught up.
async fn report_consumers(read: &[Arc<AtomicU64>], stored: u64, started: Instant) {
    let until = Instant::now() + Duration::from_secs(30);
    let behind = || read.iter().any(|r| r.load(Ordering::Relaxed) < stored);
    while behind() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counts: Vec<String> = read
        .iter()
        .map(|r| r.load(Ordering::Relaxed).to_string())
        .collect();
    println!(
        "consumers read {} of {stored}; the last caught up {:.1} s after the start",
        counts.join(" / "),
        started.elapsed().as_secs_f64()
    );
}

/// Up to `o.window` publishes in flight; acknowledgements awaited in order.
async fn window(
    js: &jetstream::Context,
    o: &Options,
    payload: &bytes::Bytes,
    until: Instant,
    stored: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(o.window);
    let (counted, lost) = (stored.clone(), failed.clone());
    let acks = tokio::spawn(async move {
        while let Some(ack) = rx.recv().await {
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), ack).await {
                counted.fetch_add(1, Ordering::Relaxed);
            } else {
                lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let mut i = 0u64;
    while Instant::now() < until {
        let subject = format!("yard.t{}", i as usize % o.subjects);
        let m = PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("m{i}"));
        let ack = js.send_publish(subject, m).await?;
        if tx.send(ack).await.is_err() {
            break;
        }
        i += 1;
    }
    drop(tx);
    acks.await?;
    Ok(())
}

/// One publish (or atomic batch) in flight per subject, each expecting the
/// subject's last sequence.
async fn per_subject(
    js: &jetstream::Context,
    o: &Options,
    payload: &bytes::Bytes,
    until: Instant,
    stored: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
) {
    let batch = if o.mode == Mode::Batch { o.batch } else { 1 };
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..o.subjects {
        let (js, payload, stored, failed) =
            (js.clone(), payload.clone(), stored.clone(), failed.clone());
        tasks.spawn(async move {
            let subject = format!("yard.t{s}");
            let mut last = 0;
            let mut i = 0u64;
            while Instant::now() < until {
                let ids: Vec<String> = (i..i + batch as u64).map(|k| format!("s{s}-{k}")).collect();
                i += batch as u64;
                match publish(&js, &subject, &payload, &ids, last).await {
                    Ok(sequence) => {
                        last = sequence;
                        stored.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    // A lost acknowledgement may still have been stored:
                    // learn the subject's last sequence again, or every
                    // later publish would fail its check.
                    Err(_) => {
                        failed.fetch_add(batch as u64, Ordering::Relaxed);
                        if let Ok(stream) = js.get_stream("YARDSTICK").await
                            && let Ok(m) = stream.get_last_raw_message_by_subject(&subject).await
                        {
                            last = m.sequence;
                        }
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Publishes one message per id to `subject`, the first expecting `last`
/// as the subject's last sequence: a single publish for one id, an atomic
/// batch for more. Answers the last stored sequence.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    payload: &bytes::Bytes,
    ids: &[String],
    last: u64,
) -> anyhow::Result<u64> {
    if let [id] = ids {
        let m = PublishMessage::build()
            .payload(payload.clone())
            .message_id(id)
            .expected_last_subject_sequence(last);
        return Ok(js
            .send_publish(subject.to_owned(), m)
            .await?
            .await?
            .sequence);
    }
    // The batch publishing a chat node does.
    let items: Vec<(bytes::Bytes, &str)> = ids
        .iter()
        .map(|id| (payload.clone(), id.as_str()))
        .collect();
    let batch_id = format!("b-{}", ids[0]);
    let ack = publish_batch(js, subject, &batch_id, &items, last).await?;
    Ok(ack.sequence)
}
