//! The interactive chat: a line interface. Messages scroll above; on a
//! terminal, the line below them is a status line (server clock offset,
//! lease left, latest rejection and its retry) and the bottom line is where
//! you type. Without a terminal (a pipe), the same information comes as
//! plain lines, the status as `-- status:` lines on events and on `/status`.

use super::link::{self, Link, Seen};
use super::term::{self, clip, local_hms, sanitize};
use super::{ChatArgs, exit};
use crate::client::clock::local_micros;
use crate::client::{ChatClient, ClientError, Received, RetryPolicy, Subscription};
use crate::proto::message_status::StatusCode;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;
use tokio::sync::mpsc;

/// What background tasks tell the interface.
enum Note {
    /// A (re)connection succeeded.
    Connected(Box<Link>),
    /// A connection attempt failed; the next one is in `retry_in`.
    ConnectFailed { error: String, retry_in: Duration },
    /// Connecting cannot work (bad address or name).
    ConnectGaveUp(String),
    /// A send was rejected; `retry_in` is `None` if it was the last attempt.
    Rejected {
        code: StatusCode,
        at: i64,
        attempt: u32,
        attempts: u32,
        retry_in: Option<Duration>,
    },
    /// A send was committed after `attempt` attempts.
    Committed { attempt: u32 },
    /// A send failed without a status (connection trouble).
    SendFailed(String),
}

/// One thing the main loop reacts to.
enum Event {
    Input(Option<String>),
    Note(Note),
    Update(Option<Result<Received, ClientError>>),
    Tick,
    Interrupt,
}

/// The latest rejection, for the status line.
#[derive(Debug, Clone)]
struct LastRejection {
    /// Its status.
    code: StatusCode,
    /// The server time of the decision.
    at: i64,
    /// Which attempt it answered.
    attempt: u32,
    /// The attempts allowed.
    attempts: u32,
    /// What came of it.
    outcome: RetryOutcome,
}

#[derive(Debug, Clone, Copy)]
enum RetryOutcome {
    /// A retry follows after this wait.
    RetryingIn(Duration),
    /// A later attempt was committed.
    CommittedOn(u32),
    /// It was the last attempt.
    GaveUp,
}

/// Where output goes: a terminal with a status line, or plain lines.
enum Screen {
    /// A terminal of `rows` x `cols`: messages scroll in rows 1..rows-2,
    /// row rows-1 is the status line, the last row is the input line.
    Tty { rows: u16, cols: u16 },
    /// Plain lines (stdout is not a terminal).
    Plain,
}

impl Screen {
    fn new() -> Screen {
        match term::size() {
            Some((rows, cols)) if term::is_tty(1) && term::is_tty(0) && rows >= 4 => {
                let s = Screen::Tty { rows, cols };
                s.setup();
                s
            }
            _ => Screen::Plain,
        }
    }

    fn setup(&self) {
        if let Screen::Tty { rows, .. } = *self {
            print!("\x1b[2J\x1b[1;{}r\x1b[{rows};1H", rows - 2);
            flush();
        }
    }

    /// Follows a terminal resize.
    fn refresh_size(&mut self) -> bool {
        if let (Screen::Tty { rows, cols }, Some((r, c))) = (&mut *self, term::size())
            && (r, c) != (*rows, *cols)
            && r >= 4
        {
            (*rows, *cols) = (r, c);
            print!("\x1b[1;{}r", r - 2);
            return true;
        }
        false
    }

    /// Prints a line in the message area.
    fn line(&self, text: &str) {
        match self {
            Screen::Tty { rows, .. } => {
                print!("\x1b7\x1b[{};1H\n{text}\x1b8", rows - 2);
            }
            Screen::Plain => println!("{text}"),
        }
        flush();
    }

    /// Shows the status: on the status line of a terminal; as a plain line
    /// only if `plain_too`.
    fn status(&self, text: &str, plain_too: bool) {
        match self {
            Screen::Tty { rows, cols } => {
                print!(
                    "\x1b7\x1b[{};1H\x1b[2K\x1b[7m{}\x1b[0m\x1b8",
                    rows - 1,
                    clip(text, *cols as usize)
                );
                flush();
            }
            Screen::Plain if plain_too => {
                println!("-- status: {text}");
                flush();
            }
            Screen::Plain => {}
        }
    }

    /// Draws a fresh input prompt.
    fn prompt(&self, thread: &str) {
        if let Screen::Tty { rows, .. } = self {
            print!("\x1b[{rows};1H\x1b[2K{}> ", thread_label(thread));
            flush();
        }
    }

    /// Leaves the terminal as it was found.
    fn restore(&self) {
        if let Screen::Tty { rows, .. } = self {
            println!("\x1b[r\x1b[{rows};1H\x1b[2K");
            flush();
        }
    }
}

fn flush() {
    let _ = std::io::stdout().flush();
}

/// How a thread is shown: `#name`, or `main` for the main room.
fn thread_label(thread: &str) -> String {
    if thread.is_empty() {
        "main".to_owned()
    } else {
        format!("#{}", sanitize(thread))
    }
}

fn short_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// The interface state.
struct App<'a> {
    /// The command-line flags (server URL, name).
    args: &'a ChatArgs,
    /// Where output goes.
    screen: Screen,
    /// The thread messages are written to.
    thread: String,
    /// Threads seen (in messages, or written to) and their message counts.
    threads: BTreeMap<String, u64>,
    /// Messages already shown, so a replayed history is not shown twice.
    seen: Seen,
    /// The connected client, if connected.
    client: Option<ChatClient>,
    /// `expirationTime` of the latest Update (server clock, microseconds).
    lease_until: Option<i64>,
    /// The latest rejection of a send.
    last_rejection: Option<LastRejection>,
    /// What the connection is doing, for the status line.
    link_state: String,
    /// Whether a connection was made before (to say "reconnected").
    was_connected: bool,
    /// The server of the latest connection: a reconnect tries the next one
    /// of the `--server` list first.
    connected_to: Option<String>,
    /// Whether the last connection attempt failed (to report a run of
    /// failures once).
    failing: bool,
    /// Where background tasks report to.
    notes: mpsc::UnboundedSender<Note>,
}

impl App<'_> {
    /// The status: who and where, lease left, the latest rejection and its
    /// retry, the server clock offset. Most important first, as a narrow
    /// terminal clips the end.
    fn status_text(&self) -> String {
        let mut parts = vec![self.link_state.clone()];
        let Some(c) = &self.client else {
            parts.push(self.rejection_text());
            return parts.join(" | ");
        };
        parts.push(match self.lease_until {
            Some(until) => {
                let left = until - c.clock().server_now();
                if left > 0 {
                    format!(
                        "lease {}",
                        short_duration(Duration::from_micros(left as u64))
                    )
                } else {
                    "lease EXPIRED".to_owned()
                }
            }
            None => "lease -".to_owned(),
        });
        parts.push(self.rejection_text());
        parts.push(match c.clock().sample() {
            Some(s) => format!(
                "clock {:+.2}ms ±{:.2}ms",
                s.offset as f64 / 1000.0,
                s.uncertainty as f64 / 1000.0
            ),
            None => "clock unknown".to_owned(),
        });
        parts.join(" | ")
    }

    fn rejection_text(&self) -> String {
        let Some(r) = &self.last_rejection else {
            return "no rejections".to_owned();
        };
        let what = match r.outcome {
            RetryOutcome::RetryingIn(d) => format!("retry in {}", short_duration(d)),
            RetryOutcome::CommittedOn(n) => format!("OK on try {n}"),
            RetryOutcome::GaveUp => "gave up".to_owned(),
        };
        format!(
            "rejected {} at {} (try {}/{}), {what}",
            r.code.as_str_name(),
            local_hms(r.at),
            r.attempt,
            r.attempts
        )
    }

    fn show_status(&self, plain_too: bool) {
        self.screen.status(&self.status_text(), plain_too);
    }

    fn connect_in_background(&self) {
        let url = self.args.server.clone();
        let after = self.connected_to.clone();
        let name = self.args.name.clone();
        let notes = self.notes.clone();
        // A CA file that cannot be read is reported like an unreachable
        // server, by the first connection attempt.
        let options = self.args.connect_options();
        tokio::spawn(async move {
            let options = match options {
                Ok(o) => o,
                Err(e) => {
                    let _ = notes.send(Note::ConnectFailed {
                        error: e.to_string(),
                        retry_in: std::time::Duration::ZERO,
                    });
                    return;
                }
            };
            let result = link::open_retrying(
                &url,
                after.as_deref(),
                name.as_deref(),
                &options,
                |e, wait| {
                    let _ = notes.send(Note::ConnectFailed {
                        error: e.to_string(),
                        retry_in: wait,
                    });
                },
            )
            .await;
            let _ = notes.send(match result {
                Ok(link) => Note::Connected(Box::new(link)),
                Err(e) => Note::ConnectGaveUp(e.to_string()),
            });
        });
    }

    /// Handles a typed line. Returns false to quit.
    fn input(&mut self, line: &str) -> bool {
        let line = line.trim_end_matches(['\r', '\n']);
        let (cmd, rest) = match line.split_once(' ') {
            Some((c, r)) => (c, r.trim()),
            None => (line, ""),
        };
        match cmd {
            "/quit" | "/exit" => return false,
            "/thread" => {
                if rest.len() > crate::consistency::bounds::MAX_THREAD_ID_BYTES {
                    self.screen.line("-- thread names are at most 128 bytes");
                } else {
                    self.thread = rest.to_owned();
                    self.threads.entry(self.thread.clone()).or_default();
                    self.screen
                        .line(&format!("-- now writing to {}", thread_label(rest)));
                }
            }
            "/threads" => {
                self.screen.line("-- threads seen:");
                for (t, n) in &self.threads {
                    let mark = if *t == self.thread {
                        "  <- writing here"
                    } else {
                        ""
                    };
                    self.screen.line(&format!(
                        "--   {} ({n} message{}){mark}",
                        thread_label(t),
                        if *n == 1 { "" } else { "s" }
                    ));
                }
            }
            "/status" => {
                self.screen
                    .line(&format!("-- status: {}", self.status_text()));
            }
            "/help" => {
                for l in [
                    "-- /thread NAME  write to thread NAME (/thread alone: the main room)",
                    "-- /threads      list the threads seen",
                    "-- /status       show clock offset, lease left, last rejection",
                    "-- /quit         leave",
                ] {
                    self.screen.line(l);
                }
            }
            _ if cmd.starts_with('/') => {
                self.screen
                    .line(&format!("-- unknown command {}; try /help", sanitize(cmd)));
            }
            _ if line.trim().is_empty() => {}
            _ => self.send(line.to_owned()),
        }
        self.screen.prompt(&self.thread);
        true
    }

    fn send(&mut self, text: String) {
        let Some(client) = self.client.clone() else {
            self.screen
                .line("-- not connected (reconnecting); message not sent");
            return;
        };
        let thread = self.thread.clone();
        let notes = self.notes.clone();
        tokio::spawn(send_with_retries(client, thread, text, notes));
    }

    fn note(&mut self, note: Note) -> Option<Subscription> {
        match note {
            Note::Connected(boxed) => {
                let link = *boxed;
                let url = sanitize(&link.url);
                self.screen.line(&if self.was_connected {
                    format!("-- reconnected to {url} (as a new client)")
                } else {
                    format!("-- connected to {url}")
                });
                self.was_connected = true;
                self.failing = false;
                let host = link.url.split("://").last().unwrap_or_default();
                self.link_state = format!(
                    "{}@{}",
                    sanitize(self.args.name.as_deref().unwrap_or("(anonymous)")),
                    sanitize(host)
                );
                self.connected_to = Some(link.url.clone());
                self.client = Some(link.client);
                self.show_status(true);
                self.screen.prompt(&self.thread);
                return Some(link.sub);
            }
            Note::ConnectFailed { error, retry_in } => {
                self.link_state = format!("reconnecting (retry in {})", short_duration(retry_in));
                self.show_status(false);
                // The first failure in a row is worth a line; the rest only
                // update the status line.
                if std::mem::replace(&mut self.failing, true) {
                    return None;
                }
                self.screen.line(&format!(
                    "-- cannot reach {}: {}; retrying in {}",
                    sanitize(&self.args.server),
                    sanitize(&error),
                    short_duration(retry_in)
                ));
            }
            Note::ConnectGaveUp(error) => {
                self.link_state = "not connected".to_owned();
                self.screen
                    .line(&format!("-- cannot connect: {}", sanitize(&error)));
            }
            Note::Rejected {
                code,
                at,
                attempt,
                attempts,
                retry_in,
            } => {
                let outcome = match retry_in {
                    Some(d) => RetryOutcome::RetryingIn(d),
                    None => RetryOutcome::GaveUp,
                };
                self.last_rejection = Some(LastRejection {
                    code,
                    at,
                    attempt,
                    attempts,
                    outcome,
                });
                if matches!(outcome, RetryOutcome::GaveUp) {
                    self.screen.line(&format!(
                        "-- message not sent: {} after {attempt} attempt(s)",
                        code.as_str_name()
                    ));
                }
                self.show_status(true);
            }
            Note::Committed { attempt } => {
                if attempt > 1
                    && let Some(r) = &mut self.last_rejection
                {
                    r.outcome = RetryOutcome::CommittedOn(attempt);
                    self.show_status(true);
                }
            }
            Note::SendFailed(error) => {
                self.screen
                    .line(&format!("-- message not sent: {}", sanitize(&error)));
            }
        }
        None
    }

    /// Handles the update stream. Returns false if it ended.
    fn update(&mut self, item: Option<Result<Received, ClientError>>) -> bool {
        let r = match item {
            Some(Ok(r)) => r,
            other => {
                let why = match other {
                    Some(Err(e)) => e.summary(),
                    _ => "the server ended the stream".to_owned(),
                };
                self.client = None;
                self.lease_until = None;
                self.link_state = "reconnecting".to_owned();
                self.screen.line(&format!(
                    "-- connection lost at {} ({}); reconnecting",
                    local_hms(local_micros()),
                    sanitize(&why)
                ));
                self.show_status(false);
                return false;
            }
        };
        self.lease_until = r.update.expiration_time.as_ref().map(|t| t.timestamp);
        for m in &r.update.message {
            if !self.seen.fresh(m) {
                continue;
            }
            let thread = m.thread.as_ref().map_or("", |t| t.id.as_str());
            *self.threads.entry(thread.to_owned()).or_default() += 1;
            let at = m.server_time.as_ref().map_or(0, |t| t.timestamp);
            self.screen.line(&format!(
                "{} [{}] {}: {}",
                local_hms(at),
                thread_label(thread),
                sanitize(&m.sender),
                sanitize(&m.contents)
            ));
        }
        self.show_status(false);
        true
    }
}

/// Sends one message, retrying the retryable rejections with backoff, and
/// reports each rejection and the outcome.
async fn send_with_retries(
    mut client: ChatClient,
    thread: String,
    text: String,
    notes: mpsc::UnboundedSender<Note>,
) {
    let policy = RetryPolicy::default();
    client.retry = RetryPolicy::none();
    let number = client.next_number();
    let mut backoff = policy.initial;
    for attempt in 1..=policy.attempts {
        match client.send_numbered(&thread, &text, number).await {
            Ok(o) if o.status == StatusCode::Ok => {
                let _ = notes.send(Note::Committed { attempt });
                return;
            }
            Ok(o) => {
                let retryable = matches!(
                    o.status,
                    StatusCode::OrderError | StatusCode::NumericalError | StatusCode::Staleness
                );
                let last = !retryable || attempt == policy.attempts;
                let _ = notes.send(Note::Rejected {
                    code: o.status,
                    at: o.timestamp,
                    attempt,
                    attempts: policy.attempts,
                    retry_in: (!last).then_some(backoff),
                });
                if last {
                    return;
                }
                // Let the server learn what this client has seen, then wait.
                let _ = client.ack_now().await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max);
            }
            Err(e) => {
                let _ = notes.send(Note::SendFailed(describe(&e)));
                return;
            }
        }
    }
}

fn describe(e: &ClientError) -> String {
    e.to_string()
}

/// The next item of the update stream, or never if there is none.
async fn next_update(sub: &mut Option<Subscription>) -> Option<Result<Received, ClientError>> {
    match sub {
        Some(s) => s.next().await.map(|r| r.map_err(ClientError::from)),
        None => std::future::pending().await,
    }
}

/// Runs the interactive client until `/quit`, end of input or Ctrl-C.
pub async fn run(args: &ChatArgs) -> u8 {
    let (input_tx, mut input_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = input_tx.send(None);
                    return;
                }
                Ok(_) => {
                    if input_tx.send(Some(line.clone())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let (notes_tx, mut notes_rx) = mpsc::unbounded_channel();
    let mut app = App {
        args,
        screen: Screen::new(),
        thread: args.thread.clone(),
        threads: BTreeMap::new(),
        seen: Seen::default(),
        client: None,
        lease_until: None,
        last_rejection: None,
        link_state: "connecting".to_owned(),
        was_connected: false,
        connected_to: None,
        failing: false,
        notes: notes_tx,
    };
    app.threads.entry(app.thread.clone()).or_default();
    app.screen.line(&format!(
        "-- dyconit-chat: connecting to {} ... (/help for commands)",
        sanitize(&args.server)
    ));
    app.show_status(false);
    app.screen.prompt(&app.thread);
    app.connect_in_background();
    let mut sub: Option<Subscription> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let code = loop {
        let event = tokio::select! {
            line = input_rx.recv() => Event::Input(line.flatten()),
            note = notes_rx.recv() => match note {
                Some(n) => Event::Note(n),
                None => Event::Tick,
            },
            item = next_update(&mut sub) => Event::Update(item),
            _ = tick.tick() => Event::Tick,
            _ = tokio::signal::ctrl_c() => Event::Interrupt,
        };
        match event {
            Event::Input(None) | Event::Interrupt => break exit::OK,
            Event::Input(Some(line)) => {
                if !app.input(&line) {
                    break exit::OK;
                }
            }
            Event::Note(n) => {
                if let Some(s) = app.note(n) {
                    sub = Some(s);
                }
            }
            Event::Update(item) => {
                if !app.update(item) {
                    sub = None;
                    app.connect_in_background();
                }
            }
            Event::Tick => {
                if app.screen.refresh_size() {
                    app.screen.prompt(&app.thread);
                }
                app.show_status(false);
            }
        }
    };
    app.screen.restore();
    code
}
