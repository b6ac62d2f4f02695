//! The shared state of a running server: the consistency engine, the queue
//! to the log writer, and each streaming client's outbox, behind one lock.
//! Every RPC, the flush scheduler and the writer go through here; the engine
//! decides, the hub carries the decisions out (log appends, Updates on
//! streams, ends of streams).
//!
//! Durability before visibility: an accepted message is queued for the
//! group-commit writer (`super::writer`) under the lock, in seq order. The
//! writer stores a batch without the lock, then reports it here
//! ([`Hub::batch_stored`]): the engine marks it durable (only then can it be
//! delivered) and the waiting `SendMessage` calls get their OK. If storing
//! fails ([`Hub::batch_failed`]), every pending message is discarded and its
//! sender gets `INTERNAL_ERROR`.

use super::convert;
use super::error::HubError;
use super::grants::{self, Grants};
use super::outbox::{Outbox, UpdateStream};
use super::signals::{Signals, WRITE_AGE_UNIT};
use crate::access::ThreadAccess;
use crate::clock::Clock;
use crate::consistency::limits::Limit;
use crate::consistency::policy::{BoundsControl, Ceiling, Pinned, Scale};
use crate::consistency::{
    AckInfo, Batch, ClientId, Decision, DropReason, Engine, Entry, Event, Micros, Rejection, Seq,
    Submission, Verdict,
};
use crate::consistency::{Bounds, BoundsTable};
use crate::log::Log;
use crate::telemetry::metrics::{Metrics, TOP_LAGGARDS};
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Duration;
use tokio::sync::{Notify, oneshot, watch};

/// How late the flush scheduler's poll may be before a request that finds
/// it overdue runs it instead. The thread usually wakes within 1.6 ms of its
/// deadline (its timer ticks in milliseconds); on the 2-core benchmark
/// machine at 1,000 clients, 190-246 polls a run were more than 3.2 ms late,
/// and the few more than 12.8 ms late broke 100 ms bounds (docs/benchmarks.md).
const TAKE_OVER_AFTER: Duration = Duration::from_millis(3);

/// Where accepted messages go to become durable.
pub enum Sink {
    /// Appended at once, under the lock (the in-memory log): a message is
    /// durable (as durable as memory is) when `submit` returns.
    Immediate(Box<dyn Log>),
    /// Queued for the group-commit writer thread (`super::writer`).
    Writer,
    /// Handed to a log shared by several nodes (`super::cluster`), which
    /// assigns the seq and commit time; the engine applies the commit when
    /// the log delivers it back.
    Shared(Arc<dyn Committer>),
}

/// Where a message went in a shared log: its seq and commit time, or why
/// not: a bound decided again before publishing (`Rejection::Order`, ...),
/// or `Rejection::Internal` (or the sender dropped) if it could not be
/// committed in time.
pub type Committed = oneshot::Receiver<Result<(Seq, Micros), Rejection>>;

/// A log shared by several nodes that commits admitted messages.
pub trait Committer: Send + Sync + 'static {
    /// Starts committing `entry` (its seq and commit time are the engine's
    /// provisional ones), written by message `number` of local client
    /// `client`. Called under the hub lock: must not block or call the hub.
    /// Also returns a flag set to true once no later publish can commit
    /// ahead of this one (see [`Submitted::stored`]).
    fn propose(&self, entry: Arc<Entry>, origin: Origin) -> (Committed, watch::Receiver<bool>);
}

/// Who wrote a proposed message, and the timestamp it carried (a resend of
/// the same message carries the same).
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    pub client: ClientId,
    /// Its `numMessagesSent`.
    pub number: i64,
    pub timestamp: Micros,
    /// The order error the engine admitted it with (against this node's
    /// view when it was admitted, at head `entry.seq - 1`).
    pub order_error: u64,
}

/// Tells a waiting `SendMessage` whether its message was stored: `true`
/// once durable, `false` (or the sender dropped) if storing failed.
pub type Outcome = oneshot::Receiver<bool>;

/// The answer to a `SendMessage`: the engine's decision, and for an accepted
/// message that is not durable yet, the outcome to wait for before the OK
/// may be sent.
pub struct Submitted {
    /// What the engine decided (an OK here is not final while `durable` is
    /// `Some`).
    pub decision: Decision,
    /// `Some` while the message (or, for a retry, its original) is pending.
    pub durable: Option<Outcome>,
    /// `Some` while a shared log commits the message (`Sink::Shared`): the
    /// OK carries the seq and commit time it answers.
    pub committed: Option<Committed>,
    /// `Some` while a shared log commits the message: true once no message
    /// admitted later can commit ahead of it (it is stored, or it is
    /// finished without a commit). A shared log publishes threads in
    /// parallel, so a `SendMessages` stream admits its next message to
    /// another thread only then, to commit its messages in input order.
    pub stored: Option<watch::Receiver<bool>>,
}

/// Accepted messages waiting for the writer, in seq order.
#[derive(Default)]
struct Queue {
    /// The entries, oldest first; they continue the log in seq order.
    entries: Vec<Arc<Entry>>,
    /// One outcome sender per entry, same order: its `SendMessage` waits.
    waiters: Vec<oneshot::Sender<bool>>,
}

/// What [`Hub::take_batch`] gives the writer.
pub enum Taken {
    /// Entries to store (in seq order) and their waiters.
    Batch(Vec<Arc<Entry>>, Vec<oneshot::Sender<bool>>),
    /// Nothing arrived within the timeout.
    Idle,
    /// Shutdown and nothing left to store: the writer exits.
    Stop,
}

struct Inner {
    engine: Engine,
    /// Outboxes of clients with an open stream.
    outboxes: HashMap<ClientId, Arc<Outbox>>,
    /// Set once shutdown began: no new clients or streams.
    draining: bool,
    /// Set while the other nodes of a cluster do not count this node's
    /// clients (its acknowledgement reports do not reach them): no streams.
    excluded: bool,
    /// How accepted messages are stored.
    sink: Sink,
    /// Accepted messages the writer has not taken yet (`Sink::Writer`).
    queue: Queue,
    /// Retries of messages that are still pending: `(original seq, waiter)`;
    /// answered when that seq is stored or discarded.
    retry_waiters: Vec<(Seq, oneshot::Sender<bool>)>,
    /// True while the writer sleeps on `Hub::work`: a submit must wake it
    /// (skipping the wake-up syscall while it is busy).
    writer_idle: bool,
    /// Set when the server has stopped taking RPCs: the writer stores what
    /// is queued and exits.
    writer_stop: bool,
    /// The last [`CHANGE_HISTORY`] runtime bound changes.
    changes: std::collections::VecDeque<ChangeRecord>,
    /// The operator's bounds and the policies' scale; the engine's bounds
    /// are always `control.effective()`.
    control: BoundsControl,
}

/// The shared state of a running server.
///
/// **Lock rules.** `inner` is the one global lock: every RPC takes it once,
/// briefly. Under it happen only engine calls and moves of what they return
/// (queue pushes, map updates, Arc clones); protobuf encoding, outbox pushes,
/// metrics and log lines happen after it is dropped (the one exception:
/// a new stream's first Updates are queued under it, so that no flush can
/// overtake them). `delivery` serialises the flushes (the scheduler's tick,
/// a request taking over a late one, and the final drain) so that the
/// Updates a client gets are pushed in the order the engine counted them; it
/// is taken before `inner`, never while holding it (a request taking over
/// only tries it). No `.await` under either.
///
/// **Poisoning.** A panic under `inner` would leave the engine possibly
/// half-updated. The engine validates every input instead of panicking, so
/// such a panic is a bug; we log nothing extra and keep serving with the
/// state as it is (the panic itself is reported by the RPC task that died),
/// because refusing every later RPC would take down every client for the
/// sake of one. The same holds for `delivery`, which guards no data.
pub struct Hub {
    inner: Mutex<Inner>,
    /// Held while a flush's Updates are pushed (see the lock rules).
    delivery: Mutex<()>,
    /// The engine's next wake time as last seen under `inner`, so that a
    /// request can tell without the lock that the scheduler is late (see
    /// [`Hub::take_over_late_poll`]). It may be stale for an instant; the
    /// worst that does is one poll with nothing due.
    next_wake: AtomicI64,
    /// The server's clock.
    clock: Clock,
    /// Wakes the flush scheduler when the engine's next deadline moved earlier.
    wake: Notify,
    /// Wakes the writer thread when work arrives (waits on `inner`).
    work: Condvar,
    /// Notified whenever a batch was stored or failed: shutdown waits on it
    /// until nothing is pending.
    settled: Notify,
    /// Byte limit of each client's outbound queue.
    max_outbound_bytes: usize,
    /// Where every count and latency is recorded.
    metrics: Metrics,
    /// The load policy's signals since it last took them (their own locks:
    /// written after the hub lock is dropped).
    signals: Signals,
    /// Thread permissions of the clients whose token restricts them.
    grants: Grants,
    /// Told of every operator's bound change, under the hub lock, when the
    /// bounds are shared with other nodes (`--storage nats`).
    share_changes: std::sync::OnceLock<ShareChanges>,
}

/// Hears an operator's applied bound change: its target, who asked, and the
/// operator's bounds and pins after it. Called under the hub lock: must not
/// block or call the hub.
pub type ShareChanges = Box<dyn Fn(&BoundsTarget, &str, &BoundsControl) + Send + Sync>;

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
    pub fn new(
        engine: Engine,
        sink: Sink,
        max_outbound_bytes: usize,
        metrics: Metrics,
        clock: Clock,
    ) -> Arc<Self> {
        let engine_bounds = engine.settings().bounds.clone();
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                engine,
                outboxes: HashMap::new(),
                draining: false,
                excluded: false,
                sink,
                queue: Queue::default(),
                retry_waiters: Vec::new(),
                writer_idle: false,
                writer_stop: false,
                changes: std::collections::VecDeque::new(),
                control: BoundsControl::new(engine_bounds),
            }),
            delivery: Mutex::new(()),
            next_wake: AtomicI64::new(i64::MAX),
            clock,
            wake: Notify::new(),
            work: Condvar::new(),
            settled: Notify::new(),
            max_outbound_bytes,
            metrics,
            signals: Signals::default(),
            grants: Grants::default(),
            share_changes: std::sync::OnceLock::new(),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Now, on the server's clock.
    pub fn now(&self) -> Micros {
        self.clock.now()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Poisoning is ignored on purpose: see the lock rules on `Hub`.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the engine, waking the scheduler if a deadline moved up.
    fn with_engine<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.lock();
        let before = g.engine.next_wake();
        let out = f(&mut g);
        let next = g.engine.next_wake();
        self.next_wake.store(next.0, Ordering::Relaxed);
        if next < before {
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
    pub fn connect(&self, name: Option<String>) -> Result<(ClientId, String, Micros), HubError> {
        self.connect_with(name, None)
    }

    /// `Connect` of a client whose token grants `access` (`None`: every
    /// thread).
    pub fn connect_with(
        &self,
        name: Option<String>,
        access: Option<Arc<ThreadAccess>>,
    ) -> Result<(ClientId, String, Micros), HubError> {
        let (id, name, now) = self.connect_new(name)?;
        if let Some(access) = access
            && self.grants.insert(id, access)
        {
            self.prune_grants();
        }
        Ok((id, name, now))
    }

    /// Forgets the permissions of clients the engine removed without a
    /// stream to close (they never streamed): memory stays proportional to
    /// the clients connected. Lock order: `inner`, then the grants.
    fn prune_grants(&self) {
        let g = self.lock();
        self.grants.retain(|id| g.engine.client(id).is_some());
    }

    /// Refuses a message to a thread the sender's token may not write.
    pub fn check_write(&self, sub: &Submission) -> Result<(), HubError> {
        let Some(id) = sub.ack.and_then(|a| a.client) else {
            return Ok(());
        };
        match self.grants.get(id) {
            Some(access) if !access.may_write(&sub.thread) => {
                let number = sub.ack.map_or(0, |a| a.messages_sent);
                self.with_engine(|g| g.engine.note_refused(id, number));
                let thread = grants::quoted(&sub.thread);
                tracing::warn!(target: "audit", client = %redacted(id), %thread, "write refused: the token does not grant this thread");
                Err(HubError::WriteForbidden(thread))
            }
            _ => Ok(()),
        }
    }

    fn connect_new(&self, name: Option<String>) -> Result<(ClientId, String, Micros), HubError> {
        let mut rng = rand::rng();
        let public_id: u64 = rng.random();
        let name = name.unwrap_or_else(|| handle(public_id));
        loop {
            let id = (rng.random::<u64>() >> 1) as i64;
            if id == 0 {
                continue;
            }
            let now = self.now();
            let ok = self.with_engine(|g| {
                if g.draining {
                    return Err(HubError::ShuttingDown);
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
    pub fn start_stream(self: &Arc<Self>, id: ClientId) -> Result<UpdateStream, HubError> {
        let now = self.now();
        let outbox = Outbox::new(self.max_outbound_bytes);
        let access = self.grants.get(id);
        self.with_engine(|g| {
            if g.draining {
                return Err(HubError::ShuttingDown);
            }
            if g.excluded {
                return Err(HubError::Unreported);
            }
            let batches = g.engine.start_stream(id, now)?;
            // The history may be split into several Updates; all of them
            // begin the stream, so none counts as an unread backlog.
            for batch in &batches {
                let own = access.as_ref().and_then(|a| grants::readable(batch, a));
                outbox.push(
                    convert::encoded_update(own.as_ref().unwrap_or(batch)),
                    false,
                );
            }
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
        let removed = g.engine.remove(id);
        drop(g);
        self.grants.remove(id);
        if removed && let Some(p) = public {
            self.count_drop(DropReason::StreamClosed);
            tracing::info!(client = %handle(p), reason = DropReason::StreamClosed.as_str(), "client left");
        }
    }

    /// `Acknowlegde`.
    pub fn acknowledge(&self, id: ClientId, count: i64) -> Result<Micros, HubError> {
        let now = self.now();
        let info = self.with_engine(|g| g.engine.acknowledge(id, count, now))?;
        // Standalone acknowledgements are most of them: count them in the
        // acknowledgement-lag histograms like those inside a SentMessage.
        self.observe_ack(info);
        self.take_over_late_poll(now);
        Ok(now)
    }

    /// `SendMessage`: decide, and hand what was committed to the log. No
    /// disk I/O happens here: with the writer sink the entry is only queued.
    pub fn submit(&self, sub: Submission) -> Submitted {
        let now = self.now();
        let thread = sub.thread.clone();
        let origin = Origin {
            client: sub.ack.and_then(|a| a.client).unwrap_or(0),
            number: sub.ack.map_or(0, |a| a.messages_sent),
            timestamp: sub.timestamp.unwrap_or(now),
            order_error: 0,
        };
        let (submitted, tier) = self.with_engine(|g| {
            let (mut decision, entry) = g.engine.submit(sub, now);
            let tier = decision
                .order_error
                .map(|_| g.engine.settings().bounds.tier(&thread));
            let (durable, committed, stored) = match entry {
                // A retry whose original is still pending waits for it too:
                // its OK must not come before the original is stored.
                None => match decision.verdict {
                    Verdict::Accepted {
                        seq, retry: true, ..
                    } if seq > g.engine.durable() => {
                        let (tx, rx) = oneshot::channel();
                        g.retry_waiters.push((seq, tx));
                        (Some(rx), None, None)
                    }
                    _ => (None, None, None),
                },
                Some(e) => self.hand_over(g, e, &mut decision, origin, now),
            };
            (
                Submitted {
                    decision,
                    durable,
                    committed,
                    stored,
                },
                tier,
            )
        });
        self.signals.count_write();
        if let Some(a) = submitted.decision.arrival {
            self.signals
                .write_age
                .push((a.share() * WRITE_AGE_UNIT) as i64);
        }
        self.count_decision(&submitted, tier, origin.client);
        self.take_over_late_poll(now);
        submitted
    }

    /// Hands a message `submit` committed to the sink: durable before
    /// visible, so its OK waits for the log (`Sink::Immediate` stores it
    /// here). Returns what the OK waits on.
    fn hand_over(
        &self,
        g: &mut Inner,
        e: Arc<Entry>,
        decision: &mut Decision,
        origin: Origin,
        now: Micros,
    ) -> (
        Option<Outcome>,
        Option<Committed>,
        Option<watch::Receiver<bool>>,
    ) {
        match &mut g.sink {
            Sink::Immediate(log) => {
                if let Err(err) = log.append(std::slice::from_ref(&e)) {
                    tracing::error!(seq = e.seq, error = %err.report(), "log append failed");
                    g.engine.discard_pending();
                    decision.verdict = Verdict::Rejected {
                        reason: Rejection::Internal,
                        at: now,
                    };
                } else {
                    g.engine.mark_durable(e.seq);
                }
                (None, None, None)
            }
            Sink::Writer => {
                let (tx, rx) = oneshot::channel();
                g.queue.entries.push(e);
                g.queue.waiters.push(tx);
                if g.writer_idle {
                    g.writer_idle = false;
                    self.work.notify_one();
                }
                (Some(rx), None, None)
            }
            Sink::Shared(log) => {
                // It enters the engine when the log delivers it.
                g.engine.discard_pending();
                let origin = Origin {
                    order_error: decision.order_error.unwrap_or(0),
                    ..origin
                };
                let (c, s) = log.propose(e, origin);
                (None, Some(c), Some(s))
            }
        }
    }

    /// Counts a decision of `submit` in the metrics (a pending one is
    /// counted when its batch is stored or fails).
    fn count_decision(&self, submitted: &Submitted, tier: Option<String>, client: ClientId) {
        let m = &self.metrics;
        let decision = &submitted.decision;
        match decision.verdict {
            // Final now (memory log); a pending one is counted when its batch
            // is stored or fails (`batch_stored`, `batch_failed`).
            Verdict::Accepted { retry: false, .. }
                if submitted.durable.is_none() && submitted.committed.is_none() =>
            {
                m.messages_accepted.inc()
            }
            Verdict::Accepted { .. } => {}
            Verdict::Rejected {
                reason: Rejection::Limited(limit),
                at,
            } => self.count_limit(limit, at, client),
            Verdict::Rejected { reason, .. } => m
                .messages_rejected
                .with_label_values(&[reason.reason()])
                .inc(),
        }
        if let (Some(e), Some(tier)) = (decision.order_error, tier) {
            m.order_error
                .with_label_values(&[tier.as_str()])
                .set(e as i64);
            m.order_error_observed.observe(e as f64);
        }
        self.observe_ack(decision.ack);
    }

    /// Counts (and logs, at most once a second) a message refused by a limit.
    fn count_limit(&self, limit: Limit, at: Micros, client: ClientId) {
        if let Some(unlogged) = self.metrics.limits.refused(limit.label(), at.0) {
            let client = redacted(client);
            tracing::warn!(%client, limit = limit.label(), %limit, unlogged, "message refused by a limit");
        }
    }

    fn observe_ack(&self, info: Option<AckInfo>) {
        if let Some(a) = info {
            self.metrics.ack_lag_messages.observe(a.lag_messages as f64);
            self.metrics
                .ack_lag_seconds
                .observe(a.round_trip_micros as f64 / 1e6);
        }
    }

    fn count_drop(&self, reason: DropReason) {
        self.metrics
            .clients_dropped
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Writer: waits (up to `timeout`, or for ever) for queued messages and
    /// takes them all, at most `max` (the rest stay for the next batch).
    pub fn take_batch(&self, max: usize, timeout: Option<Duration>) -> Taken {
        let mut g = self.lock();
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if !g.queue.entries.is_empty() {
                g.writer_idle = false;
                let n = g.queue.entries.len().min(max);
                let (entries, waiters) = if n == g.queue.entries.len() {
                    (
                        std::mem::take(&mut g.queue.entries),
                        std::mem::take(&mut g.queue.waiters),
                    )
                } else {
                    (
                        g.queue.entries.drain(..n).collect(),
                        g.queue.waiters.drain(..n).collect(),
                    )
                };
                return Taken::Batch(entries, waiters);
            }
            if g.writer_stop {
                return Taken::Stop;
            }
            g.writer_idle = true;
            g = match deadline {
                None => self.work.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        g.writer_idle = false;
                        return Taken::Idle;
                    }
                    self.work
                        .wait_timeout(g, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Writer: every entry up to `upto` is stored. They become visible, and
    /// the retries waiting on them are answered (the batch's own waiters are
    /// answered by the writer, after this).
    pub fn batch_stored(&self, upto: Seq) {
        let (waiters, stored) = self.with_engine(|g| {
            let before = g.engine.durable();
            g.engine.mark_durable(upto);
            let stored = g.engine.durable() - before;
            if g.retry_waiters.is_empty() {
                return (Vec::new(), stored);
            }
            let (done, waiting) = std::mem::take(&mut g.retry_waiters)
                .into_iter()
                .partition(|(seq, _)| *seq <= upto);
            g.retry_waiters = waiting;
            (done, stored)
        });
        self.metrics.messages_accepted.inc_by(stored);
        for (_, tx) in waiters {
            let _ = tx.send(true);
        }
        self.settled.notify_waiters();
        self.take_over_late_poll(self.now());
    }

    /// Writer: storing the batch it took failed. Every pending message (that
    /// batch, and all admitted after it) is discarded, and the waiters still
    /// queued (and the retries) are answered `INTERNAL_ERROR`; the writer
    /// answers its batch's own. Returns the number of messages discarded.
    pub fn batch_failed(&self) -> u64 {
        let (n, waiters) = self.with_engine(|g| {
            let n = g.engine.discard_pending();
            g.queue.entries.clear();
            let mut waiters = std::mem::take(&mut g.queue.waiters);
            waiters.extend(
                std::mem::take(&mut g.retry_waiters)
                    .into_iter()
                    .map(|(_, tx)| tx),
            );
            (n, waiters)
        });
        for tx in waiters {
            let _ = tx.send(false);
        }
        self.metrics
            .messages_rejected
            .with_label_values(&[Rejection::Internal.reason()])
            .inc_by(n);
        self.settled.notify_waiters();
        n
    }

    /// Shutdown: waits (up to `limit`) until nothing admitted so far is
    /// pending, so the final flush delivers it. Returns false on timeout.
    pub async fn wait_settled(&self, limit: Duration) -> bool {
        let wait = async {
            loop {
                let settled = self.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                if self.inspect(|e| e.pending()) == 0 {
                    return;
                }
                settled.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Shutdown: the server takes no more RPCs; the writer stores what is
    /// queued and exits.
    pub fn stop_writer(&self) {
        let mut g = self.lock();
        g.writer_stop = true;
        self.work.notify_all();
    }

    /// Runs the engine's due work and carries out its events. Returns when
    /// it next has work.
    pub fn tick(&self) -> Micros {
        let order = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        self.poll(order)
    }

    /// Runs the scheduler's poll on the calling thread if it is more than
    /// [`TAKE_OVER_AFTER`] overdue at `now` and no flush is under way.
    ///
    /// Called by the requests that come by most often (acknowledgements,
    /// writes, stored batches). The scheduler thread can be ready but kept
    /// off both cores for over 10 ms (a kernel that does not preempt its own
    /// code, a host that steals the vCPU); meanwhile these requests still
    /// run, so whichever thread gets a core first does the flush.
    fn take_over_late_poll(&self, now: Micros) {
        let next = self.next_wake.load(Ordering::Relaxed);
        // `i64::MIN` asks for a poll at once, not by a deadline.
        if next == i64::MIN || now.0.saturating_sub(next) < TAKE_OVER_AFTER.as_micros() as i64 {
            return;
        }
        let order = match self.delivery.try_lock() {
            Ok(order) => order,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        self.metrics.scheduler.polls_taken_over.inc();
        self.poll(order);
    }

    /// One poll and its deliveries, by the holder of `delivery`.
    fn poll(&self, _order: MutexGuard<'_, ()>) -> Micros {
        let now = self.now();
        let (work, next, delay, lead) = {
            let mut g = self.lock();
            let events = g.engine.poll(now);
            let next = g.engine.next_wake();
            self.next_wake.store(next.0, Ordering::Relaxed);
            (
                Deliveries::take(&mut g, events),
                next,
                g.engine.last_delay(),
                g.engine.flush_lead(),
            )
        };
        self.metrics.scheduler.lead.set(lead.as_secs_f64());
        self.deliver(work);
        if let Some(d) = delay {
            self.record_lateness(d.as_micros() as i64);
        }
        next
    }

    /// One scheduler run started `micros` after the deadline it was for.
    fn record_lateness(&self, micros: i64) {
        self.metrics.scheduler.lateness.observe(micros as f64 / 1e6);
        self.signals.lateness.push(micros);
    }

    /// The load policy's signals.
    pub(crate) fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Carries out a flush's events outside the hub lock (the caller holds
    /// `delivery`): encodes each batch once, pushes the Updates, closes the
    /// streams of dropped clients, records metrics and logs; then removes the
    /// clients whose outbox overflowed.
    fn deliver(&self, work: Deliveries) {
        // Clients at the same cursor share a batch: encode it once and share
        // the bytes (a reference count per client, not a copy).
        // A client whose token limits what it reads gets the batch without
        // the other threads' messages, encoded for it alone (its
        // permissions are keyed by their `Arc`, one per `Connect`).
        let mut encoded: HashMap<(*const (), *const ThreadAccess), bytes::Bytes> = HashMap::new();
        let mut overflow = Vec::new();
        let grants = self.grants.read();
        for (client, outbox, batch) in work.updates {
            self.observe_update(client, &batch);
            let access = grants.get(&client);
            let key = (
                Arc::as_ptr(&batch.entries) as *const (),
                access.map_or(std::ptr::null(), Arc::as_ptr),
            );
            let update = encoded
                .entry(key)
                .or_insert_with(|| {
                    let own = access.and_then(|a| grants::readable(&batch, a));
                    convert::encoded_update(own.as_ref().unwrap_or(&batch))
                })
                .clone();
            if !outbox.push(update, batch.part == 0) {
                overflow.push(client);
            }
        }
        drop(grants);
        for (client, outbox, reason) in work.dropped {
            self.grants.remove(client);
            self.count_drop(reason);
            if let Some(outbox) = outbox {
                outbox.close(HubError::Dropped(reason));
            }
            tracing::info!(client = %redacted(client), reason = reason.as_str(), "client dropped");
        }
        if overflow.is_empty() {
            return;
        }
        let closed: Vec<_> = {
            let mut g = self.lock();
            overflow
                .into_iter()
                .map(|client| {
                    g.engine.remove(client);
                    (client, g.outboxes.remove(&client))
                })
                .collect()
        };
        for (client, outbox) in closed {
            self.grants.remove(client);
            self.count_drop(DropReason::SlowConsumer);
            if let Some(outbox) = outbox {
                outbox.close(HubError::Dropped(DropReason::SlowConsumer));
            }
            tracing::warn!(client = %redacted(client), "client dropped: outbound buffer full");
        }
    }

    /// Counts one Update in the metrics, and logs a broken bound.
    fn observe_update(&self, client: ClientId, batch: &Batch) {
        let m = &self.metrics;
        m.updates_sent.inc();
        let n = batch.entries.len();
        m.update_messages.observe(n as f64);
        if let Some(oldest) = batch.entries.first() {
            m.messages_delivered.inc_by(n as u64);
            let latency = batch.current_time.0.saturating_sub(oldest.commit_time.0);
            m.delivery_latency.observe(latency as f64 / 1e6);
        }
        if batch.late > 0 {
            m.bound_violations
                .with_label_values(&["staleness"])
                .inc_by(batch.late);
            tracing::warn!(client = %redacted(client), late = batch.late, "messages delivered later than their staleness bound");
        }
        if batch.after_expiration {
            m.bound_violations.with_label_values(&["lease"]).inc();
            tracing::warn!(client = %redacted(client), "Update sent after the previous one expired");
        }
    }

    /// Waits until the scheduler should tick again.
    pub async fn wait(&self, until: Micros) {
        tokio::select! {
            _ = tokio::time::sleep(self.clock.until(until)) => {}
            _ = self.wake.notified() => {}
        }
    }

    /// Leaves this node out of a cluster (`true`), ending every stream with
    /// [`DropReason::Unreported`] and refusing new ones, or lets it back in.
    /// The other nodes no longer count its clients for the numerical bound,
    /// so they may commit past it for them; served by a node that counts
    /// them, they are counted again.
    pub fn set_excluded(&self, excluded: bool) {
        let _order = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        let work = {
            let mut g = self.lock();
            if g.excluded == excluded {
                return;
            }
            g.excluded = excluded;
            let streaming: Vec<ClientId> = if excluded {
                g.outboxes.keys().copied().collect()
            } else {
                Vec::new()
            };
            let mut work = Deliveries::default();
            for id in streaming {
                g.engine.remove(id);
                let outbox = g.outboxes.remove(&id);
                work.dropped.push((id, outbox, DropReason::Unreported));
            }
            work
        };
        self.deliver(work);
    }

    /// Shutdown: refuse new clients, flush every pending message, and end
    /// every stream normally once its queue is sent.
    pub fn drain(&self) {
        let _order = self.delivery.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.now();
        let (work, outboxes) = {
            let mut g = self.lock();
            g.draining = true;
            let events = g.engine.flush_all(now);
            let work = Deliveries::take(&mut g, events);
            (work, g.outboxes.values().cloned().collect::<Vec<_>>())
        };
        self.deliver(work);
        for outbox in outboxes {
            outbox.finish();
        }
    }
}

/// A flush's events with the outboxes they go to, taken under the hub lock
/// and carried out after it is dropped.
#[derive(Default)]
struct Deliveries {
    /// Updates for clients with an open stream, in the engine's order.
    updates: Vec<(ClientId, Arc<Outbox>, Batch)>,
    /// Clients the engine removed, with their outbox if they had a stream.
    dropped: Vec<(ClientId, Option<Arc<Outbox>>, DropReason)>,
}

impl Deliveries {
    /// Pairs each event with its outbox (an Arc clone, under the lock).
    fn take(g: &mut Inner, events: Vec<Event>) -> Deliveries {
        let mut work = Deliveries::default();
        for ev in events {
            match ev {
                Event::Update { client, batch } => {
                    if let Some(outbox) = g.outboxes.get(&client) {
                        work.updates.push((client, outbox.clone(), batch));
                    }
                }
                Event::Dropped { client, reason } => {
                    work.dropped
                        .push((client, g.outboxes.remove(&client), reason));
                }
            }
        }
        work
    }
}

/// One client as the admin API shows it (never its capability id).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientView {
    /// Public handle, derived from the public id.
    pub handle: String,
    pub name: String,
    /// Microseconds since the epoch.
    pub connected_since: i64,
    pub streaming: bool,
    pub updates_sent: u64,
    pub updates_acked: u64,
    /// Messages sent to it and not acknowledged.
    pub lag_messages: u64,
    /// Age of its oldest unacknowledged Update, in seconds (0 if none).
    pub lag_seconds: f64,
    /// Committed messages not yet sent to it.
    pub pending: u64,
    /// When its acknowledgement last advanced (microseconds since the epoch).
    pub last_ack: i64,
}

/// Totals for `/api/v1/stats` and the gauges refreshed at each scrape.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    pub clients_connected: usize,
    pub clients_active: usize,
    /// The last commit sequence number.
    pub head: u64,
    pub pending_messages: u64,
    pub ack_lag_messages_max: u64,
    pub ack_lag_seconds_max: f64,
    pub draining: bool,
}

impl Hub {
    /// Every connected client, laggiest first.
    pub fn clients(&self) -> Vec<ClientView> {
        let now = self.now();
        let g = self.lock();
        // Pending for a client = durable (deliverable) commits not yet sent
        // to it; commits still being stored are not deliverable yet.
        let head = g.engine.durable();
        let mut v: Vec<ClientView> = g
            .engine
            .clients()
            .map(|(_, c)| ClientView {
                handle: handle(c.public_id),
                name: c.name.to_string(),
                connected_since: c.connected_at.0,
                streaming: c.phase == crate::consistency::client::Phase::Streaming,
                updates_sent: c.updates_sent,
                updates_acked: c.acked,
                lag_messages: c.unacked_messages(),
                lag_seconds: c
                    .oldest_unacked_at()
                    .map_or(0.0, |t| now.since(t).as_secs_f64()),
                pending: if c.phase == crate::consistency::client::Phase::Streaming {
                    head - c.delivered
                } else {
                    0
                },
                last_ack: c.last_ack_at.0,
            })
            .collect();
        drop(g);
        v.sort_by(|a, b| {
            b.lag_messages
                .cmp(&a.lag_messages)
                .then(b.lag_seconds.total_cmp(&a.lag_seconds))
        });
        v
    }

    /// Refreshes the gauges that are read off the engine, and returns the
    /// totals. One pass under the lock copies numbers only; the top-K
    /// handles are formatted after it is dropped, for K clients, not all.
    pub fn refresh_gauges(&self) -> Snapshot {
        let now = self.now();
        let g = self.lock();
        let bounds = g.engine.settings().bounds.clone();
        let numerical = g.engine.numerical_errors();
        let head = g.engine.durable();
        self.metrics
            .limits
            .threads
            .set(g.engine.thread_count() as i64);
        let mut lags: Vec<(u64, f64, u64)> = Vec::new();
        let mut snap = Snapshot {
            clients_active: g.engine.streaming_clients(),
            // The visible end of the log: a commit still being stored may
            // yet fail, and the head must not go back.
            head,
            draining: g.draining,
            ..Snapshot::default()
        };
        for (_, c) in g.engine.clients() {
            let lag_seconds = c
                .oldest_unacked_at()
                .map_or(0.0, |t| now.since(t).as_secs_f64());
            let lag_messages = c.unacked_messages();
            snap.clients_connected += 1;
            if c.phase == crate::consistency::client::Phase::Streaming {
                snap.pending_messages += head - c.delivered;
            }
            snap.ack_lag_messages_max = snap.ack_lag_messages_max.max(lag_messages);
            snap.ack_lag_seconds_max = snap.ack_lag_seconds_max.max(lag_seconds);
            if lag_messages > 0 {
                lags.push((lag_messages, lag_seconds, c.public_id));
            }
        }
        drop(g);
        self.set_gauges(&snap, &bounds, numerical, lags);
        snap
    }

    /// Sets the scrape-time gauges from figures taken under the lock.
    fn set_gauges(
        &self,
        snap: &Snapshot,
        bounds: &crate::consistency::BoundsTable,
        numerical: Vec<(Arc<str>, u64)>,
        mut lags: Vec<(u64, f64, u64)>,
    ) {
        let m = &self.metrics;
        m.clients_connected.set(snap.clients_connected as i64);
        m.clients_active.set(snap.clients_active as i64);
        m.pending_messages.set(snap.pending_messages as i64);
        m.ack_lag_messages_max.set(snap.ack_lag_messages_max as i64);
        m.ack_lag_seconds_max.set(snap.ack_lag_seconds_max);
        let mut by_tier: HashMap<String, u64> = HashMap::new();
        for (thread, n) in numerical {
            let e = by_tier.entry(bounds.tier(&thread)).or_default();
            *e = (*e).max(n);
        }
        m.numerical_error.reset();
        m.numerical_error.with_label_values(&["default"]).set(0);
        for (tier, n) in by_tier {
            m.numerical_error
                .with_label_values(&[tier.as_str()])
                .set(n as i64);
        }
        m.bound.reset();
        let set_bounds = |tier: &str, b: crate::consistency::Bounds| {
            m.bound
                .with_label_values(&["staleness_seconds", tier])
                .set(b.staleness.as_secs_f64());
            m.bound
                .with_label_values(&["numerical", tier])
                .set(b.numerical as f64);
            m.bound
                .with_label_values(&["order", tier])
                .set(b.order as f64);
        };
        set_bounds("default", bounds.default_bounds());
        for (thread, _, b) in bounds.overrides() {
            set_bounds(&bounds.tier(thread), *b);
        }
        // Laggiest first, as `clients` orders them.
        lags.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)));
        m.client_lag.reset();
        for (lag, _, public_id) in lags.into_iter().take(TOP_LAGGARDS) {
            m.client_lag
                .with_label_values(&[handle(public_id).as_str()])
                .set(lag as i64);
        }
    }
}

/// What a runtime bound change targets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "scope", rename_all = "lowercase")]
pub enum BoundsTarget {
    /// The defaults of every thread without an override.
    Default,
    /// One thread's override.
    Thread { thread: String },
}

/// A runtime change to the bounds.
#[derive(Debug, Clone)]
pub enum BoundsChange {
    /// Change the given fields of the defaults.
    SetDefault(crate::consistency::BoundsOverride),
    /// Set (replace) a thread's override.
    SetThread(String, crate::consistency::BoundsOverride),
    /// Remove a thread's override.
    RemoveThread(String),
}

/// One applied change, as logged and listed by the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChangeRecord {
    /// Microseconds since the epoch.
    pub at: i64,
    /// Who asked (peer address, and whether a token was presented).
    pub who: String,
    #[serde(flatten)]
    pub target: BoundsTarget,
    /// Bounds in force for the target before (for a thread: its effective
    /// bounds), `None` if it had no override.
    pub old: Option<crate::consistency::Bounds>,
    /// Bounds in force after; `None` when an override was removed.
    pub new: Option<crate::consistency::Bounds>,
}

/// How many applied changes are kept for the admin API.
pub const CHANGE_HISTORY: usize = 100;

/// Why a bound change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Invalid(#[from] crate::consistency::bounds::BoundsError),
    #[error("thread {0:?} has no bounds of its own")]
    NoOverride(String),
    #[error("at most {0} threads may have bounds of their own")]
    TooManyOverrides(usize),
}

/// Most threads with their own bounds (keeps the metrics tiers bounded).
pub const MAX_OVERRIDES: usize = 1000;

/// Applies an operator's `change` to its table of bounds; returns what it
/// targets and the fields it sets (which policies then leave alone).
fn apply_change(
    table: &mut BoundsTable,
    change: &BoundsChange,
) -> Result<(BoundsTarget, Pinned), ChangeError> {
    Ok(match change {
        BoundsChange::SetDefault(o) => {
            table.set_default(o.apply(table.default_bounds()))?;
            (BoundsTarget::Default, Pinned::of(o))
        }
        BoundsChange::SetThread(thread, o) => {
            let had = table.overrides().any(|(t, _, _)| t == thread);
            if !had && table.overrides().count() >= MAX_OVERRIDES {
                return Err(ChangeError::TooManyOverrides(MAX_OVERRIDES));
            }
            table.set_thread(thread, *o)?;
            let target = BoundsTarget::Thread {
                thread: thread.clone(),
            };
            (target, Pinned::of(o))
        }
        BoundsChange::RemoveThread(thread) => {
            table
                .remove_thread(thread)
                .ok_or_else(|| ChangeError::NoOverride(thread.clone()))?;
            let target = BoundsTarget::Thread {
                thread: thread.clone(),
            };
            (target, Pinned::default())
        }
    })
}

/// Records an applied change in the recent history.
fn push_change(
    g: &mut Inner,
    now: Micros,
    who: &str,
    target: BoundsTarget,
    old: Option<Bounds>,
    new: Option<Bounds>,
) -> ChangeRecord {
    let record = ChangeRecord {
        at: now.0,
        who: who.to_owned(),
        target,
        old,
        new,
    };
    g.changes.push_back(record.clone());
    if g.changes.len() > CHANGE_HISTORY {
        g.changes.pop_front();
    }
    record
}

impl Hub {
    /// The one place a runtime bound change is applied: validated, applied
    /// to the engine (the next decision uses it; flush deadlines re-armed at
    /// once), logged with who/what/old/new, counted, and recorded.
    pub fn change_bounds(
        &self,
        change: BoundsChange,
        who: &str,
    ) -> Result<ChangeRecord, ChangeError> {
        self.change_bounds_shared(change, who, true)
    }

    /// Shares every later operator's change with `share` (once; later
    /// calls are ignored).
    pub fn share_bound_changes(&self, share: ShareChanges) {
        let _ = self.share_changes.set(share);
    }

    /// A change another node made: applied like [`Hub::change_bounds`],
    /// not shared again.
    pub fn change_bounds_from_peer(
        &self,
        change: BoundsChange,
        who: &str,
    ) -> Result<ChangeRecord, ChangeError> {
        self.change_bounds_shared(change, who, false)
    }

    fn change_bounds_shared(
        &self,
        change: BoundsChange,
        who: &str,
        share: bool,
    ) -> Result<ChangeRecord, ChangeError> {
        let now = self.now();
        let record = self.with_engine(|g| {
            let before = g.engine.settings().bounds.clone();
            let mut table = g.control.base().clone();
            let (target, pinned) = apply_change(&mut table, &change)?;
            let thread = match &target {
                BoundsTarget::Default => None,
                BoundsTarget::Thread { thread } => Some(thread.as_str()),
            };
            g.control.set_base(table, thread, pinned);
            let after = g.control.effective();
            let in_force = |t: &BoundsTable| match thread {
                None => t.default_bounds(),
                Some(thread) => t.for_thread(thread),
            };
            let old = Some(in_force(&before));
            let new = match change {
                BoundsChange::RemoveThread(_) => None,
                _ => Some(in_force(&after)),
            };
            g.engine.set_bounds(after);
            if share && let Some(f) = self.share_changes.get() {
                f(&target, who, &g.control);
            }
            Ok::<_, ChangeError>(push_change(g, now, who, target, old, new))
        })?;
        self.announce(&record);
        Ok(record)
    }

    /// A policy's new scale: applied like an operator's change (the engine
    /// gets the bounds in force, deadlines re-armed, logged, counted,
    /// recorded with `who = policy:<name>`). Returns the record if the
    /// bounds in force changed.
    pub fn apply_policy(&self, name: &str, scale: Scale, ceiling: Ceiling) -> Option<ChangeRecord> {
        let now = self.now();
        let who = format!("policy:{name}");
        let record = self.with_engine(|g| {
            let old = g.engine.settings().bounds.default_bounds();
            if !g.control.set_scale(scale, ceiling) {
                return None;
            }
            let after = g.control.effective();
            let new = after.default_bounds();
            g.engine.set_bounds(after);
            Some(push_change(
                g,
                now,
                &who,
                BoundsTarget::Default,
                Some(old),
                Some(new),
            ))
        })?;
        self.announce(&record);
        Some(record)
    }

    /// The size policy's new per-thread factors: applied like any bound
    /// change, one record per thread whose bounds in force changed, with
    /// `who = policy:<name>`.
    pub fn apply_thread_scale(
        &self,
        name: &str,
        scales: std::collections::BTreeMap<String, f64>,
    ) -> Vec<ChangeRecord> {
        let now = self.now();
        let who = format!("policy:{name}");
        let records = self.with_engine(|g| {
            let before = g.engine.settings().bounds.clone();
            let changed = g.control.set_thread_scale(scales);
            if changed.is_empty() {
                return Vec::new();
            }
            let after = g.control.effective();
            g.engine.set_bounds(after.clone());
            changed
                .into_iter()
                .map(|thread| {
                    let (old, new) = (before.for_thread(&thread), after.for_thread(&thread));
                    let target = BoundsTarget::Thread { thread };
                    push_change(g, now, &who, target, Some(old), Some(new))
                })
                .collect()
        });
        for r in &records {
            self.announce(r);
        }
        records
    }

    /// Lets policies move every bound again (the operator's explicit changes
    /// no longer pin their fields).
    pub fn clear_pins(&self, who: &str) {
        self.with_engine(|g| {
            g.control.clear_pins();
            let after = g.control.effective();
            g.engine.set_bounds(after);
        });
        tracing::info!(who, "bound pins cleared: policies may move every bound");
    }

    /// The operator's bounds, pins and the policies' scale.
    pub fn bounds_control(&self) -> BoundsControl {
        self.lock().control.clone()
    }

    /// Logs and counts an applied change.
    fn announce(&self, record: &ChangeRecord) {
        let scope = match record.target {
            BoundsTarget::Default => "default",
            BoundsTarget::Thread { .. } => "thread",
        };
        self.metrics.bound_changes.with_label_values(&[scope]).inc();
        tracing::info!(who = %record.who, target = ?record.target, old = ?record.old, new = ?record.new, "bounds changed");
    }

    /// The bounds in force and the recent changes, oldest first.
    pub fn bounds(&self) -> (crate::consistency::BoundsTable, Vec<ChangeRecord>) {
        let g = self.lock();
        (
            g.engine.settings().bounds.clone(),
            g.changes.iter().cloned().collect(),
        )
    }
}
