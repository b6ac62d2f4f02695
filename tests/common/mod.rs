//! A real server on `127.0.0.1:0` for each test, and small helpers.
#![allow(dead_code)]

use dyconit_chat::client::{ChatClient, Received, Subscription};
use dyconit_chat::consistency::{Bounds, BoundsTable};
use dyconit_chat::node::{self, Listeners};
use dyconit_chat::proto::chat_server_client::ChatServerClient;
use dyconit_chat::proto::{Acknowledgement, Client, SentMessage, ServerTime, Thread};
use dyconit_chat::server::{Config, Storage};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
pub mod nats;
pub mod otlp;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A server for a test: one node, or on NATS storage three nodes of one
/// cluster (same stream) with the clients spread over them.
pub struct TestServer {
    /// The first node's gRPC URL.
    pub url: String,
    /// The first node's admin address.
    pub admin: SocketAddr,
    /// Every node's gRPC URL: `client` and `raw` take them in turn, so
    /// client i of a test talks to node i % 3.
    pub urls: Vec<String>,
    next: AtomicUsize,
    nodes: Vec<RunningNode>,
    /// The data directory made for a durable config that named none; removed
    /// when the server is dropped.
    _data: Option<tempfile::TempDir>,
}

struct RunningNode {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Chat nodes per test on NATS storage (`DYCONIT_TEST_STORAGE=nats`).
pub const CLUSTER_NODES: usize = 3;

impl TestServer {
    /// Starts a server: on NATS storage three chat nodes sharing one stream
    /// (clients spread over them), else one node. A durable config whose
    /// data dir is the default `data` gets a fresh temporary directory
    /// instead: tests never write outside a temp dir.
    pub async fn start(config: Config) -> TestServer {
        let n = if config.storage == Storage::Nats {
            CLUSTER_NODES
        } else {
            1
        };
        Self::start_nodes(config, n).await
    }

    /// Starts one node whatever the storage: for tests of one node's own
    /// facts (its shutdown, its metrics, what it has applied when a client
    /// joins).
    pub async fn start_one(config: Config) -> TestServer {
        Self::start_nodes(config, 1).await
    }

    async fn start_nodes(mut config: Config, n: usize) -> TestServer {
        let mut data = None;
        if config.storage == Storage::Durable && config.data_dir == Config::default().data_dir {
            let dir = tempfile::tempdir().expect("temp dir");
            config.data_dir = dir.path().to_owned();
            data = Some(dir);
        }
        let mut server = TestServer {
            url: String::new(),
            admin: "127.0.0.1:0".parse().unwrap(),
            urls: Vec::new(),
            next: AtomicUsize::new(0),
            nodes: Vec::new(),
            _data: data,
        };
        for i in 0..n {
            let mut c = config.clone();
            c.nats.node_name = format!("chat{i}");
            let (url, admin) = server.start_node(c).await;
            if i == 0 {
                server.url = url.clone();
                server.admin = admin;
                if n > 1 {
                    // The first node creates the stream and its buckets;
                    // the others start once it answers, so they find them
                    // instead of racing to create them.
                    server.first_node_ready(admin).await;
                }
            }
            server.urls.push(url);
        }
        server
    }

    /// Asserts that the first node answers `/readyz` with 200; if it cannot
    /// be asked (the node stopped: its listeners are closed), fails with the
    /// error the node ended with.
    async fn first_node_ready(&mut self, admin: SocketAddr) {
        match tokio::spawn(http(admin, "GET", "/readyz", None, None)).await {
            Ok((status, body)) => assert_eq!(status, 200, "first chat node not ready: {body}"),
            Err(_) => {
                let node = self.nodes[0].task.take().expect("the first node's task");
                let ended = tokio::time::timeout(Duration::from_secs(10), node).await;
                panic!("the first chat node did not answer /readyz; it ended with {ended:?}");
            }
        }
    }

    async fn start_node(&mut self, config: Config) -> (String, SocketAddr) {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", grpc.local_addr().unwrap());
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(node::run(Listeners { grpc, admin }, config, async {
            let _ = rx.await;
        }));
        self.nodes.push(RunningNode {
            stop: Some(tx),
            task: Some(task),
        });
        (url, admin_addr)
    }

    /// The URL of the node the next client goes to (in turn).
    pub fn next_url(&self) -> &str {
        &self.urls[self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len()]
    }

    /// Asks every node to shut down and waits for each `run` to return.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            if let Some(tx) = n.stop.take() {
                let _ = tx.send(());
            }
        }
        for n in &mut self.nodes {
            if let Some(t) = n.task.take() {
                t.await.expect("server task panicked")?;
            }
        }
        Ok(())
    }

    /// A client of the next node in turn.
    pub async fn client(&self, name: Option<&str>) -> ChatClient {
        ChatClient::connect(self.next_url(), name)
            .await
            .expect("connect")
    }

    /// A client of node `i` (modulo the number of nodes).
    pub async fn client_on(&self, i: usize, name: Option<&str>) -> ChatClient {
        ChatClient::connect(&self.urls[i % self.urls.len()], name)
            .await
            .expect("connect")
    }

    /// A raw stub on the next node in turn.
    pub async fn raw(&self) -> ChatServerClient<Channel> {
        ChatServerClient::connect_to(self.next_url()).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(tx) = n.stop.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Builds a raw stub (the generated client has no `connect` constructor,
/// since the RPC `Connect` takes that name).
pub trait ConnectTo: Sized {
    async fn connect_to(url: &str) -> Self;
}

impl ConnectTo for ChatServerClient<Channel> {
    async fn connect_to(url: &str) -> Self {
        let ch = Channel::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        ChatServerClient::new(ch)
    }
}

/// A config with the given default bounds and the rest as in tests: short
/// leases and timeouts so waits stay short. Memory storage, unless
/// `DYCONIT_TEST_STORAGE=durable` (then each server gets a temp data dir)
/// or `nats` (then each server gets a stream of its own on the NATS servers
/// in `DYCONIT_TEST_NATS_URL`): `.ci/run` runs the protocol suite all ways.
pub fn config(staleness_ms: u64, numerical: u64, order: u64) -> Config {
    let mut c = Config::default();
    match std::env::var("DYCONIT_TEST_STORAGE").as_deref() {
        Ok("durable") => c.storage = Storage::Durable,
        Ok("nats") => {
            c.storage = Storage::Nats;
            c.nats = nats::test_options();
        }
        _ => {}
    }
    c.settings.bounds = BoundsTable::new(Bounds {
        staleness: Duration::from_millis(staleness_ms),
        numerical,
        order,
    })
    .unwrap();
    c.settings.lease = Duration::from_secs(4);
    c.settings.ack_timeout = Duration::from_secs(3);
    c
}

pub fn now_micros() -> i64 {
    dyconit_chat::client::clock::local_micros()
}

pub fn ack(id: i64, updates: i64, number: i64) -> Acknowledgement {
    Acknowledgement {
        client: Some(Client { id }),
        num_updates_received: updates,
        num_messages_sent: number,
    }
}

/// A well-formed message from `id` with the given counts, stamped now.
pub fn sent(id: i64, thread: &str, contents: &str, updates: i64, number: i64) -> SentMessage {
    SentMessage {
        thread: Some(Thread {
            id: thread.to_owned(),
        }),
        contents: contents.to_owned(),
        timestamp: Some(ServerTime {
            timestamp: now_micros(),
        }),
        acknowledgement: Some(ack(id, updates, number)),
    }
}

/// Reads Updates until `n` messages arrived in total (or panics after 10 s).
pub async fn collect_messages(sub: &mut Subscription, n: usize) -> Vec<Received> {
    let mut got = Vec::new();
    let mut count = 0;
    while count < n {
        let r = sub
            .next_within(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("timed out with {count} of {n} messages"))
            .expect("stream failed");
        count += r.update.message.len();
        got.push(r);
    }
    got
}

/// The first Update (history and baseline) of a fresh subscription.
pub async fn first_update(sub: &mut Subscription) -> Received {
    sub.next_within(Duration::from_secs(5))
        .await
        .expect("first update")
        .expect("stream ok")
}

/// The value of one metric sample on the admin port (`name{labels}`);
/// panics if the server does not export it.
pub async fn metric(server: &TestServer, sample: &str) -> f64 {
    let (_, text) = http(server.admin, "GET", "/metrics", None, None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{sample} not in /metrics"))
}

/// A minimal HTTP/1.1 request over a fresh connection: returns the status
/// and the body. Enough for the admin API; no client library needed.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin connect");
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let (status, body) = http(addr, method, path, token, body).await;
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"));
    (status, v)
}

/// Sends one message over `rpc` and returns its status code.
pub async fn status_of(
    mut rpc: ChatServerClient<Channel>,
    m: SentMessage,
) -> dyconit_chat::proto::message_status::StatusCode {
    let s = rpc.send_message(m).await.expect("SendMessage").into_inner();
    dyconit_chat::proto::message_status::StatusCode::try_from(s.status_code).expect("known code")
}

/// `Connect` over a raw stub; returns the client id.
pub async fn connect_raw(raw: &mut ChatServerClient<Channel>) -> i64 {
    let info = raw
        .connect(dyconit_chat::proto::ConnectionStarter {})
        .await
        .expect("Connect")
        .into_inner();
    info.client.expect("client").id
}

/// A client that opens its stream, reads the first Update, and never
/// acknowledges anything (a raw stub: no library auto-acks).
pub async fn silent_reader(
    server: &TestServer,
) -> (
    ChatServerClient<Channel>,
    i64,
    tonic::Streaming<dyconit_chat::proto::Update>,
) {
    let mut raw = server.raw().await;
    let id = connect_raw(&mut raw).await;
    let mut stream = raw
        .receive_updates(Client { id })
        .await
        .expect("ReceiveUpdates")
        .into_inner();
    stream
        .message()
        .await
        .expect("first Update")
        .expect("stream open");
    (raw, id, stream)
}
