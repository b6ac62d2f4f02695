//! The NATS JetStream log (`--storage nats`): many chat nodes share one
//! replicated stream, and the stream's sequence is the commit order.
//!
//! This module knows the stream: how to connect, how to create or check it,
//! how an entry is laid out in a message, and how to read the recent history
//! at start-up. Publishing and consuming while serving live in
//! `crate::server::cluster`.
//!
//! Layout: one subject per thread, `<stream>.msg.t<hex of the thread id>`
//! (thread ids may hold any character, subjects may not), so per-thread
//! reads and expected-last-subject-sequence checks work; the payload is
//! `<sender length>:<sender><contents>`. The commit time is the time
//! JetStream stored the message.

use super::LogError;
use crate::consistency::{Entry, Micros, Seq};
use async_nats::jetstream::{self, kv, stream};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The stream name when `--nats-stream` is not given.
pub const DEFAULT_STREAM: &str = "CHAT";
/// How long JetStream remembers a `Nats-Msg-Id`: a resend of the same
/// message within this window commits once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a commit may take (publish acknowledged and consumed) before
/// its writer is answered `INTERNAL_ERROR`, unless `--nats-timeout` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most writes of one thread a node publishes as one atomic batch
/// unless `--nats-batch` says: enough that a busy thread's queue goes out
/// in one round trip, far below JetStream's limit of 1,000 per batch.
pub const DEFAULT_BATCH: usize = 100;
/// JetStream's default limit on the messages of one atomic batch.
pub const MAX_BATCH: usize = 1000;

/// How to reach the NATS cluster and which stream to use.
#[derive(Clone)]
pub struct NatsOptions {
    /// Server URLs, e.g. `nats://10.0.0.1:4222`; the client fails over
    /// between them.
    pub urls: Vec<String>,
    /// The JetStream stream holding the messages.
    pub stream: String,
    /// This chat node's name (in logs and the NATS connection name).
    pub node_name: String,
    /// A NATS credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// User and password.
    pub user: Option<String>,
    pub password: Option<String>,
    /// A CA certificate (PEM) to verify the servers with; implies TLS.
    pub ca: Option<PathBuf>,
    /// A client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Stream replicas when the node creates the stream; `None` picks 3 when
    /// the cluster has at least 3 servers, else 1.
    pub replicas: Option<usize>,
    /// Longest wait for a commit (and for connecting at start-up).
    pub timeout: Duration,
    /// Most writes of one thread published as one atomic batch (1: none).
    pub max_batch: usize,
    /// Which threads' writes go to the thread's owner node to publish.
    pub forward: Forward,
}

/// Which threads a chat node sends to their owner node to publish, rather
/// than publishing them itself (see `docs/cluster.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Forward {
    /// Threads where racing nodes cost refusals: a write was refused by a
    /// bound when decided again after a conflict, within the last second.
    #[default]
    Contended,
    /// Every thread (one publisher per thread; a hop for most writes).
    All,
    /// None: every node publishes its own writes.
    Off,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            urls: vec!["nats://127.0.0.1:4222".into()],
            stream: DEFAULT_STREAM.into(),
            node_name: "chat".into(),
            creds: None,
            user: None,
            password: None,
            ca: None,
            client_cert: None,
            client_key: None,
            replicas: None,
            timeout: DEFAULT_TIMEOUT,
            max_batch: DEFAULT_BATCH,
            forward: Forward::default(),
        }
    }
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("NatsOptions")
            .field("urls", &self.urls)
            .field("stream", &self.stream)
            .field("node_name", &self.node_name)
            .field("creds", &self.creds)
            .field("user", &self.user)
            .field("ca", &self.ca)
            .field("replicas", &self.replicas)
            .field("timeout", &self.timeout)
            .field("max_batch", &self.max_batch)
            .field("forward", &self.forward)
            .finish()
    }
}

/// This machine's host name (the default node name), or "chat".
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most
    // that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_owned(),
        _ => "chat".to_owned(),
    }
}

pub(crate) fn err(context: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Cluster(format!("{context}: {e}"))
}

/// Connects to the NATS cluster. `on_event` hears connection changes
/// (disconnects, reconnects) for the node's health.
pub async fn connect(
    o: &NatsOptions,
    on_event: impl Fn(async_nats::Event) + Send + Sync + 'static,
) -> Result<async_nats::Client, LogError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("dyconit-chat {}", o.node_name))
        .connection_timeout(o.timeout)
        .request_timeout(Some(o.timeout));
    if let Some(path) = &o.creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| err(&format!("reading NATS credentials {}", path.display()), e))?;
    }
    match (&o.user, &o.password) {
        (Some(u), Some(p)) => opts = opts.user_and_password(u.clone(), p.clone()),
        (None, None) => {}
        _ => {
            return Err(LogError::Cluster(
                "--nats-user and --nats-password go together".into(),
            ));
        }
    }
    if let Some(ca) = &o.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&o.client_cert, &o.client_key) {
        (Some(c), Some(k)) => opts = opts.add_client_certificate(c.clone(), k.clone()),
        (None, None) => {}
        _ => {
            return Err(LogError::Cluster(
                "--nats-cert and --nats-key go together".into(),
            ));
        }
    }
    let on_event = Arc::new(on_event);
    opts = opts.event_callback(move |e| {
        let on_event = on_event.clone();
        async move { on_event(e) }
    });
    let urls = o.urls.join(", ");
    opts.connect(o.urls.as_slice())
        .await
        .map_err(|e| err(&format!("connecting to NATS at {urls}"), e))
}

/// The subjects of stream `name`.
pub fn subjects(name: &str) -> String {
    format!("{name}.msg.*")
}

/// The subject of `thread` in stream `name`.
pub fn subject(name: &str, thread: &str) -> String {
    let mut s = String::with_capacity(name.len() + 6 + 2 * thread.len());
    s.push_str(name);
    s.push_str(".msg.t");
    for b in thread.as_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The thread a subject names; `None` if it is not one of ours.
pub fn thread_of(subject: &str) -> Option<String> {
    let hex = subject.rsplit('.').next()?.strip_prefix('t')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The payload of a message from `sender` with `contents`.
pub fn payload(sender: &str, contents: &str) -> bytes::Bytes {
    format!("{}:{sender}{contents}", sender.len()).into()
}

/// Sender and contents of a payload. A payload not in our layout (someone
/// else published on the subject) is shown as it is, from "unknown".
pub fn parse_payload(p: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(p);
    if let Some((len, rest)) = text.split_once(':')
        && let Ok(n) = len.parse::<usize>()
        && rest.is_char_boundary(n.min(rest.len()))
        && n <= rest.len()
    {
        return (rest[..n].to_owned(), rest[n..].to_owned());
    }
    ("unknown".into(), text.into_owned())
}

/// The `Nats-Msg-Id` of a message: a digest of what makes a resend the same
/// message (sender name, thread, contents and the client's timestamp), so a
/// node's own retries and a resend through another node commit once within
/// [`DUPLICATE_WINDOW`]. A cryptographic digest, so nobody can make their
/// message collide with (and so suppress) someone else's.
pub fn message_id(sender: &str, thread: &str, contents: &str, timestamp: Micros) -> String {
    let mut h = Sha256::new();
    for part in [sender.as_bytes(), thread.as_bytes(), contents.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(timestamp.0.to_be_bytes());
    let d = h.finalize();
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether JetStream refused a publish because the subject's last
/// sequence was not the expected one. A single publish gets the answer that
/// names the last sequence (`PublishErrorKind::WrongLastSequence`); an
/// atomic batch gets the same refusal without it (error code 10164), which
/// the client library reports as `Other`.
pub fn wrong_last_sequence(error: &jetstream::context::PublishError) -> bool {
    error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
        || std::error::Error::source(error)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|e| {
                e.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            })
}

/// Micros since the epoch of a stored-message time given in nanoseconds
/// (`OffsetDateTime::unix_timestamp_nanos`).
pub fn time_micros(nanos: i128) -> Micros {
    Micros((nanos / 1000) as i64)
}

/// An entry read from the stream; its commit time is `max(previous, stored)`
/// so commit times never go back in stream order, even when a new stream
/// leader's clock is behind the old one's.
pub fn entry(seq: Seq, subject: &str, payload: &[u8], stored: Micros, previous: Micros) -> Entry {
    let (sender, contents) = parse_payload(payload);
    Entry {
        seq,
        thread: thread_of(subject).unwrap_or_default().into(),
        contents,
        sender: sender.into(),
        commit_time: stored.max(previous),
    }
}

/// The stream configuration this node wants.
pub fn wanted_config(
    o: &NatsOptions,
    replicas: usize,
    retention: super::sqlite::Retention,
) -> stream::Config {
    stream::Config {
        name: o.stream.clone(),
        subjects: vec![subjects(&o.stream)],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_messages: retention.messages.map_or(-1, |n| n as i64),
        max_age: retention.age.unwrap_or(Duration::ZERO),
        allow_direct: true,
        allow_atomic_publish: true,
        ..Default::default()
    }
}

/// How an existing stream's config differs from what this node needs, if
/// it does: each difference, and the flag or `nats` command that fixes it.
pub fn conflicts(have: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    if !have.subjects.contains(&want.subjects[0]) {
        out.push(format!(
            "subjects are {:?}, need {:?}",
            have.subjects, want.subjects[0]
        ));
    }
    if have.storage != want.storage {
        out.push(format!("storage is {:?}, need file", have.storage));
    }
    if have.num_replicas.max(1) != want.num_replicas {
        out.push(format!(
            "replicas are {}, this node wants {} (set --nats-replicas {} to accept it)",
            have.num_replicas.max(1),
            want.num_replicas,
            have.num_replicas.max(1)
        ));
    }
    if have.duplicate_window < want.duplicate_window {
        out.push(format!(
            "duplicate window is {:?}, need at least {:?}",
            have.duplicate_window, want.duplicate_window
        ));
    }
    if want.max_messages > 0 && have.max_messages != want.max_messages {
        out.push(format!(
            "max messages is {}, --retention-messages says {}",
            have.max_messages, want.max_messages
        ));
    }
    if !want.max_age.is_zero() && have.max_age != want.max_age {
        out.push(format!(
            "max age is {:?}, --retention-age says {:?}",
            have.max_age, want.max_age
        ));
    }
    if have.retention != stream::RetentionPolicy::Limits {
        out.push(format!(
            "retention policy is {:?}, need limits",
            have.retention
        ));
    }
    out
}

/// How many stream replicas this node asks for: the flag, or 3 when the
/// cluster has at least 3 servers (the servers it was given or the ones the
/// server told about), else 1.
pub fn replicas(o: &NatsOptions, client: &async_nats::Client) -> usize {
    if let Some(r) = o.replicas {
        return r;
    }
    let info = client.server_info();
    let known = info.connect_urls.len().max(o.urls.len());
    if known >= 3 { 3 } else { 1 }
}

/// How long a starting node keeps asking for its stream while JetStream
/// cannot serve it yet: a cluster started at the same moment may still be
/// electing its meta leader (seen on loopback: a stream create timing out
/// right after every server reported healthy), or may not yet count a
/// server that has just started as a peer (seen in CI: "no suitable peers
/// for placement, peer offline" half a second after the meta leader was
/// elected).
const STREAM_WAIT: Duration = Duration::from_secs(30);

/// The pause before asking again after an immediate refusal (a timeout has
/// waited already).
const STREAM_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// JetStream's answers that mean its cluster has no meta leader (yet):
/// asking again may succeed.
const NO_LEADER_YET: [jetstream::ErrorCode; 3] = [
    jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE,
    jetstream::ErrorCode::CLUSTER_NOT_ACTIVE,
    jetstream::ErrorCode::CLUSTER_NOT_LEADER,
];

/// Whether JetStream's `answer` to a stream lookup or create means that
/// its cluster cannot serve the stream yet, rather than that the request
/// is wrong: no meta leader, or a peer the stream needs is offline (a
/// server still starting). A stream asking for more replicas than the
/// cluster has servers gets the same code (10005) without "peer offline",
/// and fails at once.
fn not_yet(answer: &jetstream::Error) -> bool {
    let code = answer.error_code();
    NO_LEADER_YET.contains(&code)
        || (code == jetstream::ErrorCode::CLUSTER_NO_PEERS
            && answer.to_string().contains("peer offline"))
}

/// Why one attempt to create or check the stream (or its consumer) failed.
pub(crate) enum Attempt {
    /// JetStream did not answer in time, or its cluster cannot place the
    /// stream yet: asking again may succeed.
    NotYet(LogError),
    /// Asking again would get the same answer.
    Failed(LogError),
}

/// Creates the stream, or checks an existing one; returns its state. Asks
/// again while JetStream cannot serve it yet, for `STREAM_WAIT`; a stream
/// that cannot be placed at the end of it (more replicas than the cluster
/// has servers, say) fails with JetStream's answer.
pub async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<stream::Info, LogError> {
    let what = format!("stream {}", want.name);
    when_ready(&what, || ensure_stream_once(js, want.clone())).await
}

/// Runs `once` until it succeeds or fails for good, asking again while it
/// fails with [`Attempt::NotYet`], for up to `STREAM_WAIT` (a warning
/// naming `what` each time): what a node starting together with its NATS
/// servers must wait for.
pub(crate) async fn when_ready<T, F, Fut>(what: &str, mut once: F) -> Result<T, LogError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Attempt>>,
{
    let until = tokio::time::Instant::now() + STREAM_WAIT;
    loop {
        let e = match once().await {
            Ok(done) => return Ok(done),
            Err(Attempt::NotYet(e)) if tokio::time::Instant::now() < until => e,
            Err(Attempt::NotYet(e) | Attempt::Failed(e)) => return Err(e),
        };
        tracing::warn!(error = %e, "JetStream cannot serve {what} yet: asking again");
        tokio::time::sleep(STREAM_RETRY_PAUSE).await;
    }
}

/// Sorts a failed request: a timeout, or an `answer` JetStream may change
/// ([`not_yet`]), may pass.
pub(crate) fn attempt(e: LogError, answer: Option<&jetstream::Error>) -> Attempt {
    if answer.is_some_and(not_yet) || e.to_string().contains("timed out") {
        Attempt::NotYet(e)
    } else {
        Attempt::Failed(e)
    }
}

/// Publishes `items` (payload, `Nats-Msg-Id`; at least two) to `subject`
/// as the JetStream atomic batch `batch_id` (nats-server 2.12+, a stream
/// with `allow_atomic`): the first message expects `expected` as the
/// subject's last sequence, which JetStream checks when the batch commits;
/// the last message commits it. Answers the commit's acknowledgement, whose
/// sequence is the batch's last.
pub async fn publish_batch(
    js: &jetstream::Context,
    subject: &str,
    batch_id: &str,
    items: &[(bytes::Bytes, &str)],
    expected: Seq,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
    use jetstream::context::{PublishError, PublishErrorKind};
    let n = items.len();
    let client = js.client();
    for (i, (payload, msg_id)) in items[..n - 1].iter().enumerate() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Batch-Id", batch_id);
        h.insert("Nats-Batch-Sequence", (i + 1).to_string());
        h.insert(NATS_MESSAGE_ID, *msg_id);
        if i == 0 {
            h.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string());
        }
        client
            .publish_with_headers(subject.to_owned(), h, payload.clone())
            .await
            .map_err(|e| PublishError::with_source(PublishErrorKind::BrokenPipe, e))?;
    }
    let (payload, msg_id) = &items[n - 1];
    let commit = jetstream::message::PublishMessage::build()
        .payload(payload.clone())
        .message_id(msg_id)
        .header("Nats-Batch-Id", batch_id)
        .header("Nats-Batch-Sequence", n.to_string())
        .header("Nats-Batch-Commit", "1");
    js.send_publish(subject.to_owned(), commit).await?.await
}

/// Opens the key-value bucket `config.bucket`, creating it if it does not
/// exist. Asks again while JetStream cannot place it yet, as for the
/// stream (seen in CI: a bucket created right after the node created the
/// stream was refused with "no suitable peers for placement, peer
/// offline").
pub(crate) async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, LogError> {
    let what = format!("key-value bucket {}", config.bucket);
    when_ready(&what, || ensure_bucket_once(js, config.clone())).await
}

async fn ensure_bucket_once(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, Attempt> {
    if let Ok(store) = js.get_key_value(config.bucket.clone()).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    js.create_key_value(config).await.map_err(|e| {
        let context = format!("creating the key-value bucket {name}");
        attempt(err(&context, &e), bucket_answer(&e).as_ref())
    })
}

/// JetStream's answer inside a failed bucket create: the bucket is a
/// stream, and its create error carries the stream create's.
fn bucket_answer(e: &jetstream::context::CreateKeyValueError) -> Option<jetstream::Error> {
    let stream =
        std::error::Error::source(e)?.downcast_ref::<jetstream::context::CreateStreamError>()?;
    match stream.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(j) => Some(j),
        _ => None,
    }
}

async fn ensure_stream_once(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<stream::Info, Attempt> {
    let info_of = |e| attempt(err("reading the stream info", e), None);
    match js.get_stream(&want.name).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(info_of)?.clone();
            let problems = conflicts(&info.config, &want);
            if !problems.is_empty() {
                return Err(Attempt::Failed(LogError::Cluster(format!(
                    "stream {} exists with a config this node cannot use: {}; change it (nats stream edit {}) or use another --nats-stream",
                    want.name,
                    problems.join("; "),
                    want.name
                ))));
            }
            Ok(info)
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            let name = want.name.clone();
            let mut s = js.create_stream(want).await.map_err(|e| {
                let answer = match e.kind() {
                    jetstream::context::CreateStreamErrorKind::JetStream(j) => Some(j),
                    _ => None,
                };
                attempt(err(&format!("creating stream {name}"), &e), answer.as_ref())
            })?;
            tracing::info!(stream = %name, "created the JetStream stream");
            Ok(s.info().await.map_err(info_of)?.clone())
        }
        Err(e) => {
            let answer = match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j) => Some(j),
                _ => None,
            };
            Err(attempt(
                err(&format!("looking up stream {}", want.name), &e),
                answer.as_ref(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 503, "err_code": code, "description": description
        }))
        .unwrap()
    }

    /// A failed bucket create as async-nats builds it: the stream create's
    /// error inside.
    fn bucket_refused(code: u64, description: &str) -> jetstream::context::CreateKeyValueError {
        use jetstream::context::{
            CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
        };
        let stream =
            CreateStreamError::new(CreateStreamErrorKind::JetStream(answer(code, description)));
        CreateKeyValueError::with_source(CreateKeyValueErrorKind::BucketCreate, stream)
    }

    #[test]
    fn a_bucket_create_refused_while_a_peer_is_offline_is_asked_again() {
        // Seen in CI: a node created the stream, then its bounds bucket.
        let e = bucket_refused(10005, "no suitable peers for placement, peer offline");
        let code = bucket_answer(&e).map(|a| a.error_code());
        assert_eq!(code, Some(jetstream::ErrorCode::CLUSTER_NO_PEERS));
        let verdict = attempt(
            err("creating the key-value bucket B", &e),
            bucket_answer(&e).as_ref(),
        );
        assert!(matches!(verdict, Attempt::NotYet(_)));
        // More replicas than servers: the same code, failed at once.
        let e = bucket_refused(10005, "no suitable peers for placement");
        let verdict = attempt(
            err("creating the key-value bucket B", &e),
            bucket_answer(&e).as_ref(),
        );
        assert!(matches!(verdict, Attempt::Failed(_)));
    }

    #[test]
    fn a_cluster_still_forming_is_asked_again_and_a_wrong_request_is_not() {
        let again = |a: &jetstream::Error| {
            matches!(
                attempt(LogError::Cluster(a.to_string()), Some(a)),
                Attempt::NotYet(_)
            )
        };
        // Seen in CI half a second after the meta leader was elected.
        assert!(again(&answer(
            10005,
            "no suitable peers for placement, peer offline"
        )));
        assert!(again(&answer(
            10008,
            "JetStream system temporarily unavailable"
        )));
        // More replicas than servers (seen: --nats-replicas 5 on 3 servers).
        assert!(!again(&answer(10005, "no suitable peers for placement")));
        assert!(!again(&answer(10058, "stream name already in use")));
        let timed_out = LogError::Cluster("creating stream CHAT: timed out".into());
        assert!(matches!(attempt(timed_out, None), Attempt::NotYet(_)));
        let refused = LogError::Cluster("looking up stream CHAT: permissions violation".into());
        assert!(matches!(attempt(refused, None), Attempt::Failed(_)));
    }

    #[test]
    fn any_thread_id_round_trips_through_its_subject() {
        for t in ["", "general", "a.b c*>", "ünï\ncode"] {
            let s = subject("CHAT", t);
            assert!(s.starts_with("CHAT.msg.t"));
            assert!(!s["CHAT.msg.".len()..].contains(['.', ' ', '*', '>']));
            assert_eq!(thread_of(&s).as_deref(), Some(t));
        }
        assert_eq!(thread_of("CHAT.msg.x00"), None);
        assert_eq!(thread_of("CHAT.msg.t0"), None);
    }

    #[test]
    fn payloads_round_trip_and_foreign_ones_do_not_panic() {
        let p = payload("alice:x", "hello: 1");
        assert_eq!(
            parse_payload(&p),
            ("alice:x".to_owned(), "hello: 1".to_owned())
        );
        assert_eq!(parse_payload(b"raw"), ("unknown".into(), "raw".into()));
        assert_eq!(parse_payload(b"99:ab").0, "unknown");
        assert_eq!(parse_payload(&[0xff, b':']).0, "unknown");
        // A length that would cut a character in two.
        assert_eq!(parse_payload("1:é".as_bytes()).0, "unknown");
    }

    #[test]
    fn message_ids_tell_messages_apart_and_resends_not() {
        let a = message_id("alice", "t", "hi", Micros(1));
        assert_eq!(a, message_id("alice", "t", "hi", Micros(1)));
        assert_eq!(a.len(), 32);
        assert_ne!(a, message_id("alice", "t", "hi", Micros(2)));
        assert_ne!(a, message_id("alice", "th", "i", Micros(1)));
        assert_ne!(a, message_id("bob", "t", "hi", Micros(1)));
    }

    #[test]
    fn an_existing_stream_is_checked_field_by_field() {
        let o = NatsOptions::default();
        let want = wanted_config(&o, 3, Default::default());
        assert!(conflicts(&want, &want).is_empty());
        let mut have = want.clone();
        have.storage = stream::StorageType::Memory;
        have.num_replicas = 1;
        let c = conflicts(&have, &want);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c[1].contains("--nats-replicas 1"));
        // Limits set by the operator are fine when the node was given none.
        let mut have = want.clone();
        have.max_messages = 10;
        assert!(conflicts(&have, &want).is_empty());
    }
}
