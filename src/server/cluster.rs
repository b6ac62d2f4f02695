//! A chat node of a cluster (`--storage nats`): the JetStream stream is the
//! commit log every node shares.
//!
//! Data flows one way: an RPC's admitted write is handed to the
//! publisher, `publish_loop`, through the hub's `Sink::Shared`; it
//! publishes it with a `Nats-Msg-Id`; JetStream stores it at the next stream
//! sequence; every node's consumer (`consume_loop`) reads the stream in
//! order and applies each commit to its engine, which delivers it. The
//! writer's OK waits for both the publish acknowledgement (stored on a
//! quorum) and its own node's consumer (so the OK's commit time is the one
//! its readers see), and gives up with `INTERNAL_ERROR` after
//! `--nats-timeout`, never hanging.

mod acks;
mod batch;
mod forward;
mod lanes;
mod shared_bounds;

use super::hub::{self, Committed, Committer, Hub, Origin};
use crate::consistency::{ClientId, Engine, Entry, Micros, Rejection, Seq};
use crate::log::StorageHealth;
use crate::log::nats;
use crate::telemetry::metrics::Metrics;
use anyhow::Context;
use async_nats::jetstream::{self, consumer, context::PublishErrorKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

/// How long one publish attempt waits for JetStream's acknowledgement
/// before it is sent again (same `Nats-Msg-Id`, so at most one commit). A
/// stream leader election on loopback takes a few seconds: several attempts
/// fit in the default 5 s commit timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the node compares the stream's last sequence with what it
/// applied (and, while unhealthy, whether the stream answers at all).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long the stream may hold commits this node has not applied, with
/// its consumer delivering nothing, before the node reads them directly
/// and recreates the consumer. The client library's ordered consumer
/// notices a lost consumer only after two missed 15 s heartbeats: measured
/// 20-30 s of failed writes after a quorum came back.
const STALL_AFTER: Duration = Duration::from_secs(1);
/// How many times one write is decided again after another node committed
/// to its thread first. Each conflict means some node made progress on the
/// thread; past this the writer gets `INTERNAL_ERROR` rather than waiting
/// on a thread that hot.
const MAX_CONFLICTS: u32 = 16;
/// A thread's publisher task ends after this long without writes.
const LANE_IDLE: Duration = Duration::from_secs(5);

/// An admitted write on its way to the stream.
struct Proposal {
    entry: Arc<Entry>,
    /// For a write another node forwarded, `client` is its writer's token
    /// there (see [`forward`]), never one of this node's client ids.
    origin: Origin,
    reply: Reply,
    /// `Some(after)` for a write another node forwarded: that node counted
    /// its order error up to the thread's commit `after`.
    forwarded: Option<Seq>,
    /// Forwarded to an owner that did not answer in time: it may still
    /// store the write, so a refusal here is answered `INTERNAL_ERROR`
    /// (the outcome is not known), never as a bound.
    owner_may_store: bool,
    /// When the write was admitted: its answer is due within the publish
    /// timeout of this, however long it waited behind earlier writes of
    /// its thread.
    admitted: tokio::time::Instant,
    /// Set to true once no later publish can commit ahead of this write:
    /// it is stored (its stream sequence is fixed, though this node may
    /// not have applied it yet), or it is finished without a commit. A
    /// `SendMessages` stream admits its next write to another thread only
    /// then (see [`hub::Submitted::stored`]).
    done: watch::Sender<bool>,
    /// The writer's RPC span (disabled when traces are off; none for a
    /// write another node forwarded): a write forwarded to its thread's
    /// owner carries it along.
    span: tracing::Span,
}

/// Who waits for a write's outcome.
enum Reply {
    /// The writer's RPC on this node.
    Writer(oneshot::Sender<Result<(Seq, Micros), Rejection>>),
    /// The node that forwarded the write.
    Forwarded(oneshot::Sender<forward::Answer>),
}

/// Why a write was not committed.
enum Failure {
    /// Decided again before publishing, against commits of other nodes.
    Refused(Rejection),
    /// It could not be committed in time.
    Failed(String),
    /// A forwarded write this node cannot decide: it has not recorded every
    /// commit since the position its node counted up to. Not published:
    /// its node publishes it itself.
    Undecided,
}

/// The hub's side of the cluster: queues proposals for the publisher in
/// admission order (so a `SendMessages` stream's writes to one thread are
/// published in input order).
struct ClusterSink {
    tx: mpsc::UnboundedSender<Proposal>,
    lanes: Arc<Mutex<lanes::Lanes>>,
}

impl Committer for ClusterSink {
    fn propose(&self, entry: Arc<Entry>, origin: Origin) -> (Committed, watch::Receiver<bool>) {
        let (reply, rx) = oneshot::channel();
        // Under the hub lock: every commit of the thread applied from now on
        // is recorded for this write's check.
        lock(&self.lanes).admitted(&entry.thread);
        let (done, stored) = watch::channel(false);
        // If the publisher is gone (shutdown) the reply is dropped: the
        // writer gets INTERNAL_ERROR.
        let _ = self.tx.send(Proposal {
            entry,
            origin,
            reply: Reply::Writer(reply),
            forwarded: None,
            owner_may_store: false,
            admitted: tokio::time::Instant::now(),
            done,
            span: tracing::Span::current(),
        });
        (rx, stored)
    }
}

/// A write this node is publishing, from its first attempt until its
/// writer is answered.
struct OwnWrite {
    client: ClientId,
    number: i64,
    /// The stream sequence and commit time it was committed at, once this
    /// node applied it: whichever attempt stored it, the write is done. The
    /// OK carries that time; the engine may have let the entry go by the
    /// time the writer's task looks (it keeps only what a client still
    /// needs).
    committed: Option<(Seq, Micros)>,
}

/// What the publisher and the consumer share.
struct Shared {
    /// Writes this node is publishing, by `Nats-Msg-Id`. Lock held only to
    /// read or change one entry, never across an await.
    own: Mutex<HashMap<String, OwnWrite>>,
    /// The last stream sequence this node's engine applied.
    applied: watch::Sender<Seq>,
    /// The highest stream sequence this node knows is stored (from its
    /// publish acknowledgements and the probe): while it is ahead of
    /// `applied`, the consumer owes commits.
    stored: watch::Sender<Seq>,
    hub: Arc<Hub>,
    health: Arc<StorageHealth>,
    /// Set when the consumer stopped for good: the node stays not ready.
    broken: std::sync::atomic::AtomicBool,
    metrics: Metrics,
    /// The stream, for reading a commit the engine no longer holds.
    stream: jetstream::stream::Stream,
    /// Per-thread last commits and commits since admission. Locked only
    /// inside the hub lock, never across an await.
    lanes: Arc<Mutex<lanes::Lanes>>,
    /// Other nodes' lowest acknowledged positions and the commits above
    /// them. Locked only inside the hub lock or alone, never across an await.
    floors: Arc<Mutex<acks::Floors>>,
    /// Publishes with [`ATTEMPT_TIMEOUT`].
    js: jetstream::Context,
    /// For forwarding writes to other nodes (core NATS).
    client: async_nats::Client,
    /// This node process's key in the acknowledgement reports bucket, which
    /// also names it to the other nodes for forwarding.
    key: String,
    name: String,
    timeout: Duration,
    /// Most writes of one thread published as one atomic batch (1: none).
    max_batch: usize,
    /// Which threads go to their owner (see [`forward`]).
    forward: nats::Forward,
    /// When a commit last failed. For `timeout` after it only a commit
    /// that goes through makes the node ready again, not the probe: a
    /// stream leader that lost its quorum still answers reads for a while.
    failed_at: Mutex<Option<tokio::time::Instant>>,
}

/// The cluster's background tasks; stopped at shutdown.
pub struct Tasks {
    stop: CancellationToken,
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    pub async fn stop(self) {
        self.stop.cancel();
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// Connects to NATS, creates or checks the stream, reads the recent history
/// from it, and starts the publisher, the consumer and the health probe.
pub async fn open(
    config: &super::Config,
    health: &Arc<StorageHealth>,
    metrics: &Metrics,
) -> anyhow::Result<(Arc<Hub>, Tasks)> {
    let o = &config.nats;
    let client = connect(o, health).await?;
    let admin_js = jetstream::ContextBuilder::new()
        .timeout(o.timeout)
        .build(client.clone());
    let replicas = nats::replicas(o, &client);
    let Joined {
        stream,
        info,
        head,
        recent,
        messages,
    } = join(config, &admin_js, replicas).await?;
    let last_time = recent.last().map_or(Micros(0), |e| e.commit_time);
    let engine = Engine::new(config.settings.clone(), head, recent);
    let (tx, rx) = mpsc::unbounded_channel();
    let lanes = Arc::new(Mutex::new(lanes::Lanes::default()));
    let sink = Arc::new(ClusterSink {
        tx: tx.clone(),
        lanes: lanes.clone(),
    });
    let hub = Hub::new(
        engine,
        hub::Sink::Shared(sink),
        config.max_outbound_bytes,
        metrics.clone(),
        config.clock.clone(),
    );
    let shared = Arc::new(Shared {
        own: Mutex::new(HashMap::new()),
        applied: watch::Sender::new(head),
        stored: watch::Sender::new(head),
        hub: hub.clone(),
        health: health.clone(),
        broken: Default::default(),
        metrics: metrics.clone(),
        stream: stream.clone(),
        lanes,
        floors: Default::default(),
        js: jetstream::ContextBuilder::new()
            .timeout(ATTEMPT_TIMEOUT)
            .build(client.clone()),
        client,
        key: format!("n{:016x}", rand::random::<u64>()),
        name: o.stream.clone(),
        timeout: o.timeout,
        max_batch: batch_size(o, &info.config),
        forward: o.forward,
        failed_at: Mutex::new(None),
    });
    let shared_tasks = share(&admin_js, o, replicas, &shared, metrics).await?;
    let stop = CancellationToken::new();
    let mut handles = vec![
        spawn_until(&stop, publish_loop(shared.clone(), rx)),
        spawn_until(&stop, consume_loop(shared.clone(), messages, last_time)),
        spawn_until(&stop, forward::serve(shared.clone(), tx)),
        spawn_until(&stop, probe_loop(shared)),
    ];
    handles.extend(shared_tasks.into_iter().map(|t| spawn_until(&stop, t)));
    Ok((hub, Tasks { stop, handles }))
}

/// The stream as a node joins it: its history and a consumer from there on.
struct Joined {
    stream: jetstream::stream::Stream,
    info: jetstream::stream::Info,
    head: Seq,
    /// The last `--history` commits.
    recent: Vec<Entry>,
    messages: consumer::pull::Ordered,
}

/// Creates or checks the stream, reads its history and opens the consumer
/// that goes on from its head.
async fn join(
    config: &super::Config,
    admin_js: &jetstream::Context,
    replicas: usize,
) -> anyhow::Result<Joined> {
    let o = &config.nats;
    let want = nats::wanted_config(o, replicas, config.retention);
    let info = nats::ensure_stream(admin_js, want).await?;
    let stream = admin_js
        .get_stream(&o.stream)
        .await
        .context("opening the stream")?;
    let (head, first) = (info.state.last_sequence, info.state.first_sequence);
    let history = config.settings.history as Seq;
    let start = first
        .max(head.saturating_sub(history.saturating_sub(1)))
        .max(1);
    let mut messages = open_first_consumer(&stream, start).await?;
    // Nothing to read if retention or a purge removed everything up to head.
    let recent = if start <= head {
        read_history(&mut messages, head, o.timeout).await?
    } else {
        Vec::new()
    };
    tracing::info!(
        storage = "nats",
        stream = %o.stream,
        node = %o.node_name,
        replicas = info.config.num_replicas,
        head,
        history = recent.len(),
        "joined the cluster's stream"
    );
    Ok(Joined {
        stream,
        info,
        head,
        recent,
        messages,
    })
}

/// How many writes of a thread this node publishes at once: atomic batches
/// need a stream that allows them (nats-server 2.12+).
fn batch_size(o: &nats::NatsOptions, stream: &jetstream::stream::Config) -> usize {
    if o.max_batch > 1 && !stream.allow_atomic_publish {
        tracing::warn!(
            stream = %o.stream,
            "the stream does not allow atomic publishing (allow_atomic; nats-server 2.12+): publishing one write at a time"
        );
        return 1;
    }
    o.max_batch
}

/// The tasks that share bound changes and acknowledgement reports with the
/// other nodes through key-value buckets.
async fn share(
    js: &jetstream::Context,
    o: &nats::NatsOptions,
    replicas: usize,
    shared: &Arc<Shared>,
    metrics: &Metrics,
) -> anyhow::Result<Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>> {
    let gauges = acks::Gauges::register(&metrics.registry)?;
    let (stream, node, hub) = (&o.stream, &o.node_name, &shared.hub);
    let mut tasks = shared_bounds::open(js, stream, node, replicas, hub).await?;
    let own = (node.as_str(), shared.key.as_str());
    let node = (hub, &shared.health);
    tasks.extend(acks::open(js, stream, own, replicas, node, &shared.floors, gauges).await?);
    Ok(tasks)
}

/// Runs `task` until it ends or `stop` is cancelled.
fn spawn_until(
    stop: &CancellationToken,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let stop = stop.clone();
    tokio::spawn(async move {
        stop.run_until_cancelled(task).await;
    })
}

/// Connects to NATS; a lost connection makes the node not ready.
async fn connect(
    o: &nats::NatsOptions,
    health: &Arc<StorageHealth>,
) -> anyhow::Result<async_nats::Client> {
    let events = health.clone();
    let node = o.node_name.clone();
    let client = nats::connect(o, move |e| match e {
        async_nats::Event::Disconnected => {
            events.record_error("disconnected from NATS");
            tracing::warn!(node = %node, "disconnected from NATS: not ready until the stream answers again");
        }
        async_nats::Event::Connected => tracing::info!(node = %node, "connected to NATS"),
        other => tracing::info!(node = %node, event = %other, "NATS connection event"),
    })
    .await?;
    Ok(client)
}

/// An ordered consumer of the whole stream from `start`.
async fn open_consumer(
    stream: &jetstream::stream::Stream,
    start: Seq,
) -> Result<consumer::pull::Ordered, async_nats::Error> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// The consumer a starting node reads the stream with, from `start`. Asks
/// again while JetStream does not answer in time, as for the stream: a
/// stream created a moment before may still be electing its leader (seen
/// in CI: creating the consumer timed out 5 s after an R3 stream was
/// created on a cluster started with the node).
async fn open_first_consumer(
    stream: &jetstream::stream::Stream,
    start: Seq,
) -> anyhow::Result<consumer::pull::Ordered> {
    let once = || async move {
        open_consumer(stream, start)
            .await
            .map_err(|e| nats::attempt(nats::err("creating the stream consumer", e), None))
    };
    Ok(nats::when_ready("the stream consumer", once).await?)
}

/// Reads the stream from the consumer's start up to `head`: the history a
/// new client gets, oldest first.
async fn read_history(
    messages: &mut consumer::pull::Ordered,
    head: Seq,
    timeout: Duration,
) -> anyhow::Result<Vec<Entry>> {
    let mut recent: Vec<Entry> = Vec::new();
    let mut previous = Micros(0);
    while recent.last().map_or(0, |e| e.seq) < head {
        let m = tokio::time::timeout(timeout, messages.next())
            .await
            .context("reading the stream's history timed out")?
            .context("the stream ended")?
            .context("reading the stream's history")?;
        let Some(e) = decode(&m, previous) else {
            continue;
        };
        if e.seq > head {
            break;
        }
        previous = e.commit_time;
        recent.push(e);
    }
    Ok(recent)
}

/// The entry a stream message holds; `None` (logged) if it has no
/// JetStream metadata.
fn decode(m: &jetstream::Message, previous: Micros) -> Option<Entry> {
    let info = match m.info() {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "a stream message without JetStream metadata: skipped");
            return None;
        }
    };
    let stored = nats::time_micros(info.published.unix_timestamp_nanos());
    Some(nats::entry(
        info.stream_sequence,
        m.subject.as_str(),
        &m.payload,
        stored,
        previous,
    ))
}

/// Applies every commit of the stream, in order, to this node's engine.
///
/// A consumer can stop delivering without an error: its server was killed,
/// or a reconnect lost its pull request. While the stream holds commits this
/// node has not applied and nothing arrived for [`STALL_AFTER`], the node
/// reads them directly (any replica answers a direct get, with no stream or
/// meta leader involved: measured on loopback, a consumer cannot be created
/// for several seconds after the meta leader is killed) and opens a fresh
/// consumer from the next sequence. Commits the old and new paths both
/// deliver are applied once: the engine skips what it already has.
async fn consume_loop(shared: Arc<Shared>, messages: consumer::pull::Ordered, last: Micros) {
    let mut previous = last;
    let mut messages = Some(messages);
    let mut stored = shared.stored.subscribe();
    // When this node last applied a commit, or fell behind the stream.
    let mut since = tokio::time::Instant::now();
    loop {
        let behind = *stored.borrow_and_update() > *shared.applied.borrow();
        let stuck = behind || messages.is_none();
        tokio::select! {
            m = next_message(&mut messages) => match m {
                Some(m) => {
                    let Some(entry) = decode(&m, previous) else { continue };
                    previous = entry.commit_time;
                    if !apply(&shared, m.headers.as_ref(), entry) {
                        return;
                    }
                    since = tokio::time::Instant::now();
                }
                None => {
                    tracing::warn!("the stream consumer ended: opening another");
                    messages = reopen(&shared).await;
                    since = tokio::time::Instant::now();
                }
            },
            Ok(()) = stored.changed() => {
                if !behind {
                    since = tokio::time::Instant::now();
                }
            }
            _ = tokio::time::sleep_until(since + STALL_AFTER), if stuck => {
                let next = *shared.applied.borrow() + 1;
                tracing::warn!(next, "the stream consumer delivers nothing: reading the stream directly and opening another consumer");
                if !catch_up(&shared, &mut previous).await {
                    return;
                }
                if let Some(fresh) = reopen(&shared).await {
                    messages = Some(fresh);
                }
                since = tokio::time::Instant::now();
            }
        }
    }
}

/// The consumer's next message; `None` once it ended. Errors are logged:
/// the ordered consumer recreates itself after gaps and reconnects.
async fn next_message(
    messages: &mut Option<consumer::pull::Ordered>,
) -> Option<jetstream::Message> {
    let Some(stream) = messages else {
        return std::future::pending().await;
    };
    loop {
        match stream.next().await? {
            Ok(m) => return Some(m),
            Err(e) => tracing::warn!(error = %e, "reading the stream"),
        }
    }
}

/// A fresh ordered consumer from the next sequence this node needs, or
/// `None` if JetStream does not create one within [`ATTEMPT_TIMEOUT`].
async fn reopen(shared: &Shared) -> Option<consumer::pull::Ordered> {
    let next = *shared.applied.borrow() + 1;
    match tokio::time::timeout(ATTEMPT_TIMEOUT, open_consumer(&shared.stream, next)).await {
        Ok(Ok(fresh)) => Some(fresh),
        Ok(Err(e)) => {
            tracing::warn!(next, error = %e, "opening a stream consumer failed: trying again");
            None
        }
        Err(_) => {
            tracing::warn!(next, "opening a stream consumer timed out: trying again");
            None
        }
    }
}

/// Applies, by direct gets, the commits between what this node applied and
/// what it knows is stored; false if the node cannot go on. Stops at the
/// first commit no replica returns in time (the next stall tries again).
async fn catch_up(shared: &Shared, previous: &mut Micros) -> bool {
    let target = *shared.stored.borrow();
    let mut read = 0;
    loop {
        let next = *shared.applied.borrow() + 1;
        if next > target {
            break;
        }
        let m = match tokio::time::timeout(ATTEMPT_TIMEOUT, shared.stream.direct_get(next)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::warn!(next, error = %e, "reading a commit directly");
                break;
            }
            Err(_) => {
                tracing::warn!(next, "reading a commit directly timed out");
                break;
            }
        };
        let stored = nats::time_micros(m.time.unix_timestamp_nanos());
        let entry = nats::entry(
            m.sequence,
            m.subject.as_str(),
            &m.payload,
            stored,
            *previous,
        );
        *previous = entry.commit_time;
        if !apply(shared, Some(&m.headers), entry) {
            return false;
        }
        read += 1;
    }
    if read > 0 {
        tracing::info!(
            read,
            applied = *shared.applied.borrow(),
            "read commits directly from the stream"
        );
    }
    true
}

/// Notes that the stream holds at least `seq`.
fn note_stored(shared: &Shared, seq: Seq) {
    shared.stored.send_if_modified(|s| {
        let newer = seq > *s;
        if newer {
            *s = seq;
        }
        newer
    });
}

/// Applies one commit; false if the node cannot go on.
fn apply(shared: &Shared, headers: Option<&async_nats::HeaderMap>, entry: Entry) -> bool {
    let seq = entry.seq;
    let delay = shared
        .hub
        .now()
        .0
        .saturating_sub(entry.commit_time.0)
        .max(0);
    shared
        .metrics
        .cluster
        .apply_delay_seconds
        .observe(delay as f64 / 1e6);
    let commit = (seq, entry.commit_time);
    let own = headers.and_then(|h| h.get("Nats-Msg-Id")).and_then(|id| {
        let mut own = lock(&shared.own);
        let w = own.get_mut(id.as_str())?;
        // The stream stores one id once (its duplicate window).
        w.committed.get_or_insert(commit);
        Some((w.client, w.number))
    });
    let thread = entry.thread.clone();
    let applied = shared.hub.reconfigure(|e| {
        let writer = own.map(|(c, _)| c);
        let done = e.apply_committed(entry, own);
        if let Ok(true) = done {
            record_commit(shared, &thread, seq, writer);
        }
        done
    });
    match applied {
        Ok(_) => {
            shared.applied.send_replace(seq);
            true
        }
        Err(e) => {
            shared
                .broken
                .store(true, std::sync::atomic::Ordering::SeqCst);
            shared.health.record_error(&e.to_string());
            tracing::error!(error = %e, "cannot apply the stream: restart this node");
            false
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands proposals, in admission order, to one publisher task per thread:
/// writes of a thread are published one at a time, each decided again on
/// the view that includes the previous one, so a node's own writes never
/// conflict with each other; threads publish in parallel.
async fn publish_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let mut lanes: HashMap<Arc<str>, Lane> = HashMap::new();
    while let Some(p) = rx.recv().await {
        let thread = p.entry.thread.clone();
        let (p, before) = match lanes.remove(&thread) {
            Some(lane) => match lane.tx.send(p) {
                Ok(()) => {
                    lanes.insert(thread, lane);
                    continue;
                }
                // That thread's task went idle: it may still be publishing
                // what it drained, so the next one starts after it.
                Err(mpsc::error::SendError(p)) => (p, Some(lane.task)),
            },
            None => (p, None),
        };
        let (tx, queue) = mpsc::unbounded_channel();
        let _ = tx.send(p);
        if lanes.len() >= 1024 {
            lanes.retain(|_, l| !l.task.is_finished());
        }
        let task = tokio::spawn(lane_loop(shared.clone(), queue, before));
        lanes.insert(thread, Lane { tx, task });
    }
}

/// One thread's publisher task and its queue.
struct Lane {
    tx: mpsc::UnboundedSender<Proposal>,
    task: JoinHandle<()>,
}

/// Publishes one thread's writes in order until the thread is idle, after
/// the thread's `before` task ended: two tasks publishing one thread at
/// once would publish its writes out of admission order, and the order
/// check counts on that order.
async fn lane_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    before: Option<JoinHandle<()>>,
) {
    if let Some(before) = before {
        let _ = before.await;
    }
    loop {
        let first = match tokio::time::timeout(LANE_IDLE, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(_) => {
                // Refuse new sends first, then finish what already came.
                rx.close();
                match rx.try_recv() {
                    Ok(p) => p,
                    Err(_) => return,
                }
            }
        };
        let mut writes = batch::gather(first, &mut rx, shared.max_batch);
        // A forwarded write is never forwarded again: its order error was
        // counted from its own node's view, which only the ring of the
        // node it was sent to covers.
        let own = writes.iter().all(|p| p.forwarded.is_none());
        if own && let Some(owner) = forward::owner(&shared, &writes[0].entry.thread) {
            writes = forward::propose(&shared, &owner, writes).await;
        }
        if !writes.is_empty() {
            batch::propose(&shared, writes).await;
        }
    }
}

/// Publishes one write until it is stored or refused; a task of its own
/// then waits for the consumer and answers the writer, so the thread's
/// next write is published meanwhile.
async fn propose_one(shared: &Arc<Shared>, p: Proposal) {
    let deadline = p.admitted + shared.timeout;
    let id = own_write(shared, &p);
    observe_queued(shared, &p);
    let stored = publish_checked(shared, &p, &id, deadline).await;
    let shared = shared.clone();
    tokio::spawn(async move {
        let outcome = match stored {
            Ok(seq) => settle(&shared, &p, &id, seq).await,
            Err(failure) => Err(failure),
        };
        answer(&shared, p, &id, outcome);
    });
}

/// Once this node applied a stored write (at `seq` or, for a write of a
/// batch, at most `seq`): its commit and commit time. A forwarded write is
/// settled by its own node, which waits for its own consumer: here it is
/// done once stored.
async fn settle(
    shared: &Shared,
    p: &Proposal,
    id: &str,
    seq: Seq,
) -> Result<(Seq, Micros), Failure> {
    if p.forwarded.is_some() {
        return Ok((seq, Micros(0)));
    }
    let deadline = p.admitted + shared.timeout;
    wait_applied(shared, seq, deadline)
        .await
        .map_err(Failure::Failed)?;
    let own = lock(&shared.own).get(id).and_then(|w| w.committed);
    match own {
        Some(done) => Ok(done),
        // Committed by another node's earlier attempt (a resend).
        None => commit_time(shared, seq).await.map_err(Failure::Failed),
    }
}

/// Answers the writer of a finished write.
fn answer(shared: &Shared, p: Proposal, id: &str, outcome: Result<(Seq, Micros), Failure>) {
    // Inside the hub lock, like every other change to the lanes.
    shared
        .hub
        .inspect(|_| lock(&shared.lanes).finished(&p.entry.thread));
    p.done.send_replace(true);
    let outcome = match outcome {
        Err(Failure::Refused(r)) if p.owner_may_store => Err(Failure::Failed(format!(
            "forwarded to the thread's owner, which did not answer in time, then refused here ({r:?}): the owner may still store it"
        ))),
        other => other,
    };
    finish(shared, p.reply, id, outcome);
}

/// Records this node's writes to `thread` that JetStream acknowledged at
/// the given sequences, before the consumer applies them: the thread's
/// next write is decided and published on a view that includes them.
fn note_own_stored(shared: &Shared, thread: &Arc<str>, stored: &[(Seq, ClientId)]) {
    shared.hub.inspect(|_| {
        for &(seq, client) in stored {
            record_commit(shared, thread, seq, Some(client));
        }
    });
}

/// Records a commit of `thread` in the lanes and the floors, once: a write
/// recorded when it was stored is not counted again when it is applied.
/// Inside the hub lock.
fn record_commit(shared: &Shared, thread: &Arc<str>, seq: Seq, writer: Option<ClientId>) {
    if lock(&shared.lanes).recorded(thread, seq, writer) {
        lock(&shared.floors).applied(thread, seq);
    }
}

/// Notes how long `p` waited from its admission to its first publish.
fn observe_queued(shared: &Shared, p: &Proposal) {
    let waited = p.admitted.elapsed().as_secs_f64();
    shared.metrics.cluster.queue_seconds.observe(waited);
}

/// [`own_write`] for each of `writes`, their wait in the queue observed:
/// their `Nats-Msg-Id`s.
fn own_writes(shared: &Shared, writes: &[Proposal]) -> Vec<String> {
    writes
        .iter()
        .map(|p| {
            observe_queued(shared, p);
            own_write(shared, p)
        })
        .collect()
}

/// Notes that this node is publishing `p`; returns its `Nats-Msg-Id`.
fn own_write(shared: &Shared, p: &Proposal) -> String {
    let e = &p.entry;
    let id = nats::message_id(&e.sender, &e.thread, &e.contents, p.origin.timestamp);
    let (client, number) = (p.origin.client, p.origin.number);
    let write = OwnWrite {
        client,
        number,
        committed: None,
    };
    lock(&shared.own).insert(id.clone(), write);
    id
}

/// Where the write `id` was committed, if this node applied it already.
fn committed(shared: &Shared, id: &str) -> Option<Seq> {
    lock(&shared.own)
        .get(id)
        .and_then(|w| w.committed.map(|(seq, _)| seq))
}

/// Decides the write's order bound again on this node's current view and
/// the thread's last commit in it (`known`: the stream's answer to a
/// conflict, once this node has applied up to it).
fn recheck(shared: &Shared, p: &Proposal, known: Option<Seq>) -> Result<Seq, Failure> {
    let e = &p.entry;
    shared.hub.inspect(|engine| {
        let bounds = engine.settings().bounds.for_thread(&e.thread);
        if overtaken(shared, p) {
            return Err(Failure::Failed(OVERTAKEN.into()));
        }
        let check = check_of(&mut lock(&shared.lanes), p, true).ok_or(Failure::Undecided)?;
        let error = p.origin.order_error + check.unseen_since;
        if error > bounds.order {
            let bound = bounds.order;
            return Err(Failure::Refused(Rejection::Order { error, bound }));
        }
        // The numerical error counting every node's active clients.
        let floors = lock(&shared.floors);
        let local = engine.lowest_active_ack();
        if let Some(pos) = floors.lowest(local) {
            let (error, bound) = (floors.count_after(&e.thread, pos), bounds.numerical);
            if error >= bound {
                return Err(Failure::Refused(Rejection::Numerical { error, bound }));
            }
        }
        Ok(known.unwrap_or(check.last))
    })
}

/// Why a write the owner may still store is not published here.
const OVERTAKEN: &str = "a later write of its writer, forwarded with it, was committed first";

/// Whether `p` went to an owner that did not answer and a later write of
/// its writer (forwarded with it) is committed already: the owner refused
/// `p` or has not published it, and committing it now would put it after
/// that write. Seen on this node's view: a later write stored above the
/// view makes the publish conflict, and the check runs again.
fn overtaken(shared: &Shared, p: &Proposal) -> bool {
    p.owner_may_store
        && lock(&shared.own).values().any(|w| {
            w.client == p.origin.client && w.number > p.origin.number && w.committed.is_some()
        })
}

/// The order check of `p` on this node's bookkeeping: commits of its thread
/// since what its writer's view counted, and the thread's last commit.
/// `forget` lets a local write's check drop what no later write needs (it
/// must be the earliest admitted of those not decided). `None` for a
/// forwarded write this node cannot decide.
fn check_of(lanes: &mut lanes::Lanes, p: &Proposal, forget: bool) -> Option<lanes::Check> {
    match p.forwarded {
        Some(after) => lanes.check_forwarded(&p.entry.thread, after, p.origin.client),
        None => Some(check_local(lanes, p, forget)),
    }
}

/// [`check_of`] for a write of this node's own clients.
fn check_local(lanes: &mut lanes::Lanes, p: &Proposal, forget: bool) -> lanes::Check {
    let e = &p.entry;
    let (admitted_at, client) = (e.seq.saturating_sub(1), p.origin.client);
    if forget {
        lanes.check(&e.thread, admitted_at, client)
    } else {
        lanes.peek(&e.thread, admitted_at, client)
    }
}

/// What publishing one attempt of a write gave.
enum Published {
    Stored(Seq),
    /// Another commit of the thread came first: the thread's last sequence.
    Conflict(Seq),
    Failed(String),
}

/// Publishes with the thread's expected last sequence, deciding again after
/// each conflict (at most [`MAX_CONFLICTS`] times), until it is stored:
/// its sequence.
async fn publish_checked(
    shared: &Shared,
    p: &Proposal,
    id: &str,
    deadline: tokio::time::Instant,
) -> Result<Seq, Failure> {
    let subject = nats::subject(&shared.name, &p.entry.thread);
    let payload = nats::payload(&p.entry.sender, &p.entry.contents);
    let mut known = None;
    let mut conflicts = 0;
    let seq = loop {
        // An earlier attempt (this one's, or a batch's that timed out) may
        // have been stored: the write is done, and deciding it again
        // would count its own batch against it.
        if let Some(seq) = committed(shared, id) {
            break seq;
        }
        let expected = recheck(shared, p, known).inspect_err(|f| {
            if conflicts > 0 && matches!(f, Failure::Refused(_)) {
                shared.metrics.cluster.conflict("refused");
                let thread = &p.entry.thread;
                let lanes = &shared.lanes;
                shared
                    .hub
                    .inspect(|_| lock(lanes).refused_after_conflict(thread));
            }
        })?;
        match publish_acked(shared, &subject, &payload, id, expected, deadline).await {
            Published::Stored(seq) => {
                note_own_stored(shared, &p.entry.thread, &[(seq, p.origin.client)]);
                // The writer's next write may go now: the stream orders
                // it after this one.
                p.done.send_replace(true);
                break seq;
            }
            Published::Failed(error) => return Err(Failure::Failed(error)),
            Published::Conflict(last) => {
                conflicts += 1;
                if conflicts > MAX_CONFLICTS {
                    shared.metrics.cluster.conflict("gave_up");
                    return Err(Failure::Failed(format!(
                        "{MAX_CONFLICTS} conflicts in a row on one thread"
                    )));
                }
                shared.metrics.cluster.conflict("retried");
                wait_applied(shared, last, deadline)
                    .await
                    .map_err(Failure::Failed)?;
                known = Some(last);
            }
        }
    };
    Ok(seq)
}

fn publish(payload: &bytes::Bytes, id: &str, expected: Seq) -> jetstream::message::PublishMessage {
    jetstream::message::PublishMessage::build()
        .payload(payload.clone())
        .message_id(id)
        .expected_last_subject_sequence(expected)
}

/// Publishes and waits for the acknowledgement, publishing again with the
/// same id (so at most one commit) after an attempt times out.
async fn publish_acked(
    shared: &Shared,
    subject: &str,
    payload: &bytes::Bytes,
    id: &str,
    expected: Seq,
    deadline: tokio::time::Instant,
) -> Published {
    let m = &shared.metrics.cluster;
    let sent = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= deadline {
            // Not published at all: the answer is certain.
            return Published::Failed(
                "the publish timeout passed while the write waited for its turn".into(),
            );
        }
        // The acknowledgement's own timeout (the client's) may end after
        // the deadline: the deadline bounds the whole attempt.
        let attempt = tokio::time::timeout_at(deadline, async {
            shared
                .js
                .send_publish(subject.to_owned(), publish(payload, id, expected))
                .await?
                .await
        })
        .await;
        let error = match attempt {
            Ok(Ok(a)) => {
                m.publish_seconds.observe(sent.elapsed().as_secs_f64());
                note_stored(shared, a.sequence);
                return Published::Stored(a.sequence);
            }
            Ok(Err(e)) => e,
            Err(_) => {
                m.publish_error(error_kind(PublishErrorKind::TimedOut));
                return Published::Failed(
                    "publishing to JetStream: no acknowledgement before the timeout".into(),
                );
            }
        };
        if nats::wrong_last_sequence(&error) {
            return conflict(shared, subject, &error, "publishing to JetStream").await;
        }
        m.publish_error(error_kind(error.kind()));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || !retryable(error.kind()) {
            return Published::Failed(format!("publishing to JetStream: {error}"));
        }
        m.publish_retries.inc();
        if !matches!(error.kind(), PublishErrorKind::TimedOut) {
            // No responders during a leader election: do not spin.
            tokio::time::sleep(Duration::from_millis(100).min(left)).await;
        }
    }
}

/// A `wrong last sequence` answer (either form, see
/// [`nats::wrong_last_sequence`]): a conflict with the thread's last
/// sequence (counted, and noted as stored). The answer names it, or else
/// it is read from the stream.
async fn conflict(
    shared: &Shared,
    subject: &str,
    error: &jetstream::context::PublishError,
    what: &str,
) -> Published {
    let m = &shared.metrics.cluster;
    m.publish_error(error_kind(PublishErrorKind::WrongLastSequence));
    m.order_conflicts.inc();
    let text = std::error::Error::source(error).map(|s| s.to_string());
    let named = text.as_deref().and_then(lanes::conflict_last);
    let last = match named {
        Some(last) => Ok(last),
        None => subject_last(shared, subject).await,
    };
    match last {
        Ok(last) => {
            note_stored(shared, last);
            Published::Conflict(last)
        }
        Err(e) => Published::Failed(format!(
            "{what}: {error}; reading the thread's last commit: {e}"
        )),
    }
}

/// The stream sequence of `subject`'s last message (0 if it has none).
async fn subject_last(shared: &Shared, subject: &str) -> Result<Seq, String> {
    let read = shared.stream.direct_get_last_for_subject(subject);
    match tokio::time::timeout(ATTEMPT_TIMEOUT, read).await {
        Ok(Ok(m)) => Ok(m.sequence),
        Ok(Err(e)) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(0),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Waits until this node's consumer applied `seq` (which the consumer
/// knows is stored: it reads it directly if it is not delivered).
async fn wait_applied(
    shared: &Shared,
    seq: Seq,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let mut applied = shared.applied.subscribe();
    tokio::time::timeout_at(deadline, applied.wait_for(|&a| a >= seq))
        .await
        .map_err(|_| format!("seq {seq} was stored but not consumed in time"))?
        .map_err(|_| "the stream consumer stopped".to_owned())?;
    Ok(())
}

/// The seq and commit time of an applied commit.
async fn commit_time(shared: &Shared, seq: Seq) -> Result<(Seq, Micros), String> {
    let at = match shared.hub.inspect(|e| e.committed_entry(seq)) {
        Some(e) => e.commit_time,
        // A resend of a message committed long ago: the stream has it.
        None => shared
            .stream
            .direct_get(seq)
            .await
            .map(|m| nats::time_micros(m.time.unix_timestamp_nanos()))
            .map_err(|e| format!("reading commit {seq}: {e}"))?,
    };
    Ok((seq, at))
}

/// The `kind` label of `chat_nats_publish_errors_total`.
fn error_kind(kind: PublishErrorKind) -> &'static str {
    match kind {
        PublishErrorKind::TimedOut => "timeout",
        PublishErrorKind::StreamNotFound => "no_stream",
        PublishErrorKind::BrokenPipe => "connection",
        PublishErrorKind::WrongLastSequence => "wrong_last_sequence",
        _ => "other",
    }
}

fn retryable(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::StreamNotFound
            | PublishErrorKind::Other
    )
}

/// Answers the writer and keeps the health and counters. A forwarded
/// write is answered to its node, which counts it.
fn finish(shared: &Shared, reply: Reply, id: &str, outcome: Result<(Seq, Micros), Failure>) {
    lock(&shared.own).remove(id);
    let reply = match reply {
        Reply::Writer(reply) => reply,
        Reply::Forwarded(reply) => {
            if let Err(Failure::Failed(error)) = &outcome {
                note_failed(shared, error);
            }
            let _ = reply.send(forward::Answer::of(outcome));
            return;
        }
    };
    match outcome {
        Ok(done) => {
            if shared.health.record_healthy() {
                tracing::info!("commits go through again: ready");
            }
            shared.metrics.messages_accepted.inc();
            let _ = reply.send(Ok(done));
        }
        Err(Failure::Refused(reason)) => {
            shared
                .metrics
                .messages_rejected
                .with_label_values(&[reason.reason()])
                .inc();
            let _ = reply.send(Err(reason));
        }
        Err(Failure::Failed(error)) => {
            note_failed(shared, &error);
            shared.health.record_failed_messages(1);
            shared
                .metrics
                .messages_rejected
                .with_label_values(&[crate::consistency::Rejection::Internal.reason()])
                .inc();
            let _ = reply.send(Err(Rejection::Internal));
        }
        // Only a forwarded write is left undecided, and answered above.
        Err(Failure::Undecided) => {
            let _ = reply.send(Err(Rejection::Internal));
        }
    }
}

/// A commit failed: the node is not ready until one goes through.
fn note_failed(shared: &Shared, error: &str) {
    *lock(&shared.failed_at) = Some(tokio::time::Instant::now());
    if !shared.health.record_error(error) {
        // Logged once per outage; the rest only counted.
        tracing::debug!(%error, "commit failed");
    } else {
        tracing::error!(%error, "commit failed: answering INTERNAL_ERROR and reporting not ready until a commit goes through");
    }
}

/// Tells the consumer the stream's last sequence (a node with only readers
/// publishes nothing that would show the consumer is behind). While
/// unhealthy, the node is ready again once the stream answers and the
/// consumer has caught up with it, but not within the commit timeout of a
/// failed commit (see `Shared::failed_at`).
async fn probe_loop(shared: Arc<Shared>) {
    let mut stream = shared.stream.clone();
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        if shared.broken.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        // A request lost in a leader election is not answered at all: wait
        // one attempt, not the whole commit timeout.
        let info = tokio::time::timeout(ATTEMPT_TIMEOUT, stream.info()).await;
        let last = match info.map_err(|_| "timed out".to_owned()) {
            Ok(Ok(info)) => info.state.last_sequence,
            Ok(Err(e)) => {
                if !shared.health.is_healthy() {
                    tracing::debug!(error = %e, "the stream does not answer yet");
                }
                continue;
            }
            Err(e) => {
                if !shared.health.is_healthy() {
                    tracing::debug!(error = %e, "the stream does not answer yet");
                }
                continue;
            }
        };
        note_stored(&shared, last);
        let applied = *shared.applied.borrow();
        let lag = last.saturating_sub(applied);
        shared.metrics.cluster.consumer_lag_messages.set(lag as i64);
        let failed_recently =
            lock(&shared.failed_at).is_some_and(|at| at.elapsed() < shared.timeout);
        if applied >= last && !failed_recently && shared.health.record_healthy() {
            tracing::info!(
                applied,
                "the stream answers and this node is caught up: ready"
            );
        }
    }
}
