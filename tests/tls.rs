//! TLS on both ports with certificates made here (rcgen): the client
//! library over https://, the admin port over TLS, mutual TLS, and a reload
//! that switches certificates for new connections.

mod common;

use common::*;
use dyconit_chat::client::{ChatClient, ConnectOptions};
use dyconit_chat::net::tls::{TlsFiles, TlsState};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A CA, and certificates it signs.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` and its key, as PEM.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a server certificate and key for 127.0.0.1 into `dir`.
    fn write_server(&self, dir: &Path) -> TlsFiles {
        let (cert, key) = self.leaf(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        TlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: None,
        }
    }
}

fn https(server: &TestServer) -> String {
    server.url.replace("http://", "https://")
}

fn trusting(ca: &Ca) -> ConnectOptions {
    ConnectOptions {
        ca_cert: Some(ca.pem.clone().into_bytes()),
        ..Default::default()
    }
}

#[tokio::test]
async fn chat_over_tls_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let mut cfg = config(50, 256, 32);
    cfg.tls = Some(TlsState::load(ca.write_server(dir.path())).unwrap());
    let server = TestServer::start(cfg).await;
    let url = https(&server);
    let alice = ChatClient::connect_with(&url, Some("alice"), &trusting(&ca))
        .await
        .expect("TLS connect");
    let mut sub = alice.subscribe().await.unwrap();
    first_update(&mut sub).await;
    alice.send("", "over tls").await.unwrap();
    let got = collect_messages(&mut sub, 1).await;
    assert_eq!(got[0].update.message[0].contents, "over tls");
    // Plain HTTP/2 to the TLS port does not get through.
    assert!(ChatClient::connect(&server.url, None).await.is_err());
    // Nor does TLS without trusting the server's CA.
    let stranger = Ca::new();
    assert!(
        ChatClient::connect_with(&url, None, &trusting(&stranger))
            .await
            .is_err()
    );
}

/// GET /healthz over TLS; the status code, or the error.
async fn admin_get(addr: std::net::SocketAddr, ca_pem: &str) -> Result<u16, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(text.to_string())
}

#[tokio::test]
async fn the_admin_port_speaks_tls_and_a_reload_switches_certificates() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new();
    let state = TlsState::load(old_ca.write_server(dir.path())).unwrap();
    let mut cfg = config(50, 256, 32);
    cfg.tls = Some(state.clone());
    let server = TestServer::start(cfg).await;
    assert_eq!(admin_get(server.admin, &old_ca.pem).await, Ok(200));
    let held = ChatClient::connect_with(&https(&server), None, &trusting(&old_ca))
        .await
        .unwrap();
    // New files from another CA, then the reload (what SIGHUP does).
    let new_ca = Ca::new();
    new_ca.write_server(dir.path());
    state.reload().expect("reload");
    assert_eq!(admin_get(server.admin, &new_ca.pem).await, Ok(200));
    assert!(admin_get(server.admin, &old_ca.pem).await.is_err());
    assert!(
        ChatClient::connect_with(&https(&server), None, &trusting(&new_ca))
            .await
            .is_ok()
    );
    // An open connection keeps working.
    held.subscribe().await.expect("old connection still served");
    // A broken file: the reload fails and the certificate in force stays.
    std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
    assert!(state.reload().is_err());
    assert_eq!(admin_get(server.admin, &new_ca.pem).await, Ok(200));
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new();
    let client_ca = Ca::new();
    let mut files = server_ca.write_server(dir.path());
    std::fs::write(dir.path().join("clients.pem"), &client_ca.pem).unwrap();
    files.client_ca = Some(dir.path().join("clients.pem"));
    let mut cfg = config(50, 256, 32);
    cfg.tls = Some(TlsState::load(files).unwrap());
    let server = TestServer::start(cfg).await;
    let url = https(&server);
    // No client certificate: refused.
    let refused = ChatClient::connect_with(&url, None, &trusting(&server_ca)).await;
    assert!(refused.is_err(), "a client without a certificate got in");
    // A certificate from the client CA: served.
    let (cert, key) = client_ca.leaf(&["client-1"]);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&server_ca.pem))
        .identity(Identity::from_pem(cert, key));
    let channel = Endpoint::from_shared(url)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("mTLS connect");
    ChatClient::connect_channel(channel, Some("with-cert"))
        .await
        .expect("Connect over mTLS");
}

#[tokio::test]
async fn the_chat_command_sends_over_tls_with_a_token() {
    use dyconit_chat::auth::{Verifier, hs256_token};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let secret = "a-secret-for-the-chat-command-test!!";
    std::fs::write(dir.path().join("secret"), secret).unwrap();
    let mut cfg = config(50, 256, 32);
    cfg.tls = Some(TlsState::load(ca.write_server(dir.path())).unwrap());
    cfg.auth = Some(Arc::new(
        Verifier::from_secret_file(&dir.path().join("secret")).unwrap(),
    ));
    let server = TestServer::start(cfg).await;
    let reader_token = hs256_token(secret.as_bytes(), "reader", Duration::from_secs(60)).unwrap();
    let options = ConnectOptions {
        token: Some(reader_token),
        ..trusting(&ca)
    };
    let reader = ChatClient::connect_with(&https(&server), None, &options)
        .await
        .unwrap();
    let mut sub = reader.subscribe().await.unwrap();
    first_update(&mut sub).await;
    let token = hs256_token(secret.as_bytes(), "cli-user", Duration::from_secs(60)).unwrap();
    let url = https(&server);
    let ca_file = dir.path().join("ca.pem");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dyconit-chat"))
            .args(["chat", "--server", &url, "--send", "hello via cli"])
            .arg("--ca-cert")
            .arg(ca_file)
            .args(["--token", &token])
            .env_remove("DYCONIT_SERVER")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = collect_messages(&mut sub, 1).await;
    assert_eq!(got[0].update.message[0].sender, "cli-user");
}
