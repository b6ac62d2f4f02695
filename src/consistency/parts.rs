//! Splitting what one flush (or a client's history) carries into Updates of
//! bounded size.
//!
//! gRPC clients refuse a message over 4 MiB by default, and one flush can
//! hold far more: 1,600 messages of 4 KiB written within one staleness
//! period make a 6.8 MB Update. So the commits of a flush are cut, in commit
//! order, into consecutive parts of at most `max_update_bytes` encoded bytes
//! each, and every part goes out as its own Update. Each part is an Update
//! like any other: it counts in `numUpdatesReceived`, and the client's seen
//! position after it is the highest commit it carries, so acknowledging the
//! first parts of a flush acknowledges exactly the commits they carried.
//!
//! Sizes here are upper bounds of the protobuf encoding (computed from the
//! string lengths, without encoding), so a part never exceeds the limit.

use super::Seq;
use super::bounds::MAX_THREAD_ID_BYTES;
use super::entry::{Entries, Entry};
use std::sync::Arc;

/// The longest sender name in bytes: 64 characters of up to 4 bytes each.
pub const MAX_SENDER_BYTES: usize = 64 * 4;

/// An Update's own fields: `currentTime` and `expirationTime`, each a
/// one-byte key, a one-byte length, and a key plus a varint of at most 10
/// bytes.
const UPDATE_OVERHEAD: usize = 2 * (2 + 11);

/// A `ReceivedMessage` around its strings: its own key and length (up to 6
/// bytes), the `Thread` wrapper's key and length and the id's (12), the keys
/// and lengths of contents and sender (12), and `serverTime` (13).
const MESSAGE_OVERHEAD: usize = 6 + 12 + 12 + 13;

/// At most how many bytes `e` adds to an encoded Update.
pub fn entry_bytes(e: &Entry) -> usize {
    MESSAGE_OVERHEAD + e.thread.len() + e.contents.len() + e.sender.len()
}

/// At most how large an Update holding one message of `max_message_bytes`
/// is (the longest thread id and sender name).
pub fn largest_single_update(max_message_bytes: usize) -> usize {
    UPDATE_OVERHEAD + MESSAGE_OVERHEAD + MAX_THREAD_ID_BYTES + max_message_bytes + MAX_SENDER_BYTES
}

/// One Update's worth of a flush.
#[derive(Debug, Clone)]
pub struct Part {
    /// Commits in order, shared by every client that gets the same part.
    pub entries: Entries,
    /// The seen position the Update gives its client: the highest commit it
    /// carries (for an empty Update, the position it confirms).
    pub pos: Seq,
}

/// Cuts `entries` (in commit order) into parts of at most `limit` encoded
/// bytes, in order; a single entry larger than that gets a part of its own.
/// No entries make one empty part at `empty_pos` (a heartbeat, or an empty
/// history).
pub fn split(entries: &[Arc<Entry>], limit: usize, empty_pos: Seq) -> Vec<Part> {
    if entries.is_empty() {
        return vec![Part {
            entries: Arc::new([]),
            pos: empty_pos,
        }];
    }
    let mut parts = Vec::new();
    let mut start = 0;
    let mut size = UPDATE_OVERHEAD;
    for (i, e) in entries.iter().enumerate() {
        let n = entry_bytes(e);
        if i > start && size + n > limit {
            parts.push(part(&entries[start..i]));
            start = i;
            size = UPDATE_OVERHEAD;
        }
        size += n;
    }
    parts.push(part(&entries[start..]));
    parts
}

fn part(entries: &[Arc<Entry>]) -> Part {
    Part {
        pos: entries.last().map_or(0, |e| e.seq),
        entries: entries.iter().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::Micros;

    fn entry(seq: Seq, bytes: usize) -> Arc<Entry> {
        Arc::new(Entry {
            seq,
            thread: "t".into(),
            contents: "x".repeat(bytes),
            sender: "s".into(),
            commit_time: Micros(1),
        })
    }

    #[test]
    fn parts_keep_commit_order_and_stay_under_the_limit() {
        let entries: Vec<_> = (1..=1600).map(|s| entry(s, 4096)).collect();
        let parts = split(&entries, 1 << 20, 0);
        assert!(parts.len() >= 7, "6.6 MB in 1 MiB parts: {}", parts.len());
        let seqs: Vec<Seq> = parts
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.seq))
            .collect();
        assert_eq!(seqs, (1..=1600).collect::<Vec<_>>());
        for p in &parts {
            let size: usize =
                UPDATE_OVERHEAD + p.entries.iter().map(|e| entry_bytes(e)).sum::<usize>();
            assert!(size <= 1 << 20);
            assert_eq!(p.pos, p.entries.last().unwrap().seq);
        }
    }

    #[test]
    fn an_entry_above_the_limit_travels_alone_and_nothing_is_empty() {
        let entries = vec![entry(1, 10), entry(2, 5000), entry(3, 10)];
        let parts = split(&entries, 1000, 0);
        let lens: Vec<usize> = parts.iter().map(|p| p.entries.len()).collect();
        assert_eq!(lens, [1, 1, 1]);
        assert_eq!(split(&[], 1000, 7).len(), 1);
        assert_eq!(split(&[], 1000, 7)[0].pos, 7);
    }
}
