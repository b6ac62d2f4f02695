//! The commit history of one conit that the bounds need: which commit
//! sequence numbers belong to it and when they committed.

use super::Seq;
use super::time::Micros;
use std::collections::VecDeque;

/// Commits of one conit newer than the oldest position any connected client
/// may still be measured from; older ones are trimmed.
#[derive(Debug, Default)]
pub struct ConitLog {
    /// `(seq, commit time)`, ascending by seq.
    commits: VecDeque<(Seq, Micros)>,
}

impl ConitLog {
    pub fn push(&mut self, seq: Seq, at: Micros) {
        debug_assert!(self.commits.back().is_none_or(|&(s, _)| s < seq));
        self.commits.push_back((seq, at));
    }

    /// How many of this conit's commits have a sequence above `pos`.
    pub fn count_after(&self, pos: Seq) -> u64 {
        (self.commits.len() - self.commits.partition_point(|&(s, _)| s <= pos)) as u64
    }

    /// How many of this conit's commits have a sequence in `(after, upto]`.
    pub fn count_between(&self, after: Seq, upto: Seq) -> u64 {
        let lo = self.commits.partition_point(|&(s, _)| s <= after);
        let hi = self.commits.partition_point(|&(s, _)| s <= upto);
        hi.saturating_sub(lo) as u64
    }

    /// Forgets commits above `pos` (they were discarded, never visible).
    pub fn truncate_after(&mut self, pos: Seq) {
        let keep = self.commits.partition_point(|&(s, _)| s <= pos);
        self.commits.truncate(keep);
    }

    /// The first commit of this conit above `pos`, if any.
    pub fn first_after(&self, pos: Seq) -> Option<(Seq, Micros)> {
        let i = self.commits.partition_point(|&(s, _)| s <= pos);
        self.commits.get(i).copied()
    }

    /// Forgets commits at or below `floor`.
    pub fn trim(&mut self, floor: Seq) {
        let n = self.commits.partition_point(|&(s, _)| s <= floor);
        self.commits.drain(..n);
    }

    pub fn is_empty(&self) -> bool {
        self.commits.is_empty()
    }
}
