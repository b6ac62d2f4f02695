//! A committed message as the core keeps it, shared (by reference count)
//! between the history window, the per-client batches and the log writer.

use super::Seq;
use super::time::Micros;
use std::sync::Arc;

/// One committed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Commit sequence number: one strictly increasing order for all.
    pub seq: Seq,
    /// Thread id ("" is the main room); names the conit.
    pub thread: Arc<str>,
    pub contents: String,
    /// The sender's public name.
    pub sender: Arc<str>,
    /// Commit time; `MessageStatus.timestamp` and `ReceivedMessage.serverTime`.
    pub commit_time: Micros,
}

/// Entries of one batch, shared by every client that gets it.
pub type Entries = Arc<[Arc<Entry>]>;
