//! What the bench writes into a recording (`bench --record FILE`): a header
//! with the run's parameters and the server's bounds, every client's sends,
//! statuses, Updates and acknowledgements, and a footer with the bounds at
//! the end and the server's bound change log, so `dyconit-chat check` can
//! verify the run from the file alone.

use super::BenchArgs;
use super::record::{Delivery, EndKind, Event, Recorder};
use super::wire::UpdateSummary;
use crate::client::clock::local_micros;
use crate::proto::{MessageStatus, SentMessage};
use anyhow::Context;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An open recording of one bench run.
pub struct RunRecording {
    recorder: Recorder,
    /// Thread name -> its number in the recording, numbered as they first
    /// appear. Lock rule: held only to look a name up (and record a new one).
    threads: std::sync::Mutex<HashMap<String, u32>>,
}

/// `GET path` on the admin port at `admin_url` (`http://host:port`), as
/// JSON. Plain HTTP/1.0 over a socket: the one call does not warrant an HTTP
/// client dependency.
pub async fn admin_get(admin_url: &str, path: &str) -> anyhow::Result<Value> {
    let uri: http::Uri = admin_url.parse().context("invalid admin URL")?;
    let authority = uri.authority().context("the admin URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect((authority.host(), port)).await?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut body = Vec::new();
        s.take(16 << 20).read_to_end(&mut body).await?;
        anyhow::Ok(body)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("the admin API did not answer within 10 s")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        anyhow::bail!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    serde_json::from_str(body).with_context(|| format!("GET {path}: not JSON"))
}

/// The server's bounds (`GET /api/v1/bounds`), or why they are unknown.
async fn bounds(admin_url: &str) -> Value {
    match admin_get(admin_url, "/api/v1/bounds").await {
        Ok(v) => v,
        Err(e) => json!({"unknown": format!("{e:#}")}),
    }
}

impl RunRecording {
    /// Creates the file and writes the header: the run's parameters and the
    /// server's bounds now.
    pub async fn start(
        path: &std::path::Path,
        args: &BenchArgs,
        url: &str,
        admin_url: &str,
    ) -> anyhow::Result<RunRecording> {
        let params = json!({
            "server": url,
            "spawned_server": args.spawn_server,
            "server_args": if args.spawn_server { args.server_args() } else { Vec::new() },
            "clients": args.clients,
            "rate_per_s": args.rate,
            "rate_steps": args.rate_steps,
            "writers": args.writers,
            "send_only_writers": args.send_only_writers,
            "threads": args.threads,
            "message_bytes": args.size,
            "duration_s": args.duration.as_secs_f64(),
            "mode": args.mode,
            "thread_prefix": args.thread_prefix,
        });
        let recorder = Recorder::create(path)
            .with_context(|| format!("creating the recording {}", path.display()))?;
        let at = local_micros();
        let bounds = bounds(admin_url).await;
        recorder.push(&Event::Meta(json!({
            "kind": "start",
            "at": at,
            "params": params,
            "bounds": bounds,
        })));
        Ok(RunRecording {
            recorder,
            threads: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The number of thread `name`; a new name is recorded first.
    fn thread(&self, name: &str) -> u32 {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&t) = threads.get(name) {
            return t;
        }
        let t = threads.len() as u32;
        threads.insert(name.to_owned(), t);
        self.recorder.push(&Event::Thread {
            index: t,
            name: name.to_owned(),
        });
        t
    }

    pub fn connected(&self, client: usize) {
        self.recorder.push(&Event::Connect {
            client: client as u32,
            time: local_micros(),
        });
    }

    /// A message about to be handed to the transport (`stream`: on the
    /// client's `SendMessages` stream).
    pub fn send(&self, client: usize, m: &SentMessage, id: u64, stream: bool) {
        let name = m.thread.as_ref().map_or("", |t| t.id.as_str());
        let thread = self.thread(name);
        let ack = m.acknowledgement.as_ref();
        self.recorder.push(&Event::Send {
            client: client as u32,
            n: ack.map_or(0, |a| a.num_messages_sent),
            thread,
            id,
            timestamp: m.timestamp.as_ref().map_or(0, |t| t.timestamp),
            acked: ack.map_or(0, |a| a.num_updates_received),
            stream: u32::from(stream),
            time: local_micros(),
        });
    }

    pub fn status(&self, id: u64, s: &MessageStatus) {
        self.recorder.push(&Event::Status {
            id,
            code: s.status_code,
            server_time: s.timestamp.as_ref().map_or(0, |t| t.timestamp),
            time: local_micros(),
        });
    }

    /// An Update received at `time`.
    pub fn update(&self, client: usize, time: i64, u: &UpdateSummary) {
        // Delivered and Delivery are the same two fields; the recorder's own
        // type keeps the file format independent of the wire reader.
        let messages = u.messages.iter().map(|m| Delivery {
            id: m.id,
            server_time: m.server_time,
        });
        self.recorder.update(
            client as u32,
            time,
            u.current_time,
            u.expiration_time,
            messages,
        );
    }

    pub fn ack_sent(&self, client: usize, count: i64) {
        self.recorder.push(&Event::AckSent {
            client: client as u32,
            count,
            time: local_micros(),
        });
    }

    pub fn ack_reply(&self, client: usize, count: i64, server_time: Option<i64>) {
        self.recorder.push(&Event::AckReply {
            client: client as u32,
            count,
            server_time,
            time: local_micros(),
        });
    }

    /// Client `to` continues client `from`, whose node was lost.
    pub fn failover(&self, from: usize, to: usize) {
        self.recorder.push(&Event::Failover {
            from: from as u32,
            to: to as u32,
            time: local_micros(),
        });
    }

    pub fn end(&self, client: usize, lost: Option<String>) {
        self.recorder.push(&Event::End {
            client: client as u32,
            time: local_micros(),
            kind: if lost.is_some() {
                EndKind::Lost
            } else {
                EndKind::Stopped
            },
            reason: lost.unwrap_or_default(),
        });
    }

    /// Writes the footer (the bounds now, with the change log) and closes the
    /// file. Returns events and bytes written.
    pub async fn finish(&self, admin_url: &str) -> anyhow::Result<(u64, u64)> {
        let bounds = bounds(admin_url).await;
        self.recorder.push(&Event::Meta(json!({
            "kind": "end",
            "at": local_micros(),
            "bounds": bounds,
        })));
        self.recorder.finish()
    }
}

/// Closes the run's recording and says where it is.
pub(super) async fn finish(
    r: &RunRecording,
    args: &BenchArgs,
    admin_url: &str,
) -> anyhow::Result<()> {
    let (events, bytes) = r.finish(admin_url).await?;
    if let Some(path) = &args.record {
        eprintln!(
            "recorded {events} events ({:.1} MB) to {}; verify with: dyconit-chat check {}",
            bytes as f64 / 1e6,
            path.display(),
            path.display()
        );
    }
    Ok(())
}
