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
use std::path::PathBuf;
use std::sync::Arc;

pub use health::StorageHealth;

/// Why the log could not do what was asked. The message names the file and
/// the step; the underlying I/O or SQLite error is its `source`, and
/// [`LogError::report`] spells out the whole chain for logs and `/readyz`.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The data directory or database could not be opened or prepared.
    #[error("opening {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    /// Another server holds the data directory's lock file.
    #[error("data directory {} is in use by another dyconit-chat server", dir.display())]
    Locked { dir: PathBuf },
    /// A write (an append or a recovery probe) did not go through.
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    /// Reading stored messages failed.
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    /// The log holds less than was acknowledged as stored: the file was
    /// replaced or lost data.
    #[error(
        "{} ends at seq {head}, but seq {durable} was stored: the database was replaced or lost data",
        path.display()
    )]
    Lost {
        path: PathBuf,
        head: Seq,
        durable: Seq,
    },
    /// The NATS cluster log (`--storage nats`) could not do it; the text
    /// says what and why.
    #[error("{0}")]
    Cluster(String),
    /// An append that does not continue the log (a bug in the caller).
    #[error("append of seq {seq} after head {head}")]
    OutOfOrder { seq: Seq, head: Seq },
}

/// What went wrong underneath a [`LogError`].
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The file is a database, but not one of ours, or of a newer schema.
    #[error("{0}")]
    Refused(String),
    /// The writer's connection was closed by an earlier failure.
    #[error("the connection is closed after an earlier failure")]
    Closed,
}

impl LogError {
    /// The error and every cause under it, `: `-separated, as logs and
    /// `/readyz` show it.
    pub fn report(&self) -> String {
        let mut text = format!("message log: {self}");
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            // SQLite's errors repeat their inner error's text: say it once.
            let piece = cause.to_string();
            if !text.ends_with(&piece) {
                text.push_str(": ");
                text.push_str(&piece);
            }
            next = cause.source();
        }
        text
    }
}

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
