//! The load policy through a real server: it widens the bounds when the
//! flush scheduler runs late, what clients receive changes with them, an
//! operator's explicit change wins over it until the pins are cleared, and
//! turning it off gives the operator's bounds back.

mod common;

use common::{TestServer, config, first_update, http_json, sent, status_of};
use dyconit_chat::consistency::policy::LoadConfig;
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::server::policies::LoadSetting;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BASE_MS: f64 = 40.0;

async fn bounds(admin: SocketAddr) -> Value {
    let (status, v) = http_json(admin, "GET", "/api/v1/bounds", None, None).await;
    assert_eq!(status, 200);
    v
}

fn effective_staleness(v: &Value) -> f64 {
    v["effective_default"]["staleness_ms"].as_f64().unwrap()
}

/// A server whose load policy holds the scheduler's lateness to 5% of its
/// safety margin (5 ms at 40 ms staleness): a timer's usual millisecond of
/// delay already counts as pressure, so real traffic moves the bounds.
async fn server() -> TestServer {
    server_with(1_000_000, true).await
}

async fn server_with(order: u64, enabled: bool) -> TestServer {
    let mut cfg = config(BASE_MS as u64, 256, order);
    cfg.load_policy = LoadSetting {
        enabled,
        config: LoadConfig {
            target: 0.05,
            max_staleness: Duration::from_millis(400),
            ..LoadConfig::default()
        },
    };
    TestServer::start(cfg).await
}

/// Writes a message every 5 ms until `until` returns true for the bounds
/// (checked every 100 ms); panics after 20 s. Returns the bounds and the
/// number of messages written.
async fn write_until(server: &TestServer, until: impl Fn(&Value) -> bool) -> (Value, usize) {
    let writer = server.client(Some("writer")).await;
    let start = Instant::now();
    let mut last_check = Instant::now();
    let mut written = 0;
    loop {
        writer.send("load", "tick").await.expect("send");
        written += 1;
        if last_check.elapsed() > Duration::from_millis(100) {
            let v = bounds(server.admin).await;
            if until(&v) {
                return (v, written);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let p = http_json(server.admin, "GET", "/api/v1/policies", None, None).await;
                panic!("bounds never moved: {v}\npolicies: {}", p.1);
            }
            last_check = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn under_pressure_the_load_policy_widens_what_clients_get_and_an_operator_wins() {
    let server = server().await;
    let reader = server.client(Some("reader")).await;
    let mut sub = reader.subscribe().await.unwrap();
    first_update(&mut sub).await;

    // Pressure: the bounds in force grow (one raise multiplies them by up
    // to 1.5), the operator's stay.
    let (v, ticks) = write_until(&server, |v| effective_staleness(v) >= 1.5 * BASE_MS).await;
    assert_eq!(v["default"]["staleness_ms"].as_f64(), Some(BASE_MS));
    let by_policy = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["who"] == "policy:load");
    assert!(by_policy, "changes name the policy: {v}");
    let (_, p) = http_json(server.admin, "GET", "/api/v1/policies", None, None).await;
    assert_eq!(p["load"]["enabled"], true);
    assert!(p["load"]["scale"].as_f64().unwrap() >= 1.5, "{p}");

    // Clients now get messages batched over the wider bound. First the reader
    // takes every tick, so that the probe is not carried early by a flush
    // of ticks that was already due.
    let mut seen = 0;
    while seen < ticks {
        let r = sub
            .next_within(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        seen += r
            .update
            .message
            .iter()
            .filter(|m| m.contents == "tick")
            .count();
    }
    let writer = server.client(Some("probe")).await;
    let before = effective_staleness(&bounds(server.admin).await);
    let sent = Instant::now();
    writer.send("probe", "late but in bound").await.unwrap();
    loop {
        let r = sub
            .next_within(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        if r.update
            .message
            .iter()
            .any(|m| m.contents == "late but in bound")
        {
            break;
        }
    }
    let waited = sent.elapsed().as_secs_f64() * 1000.0;
    // A flush may lead its bound by up to half of it (when the scheduler
    // has been late): held for at least half the widened bound, more than
    // half the operator's (unless the policy narrowed it meanwhile).
    let after = effective_staleness(&bounds(server.admin).await);
    let earliest = before.min(after) / 2.0;
    assert!(
        waited > earliest,
        "delivered after {waited} ms (bounds {before}, {after} ms)"
    );

    // An operator's explicit staleness wins over the policy.
    let (status, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/default",
        None,
        Some(r#"{"staleness": "30ms"}"#),
    )
    .await;
    assert_eq!(status, 200);
    let v = bounds(server.admin).await;
    assert_eq!(effective_staleness(&v), 30.0);
    let (_, p) = http_json(server.admin, "GET", "/api/v1/policies", None, None).await;
    assert_eq!(p["pins"]["default"]["staleness"], true);

    // Cleared pins: the policy scales it again.
    let (status, _) = http(server.admin, "DELETE", "/api/v1/policies/pins").await;
    assert_eq!(status, 204);
    write_until(&server, |v| effective_staleness(v) > 30.0).await;

    // Off: the operator's bounds at once.
    let (status, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/policies/load",
        None,
        Some(r#"{"enabled": false}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(effective_staleness(&bounds(server.admin).await), 30.0);
}

async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    common::http(addr, method, path, None, None).await
}

#[tokio::test]
async fn policy_settings_are_validated() {
    let server = server().await;
    for body in [
        r#"{"target": 0}"#,
        r#"{"max_staleness": "2h"}"#,
        r#"{"max_numerical": 0}"#,
        r#"{"max_order": 2000000}"#,
        r#"{"speed": 1}"#,
        "not json",
    ] {
        let (status, v) = http_json(
            server.admin,
            "PUT",
            "/api/v1/policies/load",
            None,
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].is_string());
    }
    let (status, v) = http_json(
        server.admin,
        "PUT",
        "/api/v1/policies/load",
        None,
        Some(r#"{"target": 0.8, "max_staleness": "2s", "max_order": 64}"#),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["load"]["target"], 0.8);
    assert_eq!(v["load"]["max_staleness"], "2s");
    assert_eq!(v["load"]["max_order"], 64);
}

/// A client that has seen its first Update, then another client's `n`
/// commits on `thread`: returns the status of its write made with only that
/// first Update acknowledged (`n` commits unseen).
async fn write_after_missing(server: &TestServer, thread: &str, n: usize) -> StatusCode {
    let late = server.client(Some("late")).await;
    let mut sub = late.subscribe().await.unwrap();
    first_update(&mut sub).await;
    late.ack_now().await.unwrap();
    let other = server.client(Some("other")).await;
    for i in 0..n {
        let s = other.send(thread, &format!("m{i}")).await.unwrap();
        assert_eq!(s.status, StatusCode::Ok);
    }
    status_of(late.rpc(), sent(late.id(), thread, "late", 1, 1)).await
}

/// Sends every 5 ms until aborted: keeps the pressure up. On a thread of
/// its own: beside `write_until`'s writer on `load`, each would miss the
/// other's commits, and at an order bound of 2 the client library's retries
/// of the refused writes (with backoff) would take the pressure away.
async fn keep_writing(server: &TestServer) -> tokio::task::JoinHandle<()> {
    let client = server.client(Some("pressure")).await;
    tokio::spawn(async move {
        loop {
            let _ = client.send("pressure", "tick").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// A writer batched over a wider staleness misses more commits between its
/// Updates: the policy widens the order bound with the staleness, or it
/// would only turn `STALENESS` rejections into `ORDER_ERROR`s.
#[tokio::test]
async fn the_load_policy_widens_the_order_bound_with_the_staleness() {
    // The policy is turned on after the first write, so that it is judged
    // by the operator's bounds whatever the pressure.
    let server = server_with(2, false).await;
    // The operator's order bound: 3 unseen commits are too many.
    let before = write_after_missing(&server, "before", 3).await;
    assert_eq!(before, StatusCode::OrderError);
    let (status, v) = http_json(
        server.admin,
        "PUT",
        "/api/v1/policies/load",
        None,
        Some(r#"{"enabled": true}"#),
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Widened by 1.5 (a raise's largest step, which a pressure at 5% of
    // the margin reaches with a timer's usual delay), the order bound
    // admits 3. The write follows within a poll (100 ms) of the
    // change, and the policy waits 2 s between steps.
    let pressure = keep_writing(&server).await;
    let (v, _) = write_until(&server, |v| {
        v["effective_default"]["order"].as_u64().unwrap_or(0) >= 3
    })
    .await;
    assert_eq!(v["default"]["order"], 2, "the operator's bound stays: {v}");
    let after = write_after_missing(&server, "after", 3).await;
    pressure.abort();
    let v = bounds(server.admin).await;
    assert_eq!(after, StatusCode::Ok, "bounds in force {v}");
}

/// Writes that reach the server old are pressure, even while the flush
/// scheduler runs on time: overload that queues the writes before the
/// server reads them shows there first, and without the policy those
/// writes would soon be refused `STALENESS`. Here a client's writes carry a
/// timestamp 150 ms old, three quarters of the 200 ms bound; the policy's
/// default target (0.5) widens the bounds until they use about half.
#[tokio::test]
async fn writes_arriving_old_widen_the_bounds() {
    let mut cfg = config(200, 256, 32);
    cfg.load_policy = LoadSetting {
        enabled: true,
        config: LoadConfig::default(),
    };
    let server = TestServer::start(cfg).await;
    let writer = server.client(Some("writer")).await;
    let mut sub = writer.subscribe().await.unwrap();
    first_update(&mut sub).await;
    // Takes the writer's Updates as they come, so it acknowledges them.
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = sub.next().await {} });
    let start = Instant::now();
    let raised = loop {
        let number = writer.next_number();
        let mut m = writer.message("old", "late", number);
        let stamped = m.timestamp.as_mut().unwrap();
        stamped.timestamp -= 150_000;
        let status = status_of(writer.rpc(), m).await;
        assert_eq!(status, StatusCode::Ok, "150 ms is within the bound");
        let (_, p) = http_json(server.admin, "GET", "/api/v1/policies", None, None).await;
        let decisions = p["load"]["decisions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(d) = decisions.iter().find(|d| d["step"] == "raise") {
            break d.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the bounds never moved: {p}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drain.abort();
    let write_age = raised["write_age"].as_f64().unwrap();
    assert!(
        (0.7..1.0).contains(&write_age),
        "the writes used 3/4 of their bound: {raised}"
    );
    assert!(raised["pressure"].as_f64().unwrap() >= write_age);
    let v = bounds(server.admin).await;
    assert!(effective_staleness(&v) > 200.0, "{v}");
    assert_eq!(
        v["default"]["staleness_ms"], 200.0,
        "the operator's stays: {v}"
    );
}
