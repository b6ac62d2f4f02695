//! Per-thread permissions from a token's `threads` claim, through real
//! clients on a real server: writes to other threads are refused with
//! PERMISSION_DENIED (unary, and as the end of a SendMessages stream), and
//! no Update (the history on join included) carries a message of a thread
//! the token does not let its holder read.

mod common;

use common::*;
use dyconit_chat::access::ThreadsClaim;
use dyconit_chat::auth::{Verifier, hs256_token_with};
use dyconit_chat::client::{ChatClient, ClientError, ConnectOptions, Subscription};
use dyconit_chat::proto::message_status::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

/// A server that checks HS256 tokens. Order bound 1: a refused message
/// that counted later as a missing earlier message of its sender would
/// make the sender's next two-refusals-later write an ORDER_ERROR.
async fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, SECRET).unwrap();
    let mut cfg = config(5_000, 256, 1);
    cfg.auth = Some(Arc::new(Verifier::from_secret_file(&path).unwrap()));
    (TestServer::start(cfg).await, dir)
}

async fn connect(server: &TestServer, name: &str, threads: Option<ThreadsClaim>) -> ChatClient {
    let token =
        hs256_token_with(SECRET.as_bytes(), name, Duration::from_secs(600), threads).unwrap();
    let options = ConnectOptions {
        token: Some(token),
        ..Default::default()
    };
    ChatClient::connect_with(&server.url, None, &options)
        .await
        .expect("authenticated")
}

fn claim(read: &[&str], write: &[&str]) -> Option<ThreadsClaim> {
    Some(ThreadsClaim {
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
    })
}

async fn send_ok(c: &ChatClient, thread: &str, text: &str) {
    let out = c.send(thread, text).await.expect("sent");
    assert_eq!(out.status, StatusCode::Ok, "{thread}/{text}");
}

/// Every `thread/contents` the subscription gets up to and including
/// `last` (which must arrive within 10 s).
async fn read_until(sub: &mut Subscription, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let r = sub
            .next_within(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{last} never arrived; got {seen:?}"))
            .expect("stream ok");
        for m in &r.update.message {
            let thread = m.thread.as_ref().map_or("", |t| t.id.as_str());
            seen.push(format!("{thread}/{}", m.contents));
        }
        if seen.iter().any(|s| s == last) {
            return seen;
        }
    }
}

#[tokio::test]
async fn reads_and_writes_follow_the_threads_claim() {
    let (server, _dir) = server().await;
    let root = connect(&server, "root", None).await;
    let mut root_sub = root.subscribe().await.unwrap();
    first_update(&mut root_sub).await;
    // History alice will join to.
    send_ok(&root, "public", "p1").await;
    send_ok(&root, "secret", "s1").await;
    send_ok(&root, "team-b", "t1").await;
    let alice = connect(&server, "alice", claim(&["public", "team-*"], &["team-a"])).await;
    let mut sub = alice.subscribe().await.unwrap();
    // Refused writes: PERMISSION_DENIED with the thread named.
    for thread in ["secret", "public"] {
        match alice.send(thread, "nope").await {
            Err(ClientError::Rpc(s)) => {
                assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
                assert!(s.message().contains(thread), "{}", s.message());
            }
            other => panic!("a write to {thread} was not refused: {other:?}"),
        }
    }
    // Two refused numbers are not "missing earlier messages" (order 1).
    send_ok(&alice, "team-a", "a1").await;
    send_ok(&root, "secret", "s2").await;
    send_ok(&root, "public", "end").await;
    let seen = read_until(&mut sub, "public/end").await;
    assert_eq!(
        seen,
        ["public/p1", "team-b/t1", "team-a/a1", "public/end"],
        "alice's Updates"
    );
    // A token without the claim reads everything.
    let everything = read_until(&mut root_sub, "public/end").await;
    assert!(
        everything.contains(&"secret/s2".to_owned()),
        "{everything:?}"
    );
    assert!(
        everything.contains(&"team-a/a1".to_owned()),
        "{everything:?}"
    );
}

#[tokio::test]
async fn a_forbidden_message_ends_a_send_messages_stream_after_the_ones_before() {
    let (server, _dir) = server().await;
    let bot = connect(&server, "bot", claim(&[], &["alerts"])).await;
    let root = connect(&server, "root", None).await;
    let mut root_sub = root.subscribe().await.unwrap();
    first_update(&mut root_sub).await;
    let mut bot_sub = bot.subscribe().await.unwrap();
    first_update(&mut bot_sub).await;
    let messages = vec![
        bot.message("alerts", "first", bot.next_number()),
        bot.message("general", "forbidden", bot.next_number()),
        bot.message("alerts", "never read", bot.next_number()),
    ];
    let mut statuses = bot
        .rpc()
        .send_messages(tokio_stream::iter(messages))
        .await
        .expect("stream opened")
        .into_inner();
    let first = statuses.message().await.expect("first status").unwrap();
    assert_eq!(first.status_code, StatusCode::Ok as i32);
    let end = statuses.message().await.expect_err("the stream ends");
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    assert!(end.message().contains("general"), "{}", end.message());
    // The bot writes what it may, reads nothing; the third message was not
    // taken.
    send_ok(&bot, "alerts", "second").await;
    let seen = read_until(&mut root_sub, "alerts/second").await;
    assert_eq!(seen, ["alerts/first", "alerts/second"]);
    let hello = root.send("general", "hello").await.unwrap();
    assert_eq!(hello.status, StatusCode::Ok);
    // The bot gets Updates (its lease), but no messages at all: up to the
    // one sent after "hello" was committed.
    loop {
        let r = bot_sub
            .next_within(Duration::from_secs(10))
            .await
            .expect("an update")
            .expect("stream ok");
        assert!(r.update.message.is_empty(), "{:?}", r.update);
        if r.update.current_time.map_or(0, |t| t.timestamp) >= hello.timestamp {
            break;
        }
    }
}
