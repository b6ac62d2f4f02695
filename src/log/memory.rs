//! The in-memory log: fast, and gone on restart. It keeps the most recent
//! `capacity` entries so a long-running server does not grow without limit.

use super::{Log, LogError};
use crate::consistency::{Entry, Seq};
use std::collections::VecDeque;
use std::sync::Mutex;

pub struct MemoryLog {
    /// Most entries kept; older ones are forgotten.
    capacity: usize,
    /// `(head, recent entries)`: the head survives the entries' eviction.
    inner: Mutex<(Seq, VecDeque<Entry>)>,
}

impl MemoryLog {
    pub fn new(capacity: usize) -> Self {
        MemoryLog {
            capacity: capacity.max(1),
            inner: Mutex::new((0, VecDeque::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Seq, VecDeque<Entry>)> {
        // A panic elsewhere cannot leave the deque half-updated: recover.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Log for MemoryLog {
    fn append(&self, entries: &[&Entry]) -> Result<(), LogError> {
        let mut g = self.lock();
        for e in entries {
            if e.seq != g.0 + 1 {
                return Err(LogError(format!(
                    "append of seq {} after head {}",
                    e.seq, g.0
                )));
            }
            g.0 = e.seq;
            g.1.push_back((*e).clone());
            if g.1.len() > self.capacity {
                g.1.pop_front();
            }
        }
        Ok(())
    }

    fn head(&self) -> Result<Seq, LogError> {
        Ok(self.lock().0)
    }

    fn recent(&self, n: usize) -> Result<Vec<Entry>, LogError> {
        let g = self.lock();
        let skip = g.1.len().saturating_sub(n);
        Ok(g.1.iter().skip(skip).cloned().collect())
    }
}
