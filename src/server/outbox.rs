//! A client's outbound queue of Updates and the stream tonic reads it from.
//!
//! The queue holds Updates already encoded: the hub encodes a batch once and
//! every client that gets the same batch shares those bytes (a reference
//! count, not a copy). The flush scheduler pushes; the gRPC stream pops. The queue is bounded in
//! bytes: a client that stops reading is cut off with `RESOURCE_EXHAUSTED`
//! and its queue freed, instead of being held in memory.

use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::Status;

#[derive(Default)]
struct State {
    /// Encoded `Update` messages, oldest first, each with the flush it
    /// belongs to (if that flush is being timed).
    queue: VecDeque<(Bytes, Option<Arc<FlushTrack>>)>,
    /// Encoded size of `queue`.
    bytes: usize,
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

    /// Queues an encoded Update. Returns false if the queue is now over its
    /// limit (the caller then drops the client).
    pub fn push(&self, update: Bytes, track: Option<Arc<FlushTrack>>) -> bool {
        let mut s = self.lock();
        if s.end.is_some() {
            return true;
        }
        s.bytes += update.len();
        s.queue.push_back((update, track));
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        s.bytes <= self.limit
    }

    /// Ends the stream at once with `status`; queued Updates are discarded.
    pub fn close(&self, status: Status) {
        let mut s = self.lock();
        s.queue.clear();
        s.bytes = 0;
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
        if let Some((u, track)) = s.queue.pop_front() {
            s.bytes -= u.len();
            if let Some(t) = track {
                t.done_one();
            }
            return Poll::Ready(Some(Ok(u)));
        }
        if s.end.is_some() {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// How long the recent flushes took to reach all their clients: the time
/// from the scheduler's tick until the transport took the last of the
/// flush's Updates. A decaying maximum: a big flush raises it at once,
/// smaller ones let it fall by an eighth each.
#[derive(Debug, Default)]
pub struct FanoutLead {
    /// The current estimate, in microseconds.
    micros: AtomicU64,
}

/// Longest fan-out time taken into account.
const MAX_FANOUT: Duration = Duration::from_secs(1);

impl FanoutLead {
    pub fn get(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    fn observe(&self, took: Duration) {
        let took = took.min(MAX_FANOUT).as_micros() as u64;
        let _ = self
            .micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(took.max(old - old / 8))
            });
    }
}

/// One flush being timed: done when every Update of it was taken.
#[derive(Debug)]
pub struct FlushTrack {
    /// When the flush was made.
    started: Instant,
    /// Its Updates not yet taken by the transport.
    remaining: AtomicUsize,
    /// Where the time it took goes.
    lead: Arc<FanoutLead>,
}

impl FlushTrack {
    /// Times a flush of `updates` Updates starting now.
    pub fn new(updates: usize, lead: Arc<FanoutLead>) -> Arc<Self> {
        Arc::new(FlushTrack {
            started: Instant::now(),
            remaining: AtomicUsize::new(updates),
            lead,
        })
    }

    fn done_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.lead.observe(self.started.elapsed());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_is_timed_when_its_last_update_is_taken() {
        let lead = Arc::new(FanoutLead::default());
        let track = FlushTrack::new(2, lead.clone());
        let (a, b) = (Outbox::new(1 << 20), Outbox::new(1 << 20));
        assert!(a.push(Bytes::from_static(b"x"), Some(track.clone())));
        assert!(b.push(Bytes::from_static(b"y"), Some(track)));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(a.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert_eq!(lead.get(), Duration::ZERO, "one Update still queued");
        assert!(matches!(b.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        let took = lead.get();
        assert!(took >= Duration::from_millis(5), "{took:?}");
        // Smaller flushes let the estimate decay, a bigger one raises it.
        lead.observe(Duration::ZERO);
        assert_eq!(
            lead.get().as_micros(),
            took.as_micros() - took.as_micros() / 8
        );
        lead.observe(Duration::from_secs(5));
        assert_eq!(lead.get(), MAX_FANOUT);
    }
}
