//! The resource limits inside the server, through real clients on a real
//! server: the laggard rule, the thread caps and the freeing of idle
//! threads, and the message and Connect rates.

mod common;

use common::*;
use dyconit_chat::client::{ChatClient, ClientError, RetryPolicy, Subscription};
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::proto::{Client, ConnectionStarter};
use dyconit_chat::server::{Config, Storage};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Code, Status};

/// The value of one metric sample (`name{labels}`), 0 if absent.
async fn metric(server: &TestServer, sample: &str) -> f64 {
    let (_, text) = http(server.admin, "GET", "/metrics", None, None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits (up to 20 s) until `sample` satisfies `ok`; returns its value.
async fn metric_until(server: &TestServer, sample: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = metric(server, sample).await;
        if ok(v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sample} stayed at {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes every Update of `sub` as it comes (so the library acknowledges
/// it) and publishes the count of messages taken; the task ends with the
/// status the stream ended with, if any.
fn drain(mut sub: Subscription) -> (watch::Receiver<usize>, JoinHandle<Option<Status>>) {
    let (tx, rx) = watch::channel(0);
    let task = tokio::spawn(async move {
        loop {
            match sub.next().await {
                Some(Ok(r)) => tx.send_modify(|n| *n += r.update.message.len()),
                Some(Err(s)) => return Some(s),
                None => return None,
            }
        }
    });
    (rx, task)
}

/// Waits (up to 10 s) until `count` reaches `n`.
async fn taken(count: &mut watch::Receiver<usize>, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), count.wait_for(|&c| c >= n))
        .await
        .unwrap_or_else(|_| panic!("{n} messages never arrived"))
        .expect("drain task alive");
}

/// A subscribed client whose Updates are taken (and acknowledged) as they
/// come; retries off, so each send shows the server's answer.
async fn keeping_up(
    server: &TestServer,
    name: &str,
) -> (
    ChatClient,
    watch::Receiver<usize>,
    JoinHandle<Option<Status>>,
) {
    let mut c = server.client(Some(name)).await;
    c.retry = RetryPolicy::none();
    let (count, task) = drain(c.subscribe().await.unwrap());
    (c, count, task)
}

/// The status of a send refused by the server as an RPC error.
fn refusal(r: Result<dyconit_chat::client::SendOutcome, ClientError>) -> Status {
    match r {
        Err(ClientError::Rpc(s)) => s,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// A raw client that reads its stream and acknowledges one more Update every
/// `every`, however many arrived: always in time for the ack timeout, but
/// further and further behind. Returns the status its stream ended with.
async fn slow_acknowledger(server: &TestServer, every: Duration) -> JoinHandle<Option<Status>> {
    let mut raw = server.raw().await;
    let id = connect_raw(&mut raw).await;
    let mut stream = raw
        .receive_updates(Client { id })
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        let (mut received, mut acked) = (0i64, 0i64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(_)) => received += 1,
                    Ok(None) => return None,
                    Err(s) => return Some(s),
                },
                _ = tick.tick() => if acked < received {
                    acked += 1;
                    let _ = raw.acknowlegde(ack(id, acked, 0)).await;
                },
            }
        }
    })
}

#[tokio::test]
async fn a_slow_acknowledger_is_dropped_as_a_laggard_and_writers_get_room_again() {
    // Numerical bound 8; ack timeout 3 s (the test default).
    let server = TestServer::start(config(100, 8, 1000)).await;
    let (_keeper, mut kept, keeper_task) = keeping_up(&server, "keeper").await;
    let laggard = slow_acknowledger(&server, Duration::from_secs(2)).await;
    let (writer, _, _writer_task) = keeping_up(&server, "writer").await;
    // Each message in an Update of its own: the laggard has more Updates to
    // acknowledge than it acknowledges, so it falls behind for good.
    let mut sent = 0;
    let held_back = loop {
        let out = writer.send("t", &format!("m{sent}")).await.unwrap();
        match out.status {
            StatusCode::Ok => {
                sent += 1;
                taken(&mut kept, sent).await;
            }
            other => break other,
        }
        assert!(sent < 30, "the laggard never held the writer back");
    };
    assert_eq!(held_back, StatusCode::NumericalError);
    let end = tokio::time::timeout(Duration::from_secs(20), laggard)
        .await
        .expect("the laggard was never dropped")
        .unwrap()
        .expect("its stream ends with a status");
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("laggard"), "{end:?}");
    let dropped = "chat_clients_dropped_total{reason=\"laggard\"} ";
    assert_eq!(metric(&server, dropped).await, 1.0);
    // The writer has room again, and the client that kept up is still here
    // and gets the message.
    let out = writer.send("t", "after the laggard left").await.unwrap();
    assert_eq!(out.status, StatusCode::Ok);
    taken(&mut kept, sent + 1).await;
    assert!(!keeper_task.is_finished());
    for reason in ["ack_timeout", "slow_consumer"] {
        let sample = format!("chat_clients_dropped_total{{reason=\"{reason}\"}} ");
        assert_eq!(metric(&server, &sample).await, 0.0, "{reason}");
    }
}

/// A config with the thread caps of the tests: `max` threads in total,
/// idle after 1 s, no per-client limit on new ones.
fn capped(storage: Storage, max: usize) -> Config {
    let mut c = config(100, 1000, 1000);
    c.storage = storage;
    c.settings.limits.max_threads = max;
    c.settings.limits.max_new_threads_per_minute = 0;
    c.settings.limits.thread_idle_timeout = Duration::from_secs(1);
    c
}

async fn threads_are_capped_and_idle_ones_freed_with_their_history_kept(storage: Storage) {
    let server = TestServer::start(capped(storage, 5)).await;
    let (writer, mut count, _task) = keeping_up(&server, "writer").await;
    for i in 0..5 {
        let out = writer.send(&format!("t{i}"), &format!("m{i}")).await;
        assert_eq!(out.unwrap().status, StatusCode::Ok);
    }
    let refused = refusal(writer.send("t5", "one too many").await);
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("thread limit"), "{refused:?}");
    // An existing thread takes writes as ever.
    let out = writer.send("t0", "again").await.unwrap();
    assert_eq!(out.status, StatusCode::Ok);
    let refusals = "chat_limit_refusals_total{limit=\"threads\"} ";
    assert_eq!(metric(&server, refusals).await, 1.0);
    assert_eq!(metric(&server, "chat_threads ").await, 5.0);
    // Everything acknowledged and a second without writes: all freed.
    taken(&mut count, 6).await;
    metric_until(&server, "chat_threads ", |n| n == 0.0).await;
    let out = writer.send("t5", "now there is room").await.unwrap();
    assert_eq!(out.status, StatusCode::Ok);
    // A newcomer's history still holds every message, freed threads' too.
    let reader = server.client(Some("newcomer")).await;
    let mut sub = reader.subscribe().await.unwrap();
    let first = first_update(&mut sub).await;
    let history: Vec<(String, String)> = first
        .update
        .message
        .iter()
        .map(|m| (m.thread.clone().unwrap_or_default().id, m.contents.clone()))
        .collect();
    let mut want: Vec<(String, String)> =
        (0..5).map(|i| (format!("t{i}"), format!("m{i}"))).collect();
    want.push(("t0".into(), "again".into()));
    want.push(("t5".into(), "now there is room".into()));
    assert_eq!(history, want);
}

#[tokio::test]
async fn threads_are_capped_and_idle_ones_freed_in_memory_storage() {
    threads_are_capped_and_idle_ones_freed_with_their_history_kept(Storage::Memory).await;
}

#[tokio::test]
async fn threads_are_capped_and_idle_ones_freed_in_durable_storage() {
    threads_are_capped_and_idle_ones_freed_with_their_history_kept(Storage::Durable).await;
}

#[tokio::test]
async fn each_client_may_add_only_so_many_threads_a_minute() {
    let mut c = config(100, 1000, 1000);
    c.settings.limits.max_new_threads_per_minute = 3;
    let server = TestServer::start(c).await;
    let (a, _, _ta) = keeping_up(&server, "a").await;
    let (b, _, _tb) = keeping_up(&server, "b").await;
    for i in 0..3 {
        let out = a.send(&format!("a{i}"), "hi").await.unwrap();
        assert_eq!(out.status, StatusCode::Ok);
    }
    let refused = refusal(a.send("a3", "one more").await);
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("new threads per minute"),
        "{refused:?}"
    );
    // Its existing threads, and other clients' new ones, are fine.
    assert_eq!(a.send("a0", "still").await.unwrap().status, StatusCode::Ok);
    assert_eq!(b.send("b0", "mine").await.unwrap().status, StatusCode::Ok);
    let refusals = "chat_limit_refusals_total{limit=\"new_threads_per_minute\"} ";
    assert_eq!(metric(&server, refusals).await, 1.0);
}

#[tokio::test]
async fn a_client_above_its_message_rate_gets_resource_exhausted() {
    let mut c = config(1000, 1_000_000, 1_000_000);
    // 1 message a second: a burst of 5.
    c.settings.limits.max_messages_per_second = 1;
    let server = TestServer::start(c).await;
    let (fast, _, _tf) = keeping_up(&server, "fast").await;
    let (other, _, _to) = keeping_up(&server, "other").await;
    let mut ok = 0;
    let refused = loop {
        match fast.send("", &format!("m{ok}")).await {
            Ok(out) => {
                assert_eq!(out.status, StatusCode::Ok);
                ok += 1;
            }
            Err(e) => break refusal(Err(e)),
        }
        assert!(ok < 15, "never limited");
    };
    assert!(ok >= 5, "the burst of 5 was not allowed: {ok}");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("message rate limit"),
        "{refused:?}"
    );
    // Another client has its own budget.
    assert_eq!(other.send("", "mine").await.unwrap().status, StatusCode::Ok);
    // A SendMessages stream ends with the status at the message over the
    // limit, after the statuses of those before it.
    let (streamer, _, _ts) = keeping_up(&server, "streamer").await;
    let id = streamer.id();
    let msgs = tokio_stream::iter((1..=30).map(move |i| sent(id, "", "s", 0, i)));
    let mut out = streamer
        .rpc()
        .send_messages(msgs)
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    let end = loop {
        match out.message().await {
            Ok(Some(s)) => {
                assert_eq!(s.status_code, StatusCode::Ok as i32);
                answered += 1;
            }
            Ok(None) => panic!("the stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert!((5..30).contains(&answered), "{answered}");
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    let refusals = "chat_limit_refusals_total{limit=\"messages_per_second\"} ";
    assert_eq!(metric(&server, refusals).await, 2.0);
}

#[tokio::test]
async fn one_address_may_connect_only_so_often() {
    let mut c = config(100, 1000, 1000);
    // 1 Connect a second from one address: a burst of 5.
    c.max_connects_per_second = 1;
    let server = TestServer::start(c).await;
    let mut raw = server.raw().await;
    let mut ok = 0;
    let refused = loop {
        match raw.connect(ConnectionStarter {}).await {
            Ok(_) => ok += 1,
            Err(s) => break s,
        }
        assert!(ok < 15, "never limited");
    };
    assert!(ok >= 5, "the burst of 5 was not allowed: {ok}");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("Connect rate limit"),
        "{refused:?}"
    );
    let refusals = "chat_limit_refusals_total{limit=\"connects_per_second\"} ";
    assert_eq!(metric(&server, refusals).await, 1.0);
}
