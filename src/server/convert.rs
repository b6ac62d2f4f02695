//! Between the wire types (`crate::proto`) and the core's types.

use crate::consistency::{
    Batch, Decision, Entry, Micros, Rejection, Submission, SubmissionAck, Verdict,
};
use crate::proto::{self, message_status::StatusCode};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

pub fn server_time(t: Micros) -> proto::ServerTime {
    proto::ServerTime { timestamp: t.0 }
}

/// A `SentMessage` as the core sees it.
pub fn submission(m: proto::SentMessage) -> Submission {
    Submission {
        ack: m.acknowledgement.map(|a| SubmissionAck {
            client: a.client.map(|c| c.id),
            updates_received: a.num_updates_received,
            messages_sent: a.num_messages_sent,
        }),
        thread: m.thread.map(|t| t.id).unwrap_or_default(),
        contents: m.contents,
        timestamp: m.timestamp.map(|t| Micros(t.timestamp)),
    }
}

/// The wire status of a decision.
pub fn message_status(d: &Decision) -> proto::MessageStatus {
    let (code, at) = match d.verdict {
        Verdict::Accepted { at, .. } => (StatusCode::Ok, at),
        Verdict::Rejected { reason, at } => (status_code(&reason), at),
    };
    proto::MessageStatus {
        status_code: code as i32,
        timestamp: Some(server_time(at)),
    }
}

pub fn status_code(r: &Rejection) -> StatusCode {
    match r {
        Rejection::Client(_) => StatusCode::ClientError,
        Rejection::Staleness { .. } => StatusCode::Staleness,
        Rejection::Order { .. } => StatusCode::OrderError,
        Rejection::Numerical { .. } => StatusCode::NumericalError,
        Rejection::Internal => StatusCode::InternalError,
        // Answered as RESOURCE_EXHAUSTED by the service; a MessageStatus is
        // never sent for it, but if one were, the client is the cause.
        Rejection::Limited(_) => StatusCode::ClientError,
    }
}

/// The wire bytes of the Update for `b`, encoded once so that every client
/// that gets the same batch can share them.
///
/// Written straight from the entries, byte for byte what prost makes of
/// the same `proto::Update` (tested below), without first copying every
/// thread, text and sender into one: with thousands of clients flushing at
/// spread-out times the server encodes thousands of batches a second.
pub fn encoded_update(b: &Batch) -> bytes::Bytes {
    let messages: Vec<usize> = b.entries.iter().map(|e| received_len(e)).collect();
    let len = time_field_len(b.current_time.0)
        + time_field_len(b.expiration.0)
        + messages.iter().map(|&n| field_len(n)).sum::<usize>();
    let mut buf = Vec::with_capacity(len);
    put_time_field(1, b.current_time.0, &mut buf);
    put_time_field(2, b.expiration.0, &mut buf);
    for (e, n) in b.entries.iter().zip(messages) {
        put_header(3, n, &mut buf);
        put_str_field(1, &e.thread, &mut buf, true);
        put_str_field(2, &e.contents, &mut buf, false);
        put_time_field(3, e.commit_time.0, &mut buf);
        put_str_field(4, &e.sender, &mut buf, false);
    }
    debug_assert_eq!(buf.len(), len);
    buf.into()
}

// Protobuf wire format for the fields above: every tag is below 16, so each
// key is one byte; a message field is key, length, body; proto3 leaves out
// empty strings and zero integers, but not a present sub-message.

/// Bytes of a length-delimited field whose body is `body` bytes long.
fn field_len(body: usize) -> usize {
    1 + encoded_len_varint(body as u64) + body
}

fn put_header(tag: u32, body: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body as u64, buf);
}

/// A `ServerTime` field: its body is the timestamp, left out when zero.
fn time_body_len(t: i64) -> usize {
    if t == 0 {
        0
    } else {
        1 + encoded_len_varint(t as u64)
    }
}

fn time_field_len(t: i64) -> usize {
    field_len(time_body_len(t))
}

fn put_time_field(tag: u32, t: i64, buf: &mut Vec<u8>) {
    put_header(tag, time_body_len(t), buf);
    if t != 0 {
        encode_key(1, WireType::Varint, buf);
        encode_varint(t as u64, buf);
    }
}

/// A string field, or (`wrapped`) a `Thread` field holding the string as
/// its id: the `Thread` is always there, its empty id is not.
fn str_field_len(s: &str, wrapped: bool) -> usize {
    let inner = if s.is_empty() { 0 } else { field_len(s.len()) };
    match (wrapped, inner) {
        (true, n) => field_len(n),
        (false, 0) => 0,
        (false, n) => n,
    }
}

fn put_str_field(tag: u32, s: &str, buf: &mut Vec<u8>, wrapped: bool) {
    if wrapped {
        let inner = if s.is_empty() { 0 } else { field_len(s.len()) };
        put_header(tag, inner, buf);
        if !s.is_empty() {
            put_header(1, s.len(), buf);
            buf.extend_from_slice(s.as_bytes());
        }
    } else if !s.is_empty() {
        put_header(tag, s.len(), buf);
        buf.extend_from_slice(s.as_bytes());
    }
}

/// Body length of the `ReceivedMessage` for `e`.
fn received_len(e: &Entry) -> usize {
    str_field_len(&e.thread, true)
        + str_field_len(&e.contents, false)
        + time_field_len(e.commit_time.0)
        + str_field_len(&e.sender, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::Seq;
    use proptest::prelude::*;
    use prost::Message;
    use std::sync::Arc;

    /// The reference: the batch as a `proto::Update`, for prost to encode.
    fn update(b: &Batch) -> proto::Update {
        let received = |e: &Arc<Entry>| proto::ReceivedMessage {
            thread: Some(proto::Thread {
                id: e.thread.to_string(),
            }),
            contents: e.contents.clone(),
            server_time: Some(server_time(e.commit_time)),
            sender: e.sender.to_string(),
        };
        proto::Update {
            current_time: Some(server_time(b.current_time)),
            expiration_time: Some(server_time(b.expiration)),
            message: b.entries.iter().map(received).collect(),
        }
    }

    fn entry(seq: Seq, thread: &str, contents: &str, sender: &str, at: i64) -> Arc<Entry> {
        Arc::new(Entry {
            seq,
            thread: thread.into(),
            contents: contents.into(),
            sender: sender.into(),
            commit_time: Micros(at),
        })
    }

    fn batch(entries: Vec<Arc<Entry>>, now: i64, expiration: i64) -> Batch {
        Batch {
            current_time: Micros(now),
            expiration: Micros(expiration),
            entries: entries.into(),
            late: 0,
            after_expiration: false,
            part: 0,
        }
    }

    #[test]
    fn edge_cases_encode_exactly_as_prost_does() {
        let long = "é".repeat(300);
        let cases = [
            batch(vec![], 0, 0),
            batch(vec![], 1_795_000_000_000_000, 1_795_000_010_000_000),
            batch(vec![entry(1, "", "hi", "", 0)], -1, i64::MIN),
            batch(
                vec![
                    entry(1, "t", &long, "ana", 1_795_000_000_000_001),
                    entry(2, &long, "x", &long, i64::MAX),
                ],
                5,
                6,
            ),
        ];
        for b in cases {
            assert_eq!(&encoded_update(&b)[..], &update(&b).encode_to_vec()[..]);
        }
    }

    proptest! {
        #[test]
        fn any_batch_encodes_exactly_as_prost_does(
            now in any::<i64>(),
            expiration in any::<i64>(),
            entries in prop::collection::vec(
                (".{0,3}", ".{0,200}", ".{0,20}", any::<i64>()), 0..20),
        ) {
            let entries = entries
                .iter()
                .enumerate()
                .map(|(i, (t, c, s, at))| entry(i as Seq, t, c, s, *at))
                .collect();
            let b = batch(entries, now, expiration);
            prop_assert_eq!(&encoded_update(&b)[..], &update(&b).encode_to_vec()[..]);
        }
    }
}
