//! The load generator's HTTP/2 connections: the generated gRPC client over a
//! bare hyper connection.
//!
//! `tonic::transport::Channel` puts a request queue (`tower::buffer`) and
//! reconnection in front of the connection: every request is handed to a
//! worker task and its response future handed back. At 20,000
//! acknowledgements a second that hand-off cost the generator about a tenth
//! of its CPU, all of it measuring the generator instead of the server. A
//! bench connection that breaks is not reconnected: the clients on it fail
//! and are reported.

use anyhow::{Context, bail};
use http::uri::{Authority, Scheme};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tonic::body::Body;

/// One HTTP/2 connection to the server; clones share it.
#[derive(Clone)]
pub struct Connection {
    /// Sends requests on the connection (a handle to its task).
    send: SendRequest<Body>,
    /// The server's `host:port`, the `:authority` of every request (the
    /// generated client sends only the path).
    authority: Authority,
}

/// Opens a connection to `url` (`http://host:port`).
pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    let uri: http::Uri = url.parse().context("invalid server URL")?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        bail!("the bench speaks plain http:// only, not {url}");
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
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("bench connection ended: {e}");
        }
    });
    Ok(Connection { send, authority })
}

/// Connections opened at once by [`connect_many`].
const CONNECTING_AT_ONCE: usize = 64;

/// Opens `n` connections to `url`, [`CONNECTING_AT_ONCE`] at a time: with a
/// connection per client, 10,000 handshakes one after the other would make
/// the run wait for the sum of their round trips.
pub async fn connect_many(url: &str, n: usize) -> anyhow::Result<Vec<Connection>> {
    let mut out = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..n {
        if pending.len() >= CONNECTING_AT_ONCE
            && let Some(done) = pending.join_next().await
        {
            out.push(done??);
        }
        let url = url.to_owned();
        pending.spawn(async move { connect(&url).await });
    }
    while let Some(done) = pending.join_next().await {
        out.push(done??);
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
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        Box::pin(self.send.send_request(request))
    }
}
