//! What a chat node needs to decide the order bound again, exactly, just
//! before it publishes a write: per thread, the last commit it applied and
//! the commits it applied since each waiting write was admitted.
//!
//! A write is admitted against this node's view (head `H0`); by the time
//! its thread's turn to publish comes, more commits of the thread may have
//! been applied, some through other nodes. The write's order error is then
//! the admitted one plus those newer commits its writer did not make. The
//! publish carries `Nats-Expected-Last-Subject-Sequence` = the thread's last
//! commit in that same view, so JetStream stores it only if no commit of
//! the thread came in between (see `docs/cluster.md`).
//!
//! A thread's next write is published as soon as this node's previous one
//! is *stored*, before the consumer applies it back: the stored write is
//! recorded here at once (as the thread's last commit, and as a commit the
//! next writers have not seen), and its later apply is recognised and not
//! counted twice. No other node's commit of the thread can come below a
//! stored write without being recorded first: the write was stored only
//! because the thread's last commit was the one this node expected.
//!
//! Updated only under the hub lock (lock order: hub, then this), so a
//! check reads the engine's view and this bookkeeping at one instant.

use crate::consistency::{ClientId, Seq};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Threads whose last commit is remembered with no write waiting. Beyond
/// this, idle threads are forgotten: their next write guesses 0 and learns
/// the real last sequence from the conflict answer (one more round trip).
const REMEMBERED_THREADS: usize = 65_536;

/// Commits a thread's [`Ring`] keeps: a forwarded write is decided from
/// the position its own node had seen, a few milliseconds of commits
/// behind this node's view (at most a few dozen on the hottest thread
/// measured); one further back is handed back undecided.
const RING: usize = 1024;
/// Threads with a ring at once; past this, rings of threads with no write
/// waiting are dropped (their next forwarded write goes back undecided).
const RINGS: usize = 1024;

#[derive(Debug, Default)]
struct Lane {
    /// The last commit of the thread this node applied (0: none known).
    last: Seq,
    /// Admitted writes of the thread not finished yet.
    waiting: usize,
    /// Commits of the thread applied while writes were waiting, and which
    /// local client wrote each (`None`: another node's).
    recent: VecDeque<(Seq, Option<ClientId>)>,
    /// Every commit since the thread's first forwarded write, if it had one.
    ring: Option<Ring>,
    /// When a write of the thread was last refused by a bound on this node
    /// when decided again after a conflict.
    refused_at: Option<Instant>,
    /// This node's publisher for the thread waits for another node's
    /// answer to a forward.
    forwarding: bool,
}

/// The thread's latest commits and their writers, for writes other nodes
/// forward: every commit above `complete_after` is in `commits`.
#[derive(Debug)]
struct Ring {
    complete_after: Seq,
    commits: VecDeque<(Seq, Option<ClientId>)>,
}

/// The per-thread bookkeeping of one node.
#[derive(Debug, Default)]
pub(crate) struct Lanes {
    threads: HashMap<Arc<str>, Lane>,
}

/// What a write's order check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Check {
    /// Commits of the thread applied after the write was admitted that its
    /// writer did not make.
    pub unseen_since: u64,
    /// The thread's last commit in this view: the expected last subject
    /// sequence to publish with.
    pub last: Seq,
}

impl Lanes {
    /// A write to `thread` was admitted and is on its way to the publisher.
    pub fn admitted(&mut self, thread: &Arc<str>) {
        self.threads.entry(thread.clone()).or_default().waiting += 1;
    }

    /// A write to `thread` is finished (committed, refused or failed).
    pub fn finished(&mut self, thread: &str) {
        if let Some(l) = self.threads.get_mut(thread) {
            l.waiting = l.waiting.saturating_sub(1);
            if l.waiting == 0 {
                l.recent = VecDeque::new();
            }
        }
    }

    /// Commit `seq` of `thread`, written by local client `writer` (if this
    /// node published it), is known: applied by the node, or acknowledged
    /// as stored to this node's publish. False if it was known already
    /// (a stored write applied later): nothing to count again.
    pub fn recorded(&mut self, thread: &Arc<str>, seq: Seq, writer: Option<ClientId>) -> bool {
        if self.threads.len() >= REMEMBERED_THREADS && !self.threads.contains_key(thread) {
            self.threads.retain(|_, l| l.waiting > 0);
        }
        let l = self.threads.entry(thread.clone()).or_default();
        if seq <= l.last {
            return false;
        }
        l.last = seq;
        if l.waiting > 0 {
            l.recent.push_back((seq, writer));
        }
        if let Some(r) = &mut l.ring {
            r.commits.push_back((seq, writer));
            if r.commits.len() > RING
                && let Some((s, _)) = r.commits.pop_front()
            {
                r.complete_after = s;
            }
        }
        true
    }

    /// A write of `thread` was refused by a bound when decided again after
    /// a conflict: racing other nodes cost it its place.
    pub fn refused_after_conflict(&mut self, thread: &Arc<str>) {
        self.threads.entry(thread.clone()).or_default().refused_at = Some(Instant::now());
    }

    /// Whether a write of `thread` was refused after a conflict within
    /// `within`: its writes then go to the thread's owner.
    pub fn contended(&self, thread: &str, within: std::time::Duration) -> bool {
        self.threads
            .get(thread)
            .and_then(|l| l.refused_at)
            .is_some_and(|at| at.elapsed() < within)
    }

    /// This node's publisher for `thread` starts (`true`) or stops waiting
    /// for a forward's answer.
    pub fn set_forwarding(&mut self, thread: &Arc<str>, on: bool) {
        self.threads.entry(thread.clone()).or_default().forwarding = on;
    }

    /// Whether this node's publisher for `thread` waits for another node's
    /// answer: a forward that comes meanwhile must not wait behind it (the
    /// two nodes would wait on each other).
    pub fn is_forwarding(&self, thread: &str) -> bool {
        self.threads.get(thread).is_some_and(|l| l.forwarding)
    }

    /// A write another node forwarded to `thread` is on its way to the
    /// publisher. `head` is this node's applied head: every commit above
    /// it, and above the thread's last, is recorded from now on.
    pub fn forwarded(&mut self, thread: &Arc<str>, head: Seq) {
        if self.threads.get(thread).is_none_or(|l| l.ring.is_none()) {
            let rings = self.threads.values().filter(|l| l.ring.is_some()).count();
            if rings >= RINGS {
                for l in self.threads.values_mut().filter(|l| l.waiting == 0) {
                    l.ring = None;
                }
            }
        }
        let l = self.threads.entry(thread.clone()).or_default();
        l.waiting += 1;
        let complete_after = l.last.max(head);
        l.ring.get_or_insert_with(|| Ring {
            complete_after,
            commits: VecDeque::new(),
        });
    }

    /// The check for a write another node forwarded: commits of `thread`
    /// above `after` (what its node had counted up to) that `writer` did
    /// not make. `None` if this node cannot tell: it has not recorded
    /// every commit since `after`.
    pub fn check_forwarded(&self, thread: &str, after: Seq, writer: ClientId) -> Option<Check> {
        let l = self.threads.get(thread)?;
        let r = l.ring.as_ref()?;
        if after < r.complete_after {
            return None;
        }
        let from = r.commits.partition_point(|&(s, _)| s <= after);
        let unseen_since = r
            .commits
            .range(from..)
            .filter(|&&(_, w)| w != Some(writer))
            .count() as u64;
        Some(Check {
            unseen_since,
            last: l.last,
        })
    }

    /// The check for a write of `client` to `thread` admitted at head
    /// `admitted_at`. Writes of a thread are checked in admission order, so
    /// commits at or below `admitted_at` are no longer needed.
    pub fn check(&mut self, thread: &str, admitted_at: Seq, client: ClientId) -> Check {
        if let Some(l) = self.threads.get_mut(thread) {
            while l.recent.front().is_some_and(|&(s, _)| s <= admitted_at) {
                l.recent.pop_front();
            }
        }
        self.peek(thread, admitted_at, client)
    }

    /// The same check without forgetting anything: for the writes of a
    /// batch behind its first, which may be checked again (after a
    /// conflict) along with writes admitted before them.
    pub fn peek(&self, thread: &str, admitted_at: Seq, client: ClientId) -> Check {
        let Some(l) = self.threads.get(thread) else {
            return Check {
                unseen_since: 0,
                last: 0,
            };
        };
        let unseen_since = l
            .recent
            .iter()
            .filter(|&&(s, w)| s > admitted_at && w != Some(client))
            .count() as u64;
        Check {
            unseen_since,
            last: l.last,
        }
    }
}

/// The thread's last sequence from a `wrong last sequence: N` answer.
pub(crate) fn conflict_last(error: &str) -> Option<Seq> {
    let rest = &error[error.find("wrong last sequence: ")? + "wrong last sequence: ".len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_counts_other_writers_commits_since_admission() {
        let t: Arc<str> = "t".into();
        let mut l = Lanes::default();
        l.recorded(&t, 3, None);
        l.admitted(&t);
        l.admitted(&t);
        l.recorded(&t, 5, None);
        l.recorded(&t, 6, Some(7));
        l.recorded(&t, 8, Some(9));
        assert_eq!(
            l.check("t", 4, 7),
            Check {
                unseen_since: 2,
                last: 8
            }
        );
        // A later write admitted at 6 no longer counts 5 and 6.
        assert_eq!(l.check("t", 6, 7).unseen_since, 1);
        l.finished("t");
        l.finished("t");
        l.recorded(&t, 10, None);
        assert_eq!(l.check("t", 0, 7).unseen_since, 0);
        assert_eq!(l.check("u", 0, 7).last, 0);
    }

    #[test]
    fn a_peek_counts_like_a_check_and_forgets_nothing() {
        let t: Arc<str> = "t".into();
        let mut l = Lanes::default();
        l.admitted(&t);
        l.admitted(&t);
        l.recorded(&t, 5, None);
        l.recorded(&t, 6, Some(7));
        // A batch's later write (admitted at 5) is peeked...
        assert_eq!(l.peek("t", 5, 7).unseen_since, 0);
        assert_eq!(l.peek("t", 5, 8).unseen_since, 1);
        // ...and its first write (admitted at 4), checked again after a
        // conflict, still counts both commits.
        assert_eq!(l.check("t", 4, 8).unseen_since, 2);
        assert_eq!(l.check("t", 4, 8), l.peek("t", 4, 8));
    }

    #[test]
    fn a_stored_write_counts_once_when_it_is_applied_later() {
        let t: Arc<str> = "t".into();
        let mut l = Lanes::default();
        l.recorded(&t, 3, None);
        l.admitted(&t);
        l.admitted(&t);
        // Another node's commit 4 is applied; then client 7's write,
        // published expecting 4, is acknowledged at 5.
        assert!(l.recorded(&t, 4, None));
        assert!(l.recorded(&t, 5, Some(7)));
        assert_eq!(
            l.check("t", 3, 8),
            Check {
                unseen_since: 2,
                last: 5
            }
        );
        // The consumer now applies 4 and 5: known already.
        assert!(!l.recorded(&t, 4, None));
        assert!(!l.recorded(&t, 5, Some(7)));
        assert_eq!(
            l.check("t", 3, 8),
            Check {
                unseen_since: 2,
                last: 5
            }
        );
        assert!(l.recorded(&t, 6, None));
        assert_eq!(l.check("t", 3, 7).unseen_since, 2);
    }

    #[test]
    fn a_forwarded_write_counts_commits_since_its_nodes_view_from_the_ring() {
        let t: Arc<str> = "t".into();
        let mut l = Lanes::default();
        l.recorded(&t, 3, None);
        // No ring yet: nothing can be decided.
        assert_eq!(l.check_forwarded("t", 3, -5), None);
        // The first forward, with the node's head at 4: every commit above
        // 4 is recorded from now on, whether or not writes wait.
        l.forwarded(&t, 4);
        l.recorded(&t, 5, Some(-5));
        l.recorded(&t, 6, None);
        l.finished("t");
        l.recorded(&t, 7, Some(9));
        // Its node had counted up to 4: 6 and 7 are unseen, 5 is its own.
        assert_eq!(
            l.check_forwarded("t", 4, -5),
            Some(Check {
                unseen_since: 2,
                last: 7
            })
        );
        assert_eq!(l.check_forwarded("t", 6, -5).unwrap().unseen_since, 1);
        assert_eq!(l.check_forwarded("t", 4, -6).unwrap().unseen_since, 3);
        // A view older than the ring: undecided.
        assert_eq!(l.check_forwarded("t", 3, -5), None);
    }

    #[test]
    fn a_ring_that_overflows_cannot_decide_what_it_dropped() {
        let t: Arc<str> = "t".into();
        let mut l = Lanes::default();
        l.forwarded(&t, 0);
        for seq in 1..=(RING as Seq + 10) {
            l.recorded(&t, seq, None);
        }
        assert_eq!(l.check_forwarded("t", 9, 1), None);
        let c = l.check_forwarded("t", 10, 1).unwrap();
        assert_eq!(c.unseen_since, RING as u64);
        assert_eq!(c.last, RING as Seq + 10);
    }

    #[test]
    fn a_thread_is_contended_for_a_while_after_a_refusal_after_a_conflict() {
        let t: Arc<str> = "t".into();
        let within = std::time::Duration::from_secs(60);
        let mut l = Lanes::default();
        l.recorded(&t, 1, None);
        assert!(!l.contended("t", within));
        l.refused_after_conflict(&t);
        assert!(l.contended("t", within));
        assert!(!l.contended("t", std::time::Duration::ZERO));
        assert!(!l.contended("u", within));
    }

    #[test]
    fn the_last_sequence_is_read_from_a_conflict_answer() {
        let e = "wrong last sequence: 42 (code 400, error code 10071)";
        assert_eq!(conflict_last(e), Some(42));
        assert_eq!(conflict_last("wrong last sequence: 0"), Some(0));
        assert_eq!(conflict_last("timed out"), None);
        assert_eq!(conflict_last("wrong last sequence: x"), None);
    }
}
