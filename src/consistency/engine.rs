//! The dyconit engine: one commit order, per-client delivery cursors, and the
//! admission and flush decisions. Pure: no I/O, no clock; every call takes the
//! current server time, and results come back as values for the I/O edge
//! (`crate::server`) to carry out.
//!
//! **Admitted versus visible.** [`Engine::submit`] decides and assigns the
//! next commit sequence number at once, so admission decisions and the commit
//! order are exact. The new entry is *pending*: it counts toward the order and
//! numerical errors of later writes, but no client is sent it (in an Update or
//! as history) until the I/O edge reports it durable with
//! [`Engine::mark_durable`]. If storing fails, [`Engine::discard_pending`]
//! forgets every pending entry and the next commit reuses the first discarded
//! sequence number, so the visible order never has gaps and nothing a client
//! saw is ever taken back.

mod cluster;
mod interest;
mod refused;

use super::Seq;
use super::admission::{AckInfo, Arrival, ClientFault, Decision, Rejection, Submission, Verdict};
use super::bounds::{BoundsTable, MAX_THREAD_ID_BYTES};
use super::client::{ClientState, Phase};
use super::conit::ConitLog;
use super::delay::SchedulerDelay;
pub use super::entry::{Entries, Entry};
use super::limits::{Lag, Limit, ThreadRegistry, is_laggard};
use super::parts::split;
use super::schedule::{FlushSchedule, GroupKey, multiset_add, multiset_remove, staleness_deadline};
use super::settings::{Settings, flush_spread, safety_margin};
use super::time::Micros;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub use super::schedule::{ClientId, spread_rank};
pub use cluster::ApplyError;

/// The contents of one Update for a client.
#[derive(Debug, Clone)]
pub struct Batch {
    pub current_time: Micros,
    pub expiration: Micros,
    /// Commits in order; shared by every client that gets the same batch.
    pub entries: Arc<[Arc<Entry>]>,
    /// Entries delivered later than their conit's staleness allowed.
    pub late: u64,
    /// Sent after the previous Update's expiration time (a broken lease).
    pub after_expiration: bool,
    /// Its place among the Updates of one flush (or of the history): 0 for
    /// the first, which begins the flush; see [`super::parts`].
    pub part: u32,
}

/// Why a client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Updates outstanding and no acknowledgement for `ack_timeout`.
    AckTimeout,
    /// Connected but did not start `ReceiveUpdates` within `ack_timeout`.
    NeverStreamed,
    /// Its outbound buffer grew past the limit: it stopped reading.
    SlowConsumer,
    /// The stream was closed by the client or the transport.
    StreamClosed,
    /// The server is shutting down.
    Shutdown,
    /// Far behind in some thread with an Update unacknowledged for longer
    /// than `ack_timeout` (see [`super::limits::is_laggard`]).
    Laggard,
    /// A cluster node's acknowledgement reports stopped reaching the other
    /// nodes, which then no longer count its clients.
    Unreported,
}

impl DropReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [DropReason; 7] = [
        DropReason::AckTimeout,
        DropReason::NeverStreamed,
        DropReason::SlowConsumer,
        DropReason::StreamClosed,
        DropReason::Shutdown,
        DropReason::Laggard,
        DropReason::Unreported,
    ];

    /// The reason label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::AckTimeout => "ack_timeout",
            DropReason::NeverStreamed => "never_streamed",
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::StreamClosed => "stream_closed",
            DropReason::Shutdown => "shutdown",
            DropReason::Laggard => "laggard",
            DropReason::Unreported => "unreported",
        }
    }
}

/// What a [`Engine::poll`] asks the I/O edge to do.
#[derive(Debug, Clone)]
pub enum Event {
    /// Send this Update on the client's stream.
    Update { client: ClientId, batch: Batch },
    /// The client was removed; end its stream (if any) accordingly.
    Dropped {
        client: ClientId,
        reason: DropReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("unknown client id")]
    NotFound,
    #[error("this client already has an update stream")]
    AlreadyStreaming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("unknown client id")]
    NotFound,
    #[error("numUpdatesReceived is negative")]
    Negative,
    #[error("numUpdatesReceived {got} is above the {sent} Updates sent")]
    AboveSent { got: i64, sent: u64 },
}

/// The whole consistency state of a single node.
#[derive(Debug)]
pub struct Engine {
    settings: Settings,
    /// The last commit sequence number assigned (0 before the first commit);
    /// entries above `durable` are pending.
    head: Seq,
    /// The last commit known to be stored: entries up to here are visible
    /// (delivered, shown as history); `durable <= head` always.
    durable: Seq,
    /// Committed entries `(head - window.len(), head]`: the recent history,
    /// everything some streaming client has not been sent yet, and the
    /// pending entries above `durable`. Contiguous by seq.
    window: VecDeque<Arc<Entry>>,
    /// Per-thread commit records, for the order and numerical errors and the
    /// flush deadlines.
    conits: HashMap<Arc<str>, ConitLog>,
    clients: HashMap<ClientId, ClientState>,
    /// Multiset of the acknowledged positions of streaming clients; its
    /// minimum measures the numerical error.
    active_acks: BTreeMap<Seq, usize>,
    /// Who is flushed when: cursor groups, client timers, group deadlines.
    schedule: FlushSchedule,
    /// Multiset of the acknowledged positions of clients that have not
    /// started streaming (they still hold conit records back).
    waiting_acks: BTreeMap<Seq, usize>,
    /// The earliest time [`Engine::poll`] has something to do.
    next_wake: Micros,
    /// The last commit assigned when the bounds last changed: messages up to
    /// it were promised the old bounds, so a tightened staleness that makes
    /// them due at once is not counted as a broken promise.
    bounds_changed_at_seq: Seq,
    /// The threads held, for the thread caps; idle ones are forgotten.
    threads: ThreadRegistry,
    /// The writer of each pending entry, in seq order (one per seq above
    /// `durable`), so that discarding them visits those clients only. A
    /// cluster node discards after every decision (its writes commit when
    /// the stream has them), and visiting every client's retry records
    /// there took 48% of a node's CPU (perf, 3-node R3 row).
    pending_writers: VecDeque<ClientId>,
    /// How late recent polls ran after their wake time: flush deadlines
    /// allow for it.
    delay: SchedulerDelay,
    /// How late the last poll ran after the wake time it was for (`None`:
    /// early, or for something due at once).
    last_delay: Option<Duration>,
}

/// One Update of a flush, shared by every client of a cursor group.
#[derive(Debug)]
struct FlushPart {
    entries: Entries,
    /// The seen position it gives (its highest commit).
    pos: Seq,
    /// Its entries delivered later than their conit's staleness allowed.
    late: u64,
}

/// The Updates that carry `entries` (the commits from a cursor up to the
/// visible end `visible`, in order) at `now`: one, or several when they
/// exceed `max_update_bytes`; one empty Update (a heartbeat) when there are
/// none. Messages committed before the bounds last changed
/// (`bounds_changed_at`) were promised the old staleness and are not
/// counted late.
fn flush_parts(
    entries: &[Arc<Entry>],
    settings: &Settings,
    visible: Seq,
    now: Micros,
    bounds_changed_at: Seq,
) -> Rc<[FlushPart]> {
    split(entries, settings.max_update_bytes, visible)
        .into_iter()
        .map(|part| {
            let late = part
                .entries
                .iter()
                .filter(|e| {
                    e.seq > bounds_changed_at
                        && now
                            > e.commit_time
                                .plus(settings.bounds.for_thread(&e.thread).staleness)
                })
                .count() as u64;
            FlushPart {
                entries: part.entries,
                pos: part.pos,
                late,
            }
        })
        .collect()
}

/// Message `n` of client `c` arrives: the original verdict if it is a retry
/// of an accepted message, a refusal if the client is above its message
/// rate; else it is recorded as arrived and `None` lets the checks go on.
fn arrival(
    c: &mut ClientState,
    n: i64,
    sub: &Submission,
    limits: &super::limits::Limits,
    now: Micros,
) -> Option<Verdict> {
    if let Some((seq, at)) = c.retry_of(n, &sub.thread, &sub.contents) {
        return Some(Verdict::Accepted {
            seq,
            at,
            retry: true,
        });
    }
    if let Err(limit) = c.buckets.take_message(limits, now) {
        return Some(Verdict::Rejected {
            reason: Rejection::Limited(limit),
            at: now,
        });
    }
    c.arrive(n);
    None
}

/// Why a streaming client must be dropped at `now`, if it must: its
/// acknowledgement timeout passed, or it is a laggard.
fn must_drop(
    c: &ClientState,
    conits: &HashMap<Arc<str>, ConitLog>,
    settings: &Settings,
    now: Micros,
) -> Option<DropReason> {
    let ack_timeout = settings.ack_timeout;
    if c.ack_deadline(ack_timeout).is_some_and(|d| now >= d) {
        return Some(DropReason::AckTimeout);
    }
    let lag = Lag {
        acked_pos: c.acked_pos,
        delivered: c.delivered,
        oldest_unacked: c.oldest_unacked_at(),
    };
    is_laggard(&lag, conits, &settings.bounds, ack_timeout, now).then_some(DropReason::Laggard)
}

/// What one poll carries from client to client.
struct Round {
    now: Micros,
    /// Flush every pending message regardless of deadlines (shutdown).
    force: bool,
    /// The visible (durable) end of the log.
    visible: Seq,
    /// Each cursor group's size when the poll began.
    group_size: HashMap<GroupKey, usize>,
    /// The Updates of each cursor's flush, shared by its group.
    parts: HashMap<Seq, Rc<[FlushPart]>>,
    /// What the poll asks the I/O edge to do, in order.
    events: Vec<Event>,
}

impl Engine {
    /// A new engine whose log ends at `head`, with `recent` (ascending, the
    /// last ones up to `head`) as the history for new clients.
    /// Only the run of `recent` that ends at `head` without a hole is kept
    /// (the window must be contiguous; a log edited by hand may not be).
    pub fn new(settings: Settings, head: Seq, recent: Vec<Entry>) -> Self {
        let mut start = recent.len();
        while start > 0
            && start > recent.len().saturating_sub(settings.history)
            && head.checked_sub((recent.len() - start) as Seq) == Some(recent[start - 1].seq)
        {
            start -= 1;
        }
        let window = recent[start..]
            .iter()
            .cloned()
            .map(Arc::new)
            .collect::<VecDeque<_>>();
        Engine {
            settings,
            head,
            durable: head,
            window,
            conits: HashMap::new(),
            clients: HashMap::new(),
            active_acks: BTreeMap::new(),
            schedule: FlushSchedule::default(),
            waiting_acks: BTreeMap::new(),
            next_wake: Micros::MAX,
            bounds_changed_at_seq: 0,
            threads: ThreadRegistry::default(),
            pending_writers: VecDeque::new(),
            delay: SchedulerDelay::default(),
            last_delay: None,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes the bounds. Takes effect for the next decision; flush
    /// deadlines are re-armed by the next [`Engine::poll`], due at once.
    /// Commits made before the change stay due at the looser of the old and
    /// the new staleness: a lowered bound does not make them all overdue,
    /// which would flush every client in one burst.
    pub fn set_bounds(&mut self, bounds: BoundsTable) {
        let old = std::mem::replace(&mut self.settings.bounds, bounds);
        self.bounds_changed_at_seq = self.head;
        self.schedule.bounds_changed(old, self.head);
        self.next_wake = Micros(i64::MIN);
    }

    /// The allowance for the scheduler's recent delays (see
    /// [`SchedulerDelay`]): flushes come due this long before their bound
    /// where it exceeds the fixed safety margin.
    pub fn flush_lead(&self) -> Duration {
        self.schedule.lead()
    }

    /// How late the last poll ran after the wake time it was for: `None`
    /// if it was early, or the wake was for something due at once.
    pub fn last_delay(&self) -> Option<Duration> {
        self.last_delay
    }

    /// The last commit sequence number assigned (pending or durable).
    pub fn head(&self) -> Seq {
        self.head
    }

    /// The last commit reported durable: the visible end of the log.
    pub fn durable(&self) -> Seq {
        self.durable
    }

    /// Commits assigned but not yet reported durable.
    pub fn pending(&self) -> u64 {
        self.head - self.durable
    }

    /// The earliest time [`Engine::poll`] has something to do.
    pub fn next_wake(&self) -> Micros {
        self.next_wake
    }

    pub fn client(&self, id: ClientId) -> Option<&ClientState> {
        self.clients.get(&id)
    }

    pub fn clients(&self) -> impl Iterator<Item = (ClientId, &ClientState)> {
        self.clients.iter().map(|(&id, c)| (id, c))
    }

    /// Clients with an open stream that are not overdue: the active ones.
    pub fn streaming_clients(&self) -> usize {
        self.schedule.streaming()
    }

    /// The threads held in memory (see [`super::limits::ThreadRegistry`]).
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Committed messages of `thread` that some active client has not
    /// acknowledged.
    pub fn numerical_error(&self, thread: &str) -> u64 {
        match (self.active_acks.first_key_value(), self.conits.get(thread)) {
            (Some((&min, _)), Some(log)) => log.count_after(min),
            _ => 0,
        }
    }

    /// The numerical error of every conit with unacknowledged commits.
    pub fn numerical_errors(&self) -> Vec<(Arc<str>, u64)> {
        let Some((&min, _)) = self.active_acks.first_key_value() else {
            return Vec::new();
        };
        self.conits
            .iter()
            .map(|(t, log)| (t.clone(), log.count_after(min)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Registers a client. Returns false (and changes nothing) if the id is
    /// already taken.
    pub fn connect(&mut self, id: ClientId, public_id: u64, name: Arc<str>, now: Micros) -> bool {
        if self.clients.contains_key(&id) {
            return false;
        }
        // It has seen what is visible, not what is still pending.
        let mut c = ClientState::new(public_id, name, now, self.durable);
        let reap = now.plus(self.settings.ack_timeout);
        self.schedule.retime(id, &mut c, reap);
        multiset_add(&mut self.waiting_acks, c.acked_pos);
        self.clients.insert(id, c);
        self.next_wake = self.next_wake.min(reap);
        true
    }

    /// Opens the client's one stream; returns its first Update: the most
    /// recent `history` durable messages, with the last durable commit as the
    /// baseline; split into several consecutive Updates when it holds more
    /// than `max_update_bytes` (the last one carries the baseline).
    pub fn start_stream(&mut self, id: ClientId, now: Micros) -> Result<Vec<Batch>, StreamError> {
        let c = self.clients.get_mut(&id).ok_or(StreamError::NotFound)?;
        if c.phase != Phase::Waiting {
            return Err(StreamError::AlreadyStreaming);
        }
        c.phase = Phase::Streaming;
        let visible = self.window.len() - (self.head - self.durable) as usize;
        let keep = visible.min(self.settings.history);
        let history: Vec<Arc<Entry>> = self
            .window
            .range(visible - keep..visible)
            .cloned()
            .collect();
        let parts = split(&history, self.settings.max_update_bytes, self.durable);
        let expiration = now.plus(self.settings.lease);
        let last = parts.len() - 1;
        let mut batches = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            // The last part carries the baseline (the durable end of the
            // log). An earlier one never moves the seen position below the
            // one the client had from `Connect`.
            let pos = if i == last {
                self.durable
            } else {
                part.pos.max(c.delivered)
            };
            c.record_update(pos, now, expiration);
            batches.push(Batch {
                current_time: now,
                expiration,
                entries: part.entries,
                late: 0,
                after_expiration: false,
                part: i as u32,
            });
        }
        multiset_remove(&mut self.waiting_acks, c.acked_pos);
        multiset_add(&mut self.active_acks, c.acked_pos);
        self.schedule.insert(id, c.delivered, &c.class);
        let half = self.settings.lease / 2;
        let heartbeat = now.plus(half).minus(safety_margin(half));
        let personal = heartbeat.min(
            c.ack_deadline(self.settings.ack_timeout)
                .unwrap_or(Micros::MAX),
        );
        self.schedule.retime(id, c, personal);
        self.next_wake = self.next_wake.min(personal);
        Ok(batches)
    }

    /// An `Acknowlegde` call.
    /// Returns what the acknowledgement says about the client's lag, if it
    /// advanced.
    pub fn acknowledge(
        &mut self,
        id: ClientId,
        count: i64,
        now: Micros,
    ) -> Result<Option<AckInfo>, AckError> {
        let c = self.clients.get_mut(&id).ok_or(AckError::NotFound)?;
        if count < 0 {
            return Err(AckError::Negative);
        }
        if count as u64 > c.updates_sent {
            return Err(AckError::AboveSent {
                got: count,
                sent: c.updates_sent,
            });
        }
        let before = c.acked_pos;
        let Some(sent_at) = c.acknowledge(count as u64, now) else {
            return Ok(None);
        };
        if c.phase == Phase::Streaming {
            multiset_remove(&mut self.active_acks, before);
            multiset_add(&mut self.active_acks, c.acked_pos);
        }
        Ok(Some(AckInfo {
            lag_messages: c.unacked_messages(),
            round_trip_micros: now.0.saturating_sub(sent_at.0),
        }))
    }

    /// Decides on a `SentMessage` and, if accepted, commits it. Returns the
    /// new entry for the log when one was committed. The entry is pending: no
    /// client gets it before [`Engine::mark_durable`] covers its seq. An
    /// accepted retry carries the original seq, which may still be pending.
    pub fn submit(&mut self, sub: Submission, now: Micros) -> (Decision, Option<Arc<Entry>>) {
        let mut decision = Decision::undecided(now);
        let reject = |d: &mut Decision, reason| {
            d.verdict = Verdict::Rejected { reason, at: now };
        };
        let fault = self.check_well_formed(&sub, now).err();
        if let Some(f) = fault {
            reject(&mut decision, Rejection::Client(f));
            return (decision, None);
        }
        let ack = sub.ack.expect("checked");
        let id = ack.client.expect("checked");
        decision.ack = self
            .acknowledge(id, ack.updates_received, now)
            .expect("checked");
        let c = self.clients.get_mut(&id).expect("checked");
        let n = ack.messages_sent;
        if let Some(verdict) = arrival(c, n, &sub, &self.settings.limits, now) {
            decision.verdict = verdict;
            return (decision, None);
        }
        self.sent_to(id, &sub.thread, now);
        let c = self.clients.get(&id).expect("checked");
        let bounds = self.settings.bounds.for_thread(&sub.thread);
        let timestamp = sub.timestamp.expect("checked");
        let arrived = Arrival::of(now, timestamp, bounds.staleness);
        decision.arrival = Some(arrived);
        if timestamp < now.minus(bounds.staleness) {
            let age_micros = arrived.age_micros;
            reject(&mut decision, Rejection::Staleness { age_micros });
            return (decision, None);
        }
        let conit = self.conits.get(sub.thread.as_str());
        // Commits after what it acknowledged, less its own (it knows those).
        let unseen = conit
            .map_or(0, |log| log.count_after(c.acked_pos))
            .saturating_sub(c.own_unacked(&sub.thread));
        let order_error = unseen + c.missing_before(n);
        decision.order_error = Some(order_error);
        if order_error > bounds.order {
            let bound = bounds.order;
            reject(
                &mut decision,
                Rejection::Order {
                    error: order_error,
                    bound,
                },
            );
            return (decision, None);
        }
        let numerical_error = self.numerical_error(&sub.thread);
        decision.numerical_error = Some(numerical_error);
        if numerical_error >= bounds.numerical {
            let bound = bounds.numerical;
            reject(
                &mut decision,
                Rejection::Numerical {
                    error: numerical_error,
                    bound,
                },
            );
            return (decision, None);
        }
        if let Err(limit) = self.admit_thread(id, &sub.thread, now) {
            reject(&mut decision, Rejection::Limited(limit));
            return (decision, None);
        }
        let entry = self.commit(id, n, sub.thread, sub.contents, now);
        // The commit time, not `now`: they differ when the clock read before
        // the lock is older than the previous commit (commit times never go
        // back), and the OK must carry the time every client is sent.
        decision.verdict = Verdict::Accepted {
            seq: entry.seq,
            at: entry.commit_time,
            retry: false,
        };
        (decision, Some(entry))
    }

    /// The thread caps, for a write by `id` to `thread`: a thread the server
    /// holds is always fine; a new one must fit the total and the client's
    /// new-thread rate.
    fn admit_thread(&mut self, id: ClientId, thread: &str, now: Micros) -> Result<(), Limit> {
        if self.threads.contains(thread) {
            return Ok(());
        }
        let limits = self.settings.limits;
        if self.threads.len() >= limits.max_threads {
            // Idle threads may be waiting for the next periodic sweep.
            let idle = limits.thread_idle_timeout;
            self.threads.sweep(now, idle, &self.conits, false);
            if self.threads.len() >= limits.max_threads {
                return Err(Limit::Threads {
                    max: limits.max_threads,
                });
            }
        }
        let c = self.clients.get_mut(&id).ok_or(Limit::Threads { max: 0 })?;
        c.buckets.take_new_thread(&limits, now)
    }

    /// The `CLIENT_ERROR` checks, in the order DESIGN.md lists them.
    fn check_well_formed(&self, sub: &Submission, now: Micros) -> Result<(), ClientFault> {
        let ack = sub.ack.ok_or(ClientFault::MissingAcknowledgement)?;
        let c = ack
            .client
            .and_then(|id| self.clients.get(&id))
            .ok_or(ClientFault::UnknownClient)?;
        if sub.contents.is_empty() {
            return Err(ClientFault::EmptyContents);
        }
        if sub.contents.len() > self.settings.max_message_bytes {
            return Err(ClientFault::OversizedContents);
        }
        if sub.thread.len() > MAX_THREAD_ID_BYTES {
            return Err(ClientFault::OversizedThreadId);
        }
        if ack.updates_received < 0 || ack.messages_sent < 0 {
            return Err(ClientFault::NegativeCount);
        }
        if ack.updates_received as u64 > c.updates_sent {
            return Err(ClientFault::AckAboveSent);
        }
        let ts = sub.timestamp.ok_or(ClientFault::MissingTimestamp)?;
        if ts > now.plus(self.settings.max_clock_skew) {
            return Err(ClientFault::FutureTimestamp);
        }
        Ok(())
    }

    fn commit(
        &mut self,
        id: ClientId,
        n: i64,
        thread: String,
        contents: String,
        now: Micros,
    ) -> Arc<Entry> {
        let seq = self.head + 1;
        // Commit times never go backwards, even if the wall clock does.
        let at = self.window.back().map_or(now, |e| e.commit_time.max(now));
        let c = self.clients.get_mut(&id).expect("checked by caller");
        c.remember_accepted(n, &thread, &contents, seq, at);
        // Reuse the conit's key so every entry of a thread shares one string.
        let thread: Arc<str> = match self.conits.get_key_value(thread.as_str()) {
            Some((k, _)) => k.clone(),
            None => thread.into(),
        };
        c.committed_own(&thread, seq);
        c.interest.wrote(&thread, at);
        self.threads.touch(&thread, at);
        let log = self.conits.entry(thread.clone()).or_default();
        log.push(seq, at);
        let entry = Arc::new(Entry {
            seq,
            thread,
            contents,
            sender: c.name.clone(),
            commit_time: at,
        });
        self.window.push_back(entry.clone());
        self.head = seq;
        self.pending_writers.push_back(id);
        self.refresh_class(id, at);
        // No flush is scheduled yet: the entry is not visible before it is
        // durable (see `mark_durable`).
        entry
    }

    /// The I/O edge stored every entry up to `upto`: they become visible, and
    /// the flush deadlines they bring are scheduled. Values at or below the
    /// current durable position are ignored; values above the head are
    /// capped at the head.
    pub fn mark_durable(&mut self, upto: Seq) {
        let upto = upto.min(self.head);
        if upto <= self.durable {
            return;
        }
        let old = self.durable;
        self.durable = upto;
        // Only the writers of entries still pending stay.
        let pending = (self.head - upto) as usize;
        let stored = self.pending_writers.len().saturating_sub(pending);
        self.pending_writers.drain(..stored);
        // The client with the lowest cursor is the first to become due.
        let Some(cursor) = self.schedule.lowest_cursor() else {
            return;
        };
        let floor = self.head - self.window.len() as Seq;
        let range = (old - floor) as usize..(upto - floor) as usize;
        for e in self.window.range(range) {
            let b = self.settings.bounds.for_thread(&e.thread);
            let count = self
                .conits
                .get(&e.thread)
                .map_or(0, |log| log.count_between(cursor, upto));
            let due = if count >= b.flush_count() {
                Micros(i64::MIN)
            } else {
                staleness_deadline(e.commit_time, b.staleness, self.schedule.lead())
            };
            // The first member of the group flushes a spread earlier.
            let lead = flush_spread(b.staleness, self.clients.len());
            self.next_wake = self.next_wake.min(due.minus(lead));
        }
    }

    /// Storing failed: forgets every pending entry (everything above the
    /// durable position) as if it had never been accepted, and returns how
    /// many were dropped. The next commit reuses the first dropped sequence
    /// number. No client was sent any of them, so nothing seen is undone;
    /// their retries are no longer recognised (a retry commits afresh).
    pub fn discard_pending(&mut self) -> u64 {
        let n = self.head - self.durable;
        if n == 0 {
            return 0;
        }
        let durable = self.durable;
        let keep = self.window.len() - n as usize;
        for e in self.window.drain(keep..) {
            if let Some(log) = self.conits.get_mut(&e.thread) {
                log.truncate_after(durable);
                if log.is_empty() {
                    self.conits.remove(&e.thread);
                }
            }
        }
        for id in std::mem::take(&mut self.pending_writers) {
            if let Some(c) = self.clients.get_mut(&id) {
                c.forget_commits_after(durable);
            }
        }
        self.head = durable;
        n
    }

    /// Removes a client. Returns false if it was not there.
    pub fn remove(&mut self, id: ClientId) -> bool {
        let Some(c) = self.clients.remove(&id) else {
            return false;
        };
        self.schedule.remove_timer(id, c.timer);
        match c.phase {
            Phase::Streaming => {
                multiset_remove(&mut self.active_acks, c.acked_pos);
                self.schedule.remove_cursor(id, c.delivered, &c.class);
            }
            Phase::Waiting => multiset_remove(&mut self.waiting_acks, c.acked_pos),
        }
        true
    }

    /// Does everything due at `now`: flushes, heartbeats, drops; then trims
    /// state no client needs any more and computes the next wake time.
    pub fn poll(&mut self, now: Micros) -> Vec<Event> {
        self.step(now, false)
    }

    /// Flushes every pending message to every streaming client at once (on
    /// shutdown), then polls as usual.
    pub fn flush_all(&mut self, now: Micros) -> Vec<Event> {
        self.step(now, true)
    }

    /// One poll: visits the clients the schedule says are due, flushes or
    /// heartbeats them (or drops the overdue), then trims and computes the
    /// next wake time.
    fn step(&mut self, now: Micros, force: bool) -> Vec<Event> {
        if !force {
            self.note_delay(now);
        }
        // Only durable entries are delivered; the window also holds the
        // pending ones after them.
        let visible = self.durable;
        let visit = self.schedule.visit(
            now,
            force,
            self.heartbeat_after() / 4,
            &self.conits,
            &self.settings.bounds,
            visible,
        );
        let mut round = Round {
            now,
            force,
            visible,
            group_size: visit.group_size,
            // Clients at the same cursor get the same batch: built once.
            parts: HashMap::new(),
            events: Vec::new(),
        };
        let mut drops = Vec::new();
        for id in visit.clients {
            if let Some(reason) = self.visit_client(id, &mut round) {
                drops.push((id, reason));
            }
        }
        let mut events = round.events;
        for (id, reason) in drops {
            self.remove(id);
            events.push(Event::Dropped { client: id, reason });
        }
        self.next_wake = self.schedule.next_wake(
            &self.conits,
            &self.settings.bounds,
            visible,
            &round.group_size,
        );
        self.trim();
        let idle = self.settings.limits.thread_idle_timeout;
        self.threads.sweep(now, idle, &self.conits, false);
        if !self.threads.is_empty() {
            self.next_wake = self.next_wake.min(self.threads.next_sweep());
        }
        events
    }

    /// Notes how late this poll at `now` runs after the wake time asked
    /// for, and moves the flush deadlines to allow for the recent delays.
    /// `i64::MIN` means "at once" (a flush count reached, bounds changed),
    /// not a time that could be missed.
    fn note_delay(&mut self, now: Micros) {
        let asked = self.next_wake;
        self.last_delay = (asked.0 != i64::MIN && asked <= now).then(|| now.since(asked));
        if let Some(d) = self.last_delay {
            self.delay.record(now, d);
        }
        self.schedule.set_lead(self.delay.lead(now));
    }

    /// How long after an Update the next one (a heartbeat, if nothing is
    /// pending) is due: half a lease, less the safety margin.
    fn heartbeat_after(&self) -> Duration {
        let half_lease = self.settings.lease / 2;
        half_lease - safety_margin(half_lease)
    }

    /// Handles one client the schedule picked: returns why to drop it, or
    /// flushes it if due (pushing its Updates on `round.events`), or re-arms
    /// its timer.
    fn visit_client(&mut self, id: ClientId, round: &mut Round) -> Option<DropReason> {
        let now = round.now;
        let heartbeat_after = self.heartbeat_after();
        let ack_timeout = self.settings.ack_timeout;
        self.refresh_class(id, now);
        let c = self.clients.get_mut(&id)?;
        if c.phase == Phase::Waiting {
            let reap = c.connected_at.plus(ack_timeout);
            if now >= reap {
                return Some(DropReason::NeverStreamed);
            }
            self.schedule.retime(id, c, reap);
            return None;
        }
        if let Some(reason) = must_drop(c, &self.conits, &self.settings, now) {
            return Some(reason);
        }
        let ack_deadline = c.ack_deadline(ack_timeout);
        let heartbeat = c.last_update_at.plus(heartbeat_after);
        let cursor = c.delivered;
        let key = (cursor, c.class.clone());
        let flush = self
            .schedule
            .due(&key, &self.conits, &self.settings.bounds, round.visible);
        let members = round.group_size.get(&key).copied().unwrap_or(1);
        let flush_now = match flush {
            Some(_) if round.force => true,
            Some(due) => due.member_due(spread_rank(id, cursor), members, now),
            None => false,
        };
        // A heartbeat due soon goes out with this poll: idle clients that
        // connected at scattered times thus fall into a few groups served
        // together, instead of one wake-up per client.
        if !flush_now && now.plus(heartbeat_after / 4) < heartbeat {
            // Not due yet (an early timer): re-arm its own deadline; a
            // pending flush is its cursor group's.
            let at = heartbeat.min(ack_deadline.unwrap_or(Micros::MAX));
            self.schedule.retime(id, c, at);
            return None;
        }
        let window_floor = self.head - self.window.len() as Seq;
        let parts = round
            .parts
            .entry(cursor)
            .or_insert_with(|| {
                let start = (cursor - window_floor) as usize;
                let end = (round.visible - window_floor) as usize;
                let entries: Vec<Arc<Entry>> = self.window.range(start..end).cloned().collect();
                flush_parts(
                    &entries,
                    &self.settings,
                    round.visible,
                    now,
                    self.bounds_changed_at_seq,
                )
            })
            .clone();
        self.schedule.move_cursor(id, cursor, round.visible, &key.1);
        let after_expiration = now > c.expiration;
        let expiration = now.plus(self.settings.lease);
        for (i, part) in parts.iter().enumerate() {
            c.record_update(part.pos, now, expiration);
            round.events.push(Event::Update {
                client: id,
                batch: Batch {
                    current_time: now,
                    expiration,
                    entries: part.entries.clone(),
                    late: interest::late(
                        part,
                        (&key.1, c.class_since),
                        self.schedule.interest(),
                        now,
                        (&self.settings, self.bounds_changed_at_seq),
                    ),
                    after_expiration: i == 0 && after_expiration,
                    part: i as u32,
                },
            });
        }
        let personal = now
            .plus(heartbeat_after)
            .min(c.ack_deadline(ack_timeout).unwrap_or(Micros::MAX));
        self.schedule.retime(id, c, personal);
        None
    }

    /// Forgets entries and conit records no client can need any more.
    /// Pending entries are kept: they are above every floor used here.
    fn trim(&mut self) {
        let history_floor = self.durable.saturating_sub(self.settings.history as Seq);
        let window_floor = self
            .schedule
            .lowest_cursor()
            .map_or(history_floor, |c| c.min(history_floor));
        while self.window.front().is_some_and(|e| e.seq <= window_floor) {
            self.window.pop_front();
        }
        let conit_floor = [&self.active_acks, &self.waiting_acks]
            .iter()
            .filter_map(|m| m.first_key_value().map(|(&k, _)| k))
            .min()
            .unwrap_or(self.durable);
        self.conits.retain(|_, log| {
            log.trim(conit_floor);
            !log.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::SubmissionAck;
    use std::time::Duration;

    const T0: Micros = Micros(1_700_000_000_000_000);

    fn engine() -> Engine {
        let s = Settings {
            history: 10,
            ..Settings::default()
        };
        Engine::new(s, 0, Vec::new())
    }

    fn send(e: &mut Engine, id: ClientId, n: i64, text: &str, now: Micros) -> Decision {
        let sub = Submission {
            ack: Some(SubmissionAck {
                client: Some(id),
                updates_received: 0,
                messages_sent: n,
            }),
            thread: String::new(),
            contents: text.to_owned(),
            timestamp: Some(now),
        };
        e.submit(sub, now).0
    }

    fn seqs(events: &[Event], client: ClientId) -> Vec<Seq> {
        events
            .iter()
            .filter_map(|ev| match ev {
                Event::Update { client: c, batch } if *c == client => Some(batch),
                _ => None,
            })
            .flat_map(|b| b.entries.iter().map(|e| e.seq))
            .collect()
    }

    #[test]
    fn pending_entries_are_neither_delivered_nor_history_until_durable() {
        let mut e = engine();
        assert!(e.connect(1, 1, "w".into(), T0));
        assert!(e.connect(2, 2, "r".into(), T0));
        e.start_stream(2, T0).unwrap();
        for n in 1..=3 {
            assert!(matches!(
                send(&mut e, 1, n, &format!("m{n}"), T0).verdict,
                Verdict::Accepted { retry: false, .. }
            ));
        }
        assert_eq!((e.head(), e.durable(), e.pending()), (3, 0, 3));
        // Long past the staleness bound: still nothing to deliver.
        let later = T0.plus(Duration::from_secs(2));
        assert_eq!(seqs(&e.flush_all(later), 2), Vec::<Seq>::new());
        // A new reader's history and baseline stop at the durable position.
        assert!(e.connect(3, 3, "h".into(), later));
        assert_eq!(e.start_stream(3, later).unwrap()[0].entries.len(), 0);

        e.mark_durable(2);
        // Overdue entries become due at once, for every reader.
        assert!(e.next_wake() <= later);
        let events = e.poll(later);
        assert_eq!(seqs(&events, 2), vec![1, 2]);
        assert_eq!(seqs(&events, 3), vec![1, 2]);
        e.mark_durable(99); // capped at the head
        assert_eq!(e.durable(), 3);
        e.mark_durable(1); // never goes back
        assert_eq!(e.durable(), 3);
        let events = e.flush_all(later);
        assert_eq!(seqs(&events, 2), vec![3]);
        assert_eq!(seqs(&events, 3), vec![3]);
    }

    #[test]
    fn flushes_come_due_earlier_after_the_scheduler_ran_late() {
        let ms = Duration::from_millis;
        let mut e = engine();
        e.connect(1, 1, "w".into(), T0);
        e.connect(2, 2, "r".into(), T0);
        e.start_stream(2, T0).unwrap();
        // The next flush of a message committed at `t`, 500 ms bound.
        let due_after = |e: &mut Engine, n: i64, t: Micros| {
            send(e, 1, n, "m", t);
            e.mark_durable(n as Seq);
            e.poll(t);
            t.plus(ms(500)).0 - e.next_wake().0
        };
        // On time: the fixed 20 ms margin (and a 40 µs spread).
        let margin = due_after(&mut e, 1, T0);
        assert!((20_000..20_100).contains(&margin), "{margin}");
        // A poll 40 ms late: flushes act 1.5 times that early.
        let late = e.next_wake().plus(ms(40));
        assert_eq!(seqs(&e.poll(late), 2), vec![1]);
        let margin = due_after(&mut e, 2, late.plus(ms(1)));
        assert!((60_000..60_100).contains(&margin), "{margin}");
        // Never more than half the bound.
        let later = e.next_wake().plus(ms(400));
        assert_eq!(seqs(&e.poll(later), 2), vec![2]);
        let margin = due_after(&mut e, 3, later.plus(ms(1)));
        assert!((250_000..250_100).contains(&margin), "{margin}");
    }

    #[test]
    fn only_the_writers_of_pending_entries_are_kept() {
        let mut e = engine();
        e.connect(1, 1, "a".into(), T0);
        e.connect(2, 2, "b".into(), T0);
        // The store always one write behind, as under steady load.
        for n in 1..=20 {
            let now = T0.plus(Duration::from_millis(n as u64 * 100));
            send(&mut e, 1, n, "a", now);
            send(&mut e, 2, n, "b", now);
            e.mark_durable(e.head() - 1);
            assert_eq!(e.pending_writers, [2]);
        }
        // Discarding the one pending entry forgets b's last write only.
        assert_eq!(e.discard_pending(), 1);
        let later = T0.plus(Duration::from_secs(3));
        let accepted = |d: Decision| match d.verdict {
            Verdict::Accepted { retry, .. } => retry,
            v => panic!("{v:?}"),
        };
        assert!(accepted(send(&mut e, 1, 20, "a", later)), "a retry");
        assert!(
            !accepted(send(&mut e, 2, 20, "b", later)),
            "committed afresh"
        );
    }

    #[test]
    fn discarded_entries_are_never_seen_and_their_seqs_are_reused() {
        let mut e = engine();
        e.connect(1, 1, "w".into(), T0);
        e.connect(2, 2, "r".into(), T0);
        e.start_stream(2, T0).unwrap();
        send(&mut e, 1, 1, "kept", T0);
        e.mark_durable(1);
        send(&mut e, 1, 2, "lost-a", T0);
        send(&mut e, 1, 3, "lost-b", T0);
        assert_eq!(
            e.numerical_error(""),
            3,
            "pending entries count for admission"
        );
        assert_eq!(e.pending_writers.len(), 2, "one writer per pending entry");
        assert_eq!(e.discard_pending(), 2);
        assert_eq!((e.head(), e.durable()), (1, 1));
        assert!(e.pending_writers.is_empty());
        assert_eq!(e.numerical_error(""), 1);
        assert_eq!(e.discard_pending(), 0);
        // A retry of a discarded message commits afresh, at the reused seq.
        match send(&mut e, 1, 2, "lost-a", T0).verdict {
            Verdict::Accepted { seq, retry, .. } => assert_eq!((seq, retry), (2, false)),
            v => panic!("{v:?}"),
        }
        e.mark_durable(2);
        let events = e.flush_all(T0.plus(Duration::from_secs(1)));
        let got: Vec<String> = events
            .iter()
            .filter_map(|ev| match ev {
                Event::Update { client: 2, batch } => Some(batch),
                _ => None,
            })
            .flat_map(|b| b.entries.iter().map(|e| e.contents.clone()))
            .collect();
        assert_eq!(got, ["kept", "lost-a"]);
    }

    #[test]
    fn an_ok_carries_the_commit_time_even_when_the_clock_went_back() {
        let mut e = engine();
        e.connect(1, 1, "w".into(), T0);
        send(&mut e, 1, 1, "first", T0.plus(Duration::from_millis(5)));
        let d = send(&mut e, 1, 2, "second", T0);
        match d.verdict {
            Verdict::Accepted { at, .. } => assert_eq!(at, T0.plus(Duration::from_millis(5))),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_retry_of_a_pending_message_reports_the_pending_seq() {
        let mut e = engine();
        e.connect(1, 1, "w".into(), T0);
        send(&mut e, 1, 1, "hello", T0);
        match send(&mut e, 1, 1, "hello", T0).verdict {
            Verdict::Accepted { seq, retry, .. } => assert_eq!((seq, retry), (1, true)),
            v => panic!("{v:?}"),
        }
        assert!(seq_is_pending(&e, 1));
    }

    fn seq_is_pending(e: &Engine, seq: Seq) -> bool {
        seq > e.durable() && seq <= e.head()
    }

    #[test]
    fn history_with_holes_or_not_ending_at_the_head_is_cut_to_its_contiguous_tail() {
        let at = |seqs: &[Seq]| -> Vec<Entry> {
            seqs.iter()
                .map(|&seq| Entry {
                    seq,
                    thread: "".into(),
                    contents: format!("m{seq}"),
                    sender: "w".into(),
                    commit_time: T0,
                })
                .collect()
        };
        let history = |e: &mut Engine| -> Vec<Seq> {
            e.connect(1, 1, "r".into(), T0);
            let b = e.start_stream(1, T0).unwrap();
            b[0].entries.iter().map(|e| e.seq).collect()
        };
        let mut e = Engine::new(Settings::default(), 10, at(&[4, 5, 8, 9, 10]));
        assert_eq!(history(&mut e), [8, 9, 10]);
        let mut e = Engine::new(Settings::default(), 12, at(&[9, 10]));
        assert_eq!(history(&mut e), Vec::<Seq>::new());
        // Delivery after the restart still works from the right seq.
        match send(&mut e, 1, 1, "next", T0).verdict {
            Verdict::Accepted { seq, .. } => assert_eq!(seq, 13),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_restarted_engine_continues_the_sequence_with_its_history() {
        let recent: Vec<Entry> = (8..=10)
            .map(|seq| Entry {
                seq,
                thread: "".into(),
                contents: format!("m{seq}"),
                sender: "w".into(),
                commit_time: T0,
            })
            .collect();
        let mut e = Engine::new(Settings::default(), 10, recent);
        assert_eq!((e.head(), e.durable()), (10, 10));
        e.connect(1, 1, "w".into(), T0);
        let first = e.start_stream(1, T0).unwrap();
        let history: Vec<Seq> = first[0].entries.iter().map(|e| e.seq).collect();
        assert_eq!(history, [8, 9, 10]);
        match send(&mut e, 1, 1, "next", T0).verdict {
            Verdict::Accepted { seq, .. } => assert_eq!(seq, 11),
            v => panic!("{v:?}"),
        }
    }
}
