//! A connected client.

use super::clock::{ClockEstimate, local_micros};
use crate::proto::chat_server_client::ChatServerClient;
use crate::proto::message_status::StatusCode;
use crate::proto::{
    Acknowledgement, Client, ConnectionStarter, ReceivedMessage, SentMessage, ServerTime, Thread,
    Update,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Why a client call failed (not a rejection: those are [`SendOutcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address: {0}")]
    Address(String),
    #[error("cannot reach the server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server answered {:?}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
    #[error("invalid name: {0}")]
    Name(String),
}

impl ClientError {
    /// Whether the server refused the request itself (`INVALID_ARGUMENT`):
    /// sending it again cannot help.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, ClientError::Rpc(s) if s.code() == Code::InvalidArgument)
    }

    /// `code: message` for an error the server answered, the whole error
    /// otherwise (for one-line reports to a person).
    pub fn summary(&self) -> String {
        match self {
            ClientError::Rpc(s) => format!("{}: {}", s.code(), s.message()),
            other => other.to_string(),
        }
    }
}

/// How sends are retried after `ORDER_ERROR`, `NUMERICAL_ERROR` or
/// `STALENESS`: exponential backoff from `initial` up to `max`, at most
/// `attempts` tries in all.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            initial: Duration::from_millis(20),
            max: Duration::from_millis(1000),
        }
    }
}

impl RetryPolicy {
    /// One try only.
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..Default::default()
        }
    }
}

/// The final answer to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    pub status: StatusCode,
    /// `MessageStatus.timestamp`: the commit time if OK.
    pub timestamp: i64,
    /// Tries made (1 if the first answer was final).
    pub attempts: u32,
    /// The `numMessagesSent` the message carried.
    pub number: i64,
    /// The retryable rejections met before the final answer.
    pub rejections: u32,
}

fn retryable(s: StatusCode) -> bool {
    matches!(
        s,
        StatusCode::OrderError | StatusCode::NumericalError | StatusCode::Staleness
    )
}

/// State shared by the client handle and its background tasks.
struct Shared {
    id: i64,
    clock: ClockEstimate,
    /// Updates received from the stream (queued for the application).
    updates_received: AtomicI64,
    /// Updates the application took from its [`Subscription`]: what is
    /// acknowledged, so the server's view of this client's lag is the
    /// application's, not the network's.
    updates_consumed: AtomicI64,
    /// The count last acknowledged to the server.
    updates_acked: AtomicI64,
    /// Messages numbered so far (the next one is this + 1).
    messages_sent: AtomicI64,
    /// Wakes the acknowledger when an Update arrived.
    ack_wake: Notify,
}

/// A connected client. Cheap to clone; all clones are the same client.
#[derive(Clone)]
pub struct ChatClient {
    rpc: ChatServerClient<Channel>,
    shared: Arc<Shared>,
    /// How long the acknowledger waits to coalesce acknowledgements.
    ack_interval: Duration,
    pub retry: RetryPolicy,
}

/// One Update as the application sees it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its index on the stream (the first Update is 1).
    pub index: i64,
    pub update: Update,
    /// Local time it arrived, in microseconds since the epoch.
    pub received_at: i64,
}

/// Updates received but not yet taken by the application. When it is full
/// the client stops reading its stream: the transport's flow control then
/// holds the rest at the server, whose slow-consumer rule cuts off an
/// application that stopped taking Updates, instead of this process growing
/// without bound. 64 Updates are at most 64 x 1 MiB (the server's largest
/// Update) and usually a few KiB each.
pub const UPDATE_QUEUE: usize = 64;

/// The receiving side of a client's update stream.
pub struct Subscription {
    rx: mpsc::Receiver<Result<Received, Status>>,
    /// Where a taken Update is counted, for the acknowledger.
    shared: Arc<Shared>,
}

impl Subscription {
    /// The next Update; `None` when the stream ended normally, `Some(Err)`
    /// with the status it ended with otherwise. Taking it is what
    /// acknowledges it (shortly after, coalesced).
    pub async fn next(&mut self) -> Option<Result<Received, Status>> {
        let item = self.rx.recv().await;
        if let Some(Ok(r)) = &item {
            self.shared
                .updates_consumed
                .fetch_max(r.index, Ordering::SeqCst);
            self.shared.ack_wake.notify_one();
        }
        item
    }

    /// Like [`Subscription::next`], but gives up after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Result<Received, Status>> {
        tokio::time::timeout(timeout, self.next())
            .await
            .ok()
            .flatten()
    }
}

/// How to reach a server, besides its URL.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// CA certificates (PEM) to trust for an `https://` URL, instead of the
    /// system's roots (for a server with a private or self-signed CA).
    pub ca_cert: Option<Vec<u8>>,
    /// A JWT sent as `authorization: Bearer` on `Connect`, for a server
    /// that authenticates (the name then comes from the token).
    pub token: Option<String>,
}

impl ConnectOptions {
    /// Options trusting the CA certificates in `path` (PEM).
    pub fn with_ca_file(path: &std::path::Path) -> Result<Self, ClientError> {
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::Address(format!("reading {}: {e}", path.display())))?;
        Ok(ConnectOptions {
            ca_cert: Some(pem),
            token: None,
        })
    }
}

/// The endpoint for `url`: plain HTTP/2 for `http://`, TLS for `https://`
/// (trusting `options.ca_cert`, else the system's roots).
pub fn endpoint(url: &str, options: &ConnectOptions) -> Result<Endpoint, ClientError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::Address(e.to_string()))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    if url.starts_with("https://") {
        let tls = tonic::transport::ClientTlsConfig::new();
        let tls = match &options.ca_cert {
            Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls)?;
    } else if options.ca_cert.is_some() {
        return Err(ClientError::Address(format!(
            "a CA certificate was given, but {url} is not https://"
        )));
    }
    Ok(endpoint)
}

impl ChatClient {
    /// Connects to `url` (e.g. `http://127.0.0.1:50051`) with an optional
    /// display name.
    pub async fn connect(url: &str, name: Option<&str>) -> Result<Self, ClientError> {
        Self::connect_with(url, name, &ConnectOptions::default()).await
    }

    /// Connects to `url` (`http://` or `https://`) with `options`.
    pub async fn connect_with(
        url: &str,
        name: Option<&str>,
        options: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let channel = endpoint(url, options)?.connect().await?;
        Self::open(channel, name, options.token.as_deref()).await
    }

    /// Connects over an existing channel (several clients may share one).
    pub async fn connect_channel(
        channel: Channel,
        name: Option<&str>,
    ) -> Result<Self, ClientError> {
        Self::open(channel, name, None).await
    }

    /// `Connect` over `channel`, with a name and/or a bearer token.
    async fn open(
        channel: Channel,
        name: Option<&str>,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let mut rpc = ChatServerClient::new(channel);
        let mut request = tonic::Request::new(ConnectionStarter {});
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::Name("the token is not valid metadata".into()))?;
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(name) = name {
            let value = name
                .parse()
                .map_err(|_| ClientError::Name(name.to_owned()))?;
            request
                .metadata_mut()
                .insert(crate::proto::NAME_HEADER, value);
        }
        let t0 = local_micros();
        let info = rpc.connect(request).await?.into_inner();
        let t1 = local_micros();
        let id = info
            .client
            .map(|c| c.id)
            .ok_or_else(|| Status::internal("ServerInfo without a client"))?;
        let clock = ClockEstimate::default();
        if let Some(t) = info.current_time {
            clock.observe(t0, t1, t.timestamp);
        }
        Ok(ChatClient {
            rpc,
            shared: Arc::new(Shared {
                id,
                clock,
                updates_received: AtomicI64::new(0),
                updates_consumed: AtomicI64::new(0),
                updates_acked: AtomicI64::new(0),
                messages_sent: AtomicI64::new(0),
                ack_wake: Notify::new(),
            }),
            ack_interval: Duration::from_millis(20),
            retry: RetryPolicy::default(),
        })
    }

    /// The capability id (keep it secret: it is the client's credential).
    pub fn id(&self) -> i64 {
        self.shared.id
    }

    pub fn clock(&self) -> &ClockEstimate {
        &self.shared.clock
    }

    /// Updates received so far.
    pub fn updates_received(&self) -> i64 {
        self.shared.updates_received.load(Ordering::SeqCst)
    }

    /// Updates the application took from its subscription so far: what is
    /// acknowledged.
    pub fn updates_consumed(&self) -> i64 {
        self.shared.updates_consumed.load(Ordering::SeqCst)
    }

    /// Opens the update stream. Updates are acknowledged automatically once
    /// the application takes them from the [`Subscription`], coalesced over
    /// a short interval; at most [`UPDATE_QUEUE`] wait untaken.
    pub async fn subscribe(&self) -> Result<Subscription, ClientError> {
        let mut stream = self
            .rpc
            .clone()
            .receive_updates(Client { id: self.shared.id })
            .await?
            .into_inner();
        let (tx, rx) = mpsc::channel(UPDATE_QUEUE);
        let shared = self.shared.clone();
        let reader = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(update)) => {
                        let received_at = local_micros();
                        let index = shared.updates_received.fetch_add(1, Ordering::SeqCst) + 1;
                        let received = Received {
                            index,
                            update,
                            received_at,
                        };
                        // Waits while the application is UPDATE_QUEUE behind.
                        if tx.send(Ok(received)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            // Acknowledge until the stream ends and the last count is sent.
            loop {
                tokio::select! {
                    _ = this.shared.ack_wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                if this.ack_now().await.is_err() && reader.is_finished() {
                    return;
                }
                if reader.is_finished() {
                    return;
                }
                tokio::time::sleep(this.ack_interval).await;
            }
        });
        Ok(Subscription {
            rx,
            shared: self.shared.clone(),
        })
    }

    /// Sends an acknowledgement of everything the application took, if
    /// that is news.
    pub async fn ack_now(&self) -> Result<(), ClientError> {
        let count = self.shared.updates_consumed.load(Ordering::SeqCst);
        if count <= self.shared.updates_acked.load(Ordering::SeqCst) {
            return Ok(());
        }
        let ack = self.acknowledgement(count, 0);
        let t0 = local_micros();
        let ServerTime { timestamp } = self.rpc.clone().acknowlegde(ack).await?.into_inner();
        let t1 = local_micros();
        self.shared.clock.observe(t0, t1, timestamp);
        self.shared.updates_acked.fetch_max(count, Ordering::SeqCst);
        Ok(())
    }

    fn acknowledgement(&self, updates: i64, number: i64) -> Acknowledgement {
        Acknowledgement {
            client: Some(Client { id: self.shared.id }),
            num_updates_received: updates,
            num_messages_sent: number,
        }
    }

    /// Numbers the next message (1 for the first).
    pub fn next_number(&self) -> i64 {
        self.shared.messages_sent.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Builds the `SentMessage` for message number `number`, with the current
    /// acknowledgement state and a timestamp the server clock has passed.
    pub fn message(&self, thread: &str, contents: &str, number: i64) -> SentMessage {
        let updates = self.shared.updates_consumed.load(Ordering::SeqCst);
        SentMessage {
            thread: (!thread.is_empty()).then(|| Thread {
                id: thread.to_owned(),
            }),
            contents: contents.to_owned(),
            timestamp: Some(ServerTime {
                timestamp: self.shared.clock.server_now_lower(),
            }),
            acknowledgement: Some(self.acknowledgement(updates, number)),
        }
    }

    /// Sends one message, retrying retryable rejections per `self.retry`.
    pub async fn send(&self, thread: &str, contents: &str) -> Result<SendOutcome, ClientError> {
        let number = self.next_number();
        self.send_numbered(thread, contents, number).await
    }

    /// Sends message number `number` (a retry of it if it was sent before).
    pub async fn send_numbered(
        &self,
        thread: &str,
        contents: &str,
        number: i64,
    ) -> Result<SendOutcome, ClientError> {
        let mut backoff = self.retry.initial;
        for (rejections, attempt) in (1..=self.retry.attempts.max(1)).enumerate() {
            let status = self
                .rpc
                .clone()
                .send_message(self.message(thread, contents, number))
                .await?
                .into_inner();
            let code =
                StatusCode::try_from(status.status_code).unwrap_or(StatusCode::InternalError);
            let timestamp = status.timestamp.map_or(0, |t| t.timestamp);
            if !retryable(code) || attempt == self.retry.attempts.max(1) {
                return Ok(SendOutcome {
                    status: code,
                    timestamp,
                    attempts: attempt,
                    number,
                    rejections: rejections as u32,
                });
            }
            // Let the server learn what we have seen before trying again.
            let _ = self.ack_now().await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max);
        }
        unreachable!("the last attempt returns")
    }

    /// The raw gRPC stub, for calls this library does not wrap.
    pub fn rpc(&self) -> ChatServerClient<Channel> {
        self.rpc.clone()
    }

    /// Turns an RPC error into its code (for callers matching on it).
    pub fn code(e: &ClientError) -> Option<Code> {
        match e {
            ClientError::Rpc(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// The messages of an Update, for callers that only want those.
pub fn messages(u: &Update) -> &[ReceivedMessage] {
    &u.message
}
