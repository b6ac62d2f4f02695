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

/// Threads whose last commit is remembered with no write waiting. Beyond
/// this, idle threads are forgotten: their next write guesses 0 and learns
/// the real last sequence from the conflict answer (one more round trip).
const REMEMBERED_THREADS: usize = 65_536;

#[derive(Debug, Default)]
struct Lane {
    /// The last commit of the thread this node applied (0: none known).
    last: Seq,
    /// Admitted writes of the thread not finished yet.
    waiting: usize,
    /// Commits of the thread applied while writes were waiting, and which
    /// local client wrote each (`None`: another node's).
    recent: VecDeque<(Seq, Option<ClientId>)>,
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
        true
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
    fn the_last_sequence_is_read_from_a_conflict_answer() {
        let e = "wrong last sequence: 42 (code 400, error code 10071)";
        assert_eq!(conflict_last(e), Some(42));
        assert_eq!(conflict_last("wrong last sequence: 0"), Some(0));
        assert_eq!(conflict_last("timed out"), None);
        assert_eq!(conflict_last("wrong last sequence: x"), None);
    }
}
