//! `dyconit-chat chat` as a user runs it: the real binary in a real
//! pseudo-terminal (opened with `openpty`, its output read through the
//! `vt100` terminal emulator), against the real server binary on 127.0.0.1.

mod common;

use dyconit_chat::bench::server::SpawnedServer;
use dyconit_chat::proto::Client;
use dyconit_chat::proto::chat_server_client::ChatServerClient;
use std::io::{BufRead, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_dyconit-chat");

/// The real server on 127.0.0.1:0, keeping messages in memory unless `args`
/// say otherwise.
fn server(args: &[&str]) -> SpawnedServer {
    block_on(start_server(args))
}

/// [`server`], from async code.
async fn start_server(args: &[&str]) -> SpawnedServer {
    let mut all = vec!["--storage=memory".to_owned()];
    all.extend(args.iter().map(|s| s.to_string()));
    SpawnedServer::start(EXE.as_ref(), &all)
        .await
        .expect("server starts")
}

/// Runs a future to completion (these tests drive processes, not a runtime).
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A fresh directory for a durable server's data.
fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dyconit-chat-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `chat --send` from another user.
fn send(url: &str, name: &str, thread: &str, text: &str, extra: &[&str]) -> Output {
    Command::new(EXE)
        .args(["chat", "--server", url, "--name", name, "--thread", thread])
        .arg("--send")
        .arg(text)
        .args(extra)
        .output()
        .expect("running chat --send")
}

/// The chat client running in a pseudo-terminal of its own (120x30), its
/// output fed to a terminal emulator (`vt100`), so the test reads the screen
/// a user would see.
struct Pty {
    /// The terminal's master side: keystrokes go in here.
    master: std::fs::File,
    child: std::process::Child,
    /// The emulated screen, updated by the reader thread; the condvar is
    /// signalled after every chunk of output.
    screen: Arc<(Mutex<vt100::Parser>, Condvar)>,
}

const ROWS: u16 = 30;
const COLS: u16 = 120;

impl Pty {
    fn start(args: &[&str]) -> Pty {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors; name and termios may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned here only.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut cmd = Command::new(EXE);
        cmd.args(args)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe; the child gets its
        // own session with the pty as its controlling terminal, as in a shell.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting the chat client");
        drop(cmd); // closes the parent's copies of the slave side
        let master = std::fs::File::from(master);
        let screen = Arc::new((
            Mutex::new(vt100::Parser::new(ROWS, COLS, 0)),
            Condvar::new(),
        ));
        let (mut output, shared) = (master.try_clone().unwrap(), screen.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the client has exited and the slave is closed.
            while let Ok(n @ 1..) = output.read(&mut buf) {
                shared.0.lock().unwrap().process(&buf[..n]);
                shared.1.notify_all();
            }
        });
        Pty {
            master,
            child,
            screen,
        }
    }

    /// The screen as text, one line per row (trailing blanks trimmed).
    fn render(parser: &vt100::Parser) -> String {
        parser
            .screen()
            .rows(0, COLS)
            .map(|r| format!("{}\n", r.trim_end()))
            .collect()
    }

    fn type_line(&mut self, text: &str) {
        self.master
            .write_all(format!("{text}\r").as_bytes())
            .expect("typing into the terminal");
    }

    /// Waits until the screen satisfies `pred`, re-reading it whenever the
    /// client writes (the deadline only bounds a failure).
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (lock, changed) = &*self.screen;
        let mut parser = lock.lock().unwrap();
        loop {
            let screen = Self::render(&parser);
            if pred(&screen) {
                return screen;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; screen:\n{screen}"
            );
            parser = changed.wait_timeout(parser, left).unwrap().0;
        }
    }

    fn wait_text(&self, text: &str) -> String {
        self.wait_for(text, |s| s.contains(text))
    }

    /// Waits for the client to exit, at most `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status line: the line above the input line.
fn status_line(screen: &str) -> String {
    let lines: Vec<&str> = screen.lines().collect();
    lines
        .iter()
        .rev()
        .skip_while(|l| l.trim().is_empty())
        .nth(1)
        .map(|l| l.to_string())
        .unwrap_or_default()
}

#[test]
fn interactive_chat_shows_messages_threads_status_and_survives_a_restart() {
    // Durable storage: after the restart the server sends its history
    // again, and the client must not show those messages twice.
    let dir = data_dir("restart");
    let durable = [
        "--staleness=100ms".to_owned(),
        "--storage=durable".to_owned(),
        format!("--data-dir={}", dir.display()),
    ];
    let srv = block_on(SpawnedServer::start(EXE.as_ref(), &durable)).expect("server starts");
    let url = srv.url.clone();
    let port = url.rsplit(':').next().unwrap().to_owned();
    let mut term = Pty::start(&[
        "chat", "--server", &url, "--name", "alice", "--thread", "dev",
    ]);
    term.wait_text("-- connected to");

    let out = send(&url, "bob", "", "hello from bob", &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK "));
    term.wait_text("[main] bob: hello from bob");

    term.type_line("hi there");
    term.wait_text("[#dev] alice: hi there");
    term.type_line("/thread ops");
    term.wait_text("-- now writing to #ops");
    term.type_line("in ops");
    term.wait_text("[#ops] alice: in ops");
    term.type_line("/threads");
    let screen = term.wait_text("#ops (1 message)  <- writing here");
    assert!(screen.contains("--   main (1 message)"), "{screen}");
    assert!(screen.contains("--   #dev (1 message)\n"), "{screen}");

    // The status line: clock offset, lease left, thread, rejections.
    let status = status_line(&screen);
    assert!(status.contains("alice@"), "{status}");
    assert!(status.contains("| clock +") || status.contains("| clock -"));
    assert!(status.contains("| lease "), "{status}");
    assert!(status.contains("no rejections"), "{status}");
    assert!(
        screen
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("#ops>")),
        "{screen}"
    );
    // Another user's message cannot inject escape sequences.
    let out = send(&url, "mallory", "", "x\x1b[2Jy", &[]);
    assert!(out.status.success());
    // (The ESC is shown as U+FFFD, which the emulator draws as nothing.)
    let screen = term.wait_for("mallory's message", |s| {
        s.lines()
            .any(|l| l.contains("mallory: x") && l.ends_with("[2Jy"))
    });
    assert!(screen.contains("bob: hello from bob"), "screen was cleared");

    // The server restarts on the same port: the client says so and comes back.
    let exit = block_on(srv.stop(Duration::from_secs(10))).expect("server stops");
    assert!(exit.success(), "{exit:?}");
    term.wait_text("-- connection lost");
    let srv = block_on(SpawnedServer::start_at(
        EXE.as_ref(),
        &format!("127.0.0.1:{port}"),
        &durable,
    ))
    .expect("server restarts");
    term.wait_text("-- reconnected to");
    let out = send(&srv.url, "bob", "", "after the restart", &[]);
    assert!(out.status.success(), "{out:?}");
    let screen = term.wait_text("[main] bob: after the restart");
    assert_eq!(
        screen.matches("bob: hello from bob").count(),
        1,
        "the replayed history was shown again:\n{screen}"
    );
    term.type_line("still here");
    term.wait_text("[#ops] alice: still here");

    term.type_line("/quit");
    let _ = std::fs::remove_dir_all(&dir);
    let status = term.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "/quit did not end the client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn rejections_show_in_the_status_line_and_in_exit_codes() {
    // numerical 1: once one message is committed and a client that never
    // acknowledges holds it unacknowledged, every write is NUMERICAL_ERROR.
    let srv = start_server(&["--numerical=1", "--staleness=5s", "--ack-timeout=60s"]).await;
    let url = srv.url.clone();
    let mut term = Pty::start(&["chat", "--server", &url, "--name", "alice"]);
    term.wait_text("-- connected to");

    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = ChatServerClient::new(channel);
    let id = common::connect_raw(&mut raw).await;
    let mut silent = raw
        .receive_updates(Client { id })
        .await
        .unwrap()
        .into_inner();
    silent.message().await.unwrap().expect("first update");

    let out = send(&url, "bob", "", "first", &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = send(&url, "bob", "", "second", &["--retries", "0"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NUMERICAL_ERROR"));
    let out = send(&url, "bob", "", "", &[]);
    assert_eq!(out.status.code(), Some(3), "empty contents: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CLIENT_ERROR") && err.contains("empty"),
        "{err}"
    );
    let out = send(&url, "bob", "", &"x".repeat(5000), &[]);
    assert_eq!(out.status.code(), Some(3), "oversized: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("too long: 5000 of at most 4096 bytes"),
        "{err}"
    );
    // A bad name is a usage error, said once, before anything is sent.
    for bad in ["", "tab\there", &"n".repeat(65)] {
        let out = send(&url, bad, "", "hi", &[]);
        assert_eq!(out.status.code(), Some(2), "name {bad:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("error:").count(), 1, "{err}");
        assert!(err.contains("--name"), "{err}");
    }
    let out = send("http://127.0.0.1:1", "bob", "", "nobody there", &[]);
    assert_eq!(out.status.code(), Some(1), "unreachable: {out:?}");

    term.type_line("blocked");
    let screen = term.wait_text("rejected NUMERICAL_ERROR at");
    assert!(status_line(&screen).contains("NUMERICAL_ERROR"), "{screen}");
    // The line and the status line are two screen updates: wait for both.
    let screen = term.wait_for(
        "the message given up, in the log and the status line",
        |s| {
            s.contains("-- message not sent: NUMERICAL_ERROR after 8 attempt(s)")
                && status_line(s).contains("(try 8/8), gave up")
        },
    );
    assert!(
        !screen.contains("alice: blocked"),
        "a rejected message was shown"
    );
    drop(silent);
}

#[test]
fn follow_prints_one_json_line_per_message() {
    let srv = server(&["--staleness=50ms"]);
    let url = srv.url.clone();
    let mut child = Command::new(EXE)
        .args(["chat", "--server", &url, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is connected (it says so on stderr).
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("connected to"), "{line}");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                return;
            }
        }
    });
    for (thread, text) in [("t1", "one"), ("", "two \"quoted\"")] {
        assert!(send(&url, "bob", thread, text, &[]).status.success());
        let got = rx.recv_timeout(Duration::from_secs(10)).expect("a line");
        let v: serde_json::Value = serde_json::from_str(&got).expect("JSON");
        assert_eq!(v["thread"], thread);
        assert_eq!(v["sender"], "bob");
        assert_eq!(v["contents"], text);
        assert_eq!(v["history"], false);
        assert!(v["server_time_us"].as_i64().unwrap() > 1_600_000_000_000_000);
        assert!(v["received_at_us"].as_i64().unwrap() >= v["server_time_us"].as_i64().unwrap());
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn help_documents_commands_and_exit_codes_and_bad_flags_fail_cleanly() {
    let out = Command::new(EXE).args(["chat", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "/thread NAME",
        "/threads",
        "/quit",
        "Exit codes of --send",
        "7  STALENESS",
        "--follow",
    ] {
        assert!(help.contains(needle), "chat --help lacks {needle:?}");
    }
    let out = Command::new(EXE)
        .args(["chat", "--send", "x", "--follow"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "conflicting flags are a usage error"
    );
    let out = Command::new(EXE)
        .args(["chat", "--server", "not a url", "--send", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid server address"));
}

#[test]
fn with_several_servers_send_and_follow_use_the_next_one_that_answers() {
    let mut a = server(&["--staleness=50ms"]);
    let b = server(&["--staleness=50ms"]);
    let list = format!("{},{}", a.url, b.url);
    let mut child = Command::new(EXE)
        .args(["chat", "--server", &list, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains(&format!("connected to {}", a.url)), "{line}");
    // The first server dies: --follow goes on at the second.
    a.kill().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "stderr ended");
        if line.contains(&format!("reconnected to {}", b.url)) {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect to the next server");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            if tx.send(l.unwrap()).is_err() {
                return;
            }
        }
    });
    // --send with the dead server first in the list reaches the second.
    let out = send(&list, "bob", "", "after", &[]);
    assert!(out.status.success(), "{out:?}");
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("a line");
    let v: serde_json::Value = serde_json::from_str(&got).expect("JSON");
    assert_eq!(v["contents"], "after");
    child.kill().unwrap();
    child.wait().unwrap();
}
