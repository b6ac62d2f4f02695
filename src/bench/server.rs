//! `bench --spawn-server`: the real `dyconit-chat serve` as a child process on
//! 127.0.0.1:0, so that its CPU time and memory (read from `/proc`) are the
//! server's alone, not shared with the load generator.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The child's log filter: warnings in general, the "serving" line, and
/// only errors from the per-client hub.
const SERVER_LOG: &str = "warn,dyconit_chat::server=info,dyconit_chat::server::hub=error";

/// Server warnings passed on to stderr before the rest are dropped.
const MAX_SHOWN: usize = 20;

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

/// The gRPC address in the server's "serving" log line, if this is it.
fn grpc_addr(line: &str) -> Option<String> {
    log_field(line, "grpc_addr=")
}

/// The value of `key` (e.g. `"admin_addr="`) in a log line, if there.
fn log_field(line: &str, key: &str) -> Option<String> {
    let clean = strip_ansi(line);
    let at = clean.find(key)? + key.len();
    let addr: String = clean[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    (!addr.is_empty()).then_some(addr)
}

impl SpawnedServer {
    /// Starts `exe serve` with `args` added, and waits (up to 20 s) until it
    /// says where it listens. Its warnings and errors are passed on to stderr.
    pub fn start(exe: &std::path::Path, args: &[String]) -> anyhow::Result<SpawnedServer> {
        Self::start_at(exe, "127.0.0.1:0", args)
    }

    /// Like [`SpawnedServer::start`], with gRPC on `listen` (to restart a
    /// server on the port it had).
    pub fn start_at(
        exe: &std::path::Path,
        listen: &str,
        args: &[String],
    ) -> anyhow::Result<SpawnedServer> {
        let mut child = Command::new(exe)
            .arg("serve")
            .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            // The "serving" line (info) says where it listens; per-client
            // messages (connects, late-delivery warnings: tens of thousands a
            // second when a bound cannot be met) would cost the server and
            // the bench more than the work measured, so only errors of those.
            .args(["--log", SERVER_LOG])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            // The server logs to stdout; its fatal errors go to stderr.
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let logs = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut shown = 0;
            for line in BufReader::new(logs).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = grpc_addr(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send((addr, log_field(&line, "admin_addr=").unwrap_or_default()));
                    continue;
                }
                let problem =
                    line.contains("WARN") || line.contains("ERROR") || line.contains("error:");
                if problem && shown < MAX_SHOWN {
                    shown += 1;
                    eprintln!("server: {}", strip_ansi(&line));
                    if shown == MAX_SHOWN {
                        eprintln!("server: (further warnings not shown)");
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((addr, admin)) => Ok(SpawnedServer {
                child,
                url: format!("http://{addr}"),
                admin_url: format!("http://{admin}"),
            }),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("the server did not start (exit status {status:?})")
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
    pub fn stop(mut self, grace: Duration) -> anyhow::Result<std::process::ExitStatus> {
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
            std::thread::sleep(Duration::from_millis(20));
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
    fn finds_the_address_with_or_without_colour() {
        let plain = "2026-01-01T00:00:00Z  INFO dyconit-chat serving grpc_addr=127.0.0.1:4000 admin_addr=127.0.0.1:4001";
        assert_eq!(grpc_addr(plain).as_deref(), Some("127.0.0.1:4000"));
        let coloured = "\x1b[32m INFO\x1b[0m dyconit-chat serving \x1b[3mgrpc_addr\x1b[0m\x1b[2m=\x1b[0m127.0.0.1:4000 \x1b[3madmin_addr\x1b[0m";
        assert_eq!(grpc_addr(coloured).as_deref(), Some("127.0.0.1:4000"));
        assert_eq!(grpc_addr("client connected"), None);
    }
}
