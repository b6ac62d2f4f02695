//! `bench --spawn-server`: the real `dyconit-chat serve` as a child process on
//! 127.0.0.1:0, so that its CPU time and memory (read from `/proc`) are the
//! server's alone, not shared with the load generator.

use crate::node::ReadyInfo;
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The child's log filter: warnings in general, and only errors from the
/// per-client hub.
const SERVER_LOG: &str = "warn,dyconit_chat::server=info,dyconit_chat::server::hub=error";

/// Server warnings passed on to stderr before the rest are dropped.
const MAX_SHOWN: usize = 20;

/// How long the server may take to start serving.
const START_LIMIT: Duration = Duration::from_secs(20);

/// How often a starting or stopping child is looked at. A process has no
/// async "ready" or "exited" event we can await without a reaper of our
/// own; 20 ms is 0.1% of the start limit and invisible next to the start.
const POLL: Duration = Duration::from_millis(20);

/// A fresh path for a child's ready file.
fn ready_file_path() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!(
        "dyconit-ready-{}-{}-{n}.json",
        std::process::id(),
        crate::clock::wall_micros().0
    );
    std::env::temp_dir().join(name)
}

/// Waits, without blocking the runtime, until the child wrote its ready
/// file (or exited, or `START_LIMIT` passed).
async fn wait_ready(child: &mut Child, ready_file: &Path) -> anyhow::Result<ReadyInfo> {
    let deadline = tokio::time::Instant::now() + START_LIMIT;
    loop {
        // The file is renamed into place whole: if it exists, it is complete.
        // A few hundred bytes on local disk: no need for a blocking-pool hop.
        match std::fs::read(ready_file) {
            Ok(bytes) => {
                return serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", ready_file.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("reading the ready file"),
        }
        if let Some(status) = child.try_wait()? {
            bail!("the server exited before serving ({status})");
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the server did not start within {START_LIMIT:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Passes the child's warnings and errors on to stderr (at most
/// `MAX_SHOWN`), and drains the rest of its log.
fn pass_on_problems(logs: std::process::ChildStdout) {
    let mut shown = 0;
    for line in BufReader::new(logs).lines() {
        let Ok(line) = line else { break };
        let problem = line.contains("WARN") || line.contains("ERROR") || line.contains("error:");
        if problem && shown < MAX_SHOWN {
            shown += 1;
            eprintln!("server: {}", strip_ansi(&line));
            if shown == MAX_SHOWN {
                eprintln!("server: (further warnings not shown)");
            }
        }
    }
}

/// A running server child.
pub struct SpawnedServer {
    /// The process; killed when this is dropped.
    child: Child,
    /// Its gRPC URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Its admin URL (`/metrics`, the admin API), e.g. `http://127.0.0.1:41235`.
    pub admin_url: String,
}

/// Removes ANSI colour sequences (the log formatter may colour field names).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl SpawnedServer {
    /// Starts `exe serve` with `args` added, and waits (up to 20 s) until it
    /// says where it listens. Its warnings and errors are passed on to stderr.
    pub async fn start(exe: &std::path::Path, args: &[String]) -> anyhow::Result<SpawnedServer> {
        Self::start_at(exe, "127.0.0.1:0", args).await
    }

    /// Like [`SpawnedServer::start`], with gRPC on `listen` (to restart a
    /// server on the port it had).
    pub async fn start_at(
        exe: &std::path::Path,
        listen: &str,
        args: &[String],
    ) -> anyhow::Result<SpawnedServer> {
        let ready_file = ready_file_path();
        let mut child = Command::new(exe)
            .arg("serve")
            .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready_file)
            // Per-client messages (connects, late-delivery warnings: tens of
            // thousands a second when a bound cannot be met) would cost the
            // server and the bench more than the work measured, so only
            // errors of those.
            .args(["--log", SERVER_LOG])
            .args(args)
            // All bench clients come from one address, and a writer may
            // stand for many users: the per-address Connect rate and the
            // per-client message rate would measure the limits, not the
            // server. Environment, so a --server-arg flag still wins.
            .env("DYCONIT_MAX_CONNECTS_PER_SECOND", "0")
            .env("DYCONIT_MAX_MESSAGES_PER_SECOND", "0")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            // The server logs to stdout; its fatal errors go to stderr.
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let logs = child.stdout.take().context("child stdout")?;
        std::thread::spawn(move || pass_on_problems(logs));
        let ready = wait_ready(&mut child, &ready_file).await;
        let _ = std::fs::remove_file(&ready_file);
        match ready {
            Ok(info) => Ok(SpawnedServer {
                child,
                url: format!("http://{}", info.grpc),
                admin_url: format!("http://{}", info.admin),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server at once (SIGKILL: no flush, no clean shutdown) and
    /// reaps it; the crash test's `kill -9`.
    pub fn kill(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.kill()?;
        self.child.wait()
    }

    /// Asks the server to stop (SIGTERM) and waits up to `grace` for it.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
        // SAFETY: kill only sends a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                self.child.kill()?;
                return Ok(self.child.wait()?);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_is_stripped_from_passed_on_lines() {
        let coloured = "\x1b[33m WARN\x1b[0m slow \x1b[3mclient\x1b[0m";
        assert_eq!(strip_ansi(coloured), " WARN slow client");
    }
}
