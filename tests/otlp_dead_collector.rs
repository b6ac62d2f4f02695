//! A dead trace collector must not slow the server or hold up shutdown.
//! (Its own test binary: the subscriber is process-wide.)

mod common;

use common::*;
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::server::otlp::trace_export;
use dyconit_chat::telemetry::tracing_setup;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_and_shutdown_proceed_with_the_collector_down() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let telemetry = tracing_setup::init("warn", Some(trace_export(&endpoint).unwrap())).unwrap();

    let mut server = TestServer::start(config(100, 100_000, 100_000)).await;
    let c = server.client(None).await;
    // Streaming and taking its Updates (the library acknowledges what the
    // application took), so it is not reaped however long the loop below
    // takes on a loaded machine.
    let mut sub = c.subscribe().await.unwrap();
    first_update(&mut sub).await;
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = sub.next().await {} });
    // Well past the exporter's batch size, so exports are attempted while
    // the RPCs run.
    for i in 0..3000 {
        assert_eq!(
            c.send("", &format!("{i}")).await.unwrap().status,
            StatusCode::Ok
        );
    }
    let started = Instant::now();
    server.shutdown().await.unwrap();
    let _ = reader.await;
    telemetry.shutdown().await;
    // The exporter gives up after its own short timeout instead of waiting
    // for a collector that will never answer.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        started.elapsed()
    );
}
