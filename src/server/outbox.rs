//! A client's outbound queue of Updates and the stream tonic reads it from.
//!
//! The queue holds Updates already encoded: the hub encodes a batch once and
//! every client that gets the same batch shares those bytes (a reference
//! count, not a copy). The flush scheduler pushes; the gRPC stream pops, as
//! fast as the transport takes them (HTTP/2 flow control: the queue holds
//! what the client's connection has not accepted yet).
//!
//! **Slow consumers.** A client is cut off with `RESOURCE_EXHAUSTED`, and its
//! queue freed, when a new flush arrives while more than the limit of
//! *earlier* Updates is still unread. The flush being queued does not count:
//! one burst may be larger than the limit (a client that reads promptly has
//! emptied its queue long before the next flush, which comes a staleness
//! period later), but a client that stops reading is cut off at its next
//! flush. So a client holds at most the limit plus one flush, and those
//! bytes are shared with every other client that got the same flush.

use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio_stream::Stream;
use tonic::Status;

#[derive(Default)]
struct State {
    /// Encoded `Update` messages, oldest first.
    queue: VecDeque<Bytes>,
    /// Encoded size of `queue`.
    bytes: usize,
    /// Of `bytes`, what was queued before the flush now being pushed (the
    /// unread backlog the slow-consumer rule judges).
    backlog: usize,
    /// `Some(Ok)`: end the stream after the queue drains; `Some(Err)`: end it
    /// now with this status.
    end: Option<Result<(), Status>>,
    /// The stream task waiting for an Update.
    waker: Option<Waker>,
}

/// The outbound side of one client's stream.
pub struct Outbox {
    /// Most encoded bytes queued before the client is cut off.
    limit: usize,
    state: Mutex<State>,
}

impl Outbox {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Outbox {
            limit,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an encoded Update; `new_flush` says it is the first (or only)
    /// Update of a flush, not a later part of one. Returns false if more
    /// than the limit of earlier Updates was still unread when this flush
    /// began (the caller then drops the client).
    pub fn push(&self, update: Bytes, new_flush: bool) -> bool {
        let mut s = self.lock();
        if s.end.is_some() {
            return true;
        }
        if new_flush {
            s.backlog = s.bytes;
        }
        s.bytes += update.len();
        s.queue.push_back(update);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        s.backlog <= self.limit
    }

    /// Ends the stream at once with `status`; queued Updates are discarded.
    pub fn close(&self, why: impl Into<Status>) {
        let status = why.into();
        let mut s = self.lock();
        s.queue.clear();
        s.bytes = 0;
        s.backlog = 0;
        s.end = Some(Err(status));
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    /// Ends the stream normally once the queued Updates are sent.
    pub fn finish(&self) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(Ok(()));
        }
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
        let mut s = self.lock();
        if matches!(s.end, Some(Err(_))) {
            let Some(Err(status)) = s.end.replace(Ok(())) else {
                unreachable!()
            };
            s.queue.clear();
            return Poll::Ready(Some(Err(status)));
        }
        if let Some(u) = s.queue.pop_front() {
            s.bytes -= u.len();
            s.backlog = s.backlog.min(s.bytes);
            return Poll::Ready(Some(Ok(u)));
        }
        if s.end.is_some() {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The response stream of `ReceiveUpdates`: encoded Updates. Dropping it (the client went
/// away, or the stream ended) runs `on_drop`, which unregisters the client.
pub struct UpdateStream {
    /// The queue this stream drains.
    outbox: Arc<Outbox>,
    /// Unregisters the client when the stream goes away.
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl UpdateStream {
    pub fn new(outbox: Arc<Outbox>, on_drop: Box<dyn FnOnce() + Send + Sync>) -> Self {
        UpdateStream {
            outbox,
            on_drop: Some(on_drop),
        }
    }
}

impl Stream for UpdateStream {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.outbox.poll_next(cx)
    }
}

impl Drop for UpdateStream {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}
