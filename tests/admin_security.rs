//! The admin port against hostile callers: the cost of client listings, DNS
//! rebinding (foreign `Host`), cross-site form posts (non-JSON bodies),
//! blank tokens, and the OpenAPI document matching what the server does.

mod common;

use common::*;
use dyconit_chat::node::{self, Listeners};
use serde_json::Value;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request with exactly the headers given; returns the status
/// and the body parsed as JSON (Null if it is not JSON).
async fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let json = serde_json::from_str(rest.trim())
        .or_else(|_| {
            // Chunked: the JSON is the one line that starts with '{'.
            let line = rest.lines().find(|l| l.starts_with('{')).unwrap_or("null");
            serde_json::from_str(line)
        })
        .unwrap_or(Value::Null);
    (status, json)
}

async fn default_numerical(admin: SocketAddr) -> u64 {
    let (_, b) = http_json(admin, "GET", "/api/v1/bounds", None, None).await;
    b["default"]["numerical"].as_u64().unwrap()
}

#[tokio::test]
async fn client_listings_are_capped_paged_and_need_the_token() {
    let mut cfg = config(100, 256, 32);
    cfg.admin_token = Some("s3cret".into());
    let server = TestServer::start(cfg).await;
    let mut raws = Vec::new();
    for _ in 0..25 {
        let mut r = server.raw().await;
        connect_raw(&mut r).await;
        raws.push(r);
    }
    let get = |path: &'static str, token: Option<&'static str>| {
        let admin = server.admin;
        async move { http_json(admin, "GET", path, token, None).await }
    };
    // Too large, negative, not a number: 400 with a reason, nothing built.
    for path in [
        "/api/v1/clients?limit=100000",
        "/api/v1/clients?limit=-1",
        "/api/v1/clients?offset=x",
    ] {
        let (status, body) = get(path, Some("s3cret")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    // Without the token (or with a wrong one): no listing at all, not even
    // the laggiest few.
    for path in [
        "/api/v1/clients",
        "/api/v1/clients?limit=1",
        "/api/v1/clients?offset=20",
    ] {
        let (status, body) = get(path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("token"));
        assert_eq!(get(path, Some("wrong")).await.0, 401);
    }
    let (status, body) = get("/api/v1/clients?limit=10", Some("s3cret")).await;
    assert_eq!(
        (status, body["clients"].as_array().unwrap().len()),
        (200, 10)
    );
    assert_eq!(body["total"], 25);
    // An offset near the top of the range is an empty page, not a panic.
    let (status, body) = get(
        "/api/v1/clients?offset=18446744073709551615&limit=20",
        Some("s3cret"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["clients"].as_array().unwrap().len(), 0);
    // With it: page through everything.
    let (_, page) = get("/api/v1/clients?limit=20", Some("s3cret")).await;
    assert_eq!(page["next_offset"], 20);
    let (_, rest) = get("/api/v1/clients?limit=20&offset=20", Some("s3cret")).await;
    assert_eq!(rest["clients"].as_array().unwrap().len(), 5);
    assert_eq!(rest["next_offset"], Value::Null);
}

#[tokio::test]
async fn requests_for_a_foreign_host_name_are_refused() {
    let server = TestServer::start(config(100, 256, 32)).await;
    let before = default_numerical(server.admin).await;
    // The rebinding attack of the finding: attacker's Host and Origin.
    let (status, body) = raw(
        server.admin,
        "PUT /api/v1/bounds/default HTTP/1.1\r\nHost: attacker.example:9090\r\nOrigin: http://attacker.example:9090\r\nContent-Type: application/json",
        r#"{"numerical": 3}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--admin-host"));
    let (status, _) = raw(
        server.admin,
        "GET /api/v1/stats HTTP/1.1\r\nHost: attacker.example",
        "",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(default_numerical(server.admin).await, before);
    // Addresses and localhost are served.
    for host in ["localhost:1", "127.0.0.1", "[::1]:9090"] {
        let head = format!("GET /healthz HTTP/1.1\r\nHost: {host}");
        assert_eq!(raw(server.admin, &head, "").await.0, 200, "{host}");
    }
}

#[tokio::test]
async fn configured_host_names_are_served() {
    let mut cfg = config(100, 256, 32);
    cfg.admin_hosts = vec!["chat-admin.internal".into()];
    let server = TestServer::start(cfg).await;
    let head = "GET /healthz HTTP/1.1\r\nHost: chat-admin.internal:9090";
    assert_eq!(raw(server.admin, head, "").await.0, 200);
}

#[tokio::test]
async fn mutations_must_be_declared_json() {
    let server = TestServer::start(config(100, 256, 32)).await;
    let before = default_numerical(server.admin).await;
    let addr = server.admin;
    for (path, body) in [
        ("/api/v1/bounds/default", r#"{"numerical": 3}"#),
        ("/api/v1/bounds/threads/t", r#"{"numerical": 3}"#),
        ("/api/v1/log-level", r#"{"filter": "trace"}"#),
    ] {
        let head = format!("PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain");
        let (status, v) = raw(addr, &head, body).await;
        assert_eq!(status, 415, "{path}: {v}");
    }
    assert_eq!(default_numerical(addr).await, before);
    let (_, bounds) = http_json(addr, "GET", "/api/v1/bounds", None, None).await;
    assert_eq!(bounds["threads"].as_array().unwrap().len(), 0);
    let (_, level) = http_json(addr, "GET", "/api/v1/log-level", None, None).await;
    assert_ne!(level["filter"], "trace");
}

#[tokio::test]
async fn log_filter_bodies_must_be_an_object_with_a_filter() {
    let server = TestServer::start(config(100, 256, 32)).await;
    for body in [
        r#"{"filter": ""}"#,
        r#"{"filter": "  "}"#,
        "[]",
        "\"info\"",
        r#"{"filter": "info", "x": 1}"#,
    ] {
        let (status, v) =
            http_json(server.admin, "PUT", "/api/v1/log-level", None, Some(body)).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].is_string());
    }
}

#[tokio::test]
async fn a_blank_admin_token_is_refused_at_start() {
    for token in ["", "   ", "\t"] {
        let mut cfg = config(100, 256, 32);
        cfg.admin_token = Some(token.into());
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = node::run(Listeners { grpc, admin }, cfg, std::future::pending())
            .await
            .expect_err("a blank token was accepted");
        assert!(format!("{err:#}").contains("blank"), "{err:#}");
    }
}

#[tokio::test]
async fn the_openapi_document_declares_security_only_with_a_token() {
    let server = TestServer::start(config(100, 256, 32)).await;
    let (_, doc) = http(server.admin, "GET", "/api/v1/openapi.json", None, None).await;
    assert!(
        !doc.contains("\"security\"") && !doc.contains("bearer"),
        "{doc}"
    );
    let mut cfg = config(100, 256, 32);
    cfg.admin_token = Some("s3cret".into());
    let server = TestServer::start(cfg).await;
    let (_, doc) = http_json(server.admin, "GET", "/api/v1/openapi.json", None, None).await;
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let clients = &doc["paths"]["/api/v1/clients"]["get"];
    assert!(clients["responses"]["400"].is_object() && clients["responses"]["401"].is_object());
    assert_eq!(clients["parameters"][0]["schema"]["maximum"], 1000);
}

/// Schemathesis found an unknown field accepted when its value was null;
/// the schema allows null only for the bound fields.
#[tokio::test]
async fn an_unknown_field_is_refused_even_when_null() {
    let server = TestServer::start(config(100, 256, 32)).await;
    for (path, body) in [
        ("/api/v1/bounds/default", r#"{"order": 5, "": null}"#),
        ("/api/v1/bounds/threads/t", r#"{"order": 5, "x": null}"#),
    ] {
        let (status, body) = http_json(server.admin, "PUT", path, None, Some(body)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("unknown field"));
    }
    // Null still keeps a bound field's value.
    let (status, body) = http_json(
        server.admin,
        "PUT",
        "/api/v1/bounds/default",
        None,
        Some(r#"{"order": 5, "numerical": null}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
