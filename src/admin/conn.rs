//! The admin port's accept loop: HTTP/1 connections within the port's
//! limits, each with a header-read deadline, closed gracefully at shutdown.

use super::AdminState;
use crate::net::Acceptor;
use crate::net::tls::TlsState;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

/// Serves the admin router on `acceptor` until `shutdown` completes, then
/// lets open requests finish and returns once every connection is closed.
pub async fn serve(
    mut acceptor: Acceptor,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_timeout: std::time::Duration,
    tls: Option<Arc<TlsState>>,
) {
    let (app, sampler) = super::app(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    // hyper runs this from the moment it waits for a request head, so it
    // also ends idle keep-alive connections.
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    let drained = acceptor.drained();
    tokio::pin!(shutdown);
    loop {
        let (io, peer) = tokio::select! {
            _ = &mut shutdown => break,
            c = acceptor.accept() => c,
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, req).await }
        });
        let mut stop = stop_rx.clone();
        let http = http.clone();
        let tls = tls.as_ref().map(|t| t.admin());
        tokio::spawn(async move {
            let Ok(io) = io.secure(tls).await else {
                return;
            };
            let conn = http.serve_connection(TokioIo::new(io), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "admin connection ended");
                    }
                }
                _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    // Closes the listening socket before waiting for the connections.
    drop(acceptor);
    let _ = stop_tx.send(true);
    drained.await;
    sampler.abort();
}
