//! Flushes and histories larger than one Update: split into several Updates
//! that gRPC clients with the default 4 MiB receive limit can read, and no
//! reader that keeps reading is cut off because of a burst.

mod common;

use common::{TestServer, config, first_update};
use dyconit_chat::client::{ChatClient, Received, Subscription};
use dyconit_chat::consistency::settings::DEFAULT_UPDATE_BYTES;
use std::time::Duration;
use tokio_stream::StreamExt;

/// Encoded size of an Update as a client received it.
fn size(r: &Received) -> usize {
    prost::Message::encoded_len(&r.update)
}

/// Reads Updates until `n` messages arrived; fails on a stream error or
/// after 30 s. Returns the Updates.
async fn read_messages(sub: &mut Subscription, n: usize, who: &str) -> Vec<Received> {
    let mut got = Vec::new();
    let mut count = 0;
    while count < n {
        let r = sub
            .next_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{who}: timed out with {count} of {n} messages"))
            .unwrap_or_else(|s| panic!("{who}: stream ended with {s:?} after {count} of {n}"));
        count += r.update.message.len();
        got.push(r);
    }
    got
}

/// Sends `n` messages of `bytes` bytes over `threads` threads as one
/// `SendMessages` stream; asserts every one was accepted.
async fn burst(writer: &ChatClient, n: usize, threads: usize, bytes: usize) {
    let body = "x".repeat(bytes);
    let msgs: Vec<_> = (0..n)
        .map(|i| {
            let number = writer.next_number();
            let contents = format!("{i:05}{}", &body[5..]);
            writer.message(&format!("room-{}", i % threads), &contents, number)
        })
        .collect();
    let mut out = writer
        .rpc()
        .send_messages(tokio_stream::iter(msgs))
        .await
        .expect("SendMessages")
        .into_inner();
    let mut ok = 0;
    while let Some(s) = out.next().await {
        let s = s.expect("status");
        assert_eq!(s.status_code, 0, "message {ok} rejected");
        ok += 1;
    }
    assert_eq!(ok, n);
}

/// The contents' sequence numbers, in the order received.
fn numbers(updates: &[Received]) -> Vec<usize> {
    updates
        .iter()
        .flat_map(|r| r.update.message.iter())
        .map(|m| m.contents[..5].parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_burst_larger_than_an_update_reaches_every_reader_in_parts() {
    // One staleness period long enough for the whole burst to land in one
    // flush; bounds that admit all of it.
    let mut cfg = config(2000, 1_000_000, 1_000_000);
    cfg.settings.ack_timeout = Duration::from_secs(30);
    let server = TestServer::start(cfg).await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let c = server.client(Some(&format!("reader{i}"))).await;
        let mut sub = c.subscribe().await.unwrap();
        first_update(&mut sub).await;
        readers.push((c, sub));
    }
    let writer = server.client(Some("writer")).await;
    let mut own = writer.subscribe().await.unwrap();
    first_update(&mut own).await;

    // 1,600 × 4 KiB over 16 threads: 6.7 MB, more than a default gRPC
    // client accepts in one message and more than the outbound limit.
    burst(&writer, 1600, 16, 4096).await;
    let want: Vec<usize> = (0..1600).collect();
    for (i, (_, sub)) in readers.iter_mut().enumerate() {
        let got = read_messages(sub, 1600, &format!("reader{i}")).await;
        assert_eq!(numbers(&got), want, "reader{i}: every message, in order");
        assert!(got.len() >= 7, "split into {} Updates", got.len());
        assert!(got.iter().all(|r| size(r) <= DEFAULT_UPDATE_BYTES));
    }
    let got = read_messages(&mut own, 1600, "writer").await;
    assert_eq!(numbers(&got), want, "the writer's own stream");
    // Nobody was cut off: everyone still gets the next message.
    burst(&writer, 1, 1, 100).await;
    for (i, (_, sub)) in readers.iter_mut().enumerate() {
        read_messages(sub, 1, &format!("reader{i} after the burst")).await;
    }
}

#[tokio::test]
async fn a_history_larger_than_an_update_reaches_a_new_reader() {
    // Staleness long enough that no message of the burst is stale on arrival.
    let mut cfg = config(2000, 1_000_000, 1_000_000);
    cfg.settings.history = 2000;
    let server = TestServer::start(cfg).await;
    let writer = server.client(Some("writer")).await;
    burst(&writer, 2000, 4, 4096).await;

    let reader = server.client(Some("late")).await;
    let mut sub = reader.subscribe().await.unwrap();
    let history = read_messages(&mut sub, 2000, "late reader").await;
    assert_eq!(numbers(&history), (0..2000).collect::<Vec<_>>());
    assert!(history.len() >= 8, "8.4 MB in {} Updates", history.len());
    assert!(history.iter().all(|r| size(r) <= DEFAULT_UPDATE_BYTES));
    // The history's last part carries the baseline: what comes next
    // continues right after it.
    burst(&writer, 1, 1, 100).await;
    let next = read_messages(&mut sub, 1, "late reader").await;
    assert_eq!(
        next[0].update.message[0].contents[..5]
            .parse::<usize>()
            .unwrap(),
        0
    );
    assert_eq!(next[0].index, history.len() as i64 + 1);
}

#[tokio::test]
async fn one_mebibyte_messages_with_history_reach_default_clients() {
    // A 1 MiB message takes a while to build and send on a busy machine:
    // a staleness bound it cannot miss.
    let mut cfg = config(5000, 1_000_000, 1_000_000);
    cfg.settings.max_message_bytes = 1 << 20;
    cfg.settings.max_update_bytes =
        dyconit_chat::consistency::Settings::default_update_bytes(1 << 20);
    let server = TestServer::start(cfg).await;
    let writer = server.client(Some("writer")).await;
    let mut own = writer.subscribe().await.unwrap();
    first_update(&mut own).await;
    for _ in 0..5 {
        burst(&writer, 1, 1, 1 << 20).await;
    }
    let got = read_messages(&mut own, 5, "writer").await;
    assert_eq!(got.iter().map(|r| r.update.message.len()).sum::<usize>(), 5);

    let reader = server.client(Some("late")).await;
    let mut sub = reader.subscribe().await.unwrap();
    let history = read_messages(&mut sub, 5, "late reader").await;
    assert!(history.iter().all(|r| r.update.message.len() == 1));
    assert!(history.iter().all(|r| size(r) < 4 << 20));
}
