//! Traffic for the end-to-end Prometheus check (`tests/e2e/prometheus_e2e.py`).
//!
//! Against a running server it first makes every kind of event the dashboards
//! and alerts watch happen once, asserting each through the client's eyes:
//! a rejection of every kind (order, staleness, client, numerical), an
//! acknowledgement-timeout drop, and bound changes through the admin API
//! (the default and one thread). It then prints `READY` and keeps a steady
//! load going (two writers on the main room and thread `ops`, a reader that
//! acknowledges late so there is always some lag, and a bound change of
//! thread `ops` every few seconds) until its standard input closes or
//! `--max-seconds` pass.
//!
//! ```text
//! cargo run --example e2e_traffic -- --grpc http://127.0.0.1:50051 \
//!     --admin 127.0.0.1:9090 [--admin-token T] [--max-seconds 300]
//! ```
//!
//! The server should run with `--order 3 --numerical 20` (what the
//! assertions below expect) and a short `--ack-timeout`.

use dyconit_chat::client::{ChatClient, RetryPolicy};
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::proto::{Acknowledgement, Client, ServerTime};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The order bound the server must run with.
const ORDER: u64 = 3;
/// The numerical bound the server must run with.
const NUMERICAL: u64 = 20;

struct Args {
    grpc: String,
    admin: SocketAddr,
    token: Option<String>,
    max: Duration,
}

fn args() -> Result<Args, String> {
    let mut grpc = None;
    let mut admin = None;
    let mut token = std::env::var("DYCONIT_ADMIN_TOKEN").ok();
    let mut max = Duration::from_secs(300);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--grpc" => grpc = Some(value()?),
            "--admin" => admin = Some(value()?.parse().map_err(|e| format!("--admin: {e}"))?),
            "--admin-token" => token = Some(value()?),
            "--max-seconds" => {
                max = Duration::from_secs(
                    value()?
                        .parse()
                        .map_err(|e| format!("--max-seconds: {e}"))?,
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        grpc: grpc.ok_or("--grpc URL is required")?,
        admin: admin.ok_or("--admin ADDR is required")?,
        token,
        max,
    })
}

/// Fails the run with a message.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// One HTTP/1.1 request to the admin API; returns the status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("admin connect: {e}"))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("admin write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .await
        .map_err(|e| format!("admin read: {e}"))?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or("admin: no HTTP response")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("admin: no status")?;
    Ok((status, rest.to_owned()))
}

/// A bound change through the admin API, which must succeed.
async fn put_bounds(a: &Args, path: &str, body: &str) -> Result<(), String> {
    let (status, text) = http(a.admin, "PUT", path, a.token.as_deref(), body).await?;
    ensure!(status == 200, "PUT {path} {body}: {status} {text}");
    Ok(())
}

async fn client(a: &Args, name: &str, retry: RetryPolicy) -> Result<ChatClient, String> {
    let mut c = ChatClient::connect(&a.grpc, Some(name))
        .await
        .map_err(|e| format!("connect {name}: {e}"))?;
    c.retry = retry;
    Ok(c)
}

/// A client that streams and acknowledges automatically; its Updates are
/// read and dropped.
async fn subscribed(a: &Args, name: &str, retry: RetryPolicy) -> Result<ChatClient, String> {
    let c = client(a, name, retry).await?;
    let mut sub = c
        .subscribe()
        .await
        .map_err(|e| format!("subscribe {name}: {e}"))?;
    sub.next_within(Duration::from_secs(5))
        .await
        .ok_or(format!("{name}: no first Update"))?
        .map_err(|e| format!("{name}: {e}"))?;
    tokio::spawn(async move { while sub.next().await.is_some() {} });
    Ok(c)
}

async fn send(c: &ChatClient, thread: &str, text: &str) -> Result<StatusCode, String> {
    c.send(thread, text)
        .await
        .map(|o| o.status)
        .map_err(|e| format!("send {text:?}: {e}"))
}

/// Every kind of event, once, each checked as the client sees it.
async fn scenario(a: &Args) -> Result<(), String> {
    let writer = subscribed(a, "e2e-writer", RetryPolicy::none()).await?;

    // ORDER_ERROR: a client that never reads misses ORDER + 1 commits.
    let blind = client(a, "e2e-blind", RetryPolicy::none()).await?;
    for i in 0..=ORDER {
        let s = send(&writer, "", &format!("w{i}")).await?;
        ensure!(s == StatusCode::Ok, "writer message {i}: {s:?}");
    }
    let s = send(&blind, "", "unseen commits").await?;
    ensure!(
        s == StatusCode::OrderError,
        "blind writer: {s:?}, want ORDER_ERROR"
    );
    eprintln!("e2e_traffic: ORDER_ERROR seen");

    // STALENESS: a timestamp ten seconds old.
    let mut m = writer.message("", "from the past", writer.next_number());
    m.timestamp = Some(ServerTime {
        timestamp: m.timestamp.map_or(0, |t| t.timestamp) - 10_000_000,
    });
    let st = writer
        .rpc()
        .send_message(m)
        .await
        .map_err(|e| format!("stale send: {e}"))?
        .into_inner();
    ensure!(
        st.status_code == StatusCode::Staleness as i32,
        "stale message: {}, want STALENESS",
        st.status_code
    );
    eprintln!("e2e_traffic: STALENESS seen");

    // CLIENT_ERROR: an id the server never handed out.
    let mut m = writer.message("", "who am I", 1);
    if let Some(ack) = m.acknowledgement.as_mut() {
        ack.client = Some(Client { id: 1 });
    }
    let st = writer
        .rpc()
        .send_message(m)
        .await
        .map_err(|e| format!("unknown-id send: {e}"))?
        .into_inner();
    ensure!(
        st.status_code == StatusCode::ClientError as i32,
        "unknown id: {}, want CLIENT_ERROR",
        st.status_code
    );
    eprintln!("e2e_traffic: CLIENT_ERROR seen");

    // A failed RPC, for the panels that break calls down by gRPC code.
    let ack = Acknowledgement {
        client: Some(Client { id: 1 }),
        num_updates_received: 0,
        num_messages_sent: 0,
    };
    match writer.rpc().acknowlegde(ack).await {
        Err(s) if s.code() == tonic::Code::NotFound => {}
        other => return Err(format!("ack of an unknown id: {other:?}, want NOT_FOUND")),
    }

    // NUMERICAL_ERROR: a reader that streams and never acknowledges holds
    // the thread back; at most NUMERICAL commits later writes are refused.
    let mute = client(a, "e2e-mute", RetryPolicy::none()).await?;
    let mut stream = mute
        .rpc()
        .receive_updates(Client { id: mute.id() })
        .await
        .map_err(|e| format!("mute stream: {e}"))?
        .into_inner();
    stream
        .message()
        .await
        .map_err(|e| format!("mute first Update: {e}"))?
        .ok_or("mute: stream ended at once")?;
    let mut numerical = false;
    for i in 0..=NUMERICAL {
        match send(&writer, "", &format!("n{i}")).await? {
            StatusCode::Ok => {}
            StatusCode::NumericalError => {
                numerical = true;
                break;
            }
            other => return Err(format!("numerical phase message {i}: {other:?}")),
        }
    }
    ensure!(
        numerical,
        "no NUMERICAL_ERROR after {} writes",
        NUMERICAL + 1
    );
    eprintln!("e2e_traffic: NUMERICAL_ERROR seen");

    // The mute reader is dropped for not acknowledging (ack timeout): its
    // stream ends with UNAVAILABLE. Bounded by a deadline, not a sleep.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Err("mute stream ended with OK".to_owned()),
                Err(status) => return Ok(status),
            }
        }
    })
    .await
    .map_err(|_| "mute reader not dropped within 30 s".to_owned())??;
    ensure!(
        ended.code() == tonic::Code::Unavailable && ended.message().contains("acknowledgement"),
        "mute stream ended with {ended:?}, want an acknowledgement timeout"
    );
    eprintln!("e2e_traffic: ack-timeout drop seen");

    // Bound changes: the default, and a thread of its own.
    put_bounds(a, "/api/v1/bounds/default", r#"{"staleness": "250ms"}"#).await?;
    put_bounds(
        a,
        "/api/v1/bounds/threads/ops",
        r#"{"staleness": "300ms", "numerical": 40, "order": 6}"#,
    )
    .await?;
    let (status, body) = http(a.admin, "GET", "/api/v1/bounds", None, "").await?;
    ensure!(
        status == 200 && body.contains("\"ops\"") && body.contains("250ms"),
        "GET /api/v1/bounds after the changes: {status} {body}"
    );
    eprintln!("e2e_traffic: bound changes applied");
    Ok(())
}

/// A reader that acknowledges everything but its latest Update, every
/// 300 ms: it always lags a little, never long enough to be dropped while
/// Updates keep coming. Reconnects if it is dropped anyway.
async fn laggard(a: Arc<Args>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(c) = client(&a, "e2e-laggard", RetryPolicy::none()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(stream) = c.rpc().receive_updates(Client { id: c.id() }).await else {
            continue;
        };
        let mut stream = stream.into_inner();
        let mut received = 0i64;
        let mut acked = 0i64;
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(_)) => received += 1,
                    Ok(None) | Err(_) => break,
                },
                _ = tick.tick() => {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let upto = received - 1;
                    if upto > acked {
                        let ack = Acknowledgement {
                            client: Some(Client { id: c.id() }),
                            num_updates_received: upto,
                            num_messages_sent: 0,
                        };
                        if c.rpc().acknowlegde(ack).await.is_err() {
                            break;
                        }
                        acked = upto;
                    }
                }
            }
        }
        eprintln!("e2e_traffic: laggard stream ended; reconnecting");
    }
}

/// A writer alternating between the main room and thread `ops`.
async fn steady_writer(c: ChatClient, name: &'static str, stop: Arc<AtomicBool>) {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let thread = if i.is_multiple_of(2) { "" } else { "ops" };
        if let Err(e) = c.send(thread, &format!("{name} {i}")).await {
            eprintln!("e2e_traffic: {name}: {e}");
        }
        i += 1;
        // The workload's pace (about 20 messages/s from each writer).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(a: Args) -> Result<(), String> {
    let started = Instant::now();
    scenario(&a).await?;
    let a = Arc::new(a);
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(laggard(a.clone(), stop.clone()));
    for name in ["e2e-steady-1", "e2e-steady-2"] {
        let c = subscribed(&a, name, RetryPolicy::default()).await?;
        tokio::spawn(steady_writer(c, name, stop.clone()));
    }
    println!("READY");

    // Until stdin closes (the harness is done) or the time is up.
    let (eof_tx, mut eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        let _ = eof_tx.send(());
    });
    let mut flip = tokio::time::interval(Duration::from_secs(5));
    let mut wide = false;
    loop {
        tokio::select! {
            _ = &mut eof_rx => break,
            _ = tokio::time::sleep(a.max.saturating_sub(started.elapsed())) => {
                eprintln!("e2e_traffic: --max-seconds reached");
                break;
            }
            _ = flip.tick() => {
                // A bound change every few seconds keeps the bound-change
                // annotation and panels fed.
                wide = !wide;
                let body = if wide { r#"{"staleness": "400ms", "numerical": 40, "order": 6}"# } else { r#"{"staleness": "300ms", "numerical": 40, "order": 6}"# };
                put_bounds(&a, "/api/v1/bounds/threads/ops", body).await?;
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("e2e_traffic: {e}");
            return ExitCode::from(2);
        }
    };
    match run(a).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("e2e_traffic: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
