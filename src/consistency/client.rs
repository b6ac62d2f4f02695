//! What the core remembers of one connected client.

use super::Seq;
use super::interest::{Class, Interest};
use super::limits::ClientBuckets;
use super::time::Micros;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

/// Where a client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected; `ReceiveUpdates` not started yet.
    Waiting,
    /// Its one stream is open.
    Streaming,
}

/// One connected client, as the consistency core sees it.
#[derive(Debug)]
pub struct ClientState {
    /// The public id its handle derives from; safe to show, unlike the
    /// capability id that keys this state.
    pub public_id: u64,
    /// The name other users see as `ReceivedMessage.sender`.
    pub name: Arc<str>,
    /// When `Connect` answered; starts the reap deadline of a waiting client.
    pub connected_at: Micros,
    pub phase: Phase,
    /// Updates put on its stream so far (the index of the last one).
    pub updates_sent: u64,
    /// The highest `numUpdatesReceived` it acknowledged.
    pub acked: u64,
    /// Seen position after `acked` Updates: the highest commit it has
    /// acknowledged having processed.
    pub acked_pos: Seq,
    /// When `acked` last advanced (or the stream started).
    pub last_ack_at: Micros,
    /// `(position, sent at)` of Updates `acked+1 ..= updates_sent`, so an ack
    /// of n can be turned into a position and the ack timeout measured.
    unacked: VecDeque<(Seq, Micros)>,
    /// The highest commit put on its stream: its delivery cursor.
    pub delivered: Seq,
    /// `currentTime` of the last Update sent.
    pub last_update_at: Micros,
    /// `expirationTime` of the last Update sent.
    pub expiration: Micros,
    /// Which of its own message numbers have reached the server.
    arrived: ArrivedSet,
    /// Its recently accepted messages, so a retry is answered, not recommitted.
    retries: RetryCache,
    /// Its own commits above `acked_pos`, per thread: a writer has seen its
    /// own messages, so they do not count toward its order error.
    own: HashMap<Arc<str>, VecDeque<Seq>>,
    /// Its key in the engine's timer queue: when it must next be looked at
    /// for itself (reap while waiting; heartbeat or acknowledgement timeout
    /// while streaming). Flush deadlines are kept per cursor, not here.
    pub timer: Micros,
    /// The threads it recently wrote to (the interest policy's input, and
    /// the size policy's count of a thread's active readers).
    pub interest: Interest,
    /// Its interest class: part of its flush group's key while streaming.
    pub class: Class,
    /// The last commit assigned when its class last changed: messages up to
    /// it were promised the bounds of the class before (never counted late
    /// against a class that came to cover their thread after them).
    pub class_since: Seq,
    /// Its message and new-thread token buckets (see [`super::limits`]).
    pub buckets: ClientBuckets,
}

impl ClientState {
    pub fn new(public_id: u64, name: Arc<str>, now: Micros, head: Seq) -> Self {
        ClientState {
            public_id,
            name,
            connected_at: now,
            phase: Phase::Waiting,
            updates_sent: 0,
            acked: 0,
            acked_pos: head,
            last_ack_at: now,
            unacked: VecDeque::new(),
            delivered: head,
            last_update_at: now,
            expiration: now,
            arrived: ArrivedSet::default(),
            retries: RetryCache::default(),
            own: HashMap::new(),
            timer: Micros::MAX,
            interest: Interest::default(),
            class: Class::All,
            class_since: 0,
            buckets: ClientBuckets::default(),
        }
    }

    /// Records an Update carrying commits up to `pos`, sent at `now`.
    pub fn record_update(&mut self, pos: Seq, now: Micros, expiration: Micros) {
        self.updates_sent += 1;
        self.unacked.push_back((pos, now));
        self.delivered = pos;
        self.last_update_at = now;
        self.expiration = expiration;
    }

    /// Applies an acknowledgement of `count` Updates (already checked to be
    /// at most `updates_sent`). Returns when the newest acknowledged Update
    /// was sent, if the acknowledgement advanced.
    pub fn acknowledge(&mut self, count: u64, now: Micros) -> Option<Micros> {
        if count <= self.acked {
            return None;
        }
        let n = (count - self.acked) as usize;
        let (pos, sent_at) = self.unacked[n - 1];
        self.unacked.drain(..n);
        self.acked = count;
        self.acked_pos = pos;
        self.last_ack_at = now;
        self.own.retain(|_, seqs| {
            let n = seqs.partition_point(|&s| s <= pos);
            seqs.drain(..n);
            !seqs.is_empty()
        });
        Some(sent_at)
    }

    /// When the oldest unacknowledged Update was sent, if any is outstanding.
    pub fn oldest_unacked_at(&self) -> Option<Micros> {
        self.unacked.front().map(|&(_, at)| at)
    }

    /// Messages sent to it and not acknowledged.
    pub fn unacked_messages(&self) -> u64 {
        self.delivered - self.acked_pos
    }

    /// Records one of its own commits.
    pub fn committed_own(&mut self, thread: &Arc<str>, seq: Seq) {
        self.own.entry(thread.clone()).or_default().push_back(seq);
    }

    /// Forgets its commits above `seq` (discarded after a storage failure):
    /// they no longer count as its own, and a retry of them is not
    /// recognised, so it commits afresh instead of getting a false OK.
    pub fn forget_commits_after(&mut self, seq: Seq) {
        self.own.retain(|_, seqs| {
            while seqs.back().is_some_and(|&s| s > seq) {
                seqs.pop_back();
            }
            !seqs.is_empty()
        });
        self.retries.forget_after(seq);
    }

    /// Its own commits in `thread` above `acked_pos`.
    pub fn own_unacked(&self, thread: &str) -> u64 {
        self.own.get(thread).map_or(0, |s| s.len() as u64)
    }

    /// When the ack timeout drops this client, if Updates are outstanding.
    pub fn ack_deadline(&self, ack_timeout: std::time::Duration) -> Option<Micros> {
        let &(_, oldest) = self.unacked.front()?;
        Some(self.last_ack_at.max(oldest).plus(ack_timeout))
    }

    /// Marks message number `n` as arrived.
    pub fn arrive(&mut self, n: i64) {
        self.arrived.insert(n);
    }

    /// Its messages numbered below `n` that have not arrived.
    pub fn missing_before(&self, n: i64) -> u64 {
        self.arrived.missing_before(n)
    }

    /// The original commit of message number `n`, if this is a retry of it.
    pub fn retry_of(&self, n: i64, thread: &str, contents: &str) -> Option<(Seq, Micros)> {
        self.retries.get(n, thread, contents)
    }

    /// Remembers an accepted message for retries.
    pub fn remember_accepted(
        &mut self,
        n: i64,
        thread: &str,
        contents: &str,
        seq: Seq,
        at: Micros,
    ) {
        self.retries.insert(n, thread, contents, seq, at);
    }
}

/// Message numbers `1..` a client has sent that reached the server: all of
/// `1..=floor`, plus the ones in `above`.
#[derive(Debug, Default)]
pub struct ArrivedSet {
    floor: i64,
    above: BTreeSet<i64>,
}

/// Numbers further than this above the floor are not recorded: such a
/// message is far out of order anyway and must not grow the set unboundedly.
const ARRIVED_SPAN: i64 = 1 << 16;

impl ArrivedSet {
    pub fn insert(&mut self, n: i64) {
        if n <= self.floor || n - self.floor > ARRIVED_SPAN {
            return;
        }
        self.above.insert(n);
        while self.above.first() == Some(&(self.floor + 1)) {
            self.above.pop_first();
            self.floor += 1;
        }
    }

    /// How many of `1..n` have not arrived.
    pub fn missing_before(&self, n: i64) -> u64 {
        if n - 1 <= self.floor {
            return 0;
        }
        let gap = (n - 1 - self.floor) as u64;
        gap - self.above.range(self.floor + 1..n).count() as u64
    }
}

/// Accepted messages kept per client for retries.
pub const RETRY_WINDOW: usize = 1024;

/// The last [`RETRY_WINDOW`] accepted messages of a client, by number.
#[derive(Debug, Default)]
struct RetryCache {
    /// number -> (fingerprint of thread and contents, seq, commit time)
    by_number: HashMap<i64, (u64, Seq, Micros)>,
    /// Numbers in acceptance order, to evict the oldest.
    order: VecDeque<i64>,
}

impl RetryCache {
    fn fingerprint(thread: &str, contents: &str) -> u64 {
        let mut h = DefaultHasher::new();
        (thread, contents).hash(&mut h);
        h.finish()
    }

    fn get(&self, n: i64, thread: &str, contents: &str) -> Option<(Seq, Micros)> {
        let &(fp, seq, at) = self.by_number.get(&n)?;
        (fp == Self::fingerprint(thread, contents)).then_some((seq, at))
    }

    /// Forgets the messages committed above `seq`. They are at the back:
    /// seqs rise along `order`. On a cluster node this runs for every
    /// write (the I/O edge takes each admitted write back to publish it);
    /// scanning the whole cache instead cost 3 of the 42 µs of CPU a node
    /// spent per write (R3 row of `scripts/cluster-bench.py`).
    fn forget_after(&mut self, seq: Seq) {
        while let Some(&n) = self.order.back() {
            if self.by_number.get(&n).is_some_and(|&(_, s, _)| s <= seq) {
                break;
            }
            self.order.pop_back();
            self.by_number.remove(&n);
        }
    }

    /// Records an accepted message. Its seq is above every one recorded
    /// (commits are accepted, or applied, in seq order), so seqs rise along
    /// `order`.
    fn insert(&mut self, n: i64, thread: &str, contents: &str, seq: Seq, at: Micros) {
        let fp = Self::fingerprint(thread, contents);
        if self.by_number.insert(n, (fp, seq, at)).is_some() {
            // A number used again with other contents: it moves to the
            // back, where its new seq belongs. Rare, so the scan is fine.
            self.order.retain(|&x| x != n);
        }
        self.order.push_back(n);
        if self.order.len() > RETRY_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.by_number.remove(&old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrived_set_counts_gaps() {
        let mut a = ArrivedSet::default();
        assert_eq!(a.missing_before(1), 0);
        assert_eq!(a.missing_before(4), 3);
        a.insert(2);
        assert_eq!(a.missing_before(4), 2);
        a.insert(1);
        assert_eq!(a.missing_before(4), 1);
        a.insert(3);
        assert_eq!(a.missing_before(4), 0);
        assert_eq!(a.floor, 3);
        a.insert(0); // a 0-based client's first message: nothing to record
        assert_eq!(a.missing_before(6), 2);
    }

    #[test]
    fn retry_cache_forgets_what_was_committed_above() {
        let mut r = RetryCache::default();
        let at = Micros(0);
        for n in 1..=3 {
            r.insert(n, "t", "x", n as Seq, at);
        }
        // Number 1 used again with other contents, committed at 4.
        r.insert(1, "t", "y", 4, at);
        r.forget_after(2);
        assert_eq!(r.get(1, "t", "y"), None, "committed at 4, forgotten");
        assert_eq!(r.get(3, "t", "x"), None);
        assert_eq!(r.get(2, "t", "x"), Some((2, at)));
        assert_eq!(r.order, [2]);
        // Evicts the oldest beyond the window.
        for n in 10..10 + RETRY_WINDOW as i64 {
            r.insert(n, "t", "x", n as Seq, at);
        }
        assert_eq!(r.get(2, "t", "x"), None);
        assert_eq!(r.order.len(), RETRY_WINDOW);
        assert_eq!(r.by_number.len(), RETRY_WINDOW);
    }
}
