//! The acknowledgement-lag histograms count acknowledgements made with the
//! `Acknowlegde` RPC (the client library's path), not only those carried by
//! `SendMessage`.

mod common;

use common::*;
use dyconit_chat::client::RetryPolicy;
use dyconit_chat::proto::message_status::StatusCode;
use std::time::Duration;

/// The value of an unlabelled sample in a Prometheus text scrape.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_acknowlegde_rpc_is_observed_in_the_ack_lag_histograms() {
    let server = TestServer::start(config(50, 256, 32)).await;
    // Streams and acknowledges only when this test says so.
    let (mut raw, id, mut stream) = silent_reader(&server).await;
    // A writer that never streams: its messages acknowledge nothing.
    let mut w = server.client(None).await;
    w.retry = RetryPolicy::none();
    for i in 0..3 {
        assert_eq!(
            w.send("", &format!("{i}")).await.unwrap().status,
            StatusCode::Ok
        );
    }
    let mut updates = 1;
    let mut messages = 0;
    while messages < 3 {
        let u = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("Update within 5 s")
            .unwrap()
            .expect("stream open");
        updates += 1;
        messages += u.message.len();
    }
    let (_, before) = http(server.admin, "GET", "/metrics", None, None).await;
    assert_eq!(sample(&before, "chat_ack_lag_messages_count"), 0.0);
    assert_eq!(sample(&before, "chat_ack_lag_seconds_count"), 0.0);

    raw.acknowlegde(ack(id, updates, 0)).await.unwrap();
    let (_, after) = http(server.admin, "GET", "/metrics", None, None).await;
    assert_eq!(sample(&after, "chat_ack_lag_messages_count"), 1.0);
    assert_eq!(sample(&after, "chat_ack_lag_seconds_count"), 1.0);
    // Everything sent was acknowledged: a lag of 0 messages.
    assert_eq!(sample(&after, "chat_ack_lag_messages_sum"), 0.0);
    assert!(sample(&after, "chat_ack_lag_seconds_sum") > 0.0);

    // Acknowledging the same count again is not news: nothing observed.
    raw.acknowlegde(ack(id, updates, 0)).await.unwrap();
    let (_, again) = http(server.admin, "GET", "/metrics", None, None).await;
    assert_eq!(sample(&again, "chat_ack_lag_messages_count"), 1.0);
}
