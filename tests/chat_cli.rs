//! `dyconit-chat chat` as a user runs it: the real binary in a real
//! pseudo-terminal (tmux), against the real server binary on 127.0.0.1.
//! Needs `tmux` (`.ci/run` installs it).

mod common;

use dyconit_chat::bench::server::SpawnedServer;
use dyconit_chat::proto::Client;
use dyconit_chat::proto::chat_server_client::ChatServerClient;
use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A program running in its own tmux server (own socket), 120x30.
struct Tmux {
    /// The tmux socket name, unique per test.
    socket: String,
}

static SESSIONS: AtomicUsize = AtomicUsize::new(0);

impl Tmux {
    fn start(command: &str) -> Tmux {
        let socket = format!(
            "dyconit-test-{}-{}",
            std::process::id(),
            SESSIONS.fetch_add(1, Ordering::SeqCst)
        );
        let status = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "t", "-x", "120"])
            .args(["-y", "30", command])
            .status()
            .expect("tmux is needed for this test (apt-get install tmux)");
        assert!(status.success(), "tmux new-session failed");
        Tmux { socket }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn type_line(&self, text: &str) {
        let ok = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "t", "-l", text])
            .status()
            .expect("tmux send-keys")
            .success()
            && Command::new("tmux")
                .args(["-L", &self.socket, "send-keys", "-t", "t", "Enter"])
                .status()
                .expect("tmux send-keys")
                .success();
        assert!(ok, "send-keys failed");
    }

    /// Waits until the screen satisfies `pred` (it is re-read as it changes;
    /// the deadline only bounds a failure).
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_text(&self, text: &str) -> String {
        self.wait_for(text, |s| s.contains(text))
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", "t"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(Stdio::null())
            .status();
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
    let tmux = Tmux::start(&format!(
        "{EXE} chat --server {url} --name alice --thread dev"
    ));
    tmux.wait_text("-- connected to");

    let out = send(&url, "bob", "", "hello from bob", &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK "));
    tmux.wait_text("[main] bob: hello from bob");

    tmux.type_line("hi there");
    tmux.wait_text("[#dev] alice: hi there");
    tmux.type_line("/thread ops");
    tmux.wait_text("-- now writing to #ops");
    tmux.type_line("in ops");
    tmux.wait_text("[#ops] alice: in ops");
    tmux.type_line("/threads");
    let screen = tmux.wait_text("#ops (1 message)  <- writing here");
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
    let screen = tmux.wait_text("mallory: x\u{fffd}[2Jy");
    assert!(screen.contains("bob: hello from bob"), "screen was cleared");

    // The server restarts on the same port: the client says so and comes back.
    let exit = block_on(srv.stop(Duration::from_secs(10))).expect("server stops");
    assert!(exit.success(), "{exit:?}");
    tmux.wait_text("-- connection lost");
    let srv = block_on(SpawnedServer::start_at(
        EXE.as_ref(),
        &format!("127.0.0.1:{port}"),
        &durable,
    ))
    .expect("server restarts");
    tmux.wait_text("-- reconnected to");
    let out = send(&srv.url, "bob", "", "after the restart", &[]);
    assert!(out.status.success(), "{out:?}");
    let screen = tmux.wait_text("[main] bob: after the restart");
    assert_eq!(
        screen.matches("bob: hello from bob").count(),
        1,
        "the replayed history was shown again:\n{screen}"
    );
    tmux.type_line("still here");
    tmux.wait_text("[#ops] alice: still here");

    tmux.type_line("/quit");
    let _ = std::fs::remove_dir_all(&dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(Instant::now() < deadline, "/quit did not end the client");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn rejections_show_in_the_status_line_and_in_exit_codes() {
    // numerical 1: once one message is committed and a client that never
    // acknowledges holds it unacknowledged, every write is NUMERICAL_ERROR.
    let srv = start_server(&["--numerical=1", "--staleness=5s", "--ack-timeout=60s"]).await;
    let url = srv.url.clone();
    let tmux = Tmux::start(&format!("{EXE} chat --server {url} --name alice"));
    tmux.wait_text("-- connected to");

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
    let out = send(&url, "bob", "", &"x".repeat(5000), &[]);
    assert_eq!(out.status.code(), Some(3), "oversized: {out:?}");
    let out = send("http://127.0.0.1:1", "bob", "", "nobody there", &[]);
    assert_eq!(out.status.code(), Some(1), "unreachable: {out:?}");

    tmux.type_line("blocked");
    let screen = tmux.wait_text("rejected NUMERICAL_ERROR at");
    assert!(status_line(&screen).contains("NUMERICAL_ERROR"), "{screen}");
    let screen = tmux.wait_text("-- message not sent: NUMERICAL_ERROR after 8 attempt(s)");
    let status = status_line(&screen);
    assert!(status.contains("(try 8/8), gave up"), "{status}");
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
