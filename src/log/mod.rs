//! The ordered message log behind one trait. The engine assigns commit
//! sequence numbers; the log stores entries in that order, and answers the
//! history question at start-up.
//!
//! - [`memory`]: the in-memory log (`--storage memory`): gone on restart.
//! - [`sqlite`]: the durable embedded log (`--storage durable`, the default):
//!   SQLite in WAL mode, one transaction and one fsync per batch.
//! - [`nats`]: the NATS JetStream stream shared by a cluster of chat nodes
//!   (`--storage nats`): connecting, creating or checking the stream, and
//!   how an entry is laid out in a message.
//! - [`health`]: storage health counters, read by `/readyz` (and metrics).

pub mod health;
pub mod memory;
pub mod nats;
pub mod sqlite;

use crate::consistency::{Entry, Seq};
use std::sync::Arc;

pub use health::StorageHealth;

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("message log: {0}")]
pub struct LogError(pub String);

/// An append-only, ordered log of committed messages.
///
/// One owner calls it at a time (the group-commit writer thread, or the hub
/// under its lock for the in-memory log), hence `&mut self`.
pub trait Log: Send + 'static {
    /// Stores `entries`, whose sequence numbers continue the log in order,
    /// atomically: after `Ok` all of them are as durable as this log makes
    /// anything; after `Err` the caller must treat none of them as stored and
    /// call [`Log::recover`] before appending again.
    fn append(&mut self, entries: &[Arc<Entry>]) -> Result<(), LogError>;
    /// The last stored sequence number (0 if empty).
    fn head(&mut self) -> Result<Seq, LogError>;
    /// Up to `n` most recent entries, oldest first.
    fn recent(&mut self, n: usize) -> Result<Vec<Entry>, LogError>;
    /// After a failure (and as the periodic health probe while failing):
    /// makes the log usable again, holding exactly the entries up to
    /// `durable`. Anything above `durable` that a failed append may still
    /// have left on disk (an fsync that reported failure after the data got
    /// there) is removed, because its writers were told `INTERNAL_ERROR` and
    /// the next commits reuse those sequence numbers. `Ok` means a real write
    /// went through.
    fn recover(&mut self, durable: Seq) -> Result<(), LogError>;
}
