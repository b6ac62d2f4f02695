//! The client library against a real server: what it acknowledges, and what
//! it holds for an application that stops taking Updates.

mod common;

use common::*;
use std::time::Duration;
use tonic::Code;

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

#[tokio::test]
async fn an_application_that_stops_taking_updates_is_cut_off_not_buffered() {
    // Short staleness: many small flushes, more than the library queues.
    let mut cfg = config(10, 1_000_000, 1_000_000);
    cfg.max_outbound_bytes = 64 * 1024;
    cfg.settings.ack_timeout = Duration::from_secs(60);
    cfg.settings.lease = Duration::from_secs(60);
    let server = TestServer::start(cfg).await;
    let reader = server.client(None).await;
    let mut sub = reader.subscribe().await.unwrap();
    let writer = server.client(None).await;
    let big = "x".repeat(4000);
    let id = writer.id();
    let msgs = tokio_stream::StreamExt::map(tokio_stream::iter(1..=3000), move |i| {
        sent(id, "", &big, 0, i)
    });
    let mut out = writer.rpc().send_messages(msgs).await.unwrap().into_inner();
    while out.message().await.unwrap().is_some() {}
    // The library stopped reading once its queue was full, so the backlog
    // stayed at the server, which cut the reader off; taking what was
    // queued ends in the server's status.
    let mut taken = 0;
    let end = loop {
        match sub.next_within(Duration::from_secs(10)).await {
            Some(Ok(_)) => taken += 1,
            Some(Err(status)) => break status,
            None => panic!("ended without a status after {taken} Updates"),
        }
    };
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
}
