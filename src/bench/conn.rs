//! The load generator's HTTP/2 connections: the generated gRPC client over a
//! bare hyper connection.
//!
//! `tonic::transport::Channel` puts a request queue (`tower::buffer`) and
//! reconnection in front of the connection: every request is handed to a
//! worker task and its response future handed back. At 20,000
//! acknowledgements a second that hand-off cost the generator about a tenth
//! of its CPU, all of it measuring the generator instead of the server. A
//! bench connection that breaks is not reconnected: each client on it
//! opens a connection of its own to the next node (`super::failover`), or
//! fails and is reported.

use anyhow::{Context, bail};
use http::uri::{Authority, Scheme};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tonic::body::Body;

/// One HTTP/2 connection to the server; clones share it.
#[derive(Clone)]
pub struct Connection {
    /// Sends requests on the connection (a handle to its task).
    send: SendRequest<Body>,
    /// The server's `host:port`, the `:authority` of every request (the
    /// generated client sends only the path).
    authority: Authority,
    /// `http` or `https`.
    scheme: Scheme,
}

/// The TLS client for an `https://` URL (trusting the CA certificates in
/// `ca_cert`, else the system's roots); `None` for `http://`.
pub fn tls_for(
    url: &str,
    ca_cert: Option<&std::path::Path>,
) -> anyhow::Result<Option<TlsConnector>> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    if !url.starts_with("https://") {
        if ca_cert.is_some() {
            bail!("--ca-cert needs an https:// server URL, not {url}");
        }
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            for c in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots.add(c.with_context(|| format!("parsing {}", path.display()))?)?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsConnector::from(std::sync::Arc::new(config))))
}

/// Opens a connection to `url` (`http://host:port`, or `https://` with the
/// TLS client from [`tls_for`]).
pub async fn connect(url: &str, tls: Option<TlsConnector>) -> anyhow::Result<Connection> {
    let uri: http::Uri = url.parse().context("invalid server URL")?;
    let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        bail!("the bench speaks http:// and https://, not {url}");
    }
    let authority = uri
        .authority()
        .cloned()
        .context("the server URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((authority.host(), port)),
    )
    .await
    .context("connect timed out")??;
    tcp.set_nodelay(true)?;
    let send = match tls {
        None => handshake(tcp).await?,
        Some(tls) => {
            let name = ServerName::try_from(authority.host().trim_matches(['[', ']']).to_owned())
                .context("the server URL's host is not a valid TLS name")?;
            handshake(tls.connect(name, tcp).await.context("TLS handshake")?).await?
        }
    };
    Ok(Connection {
        send,
        authority,
        scheme,
    })
}

/// The HTTP/2 handshake over `io`; the connection runs in its own task.
async fn handshake<IO>(io: IO) -> anyhow::Result<SendRequest<Body>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(io))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("bench connection ended: {e}");
        }
    });
    Ok(send)
}

/// Connections opened at once by [`connect_many`].
const CONNECTING_AT_ONCE: usize = 64;

/// Opens `n` connections to `url`, `CONNECTING_AT_ONCE` at a time: with a
/// connection per client, 10,000 handshakes one after the other would make
/// the run wait for the sum of their round trips.
pub async fn connect_many(
    url: &str,
    n: usize,
    tls: Option<TlsConnector>,
) -> anyhow::Result<Vec<Connection>> {
    let mut out = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..n {
        if pending.len() >= CONNECTING_AT_ONCE
            && let Some(done) = pending.join_next().await
        {
            out.push(done??);
        }
        let url = url.to_owned();
        let tls = tls.clone();
        pending.spawn(async move { connect(&url, tls).await });
    }
    while let Some(done) = pending.join_next().await {
        out.push(done??);
    }
    Ok(out)
}

/// `n` connections spread over `urls` in turn (connection `i` to
/// `urls[i % urls.len()]`), so that the clients, which take connections in
/// turn, are spread over the nodes of a cluster too.
pub async fn connect_spread(
    urls: &[String],
    n: usize,
    tls: Option<TlsConnector>,
) -> anyhow::Result<Vec<Connection>> {
    let mut per_url = Vec::with_capacity(urls.len());
    for (k, url) in urls.iter().enumerate() {
        let share = n / urls.len() + usize::from(k < n % urls.len());
        let conns = connect_many(url, share, tls.clone())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        per_url.push(conns.into_iter());
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.extend(per_url[i % urls.len()].next());
    }
    Ok(out)
}

impl tower_service::Service<http::Request<Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        Box::pin(self.send.send_request(request))
    }
}
