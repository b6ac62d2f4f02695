//! The shared state of a running server: the consistency engine, the log,
//! and each streaming client's outbox, behind one lock. Every RPC and the
//! flush scheduler go through here; the engine decides, the hub carries the
//! decisions out (log appends, Updates on streams, ends of streams).

use super::clock;
use super::convert;
use super::outbox::{FanoutLead, FlushTrack, Outbox, UpdateStream};
use crate::consistency::{
    ClientId, Decision, DropReason, Engine, Event, Micros, Submission, Verdict,
};
use crate::log::Log;
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tonic::Status;

struct Inner {
    engine: Engine,
    /// Outboxes of clients with an open stream.
    outboxes: HashMap<ClientId, Arc<Outbox>>,
    /// Set once shutdown began: no new clients or streams.
    draining: bool,
}

pub struct Hub {
    inner: Mutex<Inner>,
    /// Wakes the flush scheduler when the engine's next deadline moved earlier.
    wake: Notify,
    log: Arc<dyn Log>,
    /// Byte limit of each client's outbound queue.
    max_outbound_bytes: usize,
    /// How long recent flushes took to reach all their clients; flushes
    /// start that much before their deadline.
    fanout: Arc<FanoutLead>,
}

/// The public handle of a client: derived from its public id, safe to log and
/// show (unlike the capability id).
pub fn handle(public_id: u64) -> String {
    format!("user-{:08x}", public_id as u32)
}

/// A capability id as it may appear in logs: enough to correlate, not to use.
pub fn redacted(id: ClientId) -> String {
    format!("{:04x}…", (id as u64) >> 48)
}

impl Hub {
    pub fn new(engine: Engine, log: Arc<dyn Log>, max_outbound_bytes: usize) -> Arc<Self> {
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                engine,
                outboxes: HashMap::new(),
                draining: false,
            }),
            wake: Notify::new(),
            log,
            max_outbound_bytes,
            fanout: Arc::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The engine's invariants are restored before any call returns; a
        // panic in one RPC must not take the whole server down with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the engine, waking the scheduler if a deadline moved up.
    fn with_engine<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.lock();
        let before = g.engine.next_wake();
        let out = f(&mut g);
        if g.engine.next_wake() < before {
            self.wake.notify_one();
        }
        out
    }

    /// Reads the engine (for the admin API and tests).
    pub fn inspect<T>(&self, f: impl FnOnce(&Engine) -> T) -> T {
        f(&self.lock().engine)
    }

    /// Changes the engine's settings through `f` (bounds at runtime).
    pub fn reconfigure<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        self.with_engine(|g| f(&mut g.engine))
    }

    /// `Connect`: a fresh random capability id and public id.
    pub fn connect(&self, name: Option<String>) -> Result<(ClientId, String, Micros), Status> {
        let mut rng = rand::rng();
        let public_id: u64 = rng.random();
        let name = name.unwrap_or_else(|| handle(public_id));
        loop {
            let id = (rng.random::<u64>() >> 1) as i64;
            if id == 0 {
                continue;
            }
            let now = clock::now();
            let ok = self.with_engine(|g| {
                if g.draining {
                    return Err(Status::unavailable("server is shutting down"));
                }
                Ok(g.engine.connect(id, public_id, name.as_str().into(), now))
            })?;
            if ok {
                tracing::info!(client = %handle(public_id), %name, "client connected");
                return Ok((id, name, now));
            }
        }
    }

    /// `ReceiveUpdates`: opens the stream with its first Update queued.
    pub fn start_stream(self: &Arc<Self>, id: ClientId) -> Result<UpdateStream, Status> {
        let now = clock::now();
        let outbox = Outbox::new(self.max_outbound_bytes);
        self.with_engine(|g| {
            if g.draining {
                return Err(Status::unavailable("server is shutting down"));
            }
            let batch = g.engine.start_stream(id, now).map_err(|e| match e {
                crate::consistency::engine::StreamError::NotFound => {
                    Status::not_found("unknown client id")
                }
                crate::consistency::engine::StreamError::AlreadyStreaming => {
                    Status::already_exists("this client already has an update stream")
                }
            })?;
            outbox.push(convert::encoded_update(&batch), None);
            g.outboxes.insert(id, outbox.clone());
            Ok(())
        })?;
        let hub = Arc::downgrade(self);
        let on_drop = Box::new(move || {
            if let Some(hub) = hub.upgrade() {
                hub.stream_closed(id);
            }
        });
        Ok(UpdateStream::new(outbox, on_drop))
    }

    /// The stream of `id` ended (client gone, or we ended it).
    fn stream_closed(&self, id: ClientId) {
        let mut g = self.lock();
        g.outboxes.remove(&id);
        let public = g.engine.client(id).map(|c| c.public_id);
        if g.engine.remove(id)
            && let Some(p) = public
        {
            tracing::info!(client = %handle(p), reason = DropReason::StreamClosed.as_str(), "client left");
        }
    }

    /// `Acknowlegde`.
    pub fn acknowledge(&self, id: ClientId, count: i64) -> Result<Micros, Status> {
        use crate::consistency::engine::AckError;
        let now = clock::now();
        self.with_engine(|g| g.engine.acknowledge(id, count, now))
            .map_err(|e| match e {
                AckError::NotFound => Status::not_found("unknown client id"),
                AckError::Negative | AckError::AboveSent { .. } => {
                    Status::invalid_argument(e.to_string())
                }
            })?;
        Ok(now)
    }

    /// `SendMessage`: decide, and append what was committed to the log.
    pub fn submit(&self, sub: Submission) -> Decision {
        let now = clock::now();
        self.with_engine(|g| {
            let (mut decision, entry) = g.engine.submit(sub, now);
            if let Some(e) = entry
                && let Err(err) = self.log.append(&[&e])
            {
                // The engine already made the entry visible; the log is the
                // part that failed, so the writer must not be told OK.
                tracing::error!(seq = e.seq, error = %err, "log append failed");
                decision.verdict = Verdict::Rejected {
                    reason: crate::consistency::Rejection::Internal,
                    at: now,
                };
                return Err(decision);
            }
            Ok(decision)
        })
        .unwrap_or_else(|d| d)
    }

    /// Runs the engine's due work and carries out its events. Returns when
    /// it next has work.
    pub fn tick(&self) -> Micros {
        let now = clock::now();
        let mut g = self.lock();
        g.engine.set_flush_lead(self.fanout.get());
        let events = g.engine.poll(now);
        self.deliver(&mut g, events);
        g.engine.next_wake()
    }

    fn deliver(&self, g: &mut Inner, events: Vec<Event>) {
        // Clients at the same cursor share a batch: encode it once and share
        // the bytes (a reference count per client, not a copy).
        let mut encoded: HashMap<*const (), bytes::Bytes> = HashMap::new();
        let mut overflow = Vec::new();
        // Time this flush until its last Update is taken by the transport.
        let updates = events
            .iter()
            .filter(
                |e| matches!(e, Event::Update { client, .. } if g.outboxes.contains_key(client)),
            )
            .count();
        let track = (updates > 0).then(|| FlushTrack::new(updates, self.fanout.clone()));
        for ev in events {
            match ev {
                Event::Update { client, batch } => {
                    let Some(outbox) = g.outboxes.get(&client) else {
                        continue;
                    };
                    let key = Arc::as_ptr(&batch.entries) as *const ();
                    let update = encoded
                        .entry(key)
                        .or_insert_with(|| convert::encoded_update(&batch))
                        .clone();
                    if !outbox.push(update, track.clone()) {
                        overflow.push(client);
                    }
                }
                Event::Dropped { client, reason } => {
                    if let Some(outbox) = g.outboxes.remove(&client) {
                        outbox.close(drop_status(reason));
                    }
                    tracing::info!(client = %redacted(client), reason = reason.as_str(), "client dropped");
                }
            }
        }
        for client in overflow {
            g.engine.remove(client);
            if let Some(outbox) = g.outboxes.remove(&client) {
                outbox.close(drop_status(DropReason::SlowConsumer));
            }
            tracing::warn!(client = %redacted(client), "client dropped: outbound buffer full");
        }
    }

    /// Waits until the scheduler should tick again.
    pub async fn wait(&self, until: Micros) {
        tokio::select! {
            _ = tokio::time::sleep(clock::until(until)) => {}
            _ = self.wake.notified() => {}
        }
    }

    /// Shutdown: refuse new clients, flush every pending message, and end
    /// every stream normally once its queue is sent.
    pub fn drain(&self) {
        let now = clock::now();
        let mut g = self.lock();
        g.draining = true;
        let events = g.engine.flush_all(now);
        self.deliver(&mut g, events);
        for outbox in g.outboxes.values() {
            outbox.finish();
        }
    }
}

fn drop_status(reason: DropReason) -> Status {
    match reason {
        DropReason::AckTimeout => Status::unavailable("acknowledgement timeout"),
        DropReason::NeverStreamed => Status::unavailable("ReceiveUpdates not started in time"),
        DropReason::SlowConsumer => {
            Status::resource_exhausted("outbound buffer full: the client stopped reading")
        }
        DropReason::StreamClosed | DropReason::Shutdown => {
            Status::unavailable("server is shutting down")
        }
    }
}
