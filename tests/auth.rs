//! JWT authentication on Connect against a real server: HS256 from a secret
//! file (tokens from the `token` command's function), RS256 from a JWK set.

mod common;

use common::*;
use dyconit_chat::auth::{Verifier, hs256_token};
use dyconit_chat::client::{ChatClient, ClientError, ConnectOptions};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!!";

async fn server_with_secret() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    let mut cfg = config(50, 256, 32);
    cfg.auth = Some(Arc::new(Verifier::from_secret_file(&path).unwrap()));
    (TestServer::start(cfg).await, dir)
}

fn with_token(token: &str) -> ConnectOptions {
    ConnectOptions {
        token: Some(token.to_owned()),
        ..Default::default()
    }
}

fn code(r: Result<ChatClient, ClientError>) -> (Code, String) {
    match r {
        Err(ClientError::Rpc(s)) => (s.code(), s.message().to_owned()),
        Err(e) => panic!("not a status: {e}"),
        Ok(_) => panic!("connected"),
    }
}

#[tokio::test]
async fn connect_needs_a_valid_token_and_the_name_comes_from_it() {
    let (server, _dir) = server_with_secret().await;
    let token = hs256_token(SECRET.as_bytes(), "ada", Duration::from_secs(60)).unwrap();
    let ada = ChatClient::connect_with(&server.url, None, &with_token(&token))
        .await
        .expect("authenticated");
    let mut sub = ada.subscribe().await.unwrap();
    first_update(&mut sub).await;
    ada.send("", "signed").await.unwrap();
    let got = collect_messages(&mut sub, 1).await;
    assert_eq!(got[0].update.message[0].sender, "ada");
    // No token, a forged one, and x-chat-name beside a good one.
    let (c, why) = code(ChatClient::connect(&server.url, None).await);
    assert_eq!(c, Code::Unauthenticated);
    assert!(why.contains("Bearer"), "{why}");
    let forged = hs256_token(
        b"some-other-secret-also-32-bytes-long",
        "eve",
        Duration::from_secs(60),
    )
    .unwrap();
    let (c, why) = code(ChatClient::connect_with(&server.url, None, &with_token(&forged)).await);
    assert_eq!(
        (c, why.contains("signature")),
        (Code::Unauthenticated, true),
        "{why}"
    );
    let (c, _) =
        code(ChatClient::connect_with(&server.url, Some("mallory"), &with_token(&token)).await);
    assert_eq!(c, Code::InvalidArgument);
    let (_, text) = http(server.admin, "GET", "/metrics", None, None).await;
    for sample in [
        "chat_auth_total{result=\"ok\"} 1",
        "chat_auth_total{result=\"missing\"} 1",
        "chat_auth_total{result=\"bad_signature\"} 1",
        "chat_auth_total{result=\"name_header\"} 1",
    ] {
        assert!(text.contains(sample), "{sample} missing");
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_with_the_reason() {
    let (server, _dir) = server_with_secret().await;
    // Expired beyond the leeway: exp 1 s after the epoch.
    use jsonwebtoken::{EncodingKey, Header, encode};
    let claims = serde_json::json!({ "name": "old", "exp": 1 });
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (c, why) = code(ChatClient::connect_with(&server.url, None, &with_token(&token)).await);
    assert_eq!(c, Code::Unauthenticated);
    assert!(why.contains("expired"), "{why}");
}

#[tokio::test]
async fn es256_tokens_verify_against_a_jwk_set() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    // A P-256 key (rcgen's default), published as a JWK.
    let key = rcgen::KeyPair::generate().unwrap();
    let point = key.public_key_raw(); // 0x04 || x || y
    assert_eq!(point.len(), 65);
    let jwks = serde_json::json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..]),
    }]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let mut cfg = config(50, 256, 32);
    cfg.auth = Some(Arc::new(Verifier::from_jwks_file(&path).unwrap()));
    let server = TestServer::start(cfg).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({ "sub": "grace", "exp": exp });
    let token = encode(
        &header,
        &claims,
        &EncodingKey::from_ec_der(&key.serialize_der()),
    )
    .unwrap();
    let grace = ChatClient::connect_with(&server.url, None, &with_token(&token))
        .await
        .expect("ES256 token accepted");
    let mut sub = grace.subscribe().await.unwrap();
    first_update(&mut sub).await;
    grace.send("", "from grace").await.unwrap();
    assert_eq!(
        collect_messages(&mut sub, 1).await[0].update.message[0].sender,
        "grace"
    );
    // The same claims under an unknown kid: refused.
    header.kid = Some("k2".into());
    let token = encode(
        &header,
        &claims,
        &EncodingKey::from_ec_der(&key.serialize_der()),
    )
    .unwrap();
    let (c, why) = code(ChatClient::connect_with(&server.url, None, &with_token(&token)).await);
    assert_eq!(c, Code::Unauthenticated);
    assert!(why.contains("no key"), "{why}");
}
