//! A real server on `127.0.0.1:0` for each test, and small helpers.
#![allow(dead_code)]

use dyconit_chat::client::{ChatClient, Received, Subscription};
use dyconit_chat::consistency::{Bounds, BoundsTable};
use dyconit_chat::proto::chat_server_client::ChatServerClient;
use dyconit_chat::proto::{Acknowledgement, Client, SentMessage, ServerTime, Thread};
use dyconit_chat::server::{self, Config, Listeners, Storage};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct TestServer {
    pub url: String,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// The data directory made for a durable config that named none; removed
    /// when the server is dropped.
    _data: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server. A durable config whose data dir is the default
    /// `data` gets a fresh temporary directory instead: tests never write
    /// outside a temp dir.
    pub async fn start(mut config: Config) -> TestServer {
        let mut data = None;
        if config.storage == Storage::Durable && config.data_dir == Config::default().data_dir {
            let dir = tempfile::tempdir().expect("temp dir");
            config.data_dir = dir.path().to_owned();
            data = Some(dir);
        }
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", grpc.local_addr().unwrap());
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::run(Listeners { grpc, admin }, config, async {
            let _ = rx.await;
        }));
        TestServer {
            url,
            admin: admin_addr,
            stop: Some(tx),
            task: Some(task),
            _data: data,
        }
    }

    /// Asks the server to shut down and waits for `run` to return.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.expect("server task panicked"),
            None => Ok(()),
        }
    }

    pub async fn client(&self, name: Option<&str>) -> ChatClient {
        ChatClient::connect(&self.url, name).await.expect("connect")
    }

    pub async fn raw(&self) -> ChatServerClient<Channel> {
        ChatServerClient::connect_to(&self.url).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
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
/// `DYCONIT_TEST_STORAGE=durable` (then each server gets a temp data dir):
/// `.ci/run` runs the protocol suite both ways.
pub fn config(staleness_ms: u64, numerical: u64, order: u64) -> Config {
    let mut c = Config::default();
    if std::env::var("DYCONIT_TEST_STORAGE").as_deref() == Ok("durable") {
        c.storage = Storage::Durable;
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
