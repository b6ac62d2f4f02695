//! The load generator's view of an `Update`: it needs only each message's
//! commit time and the bench id in its contents, so it reads them straight
//! from the protobuf wire format instead of decoding every string. This keeps
//! the generator cheap enough to share a 2-core machine with the server at a
//! million deliveries per second.

use crate::codec::{Pair, Prost};
use crate::proto::Client;
use bytes::Buf;
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};

/// What the bench takes from one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// `ReceivedMessage.serverTime`: the commit time, server clock, µs.
    pub server_time: i64,
    /// The bench id at the start of the contents, if it has one.
    pub id: Option<u64>,
}

/// The messages of one `Update`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateSummary {
    /// Each message, in order.
    pub messages: Vec<Delivered>,
    /// `Update.currentTime` (0 if absent).
    pub current_time: i64,
    /// `Update.expirationTime` (0 if absent).
    pub expiration_time: i64,
    /// Size of the encoded `Update` as received: the protobuf message,
    /// without the 5-byte gRPC frame header and HTTP/2 framing.
    pub wire_bytes: usize,
}

/// The `timestamp` of an encoded `ServerTime`.
fn server_time(mut t: &[u8]) -> Result<i64, WireError> {
    let mut out = 0;
    while !t.is_empty() {
        if let (1, None, v) = field(&mut t)? {
            out = v as i64;
        }
    }
    Ok(out)
}

/// Width of the bench id at the start of every message it sends.
pub const ID_CHARS: usize = 16;

/// The contents of bench message `id`: the id in hex, padded with `x` to
/// `size` bytes (at least [`ID_CHARS`]).
pub fn contents(id: u64, size: usize) -> String {
    let mut s = format!("{id:016x}");
    s.extend(std::iter::repeat_n('x', size.saturating_sub(ID_CHARS)));
    s
}

/// The bench id at the start of `contents` (lower-case hex, as [`contents`]
/// writes it), if there is one. Runs for every message received, a million
/// times a second: no UTF-8 check, no string parsing.
fn parse_id(contents: &[u8]) -> Option<u64> {
    let head = contents.get(..ID_CHARS)?;
    head.iter().try_fold(0u64, |id, &c| {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(id << 4 | u64::from(digit))
    })
}

/// A malformed message on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError;

fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first().ok_or(WireError)?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(WireError)
}

/// Reads one field: its number and, for length-delimited fields, the bytes.
fn field<'a>(buf: &mut &'a [u8]) -> Result<(u64, Option<&'a [u8]>, u64), WireError> {
    let key = varint(buf)?;
    let (number, wire_type) = (key >> 3, key & 7);
    match wire_type {
        0 => Ok((number, None, varint(buf)?)),
        1 | 5 => {
            let n = if wire_type == 1 { 8 } else { 4 };
            if buf.len() < n {
                return Err(WireError);
            }
            *buf = &buf[n..];
            Ok((number, None, 0))
        }
        2 => {
            let len = varint(buf)? as usize;
            if buf.len() < len {
                return Err(WireError);
            }
            let (value, rest) = buf.split_at(len);
            *buf = rest;
            Ok((number, Some(value), 0))
        }
        _ => Err(WireError),
    }
}

/// Reads an encoded `Update`.
pub fn parse_update(mut buf: &[u8]) -> Result<UpdateSummary, WireError> {
    // Bench messages take ~150 bytes on the wire: one allocation, not a
    // doubling series.
    let mut out = UpdateSummary {
        messages: Vec::with_capacity(buf.len() / 128 + 1),
        wire_bytes: buf.len(),
        ..UpdateSummary::default()
    };
    while !buf.is_empty() {
        let (number, value, _) = field(&mut buf)?;
        match (number, value) {
            (1, Some(t)) => out.current_time = server_time(t)?,
            (2, Some(t)) => out.expiration_time = server_time(t)?,
            _ => {}
        }
        if number == 3
            && let Some(mut m) = value
        {
            let mut d = Delivered {
                server_time: 0,
                id: None,
            };
            while !m.is_empty() {
                match field(&mut m)? {
                    (2, Some(c), _) => d.id = parse_id(c),
                    (3, Some(t), _) => d.server_time = server_time(t)?,
                    _ => {}
                }
            }
            out.messages.push(d);
        }
    }
    Ok(out)
}

/// The client-side codec of `ReceiveUpdates` for the bench: encodes the
/// `Client` request with prost, reads Updates with [`parse_update`].
pub type SummaryCodec = Pair<Prost<Client>, SummaryDecoder>;

/// Decodes Updates into [`UpdateSummary`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct SummaryDecoder;

impl Decoder for SummaryDecoder {
    type Item = UpdateSummary;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<UpdateSummary>, Status> {
        // The message is one contiguous chunk in tonic's buffer; copy only
        // if it is not.
        let n = src.remaining();
        let parsed = if src.chunk().len() == n {
            let parsed = parse_update(src.chunk());
            src.advance(n);
            parsed
        } else {
            parse_update(&src.copy_to_bytes(n))
        };
        parsed
            .map(Some)
            .map_err(|_| Status::internal("malformed Update"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ReceivedMessage, ServerTime, Thread, Update};
    use prost::Message;

    #[test]
    fn reads_what_prost_writes() {
        let msg = |t: i64, text: String| ReceivedMessage {
            thread: Some(Thread { id: "t1".into() }),
            contents: text,
            server_time: Some(ServerTime { timestamp: t }),
            sender: "bench-1".into(),
        };
        let u = Update {
            current_time: Some(ServerTime { timestamp: 5 }),
            expiration_time: Some(ServerTime { timestamp: 6 }),
            message: vec![
                msg(1_795_000_000_000_001, contents(42, 100)),
                msg(1_795_000_000_000_002, "hello".into()),
            ],
        };
        let s = parse_update(&u.encode_to_vec()).unwrap();
        assert_eq!((s.current_time, s.expiration_time), (5, 6));
        assert_eq!(s.wire_bytes, u.encoded_len());
        assert_eq!(
            s.messages,
            vec![
                Delivered {
                    server_time: 1_795_000_000_000_001,
                    id: Some(42)
                },
                Delivered {
                    server_time: 1_795_000_000_000_002,
                    id: None
                },
            ]
        );
        assert_eq!(contents(42, 100).len(), 100);
        assert!(
            parse_update(&Update::default().encode_to_vec())
                .unwrap()
                .messages
                .is_empty()
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let u = Update {
            message: vec![ReceivedMessage {
                contents: contents(7, 40),
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = u.encode_to_vec();
        for cut in 1..bytes.len() {
            assert!(parse_update(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
