//! An accepted connection with a slot and a deadline.

use super::{Limits, NetMetrics};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// What counts as a request on a connection, for its idle deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2: the 24-byte preface must arrive within the handshake timeout;
    /// after it, only HEADERS and DATA frames from the peer reset the idle
    /// deadline. A peer that answers PINGs (or sends them, or window
    /// updates) and nothing else is idle.
    Http2,
    /// Any bytes from the peer reset the idle deadline (HTTP/1, where the
    /// server's own header-read timeout bounds each request head).
    Bytes,
}

/// The client connection preface of HTTP/2.
const PREFACE_BYTES: usize = 24;
/// The header of an HTTP/2 frame.
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;

/// Follows HTTP/2 frame boundaries in the bytes a peer sends, to tell
/// requests from keep-alive chatter. Reads only frame headers.
#[derive(Debug, Default)]
struct FrameScan {
    /// Preface bytes still to skip.
    preface_left: usize,
    /// The frame header being gathered.
    header: [u8; FRAME_HEADER_BYTES],
    header_have: usize,
    /// Payload bytes of the current frame still to skip.
    payload_left: usize,
}

impl FrameScan {
    fn new() -> FrameScan {
        FrameScan {
            preface_left: PREFACE_BYTES,
            ..Default::default()
        }
    }

    /// Consumes `bytes`; returns whether they completed a HEADERS or DATA
    /// frame header.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut request = false;
        while !bytes.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_BYTES - self.header_have).min(bytes.len());
                self.header[self.header_have..self.header_have + n].copy_from_slice(&bytes[..n]);
                self.header_have += n;
                bytes = &bytes[n..];
                if self.header_have == FRAME_HEADER_BYTES {
                    self.header_have = 0;
                    let h = &self.header;
                    self.payload_left =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    request |= matches!(h[3], FRAME_DATA | FRAME_HEADERS);
                }
            }
        }
        request
    }

    fn preface_done(&self) -> bool {
        self.preface_left == 0
    }
}

/// Why a connection was closed by its deadline (a metric label).
fn reason(handshaking: bool) -> &'static str {
    if handshaking {
        "handshake_timeout"
    } else {
        "idle_timeout"
    }
}

/// Counts a connection in `chat_connections_open` while it lives.
struct OpenGauge {
    metrics: NetMetrics,
    port: &'static str,
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.metrics.open.with_label_values(&[self.port]).dec();
    }
}

/// An accepted connection: holds one of its port's connection slots until
/// dropped, and fails its next read once the peer misses a deadline, which
/// closes the connection (hyper treats a read error as the end).
pub struct Guarded<IO> {
    inner: IO,
    slot: OwnedSemaphorePermit,
    gauge: OpenGauge,
    protocol: Protocol,
    limits: Limits,
    scan: FrameScan,
    /// Still waiting for the peer's first request bytes.
    handshaking: bool,
    deadline: Pin<Box<Sleep>>,
    metrics: NetMetrics,
    port: &'static str,
}

impl<IO> Guarded<IO> {
    pub(super) fn new(
        inner: IO,
        slot: OwnedSemaphorePermit,
        protocol: Protocol,
        limits: Limits,
        metrics: NetMetrics,
        port: &'static str,
    ) -> Guarded<IO> {
        metrics.open.with_label_values(&[port]).inc();
        Guarded {
            inner,
            slot,
            gauge: OpenGauge {
                metrics: metrics.clone(),
                port,
            },
            protocol,
            limits,
            scan: FrameScan::new(),
            handshaking: true,
            deadline: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            metrics,
            port,
        }
    }

    /// The connection underneath (for its addresses).
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// Moves the deadline on after `bytes` arrived.
    fn observe(&mut self, bytes: &[u8]) {
        let request = match self.protocol {
            Protocol::Bytes => true,
            Protocol::Http2 => {
                let request = self.scan.feed(bytes);
                // The preface alone ends the handshake: a client may open a
                // connection ahead of its first call.
                request || (self.handshaking && self.scan.preface_done())
            }
        };
        if request {
            self.handshaking = false;
            let next = Instant::now() + self.limits.idle_timeout;
            self.deadline.as_mut().reset(next);
        }
    }
}

/// An accepted TCP connection, in plain text or after a TLS handshake.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(t) => t,
            Conn::Tls(t) => t.get_ref().0,
        }
    }
}

impl Guarded<TcpStream> {
    /// Runs the TLS handshake when `tls` is given (within the handshake
    /// timeout, holding the connection's slot), else passes the connection
    /// on as it is.
    pub async fn secure(self, tls: Option<TlsAcceptor>) -> io::Result<Guarded<Conn>> {
        let Guarded {
            inner,
            slot,
            gauge,
            protocol,
            limits,
            scan,
            handshaking,
            deadline,
            metrics,
            port,
        } = self;
        let inner = match tls {
            None => Conn::Plain(inner),
            Some(acceptor) => {
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(inner)).await {
                    Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        metrics.tls_failures.with_label_values(&[port]).inc();
                        tracing::debug!(port, error = %e, "TLS handshake failed");
                        return Err(e);
                    }
                    Err(_) => {
                        let why = reason(true);
                        metrics.timed_out.with_label_values(&[port, why]).inc();
                        return Err(io::Error::new(io::ErrorKind::TimedOut, why));
                    }
                }
            }
        };
        Ok(Guarded {
            inner,
            slot,
            gauge,
            protocol,
            limits,
            scan,
            handshaking,
            deadline,
            metrics,
            port,
        })
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Conn::Tls(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_write(cx, b),
            Conn::Tls(t) => Pin::new(t).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Conn::Tls(t) => Pin::new(t).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(t) => t.is_write_vectored(),
            Conn::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_flush(cx),
            Conn::Tls(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Conn::Tls(t) => Pin::new(t).poll_shutdown(cx),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.observe(new);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let why = reason(this.handshaking);
                    this.metrics
                        .timed_out
                        .with_label_values(&[this.port, why])
                        .inc();
                    tracing::debug!(port = this.port, reason = why, "closing a connection");
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, len: usize) -> Vec<u8> {
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            1,
        ];
        f.resize(FRAME_HEADER_BYTES + len, 0xAB);
        f
    }

    #[test]
    fn only_headers_and_data_frames_are_requests_even_split_anywhere() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let settings = frame(0x4, 12);
        let ping = frame(0x6, 8);
        bytes.extend(&settings);
        bytes.extend(&ping);
        let quiet = bytes.len();
        bytes.extend(frame(FRAME_HEADERS, 30));
        for split in 1..bytes.len() {
            let mut s = FrameScan::new();
            let mut seen = Vec::new();
            for chunk in bytes.chunks(split) {
                seen.push(s.feed(chunk));
            }
            assert!(seen.iter().any(|&r| r), "split {split}");
            let mut s = FrameScan::new();
            assert!(!bytes[..quiet].chunks(split).any(|c| s.feed(c)));
            assert!(s.preface_done());
        }
    }
}
