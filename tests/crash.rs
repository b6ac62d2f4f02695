//! Crash test: the real `dyconit-chat serve` process, 64 writers on
//! `SendMessages` streams recording every OK, `kill -9` at a random moment,
//! restart on the same data directory, and then every OK'd message must be in
//! the log exactly once, in commit order, with nothing duplicated. Repeated
//! `DYCONIT_CRASH_ROUNDS` times (default 10) on one data directory, so each
//! restart also recovers from the crashes before it. The random seed is
//! printed; `DYCONIT_CRASH_SEED` replays it.
//!
//! Besides its own bookkeeping, the test records what every client did and
//! saw (the recorder behind `bench --record`) and runs `dyconit-chat check`
//! on the recording at the end: the history readers' Updates must carry every
//! OK'd message once, in the one commit order, with its OK's commit time.

mod common;

use dyconit_chat::bench::record::{Delivery, EndKind, Event, Recorder};
use dyconit_chat::bench::record_run::admin_get;
use dyconit_chat::bench::server::SpawnedServer;
use dyconit_chat::check::CheckArgs;
use dyconit_chat::client::clock::local_micros;
use dyconit_chat::consistency::Entry;
use dyconit_chat::log::sqlite::{self, DB_FILE};
use dyconit_chat::proto::chat_server_client::ChatServerClient;
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::proto::{Acknowledgement, Client, ConnectionStarter, SentMessage, ServerTime};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

const WRITERS: usize = 64;
/// Messages in flight per writer stream.
const WINDOW: usize = 16;
/// History asked of the restarted server (its maximum).
const HISTORY: usize = 100_000;

/// A durable server on `dir`, with bounds no writer reaches and the most
/// history a restarted server may give.
async fn start(dir: &Path) -> SpawnedServer {
    let args: Vec<String> = [
        "--storage",
        "durable",
        "--data-dir",
        dir.to_str().expect("UTF-8 temp dir"),
        "--history",
        &HISTORY.to_string(),
        "--order",
        "1000000",
        "--numerical",
        "1000000",
        "--staleness",
        "5s",
        "--ack-timeout",
        "1h",
        "--lease",
        "1h",
    ]
    .map(str::to_owned)
    .into();
    SpawnedServer::start(Path::new(env!("CARGO_BIN_EXE_dyconit-chat")), &args)
        .await
        .expect("start dyconit-chat serve")
}

async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("connect to the server")
}

/// What the clients did and saw, in the format of `bench --record`.
struct Recording {
    rec: Recorder,
    /// The next client's number in the recording (each connection is one).
    clients: AtomicU32,
}

impl Recording {
    /// Starts the file with the server's bounds (the same on every restart).
    async fn start(path: &Path, admin_url: &str) -> Recording {
        let rec = Recorder::create(path).expect("create the recording");
        let bounds = admin_get(admin_url, "/api/v1/bounds").await.unwrap();
        rec.push(&Event::Meta(serde_json::json!({
            "kind": "start",
            "at": local_micros(),
            "params": {"test": "crash", "writers": WRITERS},
            "bounds": bounds,
        })));
        // Every message goes to the default thread (no `thread` field).
        rec.push(&Event::Thread {
            index: 0,
            name: String::new(),
        });
        Recording {
            rec,
            clients: AtomicU32::new(0),
        }
    }

    /// A new client, connected now.
    fn connected(&self) -> u32 {
        let client = self.clients.fetch_add(1, Ordering::Relaxed);
        let time = local_micros();
        self.rec.push(&Event::Connect { client, time });
        client
    }

    fn update(&self, client: u32, u: &dyconit_chat::proto::Update) {
        let ts = |t: Option<ServerTime>| t.map_or(0, |t| t.timestamp);
        let messages = u.message.iter().map(|m| Delivery {
            id: bench_id(&m.contents),
            server_time: ts(m.server_time),
        });
        let (now, current) = (local_micros(), ts(u.current_time));
        (self.rec).update(client, now, current, ts(u.expiration_time), messages);
    }

    /// The client's stream ended: `lost` if the server went away under it.
    fn end(&self, client: u32, lost: bool) {
        self.rec.push(&Event::End {
            client,
            time: local_micros(),
            kind: if lost {
                EndKind::Lost
            } else {
                EndKind::Stopped
            },
            reason: if lost {
                "server killed".into()
            } else {
                String::new()
            },
        });
    }

    /// Writes the footer (`bounds` as the server had them at the end) and
    /// runs the checker on the file.
    fn check(&self, path: &Path, bounds: serde_json::Value) {
        let footer = serde_json::json!({"kind": "end", "at": local_micros(), "bounds": bounds});
        self.rec.push(&Event::Meta(footer));
        let (events, bytes) = self.rec.finish().expect("write the recording");
        // On a loaded machine an Update can reach its reader well after the
        // server sent it; the staleness bound here (5 s) is not under test.
        let args = CheckArgs {
            files: vec![path.to_owned()],
            allowance: Duration::from_secs(2),
            cluster: false,
            outage: Vec::new(),
        };
        let checked = dyconit_chat::check::run(&args).expect("read the recording");
        eprintln!(
            "recorded {events} events ({bytes} bytes)\n{}",
            checked.report
        );
        assert!(checked.passed(), "check failed: {:?}", checked.failures);
    }
}

/// The bench id at the start of a message's contents (16 hex digits).
fn bench_id(contents: &str) -> Option<u64> {
    u64::from_str_radix(contents.get(..16)?, 16).ok()
}

/// One OK as the writer saw it.
#[derive(Debug, Clone)]
struct Acked {
    /// The message, `{id}-r{round}-w{writer}-n{n}` (`id`: 16 hex digits, as
    /// the bench writes them): unique across the test.
    contents: String,
    /// `MessageStatus.timestamp`: the commit time.
    at: i64,
}

/// Writes `{id}-r{round}-w{writer}-n{n}` messages until the stream breaks
/// (the server was killed); records every OK in order.
async fn writer(
    url: String,
    (round, w): (usize, usize),
    acked: Arc<Mutex<Vec<Acked>>>,
    oks: Arc<AtomicU64>,
    record: Arc<Recording>,
) {
    let mut rpc = ChatServerClient::new(channel(&url).await);
    // On a loaded machine the kill can come before every writer connected:
    // such a writer has nothing to account for.
    let Ok(info) = rpc.connect(ConnectionStarter {}).await else {
        return;
    };
    let id = info.into_inner().client.expect("client id").id;
    let client = record.connected();
    let (tx, rx) = tokio::sync::mpsc::channel::<SentMessage>(WINDOW);
    let permits = Arc::new(Semaphore::new(WINDOW));
    let sent: Arc<Mutex<std::collections::VecDeque<String>>> = Default::default();
    let producer = {
        let (permits, sent, record) = (permits.clone(), sent.clone(), record.clone());
        tokio::spawn(async move {
            for n in 1.. {
                let Ok(p) = permits.acquire().await else {
                    return;
                };
                p.forget();
                let bench_id = (round as u64) << 48 | (w as u64) << 32 | n as u64;
                let contents = format!("{bench_id:016x}-r{round}-w{w}-n{n}");
                sent.lock().unwrap().push_back(contents.clone());
                let timestamp = local_micros();
                record.rec.push(&Event::Send {
                    client,
                    n,
                    thread: 0,
                    id: bench_id,
                    timestamp,
                    acked: 0,
                    stream: 1,
                    time: local_micros(),
                });
                let m = SentMessage {
                    thread: None,
                    contents,
                    timestamp: Some(ServerTime { timestamp }),
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
    let Ok(resp) = rpc.send_messages(ReceiverStream::new(rx)).await else {
        producer.abort();
        record.end(client, true);
        return;
    };
    let mut statuses = resp.into_inner();
    while let Some(Ok(s)) = statuses.next().await {
        let contents = sent
            .lock()
            .unwrap()
            .pop_front()
            .expect("a status per message");
        record.rec.push(&Event::Status {
            id: bench_id(&contents).expect("a bench id"),
            code: s.status_code,
            server_time: s.timestamp.map_or(0, |t| t.timestamp),
            time: local_micros(),
        });
        if s.status_code == StatusCode::Ok as i32 {
            let at = s.timestamp.map_or(0, |t| t.timestamp);
            acked.lock().unwrap().push(Acked { contents, at });
            oks.fetch_add(1, Ordering::Relaxed);
        } else {
            panic!("{contents}: unexpected status {}", s.status_code);
        }
        permits.add_permits(1);
    }
    producer.abort();
    record.end(client, true);
}

/// `{id}-r{round}-w{writer}-n{n}` back into its parts.
fn parse(contents: &str) -> Option<(usize, usize, i64)> {
    let mut it = contents.split('-').skip(1);
    let r = it.next()?.strip_prefix('r')?.parse().ok()?;
    let w = it.next()?.strip_prefix('w')?.parse().ok()?;
    let n = it.next()?.strip_prefix('n')?.parse().ok()?;
    Some((r, w, n))
}

/// Checks the store against every OK so far (`acked[(round, writer)]`, in
/// the order the OKs arrived). Returns the entries stored.
fn verify(dir: &Path, acked: &HashMap<(usize, usize), Vec<Acked>>, round: usize) -> Vec<Entry> {
    let all = sqlite::read_all(&dir.join(DB_FILE)).expect("read the log");
    // Gap-free, commit times in commit order.
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gap in the log at index {i}");
    }
    for pair in all.windows(2) {
        assert!(
            pair[0].commit_time <= pair[1].commit_time,
            "commit times go back"
        );
    }
    // No duplicates, and each writer's stored messages are exactly its first
    // m messages in its input order: a prefix of what it sent.
    let mut pos: HashMap<&str, usize> = HashMap::with_capacity(all.len());
    let mut next_n: HashMap<(usize, usize), i64> = HashMap::new();
    for (i, e) in all.iter().enumerate() {
        if let Some(j) = pos.insert(e.contents.as_str(), i) {
            panic!(
                "{:?} stored twice (seqs {} and {})",
                e.contents,
                j + 1,
                i + 1
            );
        }
        let (r, w, n) = parse(&e.contents).unwrap_or_else(|| panic!("foreign {:?}", e.contents));
        assert!(r <= round, "{:?} from the future", e.contents);
        let want = next_n.entry((r, w)).or_insert(1);
        assert_eq!(
            n, *want,
            "writer r{r}-w{w}: stored out of input order or with a hole"
        );
        *want += 1;
    }
    // Every OK is there exactly once, with its commit time, in OK order.
    for list in acked.values() {
        let mut last = None;
        for a in list {
            let Some(&i) = pos.get(a.contents.as_str()) else {
                panic!(
                    "round {round}: {:?} got OK but is not in the log",
                    a.contents
                );
            };
            assert_eq!(all[i].commit_time.0, a.at, "{}: commit time", a.contents);
            assert!(last < Some(i), "{}: out of commit order", a.contents);
            last = Some(i);
        }
    }
    all
}

/// The history a new client gets from the restarted server must be the tail
/// of the store, in order. It is split into Updates a client with gRPC's
/// default 4 MiB receive limit reads. The client then goes on reading (and
/// recording) the next round's Updates until the server is killed (its
/// stream is lost) or `stop` fires (it stayed active to the end).
async fn verify_history(
    url: &str,
    all: &[Entry],
    record: Arc<Recording>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let mut rpc = ChatServerClient::new(channel(url).await);
    let id = common::connect_raw(&mut rpc).await;
    let client = record.connected();
    let mut stream = rpc
        .receive_updates(Client { id })
        .await
        .unwrap()
        .into_inner();
    let tail = &all[all.len().saturating_sub(HISTORY)..];
    let mut got = Vec::new();
    while got.len() < tail.len() {
        let update = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("history in time")
            .expect("the stream stays open")
            .expect("stream ok");
        record.update(client, &update);
        got.extend(update.message);
    }
    assert_eq!(got.len(), tail.len(), "history length");
    for (m, e) in got.iter().zip(tail) {
        assert_eq!(m.contents, e.contents);
        assert_eq!(m.server_time.map(|t| t.timestamp), Some(e.commit_time.0));
    }
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stop => return record.end(client, false),
                u = stream.next() => match u {
                    Some(Ok(update)) => record.update(client, &update),
                    _ => return record.end(client, true),
                },
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ok_survives_kill_9_exactly_once_in_commit_order() {
    let rounds: usize = std::env::var("DYCONIT_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("DYCONIT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash test: {rounds} rounds, seed {seed} (DYCONIT_CRASH_SEED={seed} replays)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut acked: HashMap<(usize, usize), Vec<Acked>> = HashMap::new();
    let mut server = start(dir.path()).await;
    let record_path = dir.path().join("clients.rec");
    let record = Arc::new(Recording::start(&record_path, &server.admin_url).await);
    let mut reader: Option<tokio::task::JoinHandle<()>> = None;
    let mut stop_reader = None;
    for round in 1..=rounds {
        let oks = Arc::new(AtomicU64::new(0));
        let lists: Vec<Arc<Mutex<Vec<Acked>>>> = (0..WRITERS).map(|_| Default::default()).collect();
        let tasks: Vec<_> = lists
            .iter()
            .enumerate()
            .map(|(w, list)| {
                tokio::spawn(writer(
                    server.url.clone(),
                    (round, w),
                    list.clone(),
                    oks.clone(),
                    record.clone(),
                ))
            })
            .collect();
        // Kill at a random moment once writing is under way.
        let t0 = Instant::now();
        while oks.load(Ordering::Relaxed) < 200 {
            assert!(t0.elapsed() < Duration::from_secs(30), "no progress");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let extra = Duration::from_millis(rng.random_range(0..600));
        tokio::time::sleep(extra).await;
        let status = server.kill().expect("kill -9");
        let killed_at = t0.elapsed();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("writer ends after the kill")
                .expect("writer did not panic");
        }
        if let Some(r) = reader.take() {
            tokio::time::timeout(Duration::from_secs(30), r)
                .await
                .expect("the reader's stream ends after the kill")
                .expect("reader did not panic");
        }
        let round_oks: usize = lists.iter().map(|l| l.lock().unwrap().len()).sum();
        for (w, l) in lists.iter().enumerate() {
            acked.insert((round, w), std::mem::take(&mut *l.lock().unwrap()));
        }

        server = start(dir.path()).await;
        let all = verify(dir.path(), &acked, round);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        reader = Some(verify_history(&server.url, &all, record.clone(), stopped).await);
        stop_reader = Some(stop);
        let acked_total: usize = acked.values().map(Vec::len).sum();
        eprintln!(
            "round {round}: killed ({status}) after {killed_at:?}: {round_oks} OKs; log holds {} \
             ({} stored without an OK reaching its writer)",
            all.len(),
            all.len() - acked_total
        );
        assert!(round_oks >= 200);
    }
    // The last restart shuts down cleanly on SIGTERM.
    let bounds = admin_get(&server.admin_url, "/api/v1/bounds")
        .await
        .unwrap();
    if let Some(stop) = stop_reader.take() {
        let _ = stop.send(());
    }
    if let Some(r) = reader.take() {
        r.await.expect("reader did not panic");
    }
    let status = server.stop(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "clean shutdown: {status}");
    record.check(&record_path, bounds);
    eprintln!("crash test done in {:?}", started.elapsed());
}
