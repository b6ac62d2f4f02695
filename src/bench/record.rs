//! `bench --record FILE`: what every client saw and did, streamed to disk in
//! a compact binary form for `dyconit-chat check`.
//!
//! The file is the magic line [`MAGIC`] and then events, each a tag byte and
//! LEB128 varints (signed values zigzag-coded). Every event carries the local
//! time it happened, written as the difference to the previous event's time;
//! the server times inside an event are written relative to its own time or
//! to the Update's `currentTime`, so a delivery of a bench message takes
//! about 6 bytes and ten million deliveries about 60 MB.
//!
//! The order of events in the file is the order they were appended, under
//! one lock. That order respects causality within the process: an
//! acknowledgement or a send is appended *before* its RPC is issued, a status
//! or an Update *after* it arrived. The checker leans on this (an
//! acknowledgement that comes after a status in the file cannot have reached
//! the server before that decision).
//!
//! Memory is bounded: events are encoded into one buffer that a writer
//! thread swaps out and writes; if the disk falls `MAX_BUFFER` behind,
//! appenders wait for it.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The first bytes of a recording (format version 1).
pub const MAGIC: &[u8; 8] = b"DYCREC1\n";

/// The buffer is handed to the writer thread at this size (or every 100 ms).
const FLUSH_AT: usize = 1 << 20;

/// Appenders wait while this much is not yet written.
const MAX_BUFFER: usize = 64 << 20;

const TAG_META: u8 = 1;
const TAG_THREAD: u8 = 2;
const TAG_CONNECT: u8 = 3;
const TAG_SEND: u8 = 4;
const TAG_STATUS: u8 = 5;
const TAG_UPDATE: u8 = 6;
const TAG_ACK_SENT: u8 = 7;
const TAG_ACK_REPLY: u8 = 8;
const TAG_END: u8 = 9;
const TAG_FAILOVER: u8 = 10;

/// One message of a received Update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The bench id in its contents; `None` for a message the bench did not
    /// send (other traffic).
    pub id: Option<u64>,
    /// `ReceivedMessage.serverTime`: its commit time, server clock, µs.
    pub server_time: i64,
}

/// How a client's part in the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// The run was over and the bench stopped it: it stayed active.
    Stopped,
    /// Its stream ended or failed while the run went on.
    Lost,
}

/// One recorded event. `client` is the bench's index of the client (never
/// its capability id); `time` is the local wall clock in µs since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Facts about the run as JSON: the header (`"kind": "start"`) and the
    /// footer (`"kind": "end"`, with the server's bound change log).
    Meta(Value),
    /// Names thread number `index` for the events after it.
    Thread { index: u32, name: String },
    /// The client got its `ServerInfo`.
    Connect { client: u32, time: i64 },
    /// A `SentMessage`, appended before it was handed to the transport.
    Send {
        client: u32,
        /// `numMessagesSent`: its number among the client's messages.
        n: i64,
        thread: u32,
        /// The bench id in its contents.
        id: u64,
        /// `SentMessage.timestamp`.
        timestamp: i64,
        /// `numUpdatesReceived` in its acknowledgement.
        acked: i64,
        /// 0: a unary `SendMessage`; k > 0: the client's k-th
        /// `SendMessages` stream.
        stream: u32,
        time: i64,
    },
    /// The `MessageStatus` of message `id`.
    Status {
        id: u64,
        code: i32,
        /// `MessageStatus.timestamp`: the commit time of an OK.
        server_time: i64,
        time: i64,
    },
    /// An Update, as received.
    Update {
        client: u32,
        time: i64,
        current_time: i64,
        expiration: i64,
        messages: Vec<Delivery>,
    },
    /// An `Acknowlegde` RPC, appended before it was issued.
    AckSent { client: u32, count: i64, time: i64 },
    /// Its answer: the server time, or `None` if the RPC failed.
    AckReply {
        client: u32,
        count: i64,
        server_time: Option<i64>,
        time: i64,
    },
    /// The client's end, and why.
    End {
        client: u32,
        time: i64,
        kind: EndKind,
        reason: String,
    },
    /// Client `to` (a new client on another node) continues client `from`,
    /// whose node was lost: it sends again, unchanged, those of `from`'s
    /// messages whose statuses were lost with the node.
    Failover { from: u32, to: u32, time: i64 },
}

fn put_u(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_i(buf: &mut Vec<u8>, v: i64) {
    put_u(buf, zigzag(v));
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_u(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// The encoder's state: the time and the bench id of the previous event.
/// Ids are written as the difference to the previous one: a run's ids are a
/// random base plus a counter, so the differences are small.
#[derive(Debug, Default)]
struct Encoder {
    last_time: i64,
    last_id: u64,
}

impl Encoder {
    fn time(&mut self, buf: &mut Vec<u8>, t: i64) {
        put_i(buf, t.wrapping_sub(self.last_time));
        self.last_time = t;
    }

    fn id(&mut self, buf: &mut Vec<u8>, id: u64) {
        put_i(buf, id.wrapping_sub(self.last_id) as i64);
        self.last_id = id;
    }

    fn encode(&mut self, buf: &mut Vec<u8>, e: &Event) {
        match e {
            Event::Meta(v) => {
                buf.push(TAG_META);
                put_bytes(buf, v.to_string().as_bytes());
            }
            Event::Thread { index, name } => {
                buf.push(TAG_THREAD);
                put_u(buf, u64::from(*index));
                put_bytes(buf, name.as_bytes());
            }
            Event::Connect { client, time } => {
                buf.push(TAG_CONNECT);
                put_u(buf, u64::from(*client));
                self.time(buf, *time);
            }
            Event::Send { .. } => self.send(buf, e),
            Event::Status {
                id,
                code,
                server_time,
                time,
            } => {
                buf.push(TAG_STATUS);
                self.id(buf, *id);
                put_u(buf, *code as u32 as u64);
                self.time(buf, *time);
                put_i(buf, server_time.wrapping_sub(*time));
            }
            Event::Update {
                client,
                time,
                current_time,
                expiration,
                messages,
            } => self.update(
                buf,
                *client,
                *time,
                *current_time,
                *expiration,
                messages.iter().copied(),
            ),
            Event::AckSent {
                client,
                count,
                time,
            } => {
                buf.push(TAG_ACK_SENT);
                put_u(buf, u64::from(*client));
                put_i(buf, *count);
                self.time(buf, *time);
            }
            Event::AckReply { .. } | Event::End { .. } => self.other(buf, e),
            Event::Failover { from, to, time } => {
                buf.push(TAG_FAILOVER);
                put_u(buf, u64::from(*from));
                put_u(buf, u64::from(*to));
                self.time(buf, *time);
            }
        }
    }

    fn send(&mut self, buf: &mut Vec<u8>, e: &Event) {
        if let Event::Send {
            client,
            n,
            thread,
            id,
            timestamp,
            acked,
            stream,
            time,
        } = e
        {
            buf.push(TAG_SEND);
            put_u(buf, u64::from(*client));
            put_i(buf, *n);
            put_u(buf, u64::from(*thread));
            self.id(buf, *id);
            put_i(buf, *acked);
            put_u(buf, u64::from(*stream));
            self.time(buf, *time);
            put_i(buf, timestamp.wrapping_sub(*time));
        }
    }

    /// An Update; its bench messages take an id and a commit time relative
    /// to `currentTime` each.
    fn update(
        &mut self,
        buf: &mut Vec<u8>,
        client: u32,
        time: i64,
        current_time: i64,
        expiration: i64,
        messages: impl ExactSizeIterator<Item = Delivery>,
    ) {
        buf.push(TAG_UPDATE);
        put_u(buf, u64::from(client));
        self.time(buf, time);
        put_i(buf, current_time.wrapping_sub(time));
        put_i(buf, expiration.wrapping_sub(current_time));
        put_u(buf, messages.len() as u64);
        for m in messages {
            // 0: not a bench message; else 1 + the zigzagged id difference
            // (the one difference that would wrap, i64::MIN, cannot occur
            // between two ids of runs that count up from random bases).
            match m.id {
                Some(id) => {
                    put_u(
                        buf,
                        zigzag(id.wrapping_sub(self.last_id) as i64).wrapping_add(1),
                    );
                    self.last_id = id;
                }
                None => put_u(buf, 0),
            }
            put_i(buf, current_time.wrapping_sub(m.server_time));
        }
    }

    fn other(&mut self, buf: &mut Vec<u8>, e: &Event) {
        match e {
            Event::AckReply {
                client,
                count,
                server_time,
                time,
            } => {
                buf.push(TAG_ACK_REPLY);
                put_u(buf, u64::from(*client));
                put_i(buf, *count);
                self.time(buf, *time);
                match server_time {
                    Some(t) => {
                        buf.push(1);
                        put_i(buf, t.wrapping_sub(*time));
                    }
                    None => buf.push(0),
                }
            }
            Event::End {
                client,
                time,
                kind,
                reason,
            } => {
                buf.push(TAG_END);
                put_u(buf, u64::from(*client));
                self.time(buf, *time);
                buf.push(match kind {
                    EndKind::Stopped => 0,
                    EndKind::Lost => 1,
                });
                put_bytes(buf, reason.as_bytes());
            }
            _ => {}
        }
    }
}

/// What the appenders and the writer thread share.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    encoder: Encoder,
    /// No more events: the writer writes what is left and stops.
    closed: bool,
    /// Writing failed; events are dropped from then on.
    failed: Option<String>,
    events: u64,
}

#[derive(Default)]
struct Shared {
    // Lock rule: held only to encode one event or to swap the buffer out;
    // never across a write to the file.
    buffer: Mutex<Buffer>,
    /// Signalled when the buffer is worth writing or closed.
    more: Condvar,
    /// Signalled when the writer took the buffer (room for appenders).
    room: Condvar,
}

/// Writes events to a file as they happen. Shared by every client task.
pub struct Recorder {
    shared: std::sync::Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<std::io::Result<u64>>>>,
}

impl Recorder {
    /// Creates (truncates) `path` and starts the writer thread.
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        let mut file = std::fs::File::create(path)?;
        file.write_all(MAGIC)?;
        let shared = std::sync::Arc::new(Shared::default());
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("bench-record".into())
            .spawn(move || write_loop(&s, file))?;
        Ok(Recorder {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.shared.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one event.
    pub fn push(&self, e: &Event) {
        let mut g = self.lock();
        while g.bytes.len() >= MAX_BUFFER && g.failed.is_none() && !g.closed {
            g = self.shared.room.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        if g.failed.is_some() || g.closed {
            return;
        }
        let Buffer { bytes, encoder, .. } = &mut *g;
        encoder.encode(bytes, e);
        g.events += 1;
        if g.bytes.len() >= FLUSH_AT {
            self.shared.more.notify_one();
        }
    }

    /// Appends an Update without copying its messages first.
    pub fn update(
        &self,
        client: u32,
        time: i64,
        current_time: i64,
        expiration: i64,
        m: impl ExactSizeIterator<Item = Delivery>,
    ) {
        let mut g = self.lock();
        if g.failed.is_some() || g.closed {
            return;
        }
        let Buffer { bytes, encoder, .. } = &mut *g;
        encoder.update(bytes, client, time, current_time, expiration, m);
        g.events += 1;
        if g.bytes.len() >= FLUSH_AT {
            self.shared.more.notify_one();
        }
    }

    /// Writes what is left and closes the file. Returns the number of events
    /// and bytes written.
    pub fn finish(&self) -> anyhow::Result<(u64, u64)> {
        let events = {
            let mut g = self.lock();
            g.closed = true;
            g.events
        };
        self.shared.more.notify_one();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(handle) = handle else {
            anyhow::bail!("the recording was already finished");
        };
        let written = handle
            .join()
            .map_err(|_| anyhow::anyhow!("the recording thread panicked"))??;
        if let Some(e) = self.lock().failed.take() {
            anyhow::bail!("writing the recording: {e}");
        }
        Ok((events, written))
    }
}

impl Drop for Recorder {
    /// A run that ended early (an error) still leaves a readable file: what
    /// was recorded is written out.
    fn drop(&mut self) {
        let open = self.writer.lock().map(|w| w.is_some()).unwrap_or(false);
        if open {
            let _ = self.finish();
        }
    }
}

/// The writer thread: takes the buffer when it is big enough (or every
/// 100 ms) and writes it.
fn write_loop(shared: &Shared, file: std::fs::File) -> std::io::Result<u64> {
    let mut out = file;
    let mut spare = Vec::with_capacity(FLUSH_AT * 2);
    let mut written = MAGIC.len() as u64;
    loop {
        let closed = {
            let mut g = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            while g.bytes.len() < FLUSH_AT && !g.closed {
                let (ng, timeout) = shared
                    .more
                    .wait_timeout(g, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner());
                g = ng;
                if timeout.timed_out() {
                    break;
                }
            }
            std::mem::swap(&mut g.bytes, &mut spare);
            g.closed
        };
        shared.room.notify_all();
        if let Err(e) = out.write_all(&spare) {
            let mut g = shared.buffer.lock().unwrap_or_else(|e| e.into_inner());
            g.failed = Some(e.to_string());
            shared.room.notify_all();
            return Err(e);
        }
        written += spare.len() as u64;
        spare.clear();
        if closed {
            out.flush()?;
            out.sync_all()?;
            return Ok(written);
        }
    }
}

/// Why a recording could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a recording (no {:?} header)", String::from_utf8_lossy(MAGIC))]
    NotARecording,
    #[error("truncated or corrupt at byte {0}")]
    Corrupt(u64),
}

/// Reads events back, streaming.
pub struct Reader<R: Read> {
    src: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Bytes consumed before `buf`.
    offset: u64,
    last_time: i64,
    last_id: u64,
}

impl Reader<std::fs::File> {
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        Reader::new(std::fs::File::open(path)?)
    }
}

impl<R: Read> Reader<R> {
    pub fn new(src: R) -> Result<Self, ReadError> {
        let mut r = Reader {
            src,
            buf: vec![0; 1 << 20],
            pos: 0,
            end: 0,
            offset: 0,
            last_time: 0,
            last_id: 0,
        };
        for &b in MAGIC {
            if r.byte()? != Some(b) {
                return Err(ReadError::NotARecording);
            }
        }
        Ok(r)
    }

    fn corrupt(&self) -> ReadError {
        ReadError::Corrupt(self.offset + self.pos as u64)
    }

    fn byte(&mut self) -> Result<Option<u8>, ReadError> {
        if self.pos == self.end {
            self.offset += self.end as u64;
            self.pos = 0;
            self.end = 0;
            loop {
                match self.src.read(&mut self.buf) {
                    Ok(n) => {
                        self.end = n;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if self.end == 0 {
                return Ok(None);
            }
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(Some(b))
    }

    fn need(&mut self) -> Result<u8, ReadError> {
        self.byte()?.ok_or_else(|| self.corrupt())
    }

    fn u(&mut self) -> Result<u64, ReadError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.need()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.corrupt())
    }

    fn u32(&mut self) -> Result<u32, ReadError> {
        let v = self.u()?;
        u32::try_from(v).map_err(|_| self.corrupt())
    }

    fn i(&mut self) -> Result<i64, ReadError> {
        Ok(unzigzag(self.u()?))
    }

    fn id(&mut self) -> Result<u64, ReadError> {
        self.last_id = self.last_id.wrapping_add(self.i()? as u64);
        Ok(self.last_id)
    }

    fn time(&mut self) -> Result<i64, ReadError> {
        let d = self.i()?;
        self.last_time = self.last_time.wrapping_add(d);
        Ok(self.last_time)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, ReadError> {
        let n = self.u()? as usize;
        if n > 64 << 20 {
            return Err(self.corrupt());
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.need()?);
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, ReadError> {
        String::from_utf8(self.bytes()?).map_err(|_| self.corrupt())
    }

    /// The next event, or `None` at the end of the file.
    pub fn next_event(&mut self) -> Result<Option<Event>, ReadError> {
        let Some(tag) = self.byte()? else {
            return Ok(None);
        };
        let e = match tag {
            TAG_META => {
                let v = serde_json::from_slice(&self.bytes()?).map_err(|_| self.corrupt())?;
                Event::Meta(v)
            }
            TAG_THREAD => Event::Thread {
                index: self.u32()?,
                name: self.string()?,
            },
            TAG_CONNECT => Event::Connect {
                client: self.u32()?,
                time: self.time()?,
            },
            TAG_SEND => self.read_send()?,
            TAG_STATUS => {
                let id = self.id()?;
                let code = self.u()? as u32 as i32;
                let time = self.time()?;
                let server_time = time.wrapping_add(self.i()?);
                Event::Status {
                    id,
                    code,
                    server_time,
                    time,
                }
            }
            TAG_UPDATE => self.read_update()?,
            TAG_ACK_SENT => Event::AckSent {
                client: self.u32()?,
                count: self.i()?,
                time: self.time()?,
            },
            TAG_ACK_REPLY | TAG_END => self.read_other(tag)?,
            TAG_FAILOVER => Event::Failover {
                from: self.u32()?,
                to: self.u32()?,
                time: self.time()?,
            },
            _ => return Err(self.corrupt()),
        };
        Ok(Some(e))
    }

    fn read_send(&mut self) -> Result<Event, ReadError> {
        let client = self.u32()?;
        let n = self.i()?;
        let thread = self.u32()?;
        let id = self.id()?;
        let acked = self.i()?;
        let stream = self.u32()?;
        let time = self.time()?;
        let timestamp = time.wrapping_add(self.i()?);
        Ok(Event::Send {
            client,
            n,
            thread,
            id,
            timestamp,
            acked,
            stream,
            time,
        })
    }

    fn read_update(&mut self) -> Result<Event, ReadError> {
        let client = self.u32()?;
        let time = self.time()?;
        let current_time = time.wrapping_add(self.i()?);
        let expiration = current_time.wrapping_add(self.i()?);
        let count = self.u()?;
        if count > 1 << 24 {
            return Err(self.corrupt());
        }
        let mut messages = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let id = match self.u()? {
                0 => None,
                v => {
                    let d = unzigzag(v - 1);
                    self.last_id = self.last_id.wrapping_add(d as u64);
                    Some(self.last_id)
                }
            };
            let server_time = current_time.wrapping_sub(self.i()?);
            messages.push(Delivery { id, server_time });
        }
        Ok(Event::Update {
            client,
            time,
            current_time,
            expiration,
            messages,
        })
    }

    fn read_other(&mut self, tag: u8) -> Result<Event, ReadError> {
        let client = self.u32()?;
        if tag == TAG_ACK_REPLY {
            let count = self.i()?;
            let time = self.time()?;
            let server_time = match self.need()? {
                0 => None,
                _ => Some(time.wrapping_add(self.i()?)),
            };
            return Ok(Event::AckReply {
                client,
                count,
                server_time,
                time,
            });
        }
        let time = self.time()?;
        let kind = match self.need()? {
            0 => EndKind::Stopped,
            _ => EndKind::Lost,
        };
        Ok(Event::End {
            client,
            time,
            kind,
            reason: self.string()?,
        })
    }
}

/// Writes `events` to `path` in one go (tests build and mutate recordings
/// with this).
pub fn write_all(path: &Path, events: &[Event]) -> std::io::Result<()> {
    let mut buf = MAGIC.to_vec();
    let mut enc = Encoder::default();
    for e in events {
        enc.encode(&mut buf, e);
    }
    std::fs::write(path, buf)
}

/// Reads every event of `path` into memory (for tests and small files).
pub fn read_all(path: &Path) -> Result<Vec<Event>, ReadError> {
    let mut r = Reader::open(path)?;
    let mut out = Vec::new();
    while let Some(e) = r.next_event()? {
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Event> {
        let t = 1_795_000_000_000_000;
        vec![
            Event::Meta(serde_json::json!({"kind": "start", "x": [1, 2]})),
            Event::Thread {
                index: 1,
                name: "bench-0".into(),
            },
            Event::Connect { client: 3, time: t },
            Event::Send {
                client: 3,
                n: 1,
                thread: 1,
                id: 1 << 40,
                timestamp: t + 5,
                acked: 1,
                stream: 2,
                time: t + 4,
            },
            Event::Status {
                id: 1 << 40,
                code: 0,
                server_time: t + 90,
                time: t + 100,
            },
            Event::Update {
                client: 0,
                time: t + 99, // earlier than the previous event: negative delta
                current_time: t + 95,
                expiration: t + 10_000_095,
                messages: vec![
                    Delivery {
                        id: Some(1 << 40),
                        server_time: t + 90,
                    },
                    Delivery {
                        id: None,
                        server_time: t + 91,
                    },
                ],
            },
            Event::AckSent {
                client: 0,
                count: 2,
                time: t + 120,
            },
            Event::AckReply {
                client: 0,
                count: 2,
                server_time: Some(t + 130),
                time: t + 140,
            },
            Event::AckReply {
                client: 0,
                count: 3,
                server_time: None,
                time: t + 150,
            },
            Event::End {
                client: 0,
                time: t + 200,
                kind: EndKind::Lost,
                reason: "the server ended the stream".into(),
            },
            Event::Failover {
                from: 0,
                to: 7,
                time: t + 210,
            },
        ]
    }

    #[test]
    fn events_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.bin");
        let events = sample();
        write_all(&path, &events).unwrap();
        assert_eq!(read_all(&path).unwrap(), events);
        // The streaming recorder writes the same bytes.
        let path2 = dir.path().join("r2.bin");
        let rec = Recorder::create(&path2).unwrap();
        for e in &events {
            rec.push(e);
        }
        let (n, bytes) = rec.finish().unwrap();
        assert_eq!(n, events.len() as u64);
        assert_eq!(
            std::fs::read(&path2).unwrap(),
            std::fs::read(&path).unwrap()
        );
        assert_eq!(bytes, std::fs::metadata(&path2).unwrap().len());
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.bin");
        write_all(&path, &sample()).unwrap();
        let full = std::fs::read(&path).unwrap();
        for cut in 0..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let r = read_all(&path);
            if cut < MAGIC.len() {
                assert!(matches!(r, Err(ReadError::NotARecording)), "cut {cut}");
            }
        }
        std::fs::write(&path, b"hello world").unwrap();
        assert!(matches!(read_all(&path), Err(ReadError::NotARecording)));
    }
}
