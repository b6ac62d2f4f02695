//! The `ChatServer` gRPC service: decodes requests, asks the hub, encodes
//! answers. No consistency logic lives here.

use super::convert;
use super::error::HubError;
use super::hub::{Hub, Submitted};
use super::outbox::UpdateStream;
use super::propagation::parent_context;
use crate::access::ThreadAccess;
use crate::auth::{AuthMetrics, Identity, Verifier};
use crate::consistency::{Decision, DropReason, Rejection, Verdict};
use crate::net::rate::ConnectLimiter;
use crate::proto::chat_server_server::ChatServer;
use crate::proto::{
    Acknowledgement, Client, ConnectionStarter, MAX_NAME_CHARS, MessageStatus, NAME_HEADER,
    SentMessage, ServerInfo, ServerTime,
};
use crate::telemetry::tracing_setup::RPC_SPAN_TARGET;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Messages of one `SendMessages` stream decided but not yet answered (their
/// batch is being stored). Lets one stream fill a group commit instead of
/// waiting an fsync per message; bounds the memory one stream can hold.
pub const PIPELINE_DEPTH: usize = 128;

/// The final decision on a submitted message: an accepted one waits until
/// it is durable; if storing it failed, `INTERNAL_ERROR` at the time of the
/// failure (never a false OK).
async fn settle(hub: &Hub, s: Submitted) -> Decision {
    let mut stored = match s.durable {
        None => true,
        Some(outcome) => outcome.await.unwrap_or(false),
    };
    let mut decision = s.decision;
    if let Some(committed) = s.committed {
        match committed.await {
            Ok(Ok((seq, at))) => {
                decision.verdict = Verdict::Accepted {
                    seq,
                    at,
                    retry: false,
                }
            }
            // Decided again against commits made through other nodes.
            Ok(Err(reason)) if reason != Rejection::Internal => {
                decision.verdict = Verdict::Rejected {
                    reason,
                    at: hub.now(),
                };
                return decision;
            }
            _ => stored = false,
        }
    }
    if !stored {
        decision.verdict = Verdict::Rejected {
            reason: Rejection::Internal,
            at: hub.now(),
        };
    }
    decision
}

/// The final statuses of one `SendMessages` stream, recorded on its span
/// when the response stream is dropped.
struct StreamTotals {
    /// The stream's span.
    span: Span,
    /// Messages answered OK.
    accepted: AtomicI64,
    /// Messages answered anything else.
    rejected: AtomicI64,
}

impl Drop for StreamTotals {
    fn drop(&mut self) {
        self.span
            .record("chat.accepted", self.accepted.load(Ordering::Relaxed));
        self.span
            .record("chat.rejected", self.rejected.load(Ordering::Relaxed));
    }
}

pub struct ChatService {
    hub: Arc<Hub>,
    /// Cancelled at shutdown: ends open `SendMessages` streams.
    shutdown: CancellationToken,
    /// Checks `Connect`'s bearer token, when authentication is on.
    auth: Option<(Arc<Verifier>, AuthMetrics)>,
    /// Connects per second per peer address, when limited.
    connects: Option<ConnectLimiter>,
}

impl ChatService {
    pub fn new(hub: Arc<Hub>, shutdown: CancellationToken) -> Self {
        ChatService {
            hub,
            shutdown,
            auth: None,
            connects: None,
        }
    }

    /// Limits each peer address to `per_second` Connects (0: no limit).
    pub fn with_connect_rate(mut self, per_second: u32) -> Self {
        self.connects = ConnectLimiter::new(per_second);
        self
    }

    /// The Connect rate of the peer's address.
    fn check_connect_rate(&self, peer: Option<std::net::SocketAddr>) -> Result<(), Status> {
        let (Some(limiter), Some(peer)) = (&self.connects, peer) else {
            return Ok(());
        };
        let now = self.hub.now();
        limiter.check(peer.ip(), now).map_err(|refused| {
            let limits = &self.hub.metrics().limits;
            if let Some(unlogged) = limits.refused("connects_per_second", now.0) {
                tracing::warn!(peer = %peer.ip(), reason = %refused, unlogged, "Connect refused by a limit");
            }
            Status::resource_exhausted(refused.to_string())
        })
    }

    /// Requires a valid bearer token on `Connect`.
    pub fn with_auth(mut self, verifier: Arc<Verifier>, metrics: AuthMetrics) -> Self {
        self.auth = Some((verifier, metrics));
        self
    }

    /// The display name for `Connect`, and the threads it may use: from
    /// the token when authentication is on (then `x-chat-name` is
    /// refused), else the name from `x-chat-name` and every thread.
    fn connecting_name(
        &self,
        meta: &tonic::metadata::MetadataMap,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(Option<String>, Option<Arc<ThreadAccess>>), Status> {
        let Some((verifier, metrics)) = &self.auth else {
            return Ok((chosen_name(meta)?, None));
        };
        let peer = peer.map(|p| p.ip().to_string()).unwrap_or_default();
        if meta.contains_key(NAME_HEADER) {
            metrics.outcomes.with_label_values(&["name_header"]).inc();
            return Err(Status::invalid_argument(
                "x-chat-name is not accepted on this server: the name comes from the token",
            ));
        }
        let bearer = meta.get("authorization").and_then(|v| v.to_str().ok());
        match verifier.identify(bearer) {
            Ok(Identity { name, access }) => {
                metrics.outcomes.with_label_values(&["ok"]).inc();
                let threads = if access.is_some() {
                    "as the token grants"
                } else {
                    "all"
                };
                tracing::info!(target: "audit", user = %name, %peer, threads, "Connect authenticated");
                Ok((Some(name), access))
            }
            Err(e) => {
                metrics.outcomes.with_label_values(&[e.label()]).inc();
                tracing::warn!(target: "audit", reason = %e, %peer, "Connect refused");
                Err(Status::unauthenticated(e.to_string()))
            }
        }
    }
}

impl ChatService {
    /// `ReceiveUpdates`: the client's stream of encoded Updates, with the
    /// RPC's span and metrics. [`super::updates::ChatRoutes`] serves the
    /// path with it; the trait method below decodes it for callers that
    /// serve the generated server directly.
    pub fn open_stream(&self, request: Request<Client>) -> Result<Response<UpdateStream>, Status> {
        let started = Instant::now();
        let span = self.span(
            "ChatServer/ReceiveUpdates",
            "ReceiveUpdates",
            request.metadata(),
        );
        let id = request.into_inner().id;
        let result = span.in_scope(|| {
            self.hub
                .start_stream(id)
                .map(Response::new)
                .map_err(Status::from)
        });
        self.finish("ReceiveUpdates", started, &span, &result);
        result
    }

    /// The span of one RPC, with the OpenTelemetry RPC attributes, child of
    /// the caller's `traceparent` if it sent one.
    fn span(
        &self,
        name: &'static str,
        method: &'static str,
        meta: &tonic::metadata::MetadataMap,
    ) -> Span {
        let span = tracing::info_span!(
            target: RPC_SPAN_TARGET,
            "rpc",
            otel.name = name,
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = "ChatServer",
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            chat.status = Empty,
            chat.thread = Empty,
            chat.order_error = Empty,
            chat.numerical_error = Empty,
            chat.message_age_ms = Empty,
            chat.accepted = Empty,
            chat.rejected = Empty,
        );
        if !span.is_disabled() {
            let _ = span.set_parent(parent_context(meta));
        }
        span
    }

    /// Records an RPC's outcome on its span and in the metrics.
    fn finish<T>(
        &self,
        method: &'static str,
        started: Instant,
        span: &Span,
        result: &Result<T, Status>,
    ) {
        let code = match result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        span.record("rpc.grpc.status_code", code as i64);
        if code != Code::Ok {
            span.record("otel.status_code", "ERROR");
        }
        let m = self.hub.metrics();
        let labels = [method, code_name(code)];
        m.rpc_requests.with_label_values(&labels).inc();
        m.rpc_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The one place a hub refusal becomes a gRPC status.
impl From<HubError> for Status {
    fn from(e: HubError) -> Self {
        let message = e.to_string();
        match e {
            HubError::ShuttingDown | HubError::Unreported => Status::unavailable(message),
            HubError::UnknownClient => Status::not_found(message),
            HubError::AlreadyStreaming => Status::already_exists(message),
            HubError::BadAcknowledgement(_) => Status::invalid_argument(message),
            HubError::WriteForbidden(_) => Status::permission_denied(message),
            HubError::Dropped(DropReason::SlowConsumer | DropReason::Laggard) => {
                Status::resource_exhausted(message)
            }
            HubError::Dropped(_) => Status::unavailable(message),
        }
    }
}

/// A decision refused by a resource limit, as the gRPC status it is
/// answered with: `RESOURCE_EXHAUSTED` and the reason (the wire's
/// `MessageStatus` codes have no place for a limit).
fn limit_status(d: &Decision) -> Option<Status> {
    match d.verdict {
        Verdict::Rejected {
            reason: Rejection::Limited(limit),
            ..
        } => Some(Status::resource_exhausted(limit.to_string())),
        _ => None,
    }
}

/// Records an admission decision on the current RPC span.
fn record_decision(span: &Span, d: &Decision, thread: &str, age_micros: Option<i64>) {
    let status = convert::message_status(d).status_code();
    span.record("chat.status", status.as_str_name());
    span.record("chat.thread", thread);
    if let Some(e) = d.order_error {
        span.record("chat.order_error", e as i64);
    }
    if let Some(e) = d.numerical_error {
        span.record("chat.numerical_error", e as i64);
    }
    if let Some(a) = age_micros {
        span.record("chat.message_age_ms", a as f64 / 1000.0);
    }
}

/// The gRPC code as Prometheus labels spell it by convention.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The display name from `x-chat-name`, if given: 1–64 printable characters.
fn chosen_name(meta: &tonic::metadata::MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = meta.get(NAME_HEADER) else {
        return Ok(None);
    };
    let invalid = || Status::invalid_argument("x-chat-name must be 1 to 64 printable characters");
    let name = value.to_str().map_err(|_| invalid())?;
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(|c| c.is_control()) {
        return Err(invalid());
    }
    Ok(Some(name.to_owned()))
}

#[tonic::async_trait]
impl ChatServer for ChatService {
    async fn connect(
        &self,
        request: Request<ConnectionStarter>,
    ) -> Result<Response<ServerInfo>, Status> {
        let started = Instant::now();
        let span = self.span("ChatServer/Connect", "Connect", request.metadata());
        let result = span.in_scope(|| {
            self.check_connect_rate(request.remote_addr())?;
            let (name, access) = self.connecting_name(request.metadata(), request.remote_addr())?;
            let (id, _name, now) = self.hub.connect_with(name, access)?;
            Ok(Response::new(ServerInfo {
                current_time: Some(convert::server_time(now)),
                client: Some(Client { id }),
            }))
        });
        self.finish("Connect", started, &span, &result);
        result
    }

    type ReceiveUpdatesStream =
        Pin<Box<dyn Stream<Item = Result<crate::proto::Update, Status>> + Send>>;

    /// Only reached when the generated server is served on its own: the
    /// server as run serves this path through [`super::updates::ChatRoutes`],
    /// which sends the shared encoded bytes without decoding them again.
    async fn receive_updates(
        &self,
        request: Request<Client>,
    ) -> Result<Response<Self::ReceiveUpdatesStream>, Status> {
        let stream = self.open_stream(request)?.into_inner();
        Ok(Response::new(Box::pin(decode_stream(stream))))
    }

    async fn acknowlegde(
        &self,
        request: Request<Acknowledgement>,
    ) -> Result<Response<ServerTime>, Status> {
        let started = Instant::now();
        let span = self.span("ChatServer/Acknowlegde", "Acknowlegde", request.metadata());
        let ack = request.into_inner();
        let result = span.in_scope(|| {
            let Some(client) = ack.client else {
                return Err(Status::invalid_argument(
                    "acknowledgement.client is required",
                ));
            };
            let now = self.hub.acknowledge(client.id, ack.num_updates_received)?;
            Ok(Response::new(convert::server_time(now)))
        });
        self.finish("Acknowlegde", started, &span, &result);
        result
    }

    async fn send_message(
        &self,
        request: Request<SentMessage>,
    ) -> Result<Response<MessageStatus>, Status> {
        let started = Instant::now();
        let span = self.span("ChatServer/SendMessage", "SendMessage", request.metadata());
        if self.shutdown.is_cancelled() {
            // Drained: the sender's stream has ended (or is ending) and its
            // registration with it, so the message would be judged from an
            // unknown client. It is the server that is going away.
            let result = Err(Status::unavailable(
                "server is shutting down; send again after reconnecting",
            ));
            self.finish("SendMessage", started, &span, &result);
            return result;
        }
        let sub = convert::submission(request.into_inner());
        if let Err(e) = self.hub.check_write(&sub) {
            let result = Err(Status::from(e));
            self.finish("SendMessage", started, &span, &result);
            return result;
        }
        let thread = sub.thread.clone();
        let sent_at = sub.timestamp;
        let submitted = span.in_scope(|| self.hub.submit(sub));
        let decision = settle(&self.hub, submitted).await;
        if let Some(status) = limit_status(&decision) {
            let result = Err(status);
            self.finish("SendMessage", started, &span, &result);
            return result;
        }
        let at = match decision.verdict {
            Verdict::Accepted { at, .. } | Verdict::Rejected { at, .. } => at,
        };
        record_decision(
            &span,
            &decision,
            &thread,
            sent_at.map(|t| at.0.saturating_sub(t.0)),
        );
        let result = Ok(Response::new(convert::message_status(&decision)));
        self.finish("SendMessage", started, &span, &result);
        result
    }

    type SendMessagesStream = Pin<Box<dyn Stream<Item = Result<MessageStatus, Status>> + Send>>;

    async fn send_messages(
        &self,
        request: Request<Streaming<SentMessage>>,
    ) -> Result<Response<Self::SendMessagesStream>, Status> {
        let started = Instant::now();
        let span = self.span(
            "ChatServer/SendMessages",
            "SendMessages",
            request.metadata(),
        );
        let inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Submitted, Status>>(PIPELINE_DEPTH);
        let hub = self.hub.clone();
        let hub_for_statuses = self.hub.clone();
        let shutdown = self.shutdown.clone();
        let totals = Arc::new(StreamTotals {
            span: span.clone(),
            accepted: AtomicI64::new(0),
            rejected: AtomicI64::new(0),
        });
        // Decided one at a time, in input order, so the accepted ones commit
        // in input order. Up to PIPELINE_DEPTH decided messages wait for
        // their batch at once; the statuses go out in input order as each
        // becomes final. The span stays open for the life of the stream and
        // counts the final statuses.
        tokio::spawn(admit_stream(hub, inbound, tx, shutdown).instrument(span.clone()));
        let statuses = ReceiverStream::new(rx).then(move |item| {
            let totals = totals.clone();
            let hub = hub_for_statuses.clone();
            async move {
                let decision = settle(&hub, item?).await;
                if let Some(status) = limit_status(&decision) {
                    return Err(status);
                }
                let counter = match decision.verdict {
                    Verdict::Accepted { .. } => &totals.accepted,
                    Verdict::Rejected { .. } => &totals.rejected,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(convert::message_status(&decision))
            }
        });
        let result: Result<Response<Self::SendMessagesStream>, Status> =
            Ok(Response::new(Box::pin(statuses)));
        self.finish("SendMessages", started, &span, &result);
        result
    }
}

/// Decides a `SendMessages` stream's messages one at a time, in input
/// order, handing each to `tx`, until the stream ends, a limit or an error
/// ends it, or the server shuts down.
async fn admit_stream(
    hub: Arc<Hub>,
    mut inbound: Streaming<SentMessage>,
    tx: tokio::sync::mpsc::Sender<Result<Submitted, Status>>,
    shutdown: CancellationToken,
) {
    // The previous message's thread, and (on a cluster) when it is stored.
    let mut previous: Option<(String, tokio::sync::watch::Receiver<bool>)> = None;
    loop {
        let next = tokio::select! {
            next = inbound.message() => next,
            _ = shutdown.cancelled() => break,
        };
        // A message to a thread the token may not write ends the stream
        // with PERMISSION_DENIED, as SendMessage answers it, after the
        // statuses of those before it.
        let item = match next {
            Ok(Some(m)) => {
                let sub = convert::submission(m);
                match hub.check_write(&sub) {
                    Ok(()) => {
                        // A cluster publishes threads in parallel: a message
                        // to another thread waits, before its admission,
                        // until the previous one is stored. Waiting after
                        // admission, in its thread's queue, would hold up
                        // the thread's writes of every other client.
                        if let Some((thread, stored)) = &mut previous
                            && *thread != sub.thread
                        {
                            tokio::select! {
                                // An error: dropped unanswered (shutdown).
                                _ = stored.wait_for(|&done| done) => {}
                                _ = shutdown.cancelled() => break,
                            }
                        }
                        let thread = sub.thread.clone();
                        let submitted = hub.submit(sub);
                        // A message refused at admission changes nothing:
                        // the one before it may still be unstored.
                        if let Some(stored) = &submitted.stored {
                            previous = Some((thread, stored.clone()));
                        }
                        Ok(submitted)
                    }
                    Err(e) => Err(Status::from(e)),
                }
            }
            Ok(None) => break,
            Err(status) => Err(status),
        };
        // A limit ends the stream: nothing after it is decided.
        let failed = match &item {
            Ok(s) => limit_status(&s.decision).is_some(),
            Err(_) => true,
        };
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
}

/// Keeps the trait's own `receive_updates` honest for callers that serve the
/// generated `ChatServerServer` directly: it decodes the shared bytes back
/// into `Update`s (slower, same stream).
fn decode_stream(
    stream: UpdateStream,
) -> impl tokio_stream::Stream<Item = Result<crate::proto::Update, Status>> + Send + 'static {
    stream.map(|item| {
        item.and_then(|b| {
            <crate::proto::Update as prost::Message>::decode(b)
                .map_err(|e| Status::internal(format!("re-decoding an Update: {e}")))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::{Engine, Settings};
    use crate::log::{Log, memory::MemoryLog};
    use crate::proto::{Thread, chat_server_server::ChatServer};

    /// A hub on the in-memory log and `clock`, with no flush scheduler
    /// thread (these tests run the polls they need).
    fn hub_on(clock: crate::clock::Clock) -> Arc<Hub> {
        let mut log = MemoryLog::new(16);
        let engine = Engine::new(Settings::default(), log.head().unwrap(), vec![]);
        let metrics = crate::telemetry::metrics::Metrics::new();
        Hub::new(
            engine,
            super::super::hub::Sink::Immediate(Box::new(log)),
            1 << 20,
            metrics,
            clock,
        )
    }

    /// A message from client `id`, its `number`th, written at `at`.
    fn message(id: i64, number: i64, contents: &str, at: i64) -> SentMessage {
        SentMessage {
            thread: Some(Thread { id: "t".into() }),
            contents: contents.into(),
            timestamp: Some(crate::proto::ServerTime { timestamp: at }),
            acknowledgement: Some(Acknowledgement {
                client: Some(Client { id }),
                num_updates_received: 0,
                num_messages_sent: number,
            }),
        }
    }

    /// A message that arrives after the drain, from a client whose stream
    /// the drain ended, is the server's doing: UNAVAILABLE, not the
    /// CLIENT_ERROR ("unknown client") it got before.
    #[tokio::test]
    async fn a_send_after_the_drain_is_unavailable() {
        let hub = hub_on(crate::clock::Clock::system());
        let stop = CancellationToken::new();
        let service = ChatService::new(hub.clone(), stop.clone());
        let info = service
            .connect(Request::new(ConnectionStarter {}))
            .await
            .unwrap()
            .into_inner();
        let id = info.client.unwrap().id;
        let stream = service.open_stream(Request::new(Client { id })).unwrap();
        // Shutdown as `run` does it: drain, then cancel; the stream ends.
        hub.drain();
        stop.cancel();
        drop(stream);
        let message = message(id, 1, "late", info.current_time.unwrap().timestamp);
        let status = service
            .send_message(Request::new(message))
            .await
            .expect_err("a status, not a MessageStatus");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    /// When the flush scheduler is late (here: not running at all), the
    /// next request that finds its poll overdue runs it: the message is
    /// delivered though no scheduler thread ever woke.
    #[tokio::test]
    async fn a_request_runs_the_poll_the_scheduler_is_late_for() {
        let now = Arc::new(AtomicI64::new(1_700_000_000_000_000));
        let clock = {
            let now = now.clone();
            crate::clock::Clock::from_fn(move || {
                crate::consistency::Micros(now.load(Ordering::Relaxed))
            })
        };
        let hub = hub_on(clock);
        let service = ChatService::new(hub.clone(), CancellationToken::new());
        let reader = service
            .connect(Request::new(ConnectionStarter {}))
            .await
            .unwrap();
        let reader = reader.into_inner().client.unwrap().id;
        let mut updates = service
            .open_stream(Request::new(Client { id: reader }))
            .unwrap()
            .into_inner();
        let writer = service
            .connect(Request::new(ConnectionStarter {}))
            .await
            .unwrap();
        let writer = writer.into_inner().client.unwrap().id;
        let t0 = now.load(Ordering::Relaxed);
        service
            .send_message(Request::new(message(writer, 1, "hello", t0)))
            .await
            .unwrap();
        let taken_over = || hub.metrics().scheduler.polls_taken_over.get();
        assert_eq!(taken_over(), 0, "nothing was overdue yet");

        // Past the message's staleness bound by more than the scheduler may
        // be late: the writer's next message comes by.
        let staleness = Settings::default().bounds.default_bounds().staleness;
        let t1 = t0 + staleness.as_micros() as i64 + 10_000;
        now.store(t1, Ordering::Relaxed);
        service
            .send_message(Request::new(message(writer, 2, "again", t1)))
            .await
            .unwrap();
        assert_eq!(taken_over(), 1);
        let delivered = async {
            while let Some(update) = updates.next().await {
                let update: crate::proto::Update = prost::Message::decode(update.unwrap()).unwrap();
                if update.message.iter().any(|m| m.contents == "hello") {
                    return;
                }
            }
            panic!("the stream ended before the message came");
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), delivered)
            .await
            .expect("the overdue message was delivered");
    }
}
