//! A chat node whose stream consumer lived on the NATS server that was
//! killed, on a real 3-server JetStream cluster. Ignored unless asked for
//! (`--include-ignored` with `DYCONIT_NATS_SERVER` set, as `.ci/run` does).

mod common;

use common::nats::{NatsCluster, chat_node, chat_node_on};
use dyconit_chat::bench::server::SpawnedServer;
use dyconit_chat::client::ChatClient;
use dyconit_chat::proto::message_status::StatusCode;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The names of the stream's consumers and the server each lives on.
async fn consumers(js: &async_nats::jetstream::Context) -> Vec<(String, Option<String>)> {
    use tokio_stream::StreamExt;
    let stream = js.get_stream("CHAT").await.expect("the stream");
    let mut list = stream.consumers();
    let mut found = Vec::new();
    while let Some(info) = list.next().await {
        let info = info.expect("consumer info");
        found.push((info.name, info.cluster.and_then(|c| c.leader)));
    }
    found
}

/// A reader node whose consumer lives on the meta leader (then no consumer
/// can be created until another server is elected): nodes are started
/// until the placement falls there. Returns the node and that server.
async fn reader_on_meta_leader(
    cluster: &NatsCluster,
    js: &async_nats::jetstream::Context,
) -> (SpawnedServer, usize) {
    for attempt in 0..20 {
        let before: HashSet<String> = consumers(js).await.into_iter().map(|c| c.0).collect();
        let node = chat_node(
            cluster,
            &format!("reader{attempt}"),
            (1_000, 1_000, "100ms"),
            &[],
        )
        .await;
        let host = consumers(js)
            .await
            .into_iter()
            .find(|(name, _)| !before.contains(name))
            .and_then(|(_, host)| host)
            .expect("the new node's consumer and its server");
        if cluster.meta_leader().await.as_deref() == Some(host.as_str()) {
            let index = host
                .trim_start_matches('n')
                .parse()
                .expect("server name n<i>");
            return (node, index);
        }
    }
    panic!("no node's consumer was placed on the meta leader in 20 tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
async fn a_node_whose_consumer_died_with_the_meta_leader_delivers_within_seconds() {
    let mut cluster = NatsCluster::start(3).await;
    let js = cluster.jetstream().await;
    let _warm = chat_node(&cluster, "creator", (1_000, 1_000, "100ms"), &[]).await;
    let (reader_node, doomed) = reader_on_meta_leader(&cluster, &js).await;
    // The writer's node talks only to the servers that stay up.
    let writer_node = chat_node_on(
        &cluster.url_list_without(doomed),
        "writer",
        (1_000, 1_000, "100ms"),
        &[],
    )
    .await;
    let reader = ChatClient::connect(&reader_node.url, Some("reader"))
        .await
        .unwrap();
    let mut sub = reader.subscribe().await.unwrap();
    let writer = ChatClient::connect(&writer_node.url, Some("writer"))
        .await
        .unwrap();
    let o = writer.send("t", "before").await.unwrap();
    assert_eq!(o.status, StatusCode::Ok);
    wait_for(&mut sub, "before", Duration::from_secs(10)).await;

    cluster.kill(doomed);
    let killed = Instant::now();
    let (contents, acked) = loop {
        let contents = format!("after-{}", killed.elapsed().as_millis());
        let o = writer.send("t", &contents).await.unwrap();
        if o.status == StatusCode::Ok {
            break (contents, Instant::now());
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no OK in 30 s");
    };
    // Staleness 100 ms; a consumer that delivers nothing for 1 s is read
    // around and replaced. Before that, the node waited out a consumer
    // create the dead meta leader never answered (5 s each).
    wait_for(&mut sub, &contents, Duration::from_secs(30)).await;
    let late = acked.elapsed();
    assert!(
        late < Duration::from_secs(3),
        "{contents} reached the reader {late:?} after its OK"
    );
}

/// Reads Updates until one carries `contents`.
async fn wait_for(sub: &mut dyconit_chat::client::Subscription, contents: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = sub
            .next_within(left)
            .await
            .unwrap_or_else(|| panic!("{contents} not received within {within:?}"))
            .expect("stream ok");
        if r.update.message.iter().any(|m| m.contents == contents) {
            return;
        }
    }
}
