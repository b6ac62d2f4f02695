//! Chat nodes on a real 3-server NATS JetStream cluster: the real
//! `dyconit-chat serve` processes with `--storage nats`, the real
//! `nats-server` (see `common/nats.rs`). Ignored unless asked for
//! (`--include-ignored` with `DYCONIT_NATS_SERVER` set, as `.ci/run` does).

mod common;

use common::nats::{NatsCluster, Seen, admin_addr, chat_node, seen};
use dyconit_chat::bench::server::SpawnedServer;
use dyconit_chat::client::ChatClient;
use dyconit_chat::log::nats::NatsOptions;
use dyconit_chat::node::{self, Listeners};
use dyconit_chat::proto::chat_server_client::ChatServerClient;
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::proto::{ConnectionStarter, SentMessage, ServerTime, Thread};
use dyconit_chat::server::{Config, Storage};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Request;
use tonic::transport::Channel;

/// A chat node on the cluster, with bounds no test writer reaches unless
/// `extra` sets them.
async fn node(cluster: &NatsCluster, name: &str, extra: &[&str]) -> SpawnedServer {
    chat_node(cluster, name, (1_000_000, 1_000_000, "5s"), extra).await
}

/// Every message a subscription gets, until `n` arrived (10 s at most).
async fn read(sub: &mut dyconit_chat::client::Subscription, n: usize) -> Vec<Seen> {
    common::collect_messages(sub, n)
        .await
        .iter()
        .flat_map(|r| r.update.message.iter().map(seen))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn writers_and_readers_on_every_node_see_one_identical_order() {
    const PER_WRITER: usize = 20;
    let cluster = NatsCluster::start(3).await;
    let mut nodes: Vec<SpawnedServer> = Vec::new();
    for i in 0..3 {
        nodes.push(node(&cluster, &format!("chat{i}"), &[]).await);
    }
    let mut readers = Vec::new();
    for n in &nodes {
        let c = ChatClient::connect(&n.url, Some("reader")).await.unwrap();
        let mut sub = c.subscribe().await.unwrap();
        assert!(
            common::first_update(&mut sub)
                .await
                .update
                .message
                .is_empty()
        );
        readers.push((c, sub));
    }
    let mut writers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let url = n.url.clone();
        writers.push(tokio::spawn(async move {
            let w = ChatClient::connect(&url, Some(&format!("w{i}")))
                .await
                .unwrap();
            let mut oks = Vec::new();
            for k in 0..PER_WRITER {
                let thread = if k % 2 == 0 { "a" } else { "b" };
                let contents = format!("w{i}-{k}");
                let o = w.send(thread, &contents).await.unwrap();
                assert_eq!(o.status, StatusCode::Ok, "{contents}");
                oks.push((contents, o.timestamp));
            }
            oks
        }));
    }
    let mut oks: HashMap<String, i64> = HashMap::new();
    for w in writers {
        oks.extend(w.await.unwrap());
    }
    let total = 3 * PER_WRITER;
    let mut orders = Vec::new();
    for (_, sub) in &mut readers {
        orders.push(read(sub, total).await);
    }
    assert_eq!(orders[0].len(), total);
    assert_eq!(orders[0], orders[1], "nodes 0 and 1 disagree on the order");
    assert_eq!(orders[0], orders[2], "nodes 0 and 2 disagree on the order");
    let contents: HashSet<&String> = orders[0].iter().map(|s| &s.2).collect();
    assert_eq!(contents.len(), total, "a message twice");
    let mut last = 0;
    for (sender, _, contents, at) in &orders[0] {
        assert_eq!(oks[contents], *at, "{contents}: OK time != delivered time");
        assert!(*at >= last, "commit times went back");
        last = *at;
        assert!(
            contents.starts_with(&format!("{sender}-")),
            "{sender}: {contents}"
        );
    }
    // Each writer's messages in the order it sent them.
    for i in 0..3 {
        let mine: Vec<&String> = orders[0]
            .iter()
            .map(|s| &s.2)
            .filter(|c| c.starts_with(&format!("w{i}-")))
            .collect();
        let sent: Vec<String> = (0..PER_WRITER).map(|k| format!("w{i}-{k}")).collect();
        assert_eq!(mine, sent.iter().collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn history_comes_from_the_stream_on_any_node_and_after_a_full_restart() {
    let cluster = NatsCluster::start(3).await;
    let a = node(&cluster, "a", &[]).await;
    let w = ChatClient::connect(&a.url, Some("w")).await.unwrap();
    let mut oks = Vec::new();
    for k in 0..5 {
        let o = w.send("", &format!("m{k}")).await.unwrap();
        assert_eq!(o.status, StatusCode::Ok);
        oks.push(o.timestamp);
    }
    // A node started later gives the history to its new clients.
    let b = node(&cluster, "b", &[]).await;
    let c = ChatClient::connect(&b.url, None).await.unwrap();
    let mut sub = c.subscribe().await.unwrap();
    let first = common::first_update(&mut sub).await;
    let got: Vec<(String, i64)> = first
        .update
        .message
        .iter()
        .map(|m| (m.contents.clone(), m.server_time.unwrap().timestamp))
        .collect();
    let want: Vec<(String, i64)> = (0..5).map(|k| format!("m{k}")).zip(oks).collect();
    assert_eq!(got, want);
    drop((w, c, sub));
    // Every chat node stopped; the cluster (and its stream) restarted.
    a.stop(Duration::from_secs(5)).await.unwrap();
    b.stop(Duration::from_secs(5)).await.unwrap();
    let mut cluster = cluster;
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_ready().await;
    let a = node(&cluster, "a", &["--history", "3"]).await;
    let c = ChatClient::connect(&a.url, None).await.unwrap();
    let mut sub = c.subscribe().await.unwrap();
    let history: Vec<String> = common::first_update(&mut sub)
        .await
        .update
        .message
        .iter()
        .map(|m| m.contents.clone())
        .collect();
    assert_eq!(history, ["m2", "m3", "m4"]);
    // The sequence continues: the next message follows them everywhere.
    let o = c.send("", "after").await.unwrap();
    assert_eq!(o.status, StatusCode::Ok);
    let next = read(&mut sub, 1).await;
    assert_eq!(next[0].2, "after");
    let js = cluster.jetstream().await;
    let mut stream = js.get_stream("CHAT").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.last_sequence, 6);
}

/// A raw `SendMessage` with a fixed timestamp, as a client resending the
/// same message would make it.
fn message(id: i64, contents: &str, timestamp: i64, number: i64) -> SentMessage {
    SentMessage {
        thread: Some(Thread { id: "t".into() }),
        contents: contents.into(),
        timestamp: Some(ServerTime { timestamp }),
        acknowledgement: Some(common::ack(id, 0, number)),
    }
}

async fn named(url: &str, name: &str) -> (ChatServerClient<Channel>, i64) {
    let mut raw = <ChatServerClient<Channel> as common::ConnectTo>::connect_to(url).await;
    let mut req = Request::new(ConnectionStarter {});
    req.metadata_mut()
        .insert("x-chat-name", name.parse().unwrap());
    let id = raw
        .connect(req)
        .await
        .unwrap()
        .into_inner()
        .client
        .unwrap()
        .id;
    (raw, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn an_unchanged_resend_through_another_node_commits_once() {
    let cluster = NatsCluster::start(3).await;
    let a = node(&cluster, "a", &[]).await;
    let b = node(&cluster, "b", &[]).await;
    let ts = common::now_micros();
    let (mut ra, ia) = named(&a.url, "carol").await;
    let first = ra
        .send_message(message(ia, "once", ts, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status_code, StatusCode::Ok as i32);
    // The same client retrying on its node: the original's status.
    let again = ra
        .send_message(message(ia, "once", ts, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    // Its node died (say); it resends through another node.
    let (mut rb, ib) = named(&b.url, "carol").await;
    let resent = rb
        .send_message(message(ib, "once", ts, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resent, first, "the resend answers the original commit");
    // A different timestamp is a different message.
    let other = rb
        .send_message(message(ib, "once", ts + 1, 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.status_code, StatusCode::Ok as i32);
    assert_ne!(other.timestamp, first.timestamp);
    let js = cluster.jetstream().await;
    let mut stream = js.get_stream("CHAT").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    drop((ra, rb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn what_a_killed_node_acknowledged_is_in_the_stream_exactly_once() {
    const WRITERS: usize = 8;
    let cluster = NatsCluster::start(3).await;
    let mut victim = node(&cluster, "victim", &[]).await;
    let survivor = node(&cluster, "survivor", &["--history", "100000"]).await;
    let acked: Arc<Mutex<Vec<String>>> = Default::default();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (url, acked) = (victim.url.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let c = ChatClient::connect(&url, Some(&format!("w{w}"))).await;
            let Ok(c) = c else { return };
            let mut rpc = c.rpc();
            let stream = tokio_stream::iter((1..).map(move |n| SentMessage {
                thread: Some(Thread {
                    id: format!("t{}", n % 3),
                }),
                contents: format!("w{w}-n{n}"),
                timestamp: Some(ServerTime {
                    timestamp: common::now_micros(),
                }),
                acknowledgement: Some(common::ack(c.id(), 0, n)),
            }));
            let Ok(resp) = rpc.send_messages(stream).await else {
                return;
            };
            let mut statuses = resp.into_inner();
            let mut n = 0;
            while let Some(Ok(s)) = statuses.next().await {
                n += 1;
                if s.status_code == StatusCode::Ok as i32 {
                    acked.lock().unwrap().push(format!("w{w}-n{n}"));
                }
            }
        }));
    }
    // Kill once a good number of writes were acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 200 {
        assert!(tokio::time::Instant::now() < deadline, "writes too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.kill().unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    // A client of the surviving node reads the whole stream as history.
    let c = ChatClient::connect(&survivor.url, None).await.unwrap();
    let mut sub = c.subscribe().await.unwrap();
    let history = common::first_update(&mut sub).await.update.message;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in &history {
        *count.entry(m.contents.as_str()).or_default() += 1;
    }
    for a in &acked {
        assert_eq!(
            count.get(a.as_str()),
            Some(&1),
            "{a} acknowledged, found {:?} times",
            count.get(a.as_str())
        );
    }
    assert!(count.values().all(|&n| n == 1), "a message twice");
    eprintln!(
        "{} acknowledged before the kill, {} in the stream",
        acked.len(),
        history.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn a_node_refuses_a_stream_whose_config_conflicts() {
    let cluster = NatsCluster::start(3).await;
    let js = cluster.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CHAT".into(),
        subjects: vec!["CHAT.msg.*".into()],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let config = Config {
        storage: Storage::Nats,
        nats: NatsOptions {
            urls: cluster.urls.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = node::run(Listeners { grpc, admin }, config, std::future::pending())
        .await
        .expect_err("a memory stream must be refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("stream CHAT exists with a config this node cannot use")
            && msg.contains("storage is Memory"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn without_a_quorum_writes_fail_in_time_and_the_node_is_not_ready() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let mut cluster = NatsCluster::start(3).await;
    let mut config = common::config(5000, 1_000_000, 1_000_000);
    config.storage = Storage::Nats;
    // The writer never streams: it must not be reaped meanwhile.
    config.settings.ack_timeout = Duration::from_secs(120);
    config.nats = NatsOptions {
        urls: cluster.urls.clone(),
        timeout: TIMEOUT,
        ..Default::default()
    };
    let server = common::TestServer::start_one(config).await;
    let readyz = |s: &common::TestServer| {
        let addr = s.admin;
        async move { common::http(addr, "GET", "/readyz", None, None).await.0 }
    };
    let mut raw = server.raw().await;
    let id = common::connect_raw(&mut raw).await;
    let send =
        |n: i64| common::status_of(raw.clone(), common::sent(id, "", &format!("m{n}"), 0, n));
    assert_eq!(send(1).await, StatusCode::Ok);
    assert_eq!(readyz(&server).await, 200);
    // Two of three servers gone: the stream has no quorum.
    cluster.kill(1);
    cluster.kill(2);
    let started = std::time::Instant::now();
    assert_eq!(send(2).await, StatusCode::InternalError);
    let took = started.elapsed();
    assert!(
        took < TIMEOUT + Duration::from_secs(2),
        "answered after {took:?}"
    );
    assert_eq!(readyz(&server).await, 503);
    // The quorum is back: ready again within seconds, and writes go through.
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_ready().await;
    let back = std::time::Instant::now();
    // Before the node recreated its stalled consumer itself this took
    // 20-30 s (two missed 15 s heartbeats of the client library).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while readyz(&server).await != 200 {
        assert!(tokio::time::Instant::now() < deadline, "not ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut n = 3;
    while send(n).await != StatusCode::Ok {
        assert!(tokio::time::Instant::now() < deadline, "writes still fail");
        n += 1;
    }
    eprintln!(
        "INTERNAL_ERROR after {took:?} without a quorum; ready and writing again {:?} after the cluster answered",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn a_node_starts_on_a_stream_emptied_by_retention_and_the_sequence_goes_on() {
    let cluster = NatsCluster::start(3).await;
    let a = node(&cluster, "a", &[]).await;
    let w = ChatClient::connect(&a.url, None).await.unwrap();
    for k in 0..3 {
        assert_eq!(
            w.send("", &format!("old{k}")).await.unwrap().status,
            StatusCode::Ok
        );
    }
    a.stop(Duration::from_secs(5)).await.unwrap();
    // Everything removed (as retention by age would): the stream is empty
    // but its sequence stays at 3.
    let js = cluster.jetstream().await;
    let mut stream = js.get_stream("CHAT").await.unwrap();
    stream.purge().await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    let b = node(&cluster, "b", &[]).await;
    let c = ChatClient::connect(&b.url, None).await.unwrap();
    let mut sub = c.subscribe().await.unwrap();
    assert!(
        common::first_update(&mut sub)
            .await
            .update
            .message
            .is_empty()
    );
    assert_eq!(c.send("", "new").await.unwrap().status, StatusCode::Ok);
    assert_eq!(read(&mut sub, 1).await[0].2, "new");
    assert_eq!(stream.info().await.unwrap().state.last_sequence, 4);
}

/// A chat node with the given order and numerical bounds (staleness 100 ms,
/// so writers see each other's commits soon).
async fn bounded_node(
    cluster: &NatsCluster,
    name: &str,
    order: u64,
    numerical: u64,
) -> SpawnedServer {
    chat_node(cluster, name, (order, numerical, "100ms"), &[]).await
}

/// [`bounded_node`] with `--nats-forward forward`.
async fn forwarding_node(
    cluster: &NatsCluster,
    name: &str,
    order: u64,
    forward: &str,
) -> SpawnedServer {
    let extra = ["--nats-forward", forward];
    chat_node(cluster, name, (order, 1_000_000, "100ms"), &extra).await
}

/// What a raw client has received: the contents of each Update's messages,
/// in order (its acknowledgement state is a prefix of this).
type Received = Arc<Mutex<Vec<Vec<String>>>>;

/// Opens `id`'s Update stream and records every Update into the returned
/// list; the watch counts Updates received.
async fn record_updates(
    raw: &mut ChatServerClient<Channel>,
    id: i64,
) -> (Received, tokio::sync::watch::Receiver<usize>) {
    let mut stream = raw
        .receive_updates(dyconit_chat::proto::Client { id })
        .await
        .unwrap()
        .into_inner();
    let got: Received = Arc::default();
    let (tx, rx) = tokio::sync::watch::channel(0);
    let sink = got.clone();
    tokio::spawn(async move {
        while let Ok(Some(u)) = stream.message().await {
            let mut g = sink.lock().unwrap();
            g.push(u.message.into_iter().map(|m| m.contents).collect());
            tx.send_replace(g.len());
        }
    });
    (got, rx)
}

/// One write as its writer recorded it: contents, the contents it had seen
/// (acknowledged) when it wrote, and whether it was answered OK.
struct Write {
    contents: String,
    seen: HashSet<String>,
    ok: bool,
}

/// A writer on `url` racing on thread `t`: each write acknowledges every
/// Update received so far; after a refusal it waits for the next Update.
async fn racing_writer(url: String, name: String, oks_wanted: usize) -> Vec<Write> {
    let (mut raw, id) = named(&url, &name).await;
    let (got, mut updates) = record_updates(&mut raw, id).await;
    updates.wait_for(|&n| n >= 1).await.unwrap();
    let mut writes = Vec::new();
    let mut oks = 0;
    for number in 1..=400 {
        if oks == oks_wanted {
            break;
        }
        let (acked, seen) = {
            let g = got.lock().unwrap();
            (g.len(), g.iter().flatten().cloned().collect::<HashSet<_>>())
        };
        let contents = format!("{name}-{number}");
        let msg = common::sent(id, "t", &contents, acked as i64, number);
        let status = raw.send_message(msg).await.unwrap().into_inner();
        let ok = status.status_code == StatusCode::Ok as i32;
        assert!(
            ok || status.status_code == StatusCode::OrderError as i32,
            "{contents}: {status:?}"
        );
        writes.push(Write { contents, seen, ok });
        if ok {
            oks += 1;
        } else {
            // Catch up before trying again.
            let _ = tokio::time::timeout(Duration::from_secs(5), updates.wait_for(|&n| n > acked))
                .await;
        }
    }
    writes
}

/// Writers on three nodes race on one thread with order bound `bound`; from
/// what each writer had acknowledged when it wrote and the commit order
/// every node delivered, no admitted write had more than `bound` commits of
/// the thread before it that its writer had not seen. `forward` is the
/// nodes' `--nats-forward`: with `all`, two nodes send every write to the
/// third, the thread's owner.
async fn writers_on_three_nodes_race_within_the_order_bound(bound: u64, forward: &str) {
    const OKS: usize = 12;
    let cluster = NatsCluster::start(3).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(forwarding_node(&cluster, &format!("n{i}"), bound, forward).await);
    }
    let mut readers = Vec::new();
    for n in &nodes {
        let c = ChatClient::connect(&n.url, Some("reader")).await.unwrap();
        let mut sub = c.subscribe().await.unwrap();
        common::first_update(&mut sub).await;
        readers.push((c, sub));
    }
    let writers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(racing_writer(nodes[i].url.clone(), format!("w{i}"), OKS)))
        .collect();
    let mut writes: Vec<(usize, Write)> = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        writes.extend(w.await.unwrap().into_iter().map(|w| (i, w)));
    }
    let accepted = writes.iter().filter(|(_, w)| w.ok).count();
    assert_eq!(accepted, 3 * OKS, "every writer got its OKs");
    let mut orders = Vec::new();
    for (_, sub) in &mut readers {
        let seen: Vec<String> = read(sub, accepted).await.into_iter().map(|s| s.2).collect();
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1], "nodes 0 and 1 disagree on the order");
    assert_eq!(orders[0], orders[2], "nodes 0 and 2 disagree on the order");
    let order = &orders[0];
    let position: HashMap<&String, usize> = order.iter().enumerate().map(|(i, c)| (c, i)).collect();
    let mut worst = 0;
    for (writer, w) in writes.iter().filter(|(_, w)| w.ok) {
        let at = position[&w.contents];
        let mine = format!("w{writer}-");
        let unseen = order[..at]
            .iter()
            .filter(|c| !c.starts_with(&mine) && !w.seen.contains(*c))
            .count() as u64;
        assert!(
            unseen <= bound,
            "{} was admitted with {unseen} unseen commits before it (bound {bound}); order {order:?}",
            w.contents
        );
        worst = worst.max(unseen);
    }
    let mut forwarded = 0;
    for n in &nodes {
        forwarded += gauge(
            n,
            r#"chat_cluster_forwarded_writes_total{outcome="stored"}"#,
        )
        .await;
    }
    if forward == "all" {
        assert!(
            forwarded > 0,
            "no write was forwarded to the thread's owner"
        );
    }
    let refused = writes.len() - accepted;
    eprintln!(
        "order bound {bound}: {accepted} admitted ({forwarded} through the owner), {refused} refused, largest order error {worst}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn order_bound_0_holds_for_writers_racing_on_three_nodes() {
    writers_on_three_nodes_race_within_the_order_bound(0, "contended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn order_bound_2_holds_for_writers_racing_on_three_nodes() {
    writers_on_three_nodes_race_within_the_order_bound(2, "contended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn order_bound_2_holds_for_writes_forwarded_to_the_threads_owner() {
    writers_on_three_nodes_race_within_the_order_bound(2, "all").await;
}

/// Polls `GET /api/v1/bounds` on `node` until `done` holds (10 s at most);
/// returns the bounds and how long it took.
async fn bounds_when(
    node: &SpawnedServer,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Duration) {
    let start = std::time::Instant::now();
    loop {
        let (status, v) =
            common::http_json(admin_addr(node), "GET", "/api/v1/bounds", None, None).await;
        assert_eq!(status, 200, "{v}");
        if done(&v) {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never got there: {v}",
            node.admin_url
        );
        // The admin API has no change notification; ask again soon.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hot_order(v: &serde_json::Value) -> Option<u64> {
    v["threads"]
        .as_array()?
        .iter()
        .find(|t| t["thread"] == "hot")
        .and_then(|t| t["override"]["order"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn a_bound_change_on_one_node_reaches_every_node() {
    let cluster = NatsCluster::start(3).await;
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(node(&cluster, name, &[]).await);
    }
    let (status, v) = common::http_json(
        admin_addr(&nodes[0]),
        "PUT",
        "/api/v1/bounds/default",
        None,
        Some(r#"{"order": 7, "numerical": 99}"#),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = common::http_json(
        admin_addr(&nodes[0]),
        "PUT",
        "/api/v1/bounds/threads/hot",
        None,
        Some(r#"{"order": 3}"#),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let changed = |v: &serde_json::Value| {
        v["default"]["order"] == 7 && v["default"]["numerical"] == 99 && hot_order(v) == Some(3)
    };
    for n in &nodes[1..] {
        let (v, took) = bounds_when(n, changed).await;
        eprintln!("{} has node a's change after {took:?}", n.admin_url);
        assert!(took < Duration::from_secs(5), "took {took:?}");
        let whos: Vec<&str> = v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["who"].as_str())
            .collect();
        assert_eq!(whos.len(), 2, "{v}");
        assert!(whos.iter().all(|w| w.ends_with("on node a")), "{whos:?}");
    }
    // The other way round, and a removal.
    let (status, _) = common::http(
        admin_addr(&nodes[2]),
        "DELETE",
        "/api/v1/bounds/threads/hot",
        None,
        None,
    )
    .await;
    assert_eq!(status, 200);
    for n in &nodes[..2] {
        bounds_when(n, |v| hot_order(v).is_none() && v["default"]["order"] == 7).await;
    }
    // The originating node applied its own change once.
    let (v, _) = bounds_when(&nodes[0], |_| true).await;
    assert_eq!(v["changes"].as_array().unwrap().len(), 3, "{v}");
    // A node started later gets the cluster's bounds from the bucket.
    let late = node(&cluster, "d", &[]).await;
    bounds_when(&late, |v| {
        v["default"]["order"] == 7 && v["default"]["numerical"] == 99 && hot_order(v).is_none()
    })
    .await;
}

/// The value of an unlabelled gauge on `node`'s `/metrics`.
async fn gauge(node: &SpawnedServer, name: &str) -> i64 {
    let (_, text) = common::http(admin_addr(node), "GET", "/metrics", None, None).await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics")) as i64
}

/// Polls `gauge` on `node` until `done` holds (10 s at most).
async fn gauge_when(node: &SpawnedServer, name: &str, done: impl Fn(i64) -> bool) -> i64 {
    let start = std::time::Instant::now();
    loop {
        let v = gauge(node, name).await;
        if done(v) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name} stays {v}"
        );
        // Metrics have no change notification; ask again soon.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw writer that never opens its Update stream (so it is not an active
/// client itself) sends `n` messages to thread `t`; their status codes.
async fn plain_writes(raw: &mut ChatServerClient<Channel>, id: i64, from: i64, n: i64) -> Vec<i32> {
    let mut codes = Vec::new();
    for number in from..from + n {
        let m = common::sent(id, "t", &format!("m{number}"), 0, number);
        codes.push(raw.send_message(m).await.unwrap().into_inner().status_code);
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn the_numerical_bound_counts_a_slow_acknowledger_on_another_node() {
    const BOUND: usize = 5;
    let cluster = NatsCluster::start(3).await;
    let a = bounded_node(&cluster, "a", 1_000_000, BOUND as u64).await;
    let mut b = Some(bounded_node(&cluster, "b", 1_000_000, BOUND as u64).await);
    let node_b = b.as_ref().unwrap();
    // A slow acknowledger on b: streams, acknowledges nothing yet.
    let (mut slow, slow_id) = named(&node_b.url, "slow").await;
    let (got, mut updates) = record_updates(&mut slow, slow_id).await;
    updates.wait_for(|&n| n >= 1).await.unwrap();
    // Node a hears of it: the cluster's lowest position is its start.
    gauge_when(&a, "chat_cluster_lowest_ack_position", |v| v == 0).await;
    let (mut w, wid) = named(&a.url, "writer").await;
    let codes = plain_writes(&mut w, wid, 1, BOUND as i64 + 3).await;
    let ok = StatusCode::Ok as i32;
    let numerical = StatusCode::NumericalError as i32;
    assert!(codes[..BOUND].iter().all(|&c| c == ok), "{codes:?}");
    assert!(codes[BOUND..].iter().all(|&c| c == numerical), "{codes:?}");
    // From the history: what the slow client received is all there is.
    let all = updates.wait_for(|_| got.lock().unwrap().iter().flatten().count() == BOUND);
    tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("the slow client gets the commits")
        .unwrap();
    let seen: Vec<String> = got.lock().unwrap().iter().flatten().cloned().collect();
    assert_eq!(
        seen,
        (1..=BOUND).map(|k| format!("m{k}")).collect::<Vec<_>>()
    );
    // It acknowledges them: node a may write again once it hears.
    let count = got.lock().unwrap().len() as i64;
    slow.acknowlegde(common::ack(slow_id, count, 0))
        .await
        .unwrap();
    gauge_when(&a, "chat_cluster_lowest_ack_position", |v| {
        v >= BOUND as i64
    })
    .await;
    let next = BOUND as i64 + 4;
    assert_eq!(plain_writes(&mut w, wid, next, 1).await, [ok]);
    // Node b dies: its report ages past a second (the panel and alert
    // show it), then expires with the lease and no longer counts.
    assert!(gauge(&a, "chat_cluster_ack_report_age_seconds").await < 1);
    drop(b.take());
    gauge_when(&a, "chat_cluster_ack_report_age_seconds", |v| v >= 1).await;
    gauge_when(&a, "chat_cluster_ack_reports_live", |v| v == 0).await;
    assert!(gauge(&a, "chat_cluster_own_ack_report_age_seconds").await < 1);
    let codes = plain_writes(&mut w, wid, next + 1, 2 * BOUND as i64).await;
    assert!(codes.iter().all(|&c| c == ok), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn a_send_messages_stream_over_three_threads_commits_in_input_order() {
    const N: i64 = 60;
    let cluster = NatsCluster::start(3).await;
    let writer_node = node(&cluster, "chat0", &[]).await;
    let reader_node = node(&cluster, "chat1", &[]).await;
    let reader = ChatClient::connect(&reader_node.url, Some("reader"))
        .await
        .unwrap();
    let mut sub = reader.subscribe().await.unwrap();
    common::first_update(&mut sub).await;
    let (mut rpc, id) = named(&writer_node.url, "writer").await;
    let now = common::now_micros();
    // Threads a, b, c in turn: each thread's writes are published by their
    // own task, so only the per-writer rule keeps the stream's order.
    let sent: Vec<SentMessage> = (1..=N)
        .map(|i| {
            let mut m = message(id, &format!("m{i}"), now, i);
            m.thread = Some(Thread {
                id: ["a", "b", "c"][(i % 3) as usize].into(),
            });
            m
        })
        .collect();
    let mut out = rpc
        .send_messages(tokio_stream::iter(sent))
        .await
        .unwrap()
        .into_inner();
    let mut times = Vec::new();
    while let Some(s) = out.message().await.unwrap() {
        assert_eq!(s.status_code(), StatusCode::Ok);
        times.push(s.timestamp.unwrap().timestamp);
    }
    assert_eq!(times.len(), N as usize);
    assert!(times.is_sorted(), "OK commit times out of input order");
    let got: Vec<String> = read(&mut sub, N as usize)
        .await
        .into_iter()
        .map(|s| s.2)
        .collect();
    let want: Vec<String> = (1..=N).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "committed out of input order");
}

/// A publish conditional on its thread's last sequence, refused because
/// another commit of the thread came first, is a conflict whichever way
/// JetStream answers: naming the thread's last sequence (error code 10071),
/// or, for an atomic batch that meets another publish of the subject still
/// being replicated, without it (10164). Before, the second was taken for a
/// failure, which sent the batch's writes one at a time, one round trip
/// each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn a_batch_refused_for_a_commit_in_flight_is_a_conflict() {
    use async_nats::jetstream::message::PublishMessage;
    use dyconit_chat::log::nats;
    let cluster = NatsCluster::start(3).await;
    let js = cluster.jetstream().await;
    let want = nats::wanted_config(&NatsOptions::default(), 3, Default::default());
    nats::ensure_stream(&js, want).await.expect("the stream");
    let subject = nats::subject("CHAT", "hot");
    let mut codes = std::collections::BTreeMap::new();
    for round in 0..200 {
        // Publishes of the thread in flight, then a batch expecting none.
        let mut acks = Vec::new();
        for _ in 0..8 {
            acks.push(js.publish(subject.clone(), "other".into()).await.unwrap());
        }
        let mut h = async_nats::HeaderMap::new();
        let id = format!("batch-{round}");
        h.insert("Nats-Batch-Id", id.as_str());
        h.insert("Nats-Batch-Sequence", "1");
        h.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        js.client()
            .publish_with_headers(subject.clone(), h, "first".into())
            .await
            .unwrap();
        let commit = PublishMessage::build()
            .payload("last".into())
            .header("Nats-Batch-Id", id.as_str())
            .header("Nats-Batch-Sequence", "2")
            .header("Nats-Batch-Commit", "1");
        let answer = js
            .send_publish(subject.clone(), commit)
            .await
            .unwrap()
            .await;
        let err = answer.expect_err("a batch expecting an empty thread is refused");
        let code = std::error::Error::source(&err)
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .map(|e| e.error_code().0);
        assert!(nats::wrong_last_sequence(&err), "{err}");
        *codes.entry(code).or_insert(0) += 1;
        for a in acks {
            a.await.expect("stored");
        }
        if codes.contains_key(&Some(10164)) && codes.contains_key(&Some(10071)) {
            return;
        }
    }
    panic!("both answers were not seen in 200 rounds: {codes:?}");
}

/// Sends `contents` as write `number` of raw client `id` to thread `t`.
async fn write_t(raw: &mut ChatServerClient<Channel>, id: i64, contents: &str, number: i64) -> i32 {
    let msg = common::sent(id, "t", contents, 0, number);
    raw.send_message(msg)
        .await
        .unwrap()
        .into_inner()
        .status_code
}

/// The stored writes a node forwarded to their thread's owner.
async fn forwarded(node: &SpawnedServer, outcome: &str) -> i64 {
    let sample = format!("chat_cluster_forwarded_writes_total{{outcome=\"{outcome}\"}}");
    gauge(node, &sample).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn writes_forwarded_to_an_owner_that_stops_answering_are_published_by_their_own_node() {
    let cluster = NatsCluster::start(3).await;
    let mut nodes = Vec::new();
    let mut writers = Vec::new();
    for i in 0..3 {
        // History long enough to hold every write below.
        let extra = ["--nats-forward", "all", "--history", "500"];
        let n = node(&cluster, &format!("n{i}"), &extra).await;
        writers.push(named(&n.url, &format!("w{i}")).await);
        nodes.push(n);
    }
    // Every node writes to "t" in turn until two of them forward to the
    // third, the thread's owner (once each knows the others are live).
    let mut oks = Vec::new();
    let mut number = 0;
    let owner = loop {
        number += 1;
        for (i, (raw, id)) in writers.iter_mut().enumerate() {
            let contents = format!("w{i}-{number}");
            assert_eq!(
                write_t(raw, *id, &contents, number).await,
                StatusCode::Ok as i32
            );
            oks.push(contents);
        }
        let mut forwarding = Vec::new();
        for n in &nodes {
            forwarding.push(forwarded(n, "stored").await > 0);
        }
        if forwarding.iter().filter(|f| **f).count() == 2 {
            break forwarding.iter().position(|f| !f).unwrap();
        }
        assert!(number < 50, "no two nodes forward: {forwarding:?}");
    };
    // The owner stops (as a hung process, or one killed while it held a
    // forward): its subscription stays, and no answer comes.
    let pid = nodes[owner].pid() as libc::pid_t;
    // SAFETY: signals to a child process this test spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    number += 1;
    let others: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    let sends: Vec<_> = others
        .iter()
        .map(|&i| {
            let (mut raw, id) = (writers[i].0.clone(), writers[i].1);
            let contents = format!("w{i}-{number}");
            tokio::spawn(async move { (write_t(&mut raw, id, &contents, number).await, contents) })
        })
        .collect();
    for send in sends {
        let (code, contents) = send.await.unwrap();
        assert_eq!(code, StatusCode::Ok as i32, "{contents}");
        oks.push(contents);
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let mut unanswered = 0;
    for &i in &others {
        unanswered += forwarded(&nodes[i], "no_answer").await;
    }
    assert!(unanswered >= 1, "no forward went unanswered");
    // The owner, running again, takes the forwards it held first (their
    // deadline has not passed), then this one.
    let i = others[0];
    let stored = forwarded(&nodes[i], "stored").await;
    number += 1;
    let contents = format!("w{i}-{number}");
    let (raw, id) = &mut writers[i];
    assert_eq!(
        write_t(raw, *id, &contents, number).await,
        StatusCode::Ok as i32
    );
    oks.push(contents);
    assert!(
        forwarded(&nodes[i], "stored").await > stored,
        "not through the owner"
    );
    // The stream kept each write once.
    oks.sort();
    for n in &nodes {
        let history = history_of(&n.url, oks.len()).await;
        let mut sorted = history.clone();
        sorted.sort();
        assert_eq!(sorted, oks, "{}: history {history:?}", n.url);
    }
}

/// The contents of the history a fresh client of `url` gets, once it holds
/// at least `n` messages (10 s at most: a node may still be applying).
async fn history_of(url: &str, n: usize) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let c = ChatClient::connect(url, Some("reader")).await.unwrap();
        let mut sub = c.subscribe().await.unwrap();
        let first = common::first_update(&mut sub).await;
        let history: Vec<String> = first
            .update
            .message
            .into_iter()
            .map(|m| m.contents)
            .collect();
        if history.len() >= n || start.elapsed() > Duration::from_secs(10) {
            return history;
        }
        // No notification for another node's progress: ask again soon.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The servers' users: `chat` may do anything; `mute` may not publish to
/// the acknowledgement reports bucket, like a NATS account missing that
/// permission.
const USERS: &str = r#"    { user: "chat", password: "chat-pw" }
    { user: "mute", password: "mute-pw", permissions: { publish: { deny: ["$KV.CHAT_acks.>"] } } }"#;

/// The status a subscription's stream ends with (10 s at most).
async fn stream_end(sub: &mut dyconit_chat::client::Subscription) -> tonic::Status {
    let start = std::time::Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the stream stays open"
        );
        match sub.next_within(Duration::from_secs(1)).await {
            Some(Err(status)) => return status,
            Some(Ok(_)) => continue,
            None => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn a_node_whose_reports_do_not_reach_the_others_ends_its_streams_and_is_not_ready() {
    let cluster = NatsCluster::start_with_users(1, USERS, ("chat", "chat-pw")).await;
    // Alone, the mute node leaves no one uncounted: it serves.
    let mute = ["--nats-user", "mute", "--nats-password", "mute-pw"];
    let b = node(&cluster, "b", &mute).await;
    let reader = ChatClient::connect(&b.url, Some("reader")).await.unwrap();
    let mut sub = reader.subscribe().await.unwrap();
    common::first_update(&mut sub).await;
    // Node a joins: its reports reach b, b's never reach a, so a does not
    // count b's reader. b ends the stream rather than leave it uncounted.
    let a = node(
        &cluster,
        "a",
        &["--nats-user", "chat", "--nats-password", "chat-pw"],
    )
    .await;
    let end = stream_end(&mut sub).await;
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(end.message().contains("acknowledgement reports"), "{end:?}");
    assert_eq!(gauge(&a, "chat_cluster_ack_reports_live").await, 0);
    let dropped = "chat_clients_dropped_total{reason=\"unreported\"}";
    assert_eq!(gauge(&b, dropped).await, 1);
    let (code, body) = common::http(admin_addr(&b), "GET", "/readyz", None, None).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("left out of the cluster"), "{body}");
    // No new stream on b; a serves.
    let again = ChatClient::connect(&b.url, Some("again")).await.unwrap();
    match again.subscribe().await {
        Err(dyconit_chat::client::ClientError::Rpc(s)) => {
            assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}")
        }
        other => panic!("a stream on b: {:?}", other.err()),
    }
    let on_a = ChatClient::connect(&a.url, Some("moved")).await.unwrap();
    let mut sub = on_a.subscribe().await.unwrap();
    common::first_update(&mut sub).await;
}

/// The caller's span each traced write names as its parent.
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// `write_t` with a `traceparent` naming `trace`.
async fn traced_write(
    raw: &mut ChatServerClient<Channel>,
    (id, number): (i64, i64),
    contents: &str,
    trace: &str,
) -> i32 {
    let mut req = Request::new(common::sent(id, "t", contents, 0, number));
    let parent = format!("00-{trace}-{CALLER_SPAN}-01");
    req.metadata_mut()
        .insert("traceparent", parent.parse().unwrap());
    raw.send_message(req)
        .await
        .unwrap()
        .into_inner()
        .status_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn a_forwarded_write_is_traced_on_its_owner_under_the_writers_rpc_span() {
    let (receiver, endpoint) = common::otlp::Receiver::start().await;
    let cluster = NatsCluster::start(1).await;
    let extra = ["--nats-forward", "all", "--otlp-endpoint", &endpoint];
    let nodes = [
        node(&cluster, "a", &extra).await,
        node(&cluster, "b", &extra).await,
    ];
    let mut writers = [
        named(&nodes[0].url, "wa").await,
        named(&nodes[1].url, "wb").await,
    ];
    // Both write to "t", each write a trace of its own, until a write goes
    // through the thread's owner (once each node knows the other is live).
    let mut number = 0;
    let trace = 'found: loop {
        number += 1;
        assert!(number < 50, "no write was forwarded");
        for (i, (raw, id)) in writers.iter_mut().enumerate() {
            let trace = format!("{:032x}", 0x1000 * number + i as i64 + 1);
            let before = forwarded(&nodes[i], "stored").await;
            let code = traced_write(raw, (*id, number), &format!("w{i}-{number}"), &trace).await;
            assert_eq!(code, StatusCode::Ok as i32);
            if forwarded(&nodes[i], "stored").await > before {
                break 'found trace;
            }
        }
    };
    // Stopping the nodes flushes their spans.
    for n in nodes {
        n.stop(Duration::from_secs(10)).await.unwrap();
    }
    let of_trace = |name: &str| {
        let spans = receiver.named(name);
        spans
            .into_iter()
            .find(|s| common::otlp::hex(&s.trace_id) == trace)
            .unwrap_or_else(|| panic!("no {name} span of trace {trace}"))
    };
    let rpc = of_trace("ChatServer/SendMessage");
    assert_eq!(common::otlp::hex(&rpc.parent_span_id), CALLER_SPAN);
    let at_owner = of_trace("cluster/ForwardedWrite");
    assert_eq!(
        at_owner.parent_span_id, rpc.span_id,
        "child of the writer's RPC span"
    );
    assert_eq!(
        common::otlp::str_attr(&at_owner, "chat.outcome"),
        Some("stored")
    );
    assert_eq!(common::otlp::str_attr(&at_owner, "chat.thread"), Some("t"));
}
