//! Connection limits on both ports against a real server: HTTP/2 streams per
//! connection, the connection cap, and the handshake and idle deadlines.

mod common;

use common::*;
use dyconit_chat::proto::ConnectionStarter;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until the peer closes `s` (EOF or reset), up to 10 s.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn settings_limit_the_streams_of_one_connection() {
    let mut c = config(100, 256, 32);
    c.max_streams_per_connection = 8;
    let server = TestServer::start(c).await;
    let tcp = TcpStream::connect(server.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let send = send.ready().await.unwrap();
    // The server's SETTINGS arrive right after the handshake.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while send.current_max_send_streams() != 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "MAX_CONCURRENT_STREAMS is {}, not 8",
            send.current_max_send_streams()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let mut c = config(100, 256, 32);
    c.grpc_limits.max_connections = 2;
    let server = TestServer::start(c).await;
    let mut first = server.raw().await;
    connect_raw(&mut first).await;
    let mut second = server.raw().await;
    connect_raw(&mut second).await;
    // The third TCP connection sits in the listen backlog, unserved.
    let mut third = server.raw().await;
    let waiting =
        tokio::spawn(async move { third.connect(ConnectionStarter {}).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a third connection was served");
    assert!(metric(&server, "chat_connection_cap_reached_total{port=\"grpc\"}").await >= 1.0);
    drop(first);
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a slot freed")
        .unwrap()
        .expect("Connect");
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_handshake_timeout() {
    let mut c = config(100, 256, 32);
    c.grpc_limits.handshake_timeout = Duration::from_millis(300);
    c.admin_limits.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::start(c).await;
    // gRPC: a TCP connection that never sends the HTTP/2 preface.
    let mut silent = TcpStream::connect(server.url.trim_start_matches("http://"))
        .await
        .unwrap();
    assert!(closed_by_peer(&mut silent).await, "gRPC: still open");
    // Admin: half a request head.
    let mut half = TcpStream::connect(server.admin).await.unwrap();
    half.write_all(b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(closed_by_peer(&mut half).await, "admin: still open");
    let sample = "chat_connections_timed_out_total{port=\"grpc\",reason=\"handshake_timeout\"}";
    assert_eq!(metric(&server, sample).await, 1.0);
}

#[tokio::test]
async fn a_connection_that_only_pings_is_closed_when_idle() {
    let mut c = config(100, 256, 32);
    c.grpc_limits.idle_timeout = Duration::from_millis(600);
    let server = TestServer::start(c).await;
    let tcp = TcpStream::connect(server.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (_send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().expect("ping handle");
    let ended = tokio::spawn(conn);
    // PING every 100 ms, answered every time, until the server hangs up.
    let pinging = async {
        while pings.ping(h2::Ping::opaque()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), pinging)
        .await
        .expect("the server kept a PING-only connection open");
    let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
    let sample = "chat_connections_timed_out_total{port=\"grpc\",reason=\"idle_timeout\"}";
    assert_eq!(metric(&server, sample).await, 1.0);
}

#[tokio::test]
async fn a_client_that_makes_calls_is_not_idle() {
    let mut c = config(100, 256, 32);
    c.grpc_limits.idle_timeout = Duration::from_millis(600);
    let server = TestServer::start(c).await;
    let mut raw = server.raw().await;
    // Calls 200 ms apart for 2 s: never 600 ms without a request.
    for _ in 0..10 {
        connect_raw(&mut raw).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sample = "chat_connections_timed_out_total{port=\"grpc\",reason=\"idle_timeout\"}";
    assert_eq!(metric(&server, sample).await, 0.0);
}
