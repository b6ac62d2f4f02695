//! The in-memory log: fast, and gone on restart. It keeps the most recent
//! `capacity` entries so a long-running server does not grow without limit.

use super::{Log, LogError};
use crate::consistency::{Entry, Seq};
use std::collections::VecDeque;
use std::sync::Arc;

pub struct MemoryLog {
    /// Most entries kept; older ones are forgotten.
    capacity: usize,
    /// The last appended seq; survives the entries' eviction.
    head: Seq,
    /// The most recent entries, oldest first.
    entries: VecDeque<Arc<Entry>>,
}

impl MemoryLog {
    pub fn new(capacity: usize) -> Self {
        MemoryLog {
            capacity: capacity.max(1),
            head: 0,
            entries: VecDeque::new(),
        }
    }
}

impl Log for MemoryLog {
    fn append(&mut self, entries: &[Arc<Entry>]) -> Result<(), LogError> {
        // Check the whole batch first: all or nothing.
        for (i, e) in entries.iter().enumerate() {
            if e.seq != self.head + 1 + i as Seq {
                return Err(LogError::OutOfOrder {
                    seq: e.seq,
                    head: self.head + i as Seq,
                });
            }
        }
        for e in entries {
            self.head = e.seq;
            self.entries.push_back(e.clone());
            if self.entries.len() > self.capacity {
                self.entries.pop_front();
            }
        }
        Ok(())
    }

    fn head(&mut self) -> Result<Seq, LogError> {
        Ok(self.head)
    }

    fn recent(&mut self, n: usize) -> Result<Vec<Entry>, LogError> {
        let skip = self.entries.len().saturating_sub(n);
        Ok(self
            .entries
            .iter()
            .skip(skip)
            .map(|e| (**e).clone())
            .collect())
    }

    fn recover(&mut self, durable: Seq) -> Result<(), LogError> {
        while self.head > durable {
            self.entries.pop_back();
            self.head -= 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::Micros;

    fn entry(seq: Seq) -> Arc<Entry> {
        Arc::new(Entry {
            seq,
            thread: "".into(),
            contents: format!("m{seq}"),
            sender: "s".into(),
            commit_time: Micros(seq as i64),
        })
    }

    #[test]
    fn appends_continue_the_log_all_or_nothing_within_capacity() {
        let mut log = MemoryLog::new(3);
        log.append(&[entry(1), entry(2)]).unwrap();
        // A gap anywhere in the batch refuses the whole batch.
        assert!(log.append(&[entry(3), entry(5)]).is_err());
        assert_eq!(log.head().unwrap(), 2);
        log.append(&[entry(3), entry(4)]).unwrap();
        let seqs: Vec<Seq> = log.recent(10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3, 4], "capacity 3 keeps the newest");
        log.recover(3).unwrap();
        assert_eq!(log.head().unwrap(), 3);
        assert_eq!(log.recent(1).unwrap()[0].seq, 3);
    }
}
