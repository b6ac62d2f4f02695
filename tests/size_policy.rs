//! The size policy through a real server: a thread with more active readers
//! gets wider bounds (recorded as `policy:size`, shown in /api/v1/bounds and
//! /api/v1/policies) and its messages reach readers later than the
//! operator's staleness but within the bound in force; a thread with one
//! reader keeps the operator's bounds.

mod common;

use common::{TestServer, config, first_update, http_json};
use dyconit_chat::consistency::policy::SizeConfig;
use serde_json::Value;
use std::time::{Duration, Instant};

const BASE_MS: u64 = 60;

async fn bounds(server: &TestServer) -> Value {
    let (status, v) = http_json(server.admin, "GET", "/api/v1/bounds", None, None).await;
    assert_eq!(status, 200);
    v
}

fn policy_thread<'a>(v: &'a Value, thread: &str) -> Option<&'a Value> {
    v["policy_threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["thread"] == thread)
}

#[tokio::test]
async fn a_thread_with_more_readers_gets_wider_bounds() {
    let mut cfg = config(BASE_MS, 256, 1_000_000);
    // 1 reader: the operator's bounds; 3 readers: 10^log10(3) = 3x.
    cfg.size_policy = Some(SizeConfig {
        from: 1,
        per_decade: 10.0,
        max_factor: 8.0,
    });
    let server = TestServer::start(cfg).await;
    let mut members = Vec::new();
    for name in ["a", "b", "c"] {
        let c = server.client(Some(name)).await;
        c.send("big", "hi").await.unwrap();
        let mut sub = c.subscribe().await.unwrap();
        first_update(&mut sub).await;
        members.push((c, sub));
    }
    let loner = server.client(Some("loner")).await;
    loner.send("small", "hi").await.unwrap();
    let mut loner_sub = loner.subscribe().await.unwrap();
    first_update(&mut loner_sub).await;

    // The policy samples once a second.
    let start = Instant::now();
    let v = loop {
        let v = bounds(&server).await;
        if policy_thread(&v, "big").is_some() {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never widened: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let big = policy_thread(&v, "big").unwrap();
    assert_eq!(big["factor"], 3.0, "{v}");
    assert_eq!(
        big["effective"]["staleness_ms"].as_f64(),
        Some(3.0 * BASE_MS as f64)
    );
    assert!(policy_thread(&v, "small").is_none(), "{v}");
    assert_eq!(
        v["effective_default"]["staleness_ms"].as_f64(),
        Some(BASE_MS as f64)
    );
    let by_policy = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["who"] == "policy:size");
    assert!(by_policy, "{v}");
    let (_, p) = http_json(server.admin, "GET", "/api/v1/policies", None, None).await;
    assert_eq!(p["size"]["enabled"], true, "{p}");
    assert_eq!(p["size"]["threads"]["big"], 3.0, "{p}");
    assert_eq!(p["size"]["decisions"][0]["thread"], "big", "{p}");

    // A message on the big thread reaches a member later than the
    // operator's 60 ms (batched over the 180 ms in force).
    let sent = Instant::now();
    members[0].0.send("big", "probe").await.unwrap();
    let sub = &mut members[1].1;
    loop {
        let r = sub
            .next_within(Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        if r.update.message.iter().any(|m| m.contents == "probe") {
            break;
        }
    }
    let waited = sent.elapsed().as_millis() as u64;
    assert!(waited > BASE_MS, "delivered after {waited} ms");
}
