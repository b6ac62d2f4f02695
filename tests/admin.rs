//! The admin HTTP API against a running server: health, metrics, live bound
//! changes proven through real gRPC clients, validation, and the token.

mod common;

use common::*;
use dyconit_chat::client::RetryPolicy;
use dyconit_chat::proto::message_status::StatusCode;

use dyconit_chat::node::{self, Listeners};
use std::time::Duration;

#[tokio::test]
async fn health_readiness_and_openapi() {
    let server = TestServer::start(config(100, 256, 32)).await;
    assert_eq!(
        http(server.admin, "GET", "/healthz", None, None).await,
        (200, "ok\n".into())
    );
    assert_eq!(
        http(server.admin, "GET", "/readyz", None, None).await.0,
        200
    );
    let (status, doc) = http_json(server.admin, "GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    for path in ["/", "/ui/{asset}", "/api/v1/stats", "/api/v1/stats/history"] {
        assert!(doc["paths"][path].is_object(), "{path} not documented");
    }
    let stats = &doc["components"]["schemas"]["Stats"]["properties"];
    for field in [
        "delivery_latency_seconds",
        "ack_lag_seconds",
        "ack_timeout_seconds",
    ] {
        assert!(stats[field].is_object(), "Stats.{field} not documented");
    }
    let (status, err) = http_json(server.admin, "GET", "/api/v1/nope", None, None).await;
    assert_eq!(status, 404);
    assert!(err["error"].is_string());
}

/// Counts the Updates and the largest batch while `n` messages, sent every
/// `gap`, arrive.
async fn batching(
    writer: &dyconit_chat::client::ChatClient,
    sub: &mut dyconit_chat::client::Subscription,
    n: usize,
    gap: Duration,
) -> (usize, usize) {
    for i in 0..n {
        assert_eq!(
            writer.send("", &format!("{i}")).await.unwrap().status,
            StatusCode::Ok
        );
        tokio::time::sleep(gap).await; // the workload's pace, not synchronisation
    }
    let got = collect_messages(sub, n).await;
    let sizes: Vec<usize> = got
        .iter()
        .map(|r| r.update.message.len())
        .filter(|&l| l > 0)
        .collect();
    (sizes.len(), sizes.into_iter().max().unwrap_or(0))
}

#[tokio::test]
async fn raising_staleness_at_runtime_grows_batches() {
    // 100 ms, not less: a unary write must not arrive stale on a loaded
    // machine, and 30 writes 5 ms apart still span two flushes or more.
    let server = TestServer::start(config(100, 100_000, 100_000)).await;
    let reader = server.client(None).await;
    let mut sub = reader.subscribe().await.unwrap();
    first_update(&mut sub).await;
    let writer = server.client(None).await;
    let (updates_before, max_before) =
        batching(&writer, &mut sub, 30, Duration::from_millis(5)).await;
    let (status, change) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/default",
        None,
        Some(r#"{"staleness": "1s"}"#),
    )
    .await;
    assert_eq!(status, 200, "{change}");
    assert_eq!(change["old"]["staleness_ms"], 100.0);
    assert_eq!(change["new"]["staleness_ms"], 1000.0);
    let (updates_after, max_after) =
        batching(&writer, &mut sub, 30, Duration::from_millis(5)).await;
    assert!(
        updates_after < updates_before,
        "{updates_after} Updates after vs {updates_before} before"
    );
    assert!(
        max_after > max_before,
        "largest batch {max_after} after vs {max_before} before"
    );
}

#[tokio::test]
async fn lowering_order_starts_order_errors_for_the_default_and_one_thread() {
    let server = TestServer::start(config(100, 100_000, 32)).await;
    // A never streams: its seen position stays at Connect.
    let mut a = server.client(None).await;
    a.retry = RetryPolicy::none();
    let b = server.client(None).await;
    for i in 0..3 {
        assert_eq!(
            b.send("", &format!("b{i}")).await.unwrap().status,
            StatusCode::Ok
        );
        assert_eq!(
            b.send("strict", &format!("b{i}")).await.unwrap().status,
            StatusCode::Ok
        );
    }
    assert_eq!(a.send("", "a").await.unwrap().status, StatusCode::Ok);
    assert_eq!(a.send("strict", "a").await.unwrap().status, StatusCode::Ok);
    // One thread alone: the default still accepts.
    let (s, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/threads/strict",
        None,
        Some(r#"{"order": 1}"#),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        a.send("strict", "a").await.unwrap().status,
        StatusCode::OrderError
    );
    assert_eq!(a.send("", "a").await.unwrap().status, StatusCode::Ok);
    // Removing the override restores the default for that thread.
    let (s, _) = http_json(
        server.admin,
        "DELETE",
        "/api/v1/bounds/threads/strict",
        None,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(a.send("strict", "a").await.unwrap().status, StatusCode::Ok);
    // The default.
    let (s, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/default",
        None,
        Some(r#"{"order": 2}"#),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        a.send("", "a").await.unwrap().status,
        StatusCode::OrderError
    );
    assert_eq!(
        a.send("strict", "a").await.unwrap().status,
        StatusCode::OrderError
    );
}

#[tokio::test]
async fn lowering_numerical_starts_numerical_errors_for_the_default_and_one_thread() {
    let mut cfg = config(10_000, 256, 100_000);
    cfg.settings.ack_timeout = Duration::from_secs(30);
    cfg.settings.lease = Duration::from_secs(30);
    let server = TestServer::start(cfg).await;
    // A reader that streams and never acknowledges.
    let _reader = silent_reader(&server).await; // held: its stream stays open
    let mut w = server.client(None).await;
    w.retry = RetryPolicy::none();
    for t in ["", "n"] {
        for i in 0..3 {
            assert_eq!(
                w.send(t, &format!("{i}")).await.unwrap().status,
                StatusCode::Ok
            );
        }
    }
    let (s, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/threads/n",
        None,
        Some(r#"{"numerical": 3}"#),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        w.send("n", "x").await.unwrap().status,
        StatusCode::NumericalError
    );
    assert_eq!(w.send("", "x").await.unwrap().status, StatusCode::Ok);
    let (s, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/default",
        None,
        Some(r#"{"numerical": 4}"#),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        w.send("", "x").await.unwrap().status,
        StatusCode::NumericalError
    );
}

#[tokio::test]
async fn bound_changes_are_validated_and_listed() {
    let server = TestServer::start(config(100, 256, 32)).await;
    let cases = [
        r#"{"numerical": 0}"#,
        r#"{"numerical": -1}"#,
        r#"{"order": 1000001}"#,
        r#"{"staleness": "soon"}"#,
        r#"{"staleness": "2h"}"#,
        r#"{"staleness": -5}"#,
        r#"{"bogus": 1}"#,
        r#"{}"#,
        r#"[1]"#,
        "not json",
    ];
    for body in cases {
        let (s, v) = http_json(
            server.admin,
            "PUT",
            "/api/v1/bounds/default",
            None,
            Some(body),
        )
        .await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: {v}"
        );
    }
    let (s, _) = http_json(
        server.admin,
        "DELETE",
        "/api/v1/bounds/threads/none",
        None,
        None,
    )
    .await;
    assert_eq!(s, 404);
    let long = format!("/api/v1/bounds/threads/{}", "t".repeat(129));
    let (s, _) = http_json(server.admin, "PUT", &long, None, Some(r#"{"order": 1}"#)).await;
    assert_eq!(s, 400);
    // Nothing above changed anything.
    let (_, b) = http_json(server.admin, "GET", "/api/v1/bounds", None, None).await;
    assert_eq!(b["default"]["numerical"], 256);
    assert_eq!(b["changes"].as_array().unwrap().len(), 0);
    let (s, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/default",
        None,
        Some(r#"{"staleness": 250, "order": 5}"#),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/threads/ops%20room",
        None,
        Some(r#"{"numerical": 9}"#),
    )
    .await;
    assert_eq!(s, 200);
    let (_, b) = http_json(server.admin, "GET", "/api/v1/bounds", None, None).await;
    assert_eq!(b["default"]["staleness_ms"], 250.0);
    assert_eq!(b["default"]["order"], 5);
    assert_eq!(b["threads"][0]["thread"], "ops room");
    assert_eq!(b["threads"][0]["effective"]["numerical"], 9);
    assert_eq!(b["threads"][0]["effective"]["order"], 5);
    let changes = b["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["scope"], "default");
    assert_eq!(changes[0]["old"]["order"], 32);
    assert_eq!(changes[1]["thread"], "ops room");
    assert_rfc3339_beside(&changes[0], "at");
    assert!(
        changes[1]["who"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
}

#[tokio::test]
async fn a_token_guards_every_mutating_call() {
    let mut cfg = config(100, 256, 32);
    cfg.admin_token = Some("s3cret".into());
    let server = TestServer::start(cfg).await;
    let body = Some(r#"{"order": 3}"#);
    for (method, path, body) in [
        ("PUT", "/api/v1/bounds/default", body),
        ("PUT", "/api/v1/bounds/threads/x", body),
        ("DELETE", "/api/v1/bounds/threads/x", None),
        ("PUT", "/api/v1/log-level", Some(r#"{"filter": "debug"}"#)),
    ] {
        for token in [None, Some("wrong"), Some("s3cret2")] {
            let (s, v) = http_json(server.admin, method, path, token, body).await;
            assert_eq!(s, 401, "{method} {path} with {token:?}: {v}");
        }
    }
    assert_eq!(
        http(server.admin, "GET", "/api/v1/bounds", None, None)
            .await
            .0,
        200
    );
    let (s, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/default",
        Some("s3cret"),
        body,
    )
    .await;
    assert_eq!(s, 200);
    let (_, b) = http_json(server.admin, "GET", "/api/v1/bounds", None, None).await;
    assert_eq!(b["default"]["order"], 3);
    assert!(
        b["changes"][0]["who"]
            .as_str()
            .unwrap()
            .ends_with("(token)")
    );
}

#[tokio::test]
async fn a_non_loopback_admin_address_needs_a_token() {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = node::run(
        Listeners { grpc, admin },
        config(100, 256, 32),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("--admin-token"), "{err:#}");
}

#[tokio::test]
async fn metrics_stats_and_clients_reflect_traffic_without_leaking_ids() {
    let server = TestServer::start(config(50, 256, 1)).await;
    let reader = server.client(Some("reader")).await;
    let mut sub = reader.subscribe().await.unwrap();
    first_update(&mut sub).await;
    let mut w = server.client(Some("writer")).await;
    w.retry = RetryPolicy::none();
    for i in 0..4 {
        assert_eq!(
            w.send("", &format!("{i}")).await.unwrap().status,
            StatusCode::Ok
        );
    }
    collect_messages(&mut sub, 4).await;
    // Order: the writer has not seen the reader's two commits.
    assert_eq!(reader.send("", "r1").await.unwrap().status, StatusCode::Ok);
    assert_eq!(reader.send("", "r2").await.unwrap().status, StatusCode::Ok);
    assert_eq!(
        w.send("", "late").await.unwrap().status,
        StatusCode::OrderError
    );
    let (s, text) = http(server.admin, "GET", "/metrics", None, None).await;
    assert_eq!(s, 200);
    for needle in [
        "chat_messages_accepted_total 6",
        "chat_messages_rejected_total{reason=\"order\"} 1",
        "chat_rpc_requests_total{code=\"OK\",method=\"SendMessage\"} 7",
        "chat_rpc_requests_total{code=\"OK\",method=\"Connect\"} 2",
        "chat_bound{bound=\"order\",tier=\"default\"} 1",
        "chat_bound{bound=\"staleness_seconds\",tier=\"default\"} 0.05",
        "chat_clients_connected 2",
        "chat_clients_active 1",
        "chat_delivery_latency_seconds_bucket",
        "chat_updates_sent_total",
        "process_cpu_seconds_total",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let (_, stats) = http_json(server.admin, "GET", "/api/v1/stats", None, None).await;
    assert_eq!(stats["messages_accepted"], 6);
    assert_eq!(stats["rejections"]["order"], 1);
    assert_eq!(stats["clients_connected"], 2);
    assert_eq!(stats["ready"], true);
    let (_, clients) = http(server.admin, "GET", "/api/v1/clients", None, None).await;
    let v: serde_json::Value = serde_json::from_str(&clients).unwrap();
    assert_eq!(v["total"], 2);
    let names: Vec<_> = v["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"reader") && names.contains(&"writer"));
    for c in v["clients"].as_array().unwrap() {
        assert_rfc3339_beside(c, "connected_since");
        assert_rfc3339_beside(c, "last_ack");
    }
    for id in [reader.id(), w.id()] {
        assert!(
            !clients.contains(&id.to_string()),
            "capability id leaked by /api/v1/clients"
        );
        assert!(
            !text.contains(&id.to_string()),
            "capability id leaked by /metrics"
        );
    }
}

/// The flush scheduler thread's own CPU time and run-queue wait are
/// exported, so an operator can tell a scheduler that waited for a core
/// from one that had much to do.
#[tokio::test]
async fn the_flush_scheduler_threads_cpu_time_and_wait_are_exported() {
    let server = TestServer::start(config(50, 256, 1)).await;
    let reader = server.client(Some("reader")).await;
    let mut sub = reader.subscribe().await.unwrap();
    // The first Update comes from a scheduler run.
    first_update(&mut sub).await;
    assert!(metric(&server, "chat_flush_scheduler_cpu_seconds_total").await > 0.0);
    assert!(metric(&server, "chat_flush_scheduler_wait_seconds_total").await >= 0.0);
}

#[tokio::test]
async fn the_log_filter_changes_at_runtime() {
    let server = TestServer::start(config(100, 256, 32)).await;
    let (s, v) = http_json(
        server.admin,
        "PUT",
        "/api/v1/log-level",
        None,
        Some(r#"{"filter": "dyconit_chat=debug"}"#),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["new"], "dyconit_chat=debug");
    let (_, v) = http_json(server.admin, "GET", "/api/v1/log-level", None, None).await;
    assert_eq!(v["filter"], "dyconit_chat=debug");
    let (s, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/log-level",
        None,
        Some(r#"{"filter": "a=b=c"}"#),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = http_json(
        server.admin,
        "PUT",
        "/api/v1/log-level",
        None,
        Some(r#"{"level": 3}"#),
    )
    .await;
    assert_eq!(s, 400);
}

/// A raw HTTP/1.1 GET with extra header lines: the status, the response
/// head (lower-cased, for header checks) and the body.
async fn get_with_headers(
    addr: std::net::SocketAddr,
    path: &str,
    extra: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// The value of header `name` (lower-case) in a lower-cased response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[tokio::test]
async fn the_dashboard_and_its_assets_are_served_from_the_binary() {
    let mut cfg = config(100, 256, 32);
    cfg.admin_token = Some("s3cret".into());
    let server = TestServer::start(cfg).await;
    // The page needs no token: only mutating calls do.
    let (status, head, page) = get_with_headers(server.admin, "/", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    assert!(
        header(&head, "content-security-policy").is_some_and(|c| c.contains("script-src 'self'"))
    );
    assert!(page.contains("<title>Dyconit Chat"));
    assert!(!page.contains("{{"), "unfilled asset placeholder");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "the page must not load anything from elsewhere"
    );
    let etag = header(&head, "etag").expect("ETag").to_owned();
    let (status, _, body) =
        get_with_headers(server.admin, "/", &format!("If-None-Match: {etag}\r\n")).await;
    assert_eq!((status, body.as_str()), (304, ""));
    let (status, _, _) = get_with_headers(server.admin, "/", "If-None-Match: \"other\"\r\n").await;
    assert_eq!(status, 200);

    for (name, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        // The page links each asset under its content hash.
        let prefix = format!("/ui/{name}?v=");
        let at = page
            .find(&prefix)
            .unwrap_or_else(|| panic!("{name} not linked"));
        let url: String = page[at..].chars().take_while(|c| *c != '"').collect();
        let (status, head, body) = get_with_headers(server.admin, &url, "").await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(header(&head, "content-type"), Some(content_type), "{url}");
        assert_eq!(
            header(&head, "cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{url}"
        );
        assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
        assert!(!body.is_empty());
        // Without (or with a stale) version it must be revalidated.
        for stale in [format!("/ui/{name}"), format!("/ui/{name}?v=0123")] {
            let (status, head, _) = get_with_headers(server.admin, &stale, "").await;
            assert_eq!(status, 200, "{stale}");
            assert_eq!(header(&head, "cache-control"), Some("no-cache"), "{stale}");
        }
    }
    let (status, err) = http_json(server.admin, "GET", "/ui/secrets.txt", None, None).await;
    assert_eq!(status, 404);
    assert!(err["error"].is_string());
}

#[tokio::test]
async fn stats_carry_the_latency_histograms_the_dashboard_charts() {
    let server = TestServer::start(config(50, 256, 32)).await;
    let (_, before) = http_json(server.admin, "GET", "/api/v1/stats", None, None).await;
    assert_eq!(before["delivery_latency_seconds"]["count"], 0);
    assert_eq!(before["ack_timeout_seconds"], 3.0);
    let reader = server.client(None).await;
    let mut sub = reader.subscribe().await.unwrap();
    first_update(&mut sub).await;
    let writer = server.client(None).await;
    for i in 0..5 {
        assert_eq!(
            writer.send("", &format!("{i}")).await.unwrap().status,
            StatusCode::Ok
        );
    }
    collect_messages(&mut sub, 5).await;
    // The reader acknowledges in the background; wait for it to be counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let (_, s) = http_json(server.admin, "GET", "/api/v1/stats", None, None).await;
        if s["ack_lag_seconds"]["count"].as_u64().unwrap() >= 2 {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no acks counted: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for name in ["delivery_latency_seconds", "ack_lag_seconds"] {
        let h = &stats[name];
        let count = h["count"].as_u64().unwrap();
        assert!(count >= 1, "{name}: {h}");
        let sum = h["sum"].as_f64().unwrap();
        assert!((0.0..10.0 * count as f64).contains(&sum), "{name}: {h}");
        let buckets = h["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 15, "{name}: the 1 ms .. 16 s buckets");
        let mut last = (0.0, 0);
        for b in buckets {
            let (le, n) = (b[0].as_f64().unwrap(), b[1].as_u64().unwrap());
            assert!(
                le > last.0 && n >= last.1,
                "{name}: buckets not cumulative: {h}"
            );
            last = (le, n);
        }
        assert!(last.1 <= count);
    }
    // Every batch of the 50 ms bound went out in time: the latency sum is
    // at most about one staleness per Update.
    let h = &stats["delivery_latency_seconds"];
    let mean = h["sum"].as_f64().unwrap() / h["count"].as_f64().unwrap();
    assert!(mean < 0.5, "mean delivery latency {mean} s");
}

#[tokio::test]
async fn what_get_bounds_returns_can_be_put_back() {
    let server = TestServer::start(config(100, 256, 32)).await;
    let put = |path: &'static str, body: String| {
        let admin = server.admin;
        async move { http_json(admin, "PUT", path, None, Some(&body)).await }
    };
    let (s, _) = put("/api/v1/bounds/threads/dev", r#"{"order": 4}"#.into()).await;
    assert_eq!(s, 200);
    let (_, got) = http_json(server.admin, "GET", "/api/v1/bounds", None, None).await;

    // The default object as GET shows it (with the read-only staleness_ms),
    // one field edited.
    let mut default = got["default"].clone();
    default["numerical"] = 300.into();
    let (s, body) = put("/api/v1/bounds/default", default.to_string()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["new"]["numerical"], 300);
    assert_eq!(body["new"]["staleness_ms"], 100.0);

    // A thread's whole entry, and its override object alone (nulls unset).
    let mut entry = got["threads"][0].clone();
    entry["override"]["order"] = 6.into();
    let (s, body) = put("/api/v1/bounds/threads/dev", entry.to_string()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["new"]["order"], 6);
    let mut inner = got["threads"][0]["override"].clone();
    inner["order"] = 8.into();
    let (s, body) = put("/api/v1/bounds/threads/dev", inner.to_string()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["new"]["order"], 8);

    // Read-only fields that contradict the body are refused.
    let mut bad = got["default"].clone();
    bad["staleness_ms"] = 250.0.into();
    let (s, body) = put("/api/v1/bounds/default", bad.to_string()).await;
    assert_eq!(s, 400);
    assert!(
        body["error"].as_str().unwrap().contains("contradicts"),
        "{body}"
    );
    let (s, body) = put("/api/v1/bounds/threads/other", entry.to_string()).await;
    assert_eq!(s, 400);
    assert!(
        body["error"].as_str().unwrap().contains("contradicts"),
        "{body}"
    );
}

/// `<key>_rfc3339` is the same instant as the microseconds in `<key>`.
fn assert_rfc3339_beside(v: &serde_json::Value, key: &str) {
    let micros = v[key].as_i64().unwrap_or_else(|| panic!("{key} in {v}"));
    let text = v[format!("{key}_rfc3339")]
        .as_str()
        .unwrap_or_else(|| panic!("{key}_rfc3339 in {v}"));
    let t = humantime::parse_rfc3339(text).expect("RFC 3339");
    let want = std::time::UNIX_EPOCH + Duration::from_micros(micros as u64);
    assert_eq!(t, want, "{text} is not {micros}us");
}

#[tokio::test]
async fn the_server_keeps_a_history_of_stats_samples_for_the_dashboard() {
    let server = TestServer::start(config(100, 256, 32)).await;
    let w = server.client(Some("writer")).await;
    let _sub = w.subscribe().await.unwrap();
    assert_eq!(w.send("", "one").await.unwrap().status, StatusCode::Ok);
    // One sample a second: wait for one taken after the message.
    let samples = loop {
        let (status, h) = http_json(server.admin, "GET", "/api/v1/stats/history", None, None).await;
        assert_eq!(status, 200);
        assert_eq!(h["interval_seconds"], 1.0);
        let samples = h["samples"].as_array().unwrap().clone();
        if samples
            .last()
            .is_some_and(|s| s["stats"]["messages_accepted"] == 1)
        {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let last = samples.last().unwrap();
    assert_eq!(last["staleness_ms"], 100.0);
    assert_eq!(last["numerical"], 256);
    assert!(last["stats"]["uptime_seconds"].as_f64().unwrap() > 0.0);
    let (_, h) = http_json(
        server.admin,
        "GET",
        "/api/v1/stats/history?seconds=1",
        None,
        None,
    )
    .await;
    assert_eq!(h["samples"].as_array().unwrap().len(), 1);
}
