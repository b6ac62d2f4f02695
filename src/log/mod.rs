//! The ordered message log behind one trait. The single-node server commits
//! in the engine and appends here in the same order; the store answers the
//! history question at start-up.
//!
//! - [`memory`]: the in-memory log (`--storage memory`).

pub mod memory;

use crate::consistency::{Entry, Seq};

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("message log: {0}")]
pub struct LogError(pub String);

/// An append-only, ordered log of committed messages.
pub trait Log: Send + Sync + 'static {
    /// Appends entries whose sequence numbers continue the log, in order.
    fn append(&self, entries: &[&Entry]) -> Result<(), LogError>;
    /// The last committed sequence number (0 if empty).
    fn head(&self) -> Result<Seq, LogError>;
    /// Up to `n` most recent entries, oldest first.
    fn recent(&self, n: usize) -> Result<Vec<Entry>, LogError>;
}
