//! The durable message log through a real server on 127.0.0.1:0:
//! restart with history and continued sequence numbers, OK only once on
//! disk, no delivery before durability, retention, and the storage faults
//! (locked, read-only, full, corrupted) with their statuses, readiness and
//! counters, and recovery. The faults that need root (mount, chattr) are
//! `#[ignore]`d, so `cargo test` shows them as ignored; `.ci/run` runs them
//! as root with `--ignored`.

mod common;

use common::*;
use dyconit_chat::client::RetryPolicy;
use dyconit_chat::log::sqlite::{self, DB_FILE};
use dyconit_chat::proto::message_status::StatusCode;
use dyconit_chat::server::{Config, Storage};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A durable config on `dir`, with the test bounds and no client retries
/// needed (wide order/numerical bounds).
fn durable(dir: &Path) -> Config {
    let mut c = config(100, 256, 32);
    c.storage = Storage::Durable;
    c.data_dir = dir.to_owned();
    c
}

/// `GET path` on the admin port: (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (code, body)
}

/// Polls `/readyz` until it answers `want` (or panics after `limit`).
async fn await_ready(server: &TestServer, want: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (code, body) = http_get(server.admin, "/readyz").await;
        if code == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {code} ({body:?}), wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stored_contents(dir: &Path) -> Vec<(u64, String)> {
    sqlite::read_all(&dir.join(DB_FILE))
        .expect("read the database")
        .into_iter()
        .map(|e| (e.seq, e.contents))
        .collect()
}

/// Sends one message with no retries; returns its status.
async fn send_once(c: &dyconit_chat::client::ChatClient, text: &str) -> StatusCode {
    let mut c = c.clone();
    c.retry = RetryPolicy::none();
    c.send("", text).await.expect("send").status
}

#[tokio::test]
async fn a_restart_continues_the_sequence_and_serves_history_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(durable(dir.path())).await;
    let w = server.client(Some("w")).await;
    let mut times = Vec::new();
    for i in 1..=5 {
        let out = w.send("", &format!("m{i}")).await.unwrap();
        assert_eq!(out.status, StatusCode::Ok);
        times.push(out.timestamp);
    }
    server.shutdown().await.unwrap();

    let mut cfg = durable(dir.path());
    cfg.settings.history = 3;
    let mut server = TestServer::start(cfg).await;
    let reader = server.client(None).await;
    let mut sub = reader.subscribe().await.unwrap();
    let first = first_update(&mut sub).await;
    let history: Vec<_> = first
        .update
        .message
        .iter()
        .map(|m| {
            (
                m.contents.as_str(),
                m.server_time.unwrap().timestamp,
                m.sender.as_str(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("m3", times[2], "w"),
            ("m4", times[3], "w"),
            ("m5", times[4], "w")
        ],
        "the most recent history, with the original commit times and senders"
    );
    assert_eq!(send_once(&reader, "after restart").await, StatusCode::Ok);
    server.shutdown().await.unwrap();
    let stored = stored_contents(dir.path());
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5, 6],
        "gap-free, continued after restart"
    );
    assert_eq!(stored[5].1, "after restart");
}

#[tokio::test]
async fn an_ok_means_the_message_is_already_in_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(durable(dir.path())).await;
    let w = server.client(None).await;
    for i in 0..20 {
        let text = format!("on disk {i}");
        assert_eq!(send_once(&w, &text).await, StatusCode::Ok);
        // Read by another connection right after the OK: it is there.
        let stored = stored_contents(dir.path());
        assert_eq!(stored.last().map(|(_, c)| c.as_str()), Some(text.as_str()));
        assert_eq!(stored.len(), i + 1);
    }
}

#[tokio::test]
async fn a_second_server_cannot_use_the_same_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(durable(dir.path())).await;
    // The first one is serving.
    let c = server.client(None).await;
    assert_eq!(send_once(&c, "hi").await, StatusCode::Ok);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = dyconit_chat::node::run(
        dyconit_chat::node::Listeners { grpc, admin },
        durable(dir.path()),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("in use by another"), "{msg}");
}

/// Holds SQLite's write lock on the database from another connection, as an
/// operator's tool or a stuck process would.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(dir: &Path) -> WriteLock {
        let c = rusqlite::Connection::open(dir.join(DB_FILE)).unwrap();
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock(c)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

#[tokio::test]
async fn nothing_is_delivered_or_acknowledged_before_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(durable(dir.path())).await;
    let reader = server.client(Some("r")).await;
    let mut sub = reader.subscribe().await.unwrap();
    first_update(&mut sub).await;
    let w = server.client(Some("w")).await;

    // The writer cannot commit while another connection holds the lock
    // (shorter than the 2 s busy timeout, so it waits rather than fails).
    let lock = WriteLock::take(dir.path());
    let send = tokio::spawn({
        let w = w.clone();
        async move { send_once(&w, "held back").await }
    });
    // Well past the 100 ms staleness bound: no OK, and the reader gets
    // nothing (at most empty heartbeats).
    let until = Instant::now() + Duration::from_millis(700);
    while let Some(r) = sub
        .next_within(until.saturating_duration_since(Instant::now()))
        .await
    {
        let r = r.expect("stream ok");
        assert!(
            r.update.message.is_empty(),
            "delivered before durable: {r:?}"
        );
    }
    assert!(!send.is_finished(), "OK before the message was stored");
    lock.release();
    assert_eq!(send.await.unwrap(), StatusCode::Ok);
    let got = collect_messages(&mut sub, 1).await;
    assert_eq!(got[0].update.message[0].contents, "held back");
}

#[tokio::test]
async fn a_locked_database_gives_internal_error_and_not_ready_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = durable(dir.path());
    let health = cfg.storage_health.clone();
    let server = TestServer::start(cfg).await;
    let reader = server.client(Some("r")).await;
    let mut sub = reader.subscribe().await.unwrap();
    first_update(&mut sub).await;
    let w = server.client(Some("w")).await;
    assert_eq!(send_once(&w, "before").await, StatusCode::Ok);
    await_ready(&server, 200, Duration::from_secs(5)).await;

    let lock = WriteLock::take(dir.path());
    // Two in flight at once: both fail, neither is stored or delivered.
    let (a, b) = tokio::join!(send_once(&w, "lost 1"), send_once(&w, "lost 2"));
    assert_eq!(
        (a, b),
        (StatusCode::InternalError, StatusCode::InternalError)
    );
    let body = await_ready(&server, 503, Duration::from_secs(5)).await;
    assert!(
        body.contains("storage failing") && body.contains("locked"),
        "{body}"
    );
    assert!(!health.healthy.load(Ordering::SeqCst));
    assert!(health.write_errors_total.load(Ordering::SeqCst) >= 1);
    assert!(health.failed_messages_total.load(Ordering::SeqCst) >= 2);
    // The fault is on /metrics too.
    let (_, metrics) = http_get(server.admin, "/metrics").await;
    assert!(metrics.contains("chat_storage_healthy 0"), "{metrics}");
    assert!(!metrics.contains("chat_storage_write_errors_total 0\n"));
    assert!(metrics.contains("chat_messages_rejected_total{reason=\"internal\"} 2"));

    lock.release();
    await_ready(&server, 200, Duration::from_secs(5)).await;
    assert!(health.healthy.load(Ordering::SeqCst));
    let (_, metrics) = http_get(server.admin, "/metrics").await;
    assert!(metrics.contains("chat_storage_healthy 1"), "{metrics}");
    assert!(
        metrics.contains("chat_storage_messages_total 1"),
        "{metrics}"
    );
    assert_eq!(send_once(&w, "after").await, StatusCode::Ok);
    let got = collect_messages(&mut sub, 2).await;
    let texts: Vec<_> = got
        .iter()
        .flat_map(|r| &r.update.message)
        .map(|m| m.contents.as_str())
        .collect();
    assert_eq!(texts, ["before", "after"]);
    let stored: Vec<_> = stored_contents(dir.path());
    assert_eq!(
        stored,
        [(1, "before".to_owned()), (2, "after".to_owned())],
        "failed messages are not stored and their seqs are reused"
    );
}

/// Runs a command; `Err` with its output if it could not run or failed.
fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(cmd).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{cmd}: {e}")),
    }
}

/// Why a real fault could not be set up. The fault tests are `#[ignore]`d
/// (they need root with chattr and mount), so `cargo test` lists them as
/// ignored; whoever runs them with `--ignored` asked for them, and a fault
/// that cannot be made is a failure, not a silent pass.
fn cannot_set_up(test: &str, why: &str) -> ! {
    panic!("{test}: cannot set up the fault: {why} (needs root with mount and chattr)");
}

/// The paths made immutable; the flag is cleared when dropped, so a failing
/// test leaves a removable temp dir.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: Vec<PathBuf>) -> Result<Immutable, String> {
        let mut guard = Immutable(Vec::new());
        for p in paths {
            sh("chattr", &["+i", p.to_str().unwrap()])?;
            guard.0.push(p);
        }
        Ok(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = sh("chattr", &["-i", p.to_str().unwrap()]);
        }
    }
}

#[tokio::test]
#[ignore = "needs root with chattr/mount; run: cargo test --test storage -- --ignored"]
async fn a_read_only_data_directory_fails_writes_until_it_is_writable_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = durable(dir.path());
    let health = cfg.storage_health.clone();
    let server = TestServer::start(cfg).await;
    let w = server.client(None).await;
    assert_eq!(send_once(&w, "before").await, StatusCode::Ok);

    // Root ignores permission bits, not the immutable attribute: it makes
    // the directory and its files read-only even through open descriptors.
    let db = dir.path().join(DB_FILE);
    let files = vec![
        dir.path().to_owned(),
        db.clone(),
        PathBuf::from(format!("{}-wal", db.display())),
    ];
    let guard = match Immutable::set(files) {
        Ok(g) => g,
        Err(e) => cannot_set_up("read-only directory", &e),
    };
    assert_eq!(send_once(&w, "refused").await, StatusCode::InternalError);
    let body = await_ready(&server, 503, Duration::from_secs(5)).await;
    assert!(body.contains("storage failing"), "{body}");
    assert!(health.write_errors_total.load(Ordering::SeqCst) >= 1);
    // Still failing while read-only (the probe keeps failing).
    assert_eq!(
        send_once(&w, "refused again").await,
        StatusCode::InternalError
    );

    drop(guard);
    await_ready(&server, 200, Duration::from_secs(5)).await;
    assert_eq!(send_once(&w, "after").await, StatusCode::Ok);
    let texts: Vec<String> = stored_contents(dir.path())
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(texts, ["before", "after"]);
}

/// A small tmpfs mounted on a temp dir; unmounted when dropped.
struct SmallFs {
    /// The mount point (inside `_dir`).
    path: PathBuf,
    /// The temporary directory holding the mount point, removed after the
    /// unmount.
    _dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path.to_str().unwrap(),
            ],
        )?;
        Ok(SmallFs { path, _dir: dir })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if sh("umount", &[self.path.to_str().unwrap()]).is_err() {
            let _ = sh("umount", &["-l", self.path.to_str().unwrap()]);
        }
    }
}

/// Writes zeros into `path` until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test]
#[ignore = "needs root with chattr/mount; run: cargo test --test storage -- --ignored"]
async fn a_full_disk_fails_writes_until_space_is_freed() {
    let fs = match SmallFs::mount("2m") {
        Ok(fs) => fs,
        Err(e) => cannot_set_up("full disk", &e),
    };
    let data = fs.path.join("data");
    let cfg = durable(&data);
    let health = cfg.storage_health.clone();
    let mut server = TestServer::start(cfg).await;
    let w = server.client(None).await;
    assert_eq!(send_once(&w, "before").await, StatusCode::Ok);

    let filler = fs.path.join("filler");
    fill(&filler);
    // Large messages need new WAL pages, which the full disk refuses.
    let big = "x".repeat(4000);
    let mut refused = 0;
    for _ in 0..4 {
        if send_once(&w, &big).await == StatusCode::InternalError {
            refused += 1;
        }
    }
    assert!(refused > 0, "no write failed on a full disk");
    let body = await_ready(&server, 503, Duration::from_secs(5)).await;
    assert!(body.contains("full"), "{body}");
    assert!(health.failed_messages_total.load(Ordering::SeqCst) >= 1);

    std::fs::remove_file(&filler).unwrap();
    await_ready(&server, 200, Duration::from_secs(5)).await;
    assert_eq!(send_once(&w, "after").await, StatusCode::Ok);
    server.shutdown().await.unwrap();
    let stored = stored_contents(&data);
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    let want: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(seqs, want, "gap-free after the failures");
    assert_eq!(stored.first().unwrap().1, "before");
    assert_eq!(stored.last().unwrap().1, "after");
    assert_eq!(stored.len(), 2 + 4 - refused, "exactly the OK'd messages");
}

#[tokio::test]
async fn a_corrupted_database_stops_the_server_at_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(durable(dir.path())).await;
    let w = server.client(None).await;
    assert_eq!(send_once(&w, "hello").await, StatusCode::Ok);
    server.shutdown().await.unwrap();

    let db = dir.path().join(DB_FILE);
    let garbage: Vec<u8> = (0..16384u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db, &garbage).unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = dyconit_chat::node::run(
        dyconit_chat::node::Listeners { grpc, admin },
        durable(dir.path()),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("messages.db") && msg.contains("not a database"),
        "{msg}"
    );
    // The evidence is left for the operator, untouched.
    assert_eq!(std::fs::read(&db).unwrap(), garbage);
}

#[tokio::test]
async fn retention_keeps_the_newest_messages_and_the_sequence_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = durable(dir.path());
    cfg.retention.messages = Some(5);
    cfg.retention_interval = Duration::from_millis(50);
    let health = cfg.storage_health.clone();
    let mut server = TestServer::start(cfg.clone()).await;
    let w = server.client(None).await;
    for i in 1..=20 {
        assert_eq!(send_once(&w, &format!("m{i}")).await, StatusCode::Ok);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    // The counter is bumped just after the deleting transaction commits:
    // wait for both.
    while stored_contents(dir.path()).len() > 5
        || health.retention_deleted_total.load(Ordering::SeqCst) < 15
    {
        assert!(Instant::now() < deadline, "retention did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = stored_contents(dir.path());
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [16, 17, 18, 19, 20]);
    assert_eq!(health.retention_deleted_total.load(Ordering::SeqCst), 15);
    server.shutdown().await.unwrap();

    // Age: everything older than 1 s goes, except the newest message.
    cfg.retention = sqlite::Retention {
        messages: None,
        age: Some(Duration::from_secs(1)),
    };
    let server = TestServer::start(cfg).await;
    let w = server.client(None).await;
    assert_eq!(send_once(&w, "m21").await, StatusCode::Ok);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stored_contents(dir.path()).len() > 1 {
        assert!(Instant::now() < deadline, "age retention did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_contents(dir.path()), [(21, "m21".to_owned())]);
}

#[tokio::test]
async fn a_retry_of_a_message_being_stored_waits_for_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(durable(dir.path())).await;
    let mut raw = server.raw().await;
    let id = connect_raw(&mut raw).await;
    let lock = WriteLock::take(dir.path());
    // The same message twice, concurrently: whichever the server decides
    // first is the original (pending: the writer waits for the lock), the
    // other its retry, which must not be answered OK before the original
    // is stored.
    let msg = sent(id, "", "only once", 0, 1);
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (mut raw, msg) = (raw.clone(), msg.clone());
            tokio::spawn(async move { raw.send_message(msg).await.unwrap().into_inner() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        calls.iter().all(|c| !c.is_finished()),
        "answered before the message was stored"
    );
    lock.release();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    assert!(
        answers
            .iter()
            .all(|a| a.status_code == StatusCode::Ok as i32)
    );
    assert_eq!(answers[0].timestamp, answers[1].timestamp, "one commit");
    assert_eq!(stored_contents(dir.path()), [(1, "only once".to_owned())]);
}
