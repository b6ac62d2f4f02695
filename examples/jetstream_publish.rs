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
//! Two modes:
//! - `window`: up to `--window` publishes in flight at once over all
//!   subjects. The most JetStream stores when nothing orders the writes.
//! - `per-subject`: one publish in flight per subject, each carrying the
//!   subject's expected last sequence (the previous acknowledgement), as a
//!   chat node decides a thread's writes against its last commit. The most
//!   JetStream stores under the check that makes the order bound exact,
//!   without batches.

use async_nats::jetstream::{self, message::PublishMessage, stream};
use dyconit_chat::sys::proc_stats;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Command-line options.
struct Options {
    url: String,
    replicas: usize,
    per_subject: bool,
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
        per_subject: false,
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
            "--mode" => o.per_subject = value()? == "per-subject",
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
                "unknown flag {other}; flags: --url --replicas --mode window|per-subject --window --subjects --seconds --size --watch-pids"
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
    let client = async_nats::connect(servers).await?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("YARDSTICK").await;
    let config = stream::Config {
        name: "YARDSTICK".into(),
        subjects: vec!["yard.>".into()],
        storage: stream::StorageType::File,
        num_replicas: o.replicas,
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
    if o.per_subject {
        per_subject(&js, &o, &payload, until, &stored, &failed).await;
    } else {
        window(&js, &o, &payload, until, &stored, &failed).await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = stored.load(Ordering::Relaxed);
    println!(
        "mode {} replicas {} stored {n} in {elapsed:.1} s: {:.0} msg/s ({} not acknowledged)",
        if o.per_subject {
            "per-subject"
        } else {
            "window"
        },
        o.replicas,
        n as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    let cores: Vec<String> = cpu()
        .iter()
        .zip(&before)
        .map(|(a, b)| format!("{:.2}", (a - b) / elapsed))
        .collect();
    println!("cores over the run: publisher {}", cores.join(" / "));
    js.delete_stream("YARDSTICK").await?;
    Ok(())
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

/// One publish in flight per subject, each expecting the subject's last
/// sequence.
async fn per_subject(
    js: &jetstream::Context,
    o: &Options,
    payload: &bytes::Bytes,
    until: Instant,
    stored: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..o.subjects {
        let (js, payload, stored, failed) =
            (js.clone(), payload.clone(), stored.clone(), failed.clone());
        tasks.spawn(async move {
            let mut last = 0;
            let mut i = 0u64;
            while Instant::now() < until {
                let m = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(format!("s{s}-{i}"))
                    .expected_last_subject_sequence(last);
                let Ok(ack) = js.send_publish(format!("yard.t{s}"), m).await else {
                    continue;
                };
                match ack.await {
                    Ok(a) => {
                        last = a.sequence;
                        stored.fetch_add(1, Ordering::Relaxed);
                    }
                    // A lost acknowledgement may still have been stored:
                    // learn the subject's last sequence again, or every
                    // later publish would fail its check.
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(stream) = js.get_stream("YARDSTICK").await
                            && let Ok(m) = stream
                                .get_last_raw_message_by_subject(&format!("yard.t{s}"))
                                .await
                        {
                            last = m.sequence;
                        }
                    }
                }
                i += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
