//! The non-interactive modes: `--send TEXT` and `--follow`.

use super::link::{self, Seen};
use super::{ChatArgs, exit, exit_code};
use crate::client::RetryPolicy;
use crate::client::clock::local_micros;
use crate::consistency::Settings;
use crate::consistency::bounds::MAX_THREAD_ID_BYTES;
use crate::proto::message_status::StatusCode;
use std::io::Write;
use std::time::Duration;

/// `--send TEXT`: sends one message (retrying the retryable rejections up to
/// `--retries` times), prints the outcome, and returns the exit code.
pub async fn send(args: &ChatArgs, text: &str) -> u8 {
    if let Err(why) = check_locally(&args.thread, text) {
        eprintln!("CLIENT_ERROR: not sent: {why}");
        return exit::CLIENT_ERROR;
    }
    let options = match args.connect_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::UNREACHABLE;
        }
    };
    // Subscribing first makes the client's seen position current, so an
    // ORDER_ERROR can clear on a retry once it has received the news.
    let mut link = match link::open(&args.server, None, args.name.as_deref(), &options).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::UNREACHABLE;
        }
    };
    if link.sub.next_within(Duration::from_secs(5)).await.is_none() {
        eprintln!("error: the server sent no first Update within 5s");
        return exit::UNREACHABLE;
    }
    link.client.retry = RetryPolicy {
        attempts: args.retries.saturating_add(1),
        ..RetryPolicy::default()
    };
    match link.client.send(&args.thread, text).await {
        Ok(o) if o.status == StatusCode::Ok => {
            println!("OK {}", o.timestamp);
            exit::OK
        }
        Ok(o) => {
            let why = match o.status {
                StatusCode::ClientError => format!(": {}", client_error_reason(text)),
                _ => String::new(),
            };
            eprintln!(
                "{} (server time {}, after {} attempt{}){why}",
                o.status.as_str_name(),
                o.timestamp,
                o.attempts,
                if o.attempts == 1 { "" } else { "s" }
            );
            exit_code(o.status)
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::UNREACHABLE
        }
    }
}

/// What is wrong with a message that no server would accept, found before
/// sending it: the protocol's `CLIENT_ERROR` carries no reason, so the
/// client says what it can check itself.
fn check_locally(thread: &str, text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the message is empty (it needs at least one character)".into());
    }
    if thread.len() > MAX_THREAD_ID_BYTES {
        return Err(format!(
            "the thread name is too long: {} of at most {MAX_THREAD_ID_BYTES} bytes",
            thread.len()
        ));
    }
    Ok(())
}

/// The likely reason for a `CLIENT_ERROR` on a message that passed the
/// local checks. The size limit is the server's (`--max-message-bytes`),
/// which the protocol does not tell clients, so the default is named.
fn client_error_reason(text: &str) -> String {
    let len = text.len();
    let default = Settings::default().max_message_bytes;
    if len > default {
        format!(
            "the message is too long: {len} of at most {default} bytes \
             (the server's default --max-message-bytes)"
        )
    } else {
        format!(
            "the server refused the message as malformed; at {len} bytes it is within \
             the default limit of {default}, so the server may set a lower \
             --max-message-bytes, or this machine's clock may be ahead of the \
             server's by more than its --max-clock-skew"
        )
    }
}

/// One line of `--follow` output.
#[derive(serde::Serialize)]
struct FollowLine<'a> {
    /// The thread ("" is the main room).
    thread: &'a str,
    /// The sender's public name.
    sender: &'a str,
    /// The message text, as sent.
    contents: &'a str,
    /// Commit time on the server's clock, microseconds since the epoch.
    server_time_us: i64,
    /// When this client received it, local clock, microseconds since the epoch.
    received_at_us: i64,
    /// True if it was committed before this stream started (the history in
    /// the first Update).
    history: bool,
}

/// `--follow`: prints every received message as a JSON line until stdout
/// closes; reconnects after a server restart. Returns the exit code.
pub async fn follow(args: &ChatArgs) -> u8 {
    let options = match args.connect_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::UNREACHABLE;
        }
    };
    let servers = &args.server;
    let mut connected_to: Option<String> = None;
    let mut seen = Seen::default();
    let mut connected_before = false;
    let stdout = std::io::stdout();
    loop {
        let after = connected_to.as_deref();
        let link =
            link::open_retrying(servers, after, args.name.as_deref(), &options, |e, wait| {
                eprintln!("-- cannot reach {servers}: {e}; retrying in {wait:?}");
            })
            .await;
        let mut link = match link {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::UNREACHABLE;
            }
        };
        let url = &link.url;
        if connected_before {
            eprintln!("-- reconnected to {url} (as a new client)");
        } else {
            eprintln!("-- connected to {url}");
        }
        connected_to = Some(url.clone());
        connected_before = true;
        let mut first = true;
        let ended = loop {
            match link.sub.next().await {
                Some(Ok(r)) => {
                    let mut out = stdout.lock();
                    for m in &r.update.message {
                        if !seen.fresh(m) {
                            continue;
                        }
                        let line = FollowLine {
                            thread: m.thread.as_ref().map_or("", |t| t.id.as_str()),
                            sender: &m.sender,
                            contents: &m.contents,
                            server_time_us: m.server_time.as_ref().map_or(0, |t| t.timestamp),
                            received_at_us: r.received_at,
                            history: first,
                        };
                        let json = serde_json::to_string(&line).unwrap_or_default();
                        if writeln!(out, "{json}").is_err() {
                            return exit::OK; // stdout closed: the reader is done
                        }
                    }
                    if out.flush().is_err() {
                        return exit::OK;
                    }
                    first = false;
                }
                Some(Err(status)) => break format!("{}: {}", status.code(), status.message()),
                None => break "the server ended the stream".to_owned(),
            }
        };
        eprintln!(
            "-- connection lost at {} ({ended}); reconnecting",
            super::term::local_hms(local_micros())
        );
    }
}
