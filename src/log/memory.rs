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
                return Err(LogError(format!(
                    "append of seq {} after head {}",
                    e.seq,
                    self.head + i as Seq
                )));
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
