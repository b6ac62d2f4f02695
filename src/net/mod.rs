//! Connection admission for both listening ports: a cap on open
//! connections, accept-error backoff, and per-connection deadlines.
//!
//! - [`Acceptor`]: accepts only while fewer than `max_connections` are open
//!   (the rest wait in the kernel's listen backlog), and backs off when
//!   `accept` fails (out of descriptors) instead of retrying in a busy loop.
//! - [`Guarded`]: an accepted connection that holds its slot until dropped
//!   and fails its reads once it misses its deadline (handshake or idle).
//! - [`NetMetrics`]: what both report.
//! - [`rate`]: Connects per second per peer address.

mod guard;
mod metrics;
pub mod rate;
pub mod tls;

pub use guard::{Conn, Guarded, Protocol};
pub use metrics::NetMetrics;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Limits of one listening port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a new connection has to start talking (the HTTP/2 preface,
    /// or a complete HTTP/1 request head).
    pub handshake_timeout: Duration,
    /// How long a connection may go without requests (HTTP/2: no HEADERS or
    /// DATA frame from the peer; PINGs and window updates do not count).
    pub idle_timeout: Duration,
}

/// Default cap on gRPC connections: 10,000 clients each on their own
/// connection; clients that share connections (the bench puts 100 on one)
/// need far fewer.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The admin port serves a few operators and scrapers.
pub const DEFAULT_MAX_ADMIN_CONNECTIONS: usize = 64;
/// Default time to send the first request bytes.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time without requests before a connection is closed. Every
/// streaming chat client acknowledges at least every lease / 2 (5 s by
/// default), far below this.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Descriptors kept free beyond the connection caps: the log's files, the
/// listening sockets, the admin port and the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 64;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// Lowers `wanted` (the sum of both ports' caps) to what the open-files
/// limit allows, so the caps bite before `accept` runs out of descriptors.
/// Returns the scale factor applied to each cap (1.0 when they fit).
pub fn fit_to_descriptors(wanted: usize, fd_limit: Option<u64>) -> f64 {
    match fd_limit {
        Some(limit) if (wanted as u64) + RESERVED_DESCRIPTORS > limit => {
            limit.saturating_sub(RESERVED_DESCRIPTORS).max(2) as f64 / wanted.max(1) as f64
        }
        _ => 1.0,
    }
}

/// Shortest and longest pause after a failed `accept`.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections on one port, within its [`Limits`].
pub struct Acceptor {
    listener: TcpListener,
    /// One permit per connection that may be open; a [`Guarded`] holds one.
    slots: Arc<Semaphore>,
    limits: Limits,
    protocol: Protocol,
    metrics: NetMetrics,
    /// The port's name in logs and metric labels (`grpc`, `admin`).
    port: &'static str,
    /// Failed accepts since the last success (0 = accepting normally).
    failing: u64,
    /// Whether the cap has been logged as reached since it last had room.
    cap_logged: bool,
}

impl Acceptor {
    pub fn new(
        listener: TcpListener,
        limits: Limits,
        protocol: Protocol,
        port: &'static str,
        metrics: NetMetrics,
    ) -> Acceptor {
        Acceptor {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            protocol,
            metrics,
            port,
            failing: 0,
            cap_logged: false,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that completes once every accepted connection is closed.
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let slots = self.slots.clone();
        let n = self.limits.max_connections.max(1) as u32;
        async move {
            let _ = slots.acquire_many_owned(n).await;
        }
    }

    /// The next connection, once one may be opened. Never fails: accept
    /// errors are logged (once per episode), counted, and retried after a
    /// growing pause.
    pub async fn accept(&mut self) -> (Guarded<TcpStream>, SocketAddr) {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(p) => {
                self.cap_logged = false;
                p
            }
            Err(_) => {
                self.metrics
                    .cap_reached
                    .with_label_values(&[self.port])
                    .inc();
                if !self.cap_logged {
                    self.cap_logged = true;
                    tracing::warn!(
                        port = self.port,
                        max_connections = self.limits.max_connections,
                        "connection cap reached: new connections wait until one closes"
                    );
                }
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed")
            }
        };
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    self.recovered();
                    let _ = tcp.set_nodelay(true);
                    let conn = Guarded::new(
                        tcp,
                        permit,
                        self.protocol,
                        self.limits,
                        self.metrics.clone(),
                        self.port,
                    );
                    return (conn, peer);
                }
                Err(e) => self.failed(e).await,
            }
        }
    }

    fn recovered(&mut self) {
        if self.failing > 0 {
            tracing::info!(
                port = self.port,
                errors = self.failing,
                "accepting connections again"
            );
            self.failing = 0;
        }
    }

    /// Counts a failed accept and waits before the next try: out of
    /// descriptors, `accept` fails at once for as long as a connection is
    /// pending, and retrying without a pause burned a core.
    async fn failed(&mut self, e: io::Error) {
        self.metrics
            .accept_errors
            .with_label_values(&[self.port])
            .inc();
        if self.failing == 0 {
            tracing::warn!(
                port = self.port,
                error = %e,
                "accepting a connection failed; retrying with backoff (logged once until it recovers)"
            );
        }
        self.failing += 1;
        let pause = BACKOFF_MIN
            .saturating_mul(1 << self.failing.min(10) as u32)
            .min(BACKOFF_MAX);
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_shrink_to_fit_the_descriptor_limit() {
        assert_eq!(fit_to_descriptors(10_064, Some(1 << 20)), 1.0);
        assert_eq!(fit_to_descriptors(10_064, None), 1.0);
        let f = fit_to_descriptors(10_064, Some(1024));
        assert!((10_064.0 * f) as u64 + RESERVED_DESCRIPTORS <= 1024, "{f}");
        assert!(f > 0.09);
    }
}
