//! The client library against a real server: what it acknowledges, and what
//! it holds for an application that stops taking Updates.

mod common;

use common::*;
use dyconit_chat::proto::message_status::StatusCode;
use std::time::Duration;

/// Waits until `cond` holds, checking every 10 ms, for at most 10 s.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The server's `updates_acked` for the only client named `name`.
async fn acked_by_server(server: &TestServer, name: &str) -> i64 {
    let (_, clients) = http_json(server.admin, "GET", "/api/v1/clients", None, None).await;
    clients["clients"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .map_or(-1, |c| c["updates_acked"].as_i64().unwrap_or(-1))
}

#[tokio::test]
async fn only_updates_the_application_took_are_acknowledged() {
    let server = TestServer::start(config(20, 256, 32)).await;
    let reader = server.client(Some("reader")).await;
    let mut sub = reader.subscribe().await.unwrap();
    let writer = server.client(Some("writer")).await;
    for i in 0..3 {
        writer.send("", &format!("m{i}")).await.unwrap();
    }
    // Arrived (the history Update and at least one flush), not yet taken.
    eventually("two Updates arrive", async || {
        reader.updates_received() >= 2
    })
    .await;
    assert_eq!(reader.updates_consumed(), 0);
    reader.ack_now().await.unwrap();
    assert_eq!(acked_by_server(&server, "reader").await, 0);
    // Taking two acknowledges two.
    sub.next().await.unwrap().unwrap();
    sub.next().await.unwrap().unwrap();
    assert_eq!(reader.updates_consumed(), 2);
    eventually("the server sees 2 acknowledged", async || {
        acked_by_server(&server, "reader").await == 2
    })
    .await;
}

/// The server's `updates_sent` for the only client named `name` (`None`
/// once it is gone).
async fn sent_by_server(server: &TestServer, name: &str) -> Option<i64> {
    let (_, clients) = http_json(server.admin, "GET", "/api/v1/clients", None, None).await;
    clients["clients"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .and_then(|c| c["updates_sent"].as_i64())
}

#[tokio::test]
async fn an_application_that_stops_taking_updates_holds_at_most_the_queue() {
    // Staleness is wide so that no message of the 12 MB stream is rejected
    // STALENESS for time spent in transit on a loaded machine; the flushes
    // are still split by size into hundreds of Updates.
    let mut cfg = config(2_000, 1_000_000, 1_000_000);
    cfg.settings.ack_timeout = Duration::from_secs(60);
    cfg.settings.lease = Duration::from_secs(60);
    // Small Updates (at most 4 of the 4000-byte messages): many of them.
    cfg.settings.max_update_bytes = 16 << 10;
    let server = TestServer::start(cfg).await;
    let reader = server.client(Some("reader")).await;
    let _sub = reader.subscribe().await.unwrap();
    let writer = server.client(None).await;
    let big = "x".repeat(4000);
    let id = writer.id();
    let msgs = tokio_stream::StreamExt::map(tokio_stream::iter(1..=3000), move |i| {
        sent(id, "", &big, 0, i)
    });
    let mut out = writer.rpc().send_messages(msgs).await.unwrap().into_inner();
    let mut accepted = 0;
    while let Some(status) = out.message().await.unwrap() {
        accepted += usize::from(status.status_code() == StatusCode::Ok);
    }
    assert_eq!(accepted, 3000, "the test needs every message committed");
    // The server sent far more Updates than the library may hold (or cut
    // the reader off); the library read at most its queue and one more.
    let queue = dyconit_chat::client::UPDATE_QUEUE as i64;
    eventually("the server sends 3 queues' worth", async || {
        sent_by_server(&server, "reader")
            .await
            .is_none_or(|n| n > 3 * queue)
    })
    .await;
    let held = reader.updates_received();
    assert!(
        held <= queue + 1,
        "the library read {held} Updates nobody took"
    );
    assert_eq!(reader.updates_consumed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_client_skips_a_dead_node_and_moves_on_when_its_node_dies() {
    use dyconit_chat::bench::server::SpawnedServer;
    use dyconit_chat::client::{ConnectOptions, FailoverClient};
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_dyconit-chat"));
    let args = ["--storage=memory".to_owned()];
    let mut a = SpawnedServer::start(exe, &args).await.unwrap();
    let b = SpawnedServer::start(exe, &args).await.unwrap();
    // Nothing listens on port 1: the client goes on to the next URL.
    let urls = [
        "http://127.0.0.1:1".to_owned(),
        a.url.clone(),
        b.url.clone(),
    ];
    let c = FailoverClient::connect(&urls, Some("carol"), &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(c.server(), a.url);
    let mut sub = c.subscribe().await.unwrap();
    assert_eq!(c.send("", "on a").await.unwrap().status, StatusCode::Ok);
    let mut got = Vec::new();
    while !got.iter().any(|m: &String| m == "on a") {
        let r = sub.next_within(Duration::from_secs(10)).await;
        got.extend(
            r.expect("an update")
                .unwrap()
                .update
                .message
                .into_iter()
                .map(|m| m.contents),
        );
    }
    a.kill().unwrap();
    // The send and the subscription move to b (one failover between them).
    assert_eq!(c.send("", "on b").await.unwrap().status, StatusCode::Ok);
    assert_eq!(c.server(), b.url);
    assert_eq!(c.failovers(), 1);
    // (Two single servers: b's history does not have "on a".)
    let mut got = Vec::new();
    while !got.iter().any(|m: &String| m == "on b") {
        let r = sub
            .next_within(Duration::from_secs(10))
            .await
            .expect("an update")
            .expect("the stream goes on");
        got.extend(r.update.message.into_iter().map(|m| m.contents));
    }
    assert_eq!(
        c.failovers(),
        1,
        "the subscription followed, not failed over again"
    );
}
