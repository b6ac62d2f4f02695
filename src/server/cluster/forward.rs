//! One publisher per contended thread: a node forwards its writes to a
//! thread where racing other nodes costs refusals to the thread's
//! *owner*, which publishes them with its own.
//!
//! Nodes that publish to one thread race: each publish expects the
//! thread's last commit, and when another node's came first it is decided
//! again and sent again. On one thread written through 3 nodes about every
//! other publish conflicted, and a write waited long enough for its
//! writer's unseen commits to pass the order bound. Written through one
//! node, the same thread took 6,461 msg/s instead of 4,378; forwarded to
//! its owner, 5,114 instead of 4,055 (`docs/benchmarks.md`, medians of 3).
//!
//! - **Which threads.** By default (`--nats-forward contended`) a thread
//!   is forwarded while a write of it was refused by a bound on this node,
//!   when decided again after a conflict, within [`CONTENDED_WITHIN`]:
//!   where racing costs writers their place. Elsewhere a conflict costs a
//!   round trip, less than the hop: forwarding every thread of the R3 row
//!   that other nodes also wrote to (64 threads written through 3 nodes,
//!   order bound out of reach) cut it from 6,917 to 5,823 msg/s (medians
//!   of 3). `all` forwards every thread, `off` none.
//! - **Which node.** The owner is the live node (one with an unexpired
//!   acknowledgement report, this one included) with the highest hash of
//!   its report key and the thread: every node that sees the same live
//!   nodes picks the same owner, and the owner publishes itself.
//! - **Exact all the same.** The forwarding node counts each write's order
//!   error up to its view of the thread's last commit (`after`), as it
//!   would before publishing. The owner adds the thread's commits above
//!   `after` that the writer did not make, from a record of every commit
//!   since it was first forwarded to ([`Lanes::check_forwarded`]), and
//!   publishes with the expected last subject sequence like any write: a
//!   conflict is decided again. If its record does not reach back to
//!   `after`, the write is answered *undecided* and its node publishes it.
//!   The writer is known to the owner by a token, a hash of its client id
//!   with this process's random key, never the id itself.
//! - **Order and failure.** A thread's writes are forwarded by its lane
//!   task, one batch at a time, as they would be published. A forwarded
//!   write is never forwarded again, and a node waiting for an answer to
//!   its own forward of a thread answers forwards of that thread
//!   undecided: two nodes that took each other for the owner would
//!   otherwise wait on each other. No node listening (the owner died) is
//!   known at once, and the writes are published here. With no answer
//!   within [`ANSWER_WITHIN`] (a killed owner never answers) they are
//!   published here too, with the same `Nats-Msg-Id`s, so one the owner
//!   stored after all is kept once; but since the owner may still store
//!   them, a refusal here is answered `INTERNAL_ERROR`, and a write is not
//!   published after a later write of its writer was committed (the owner
//!   refused it and stored the later one).
//!
//! Forwards go over core NATS request-reply on `<stream>.fwd.<report key>`,
//! each write with its RPC span's `traceparent`: the owner's span of it is
//! that span's child.
//!
//! [`Lanes::check_forwarded`]: super::lanes::Lanes::check_forwarded

use super::{Failure, Proposal, Reply, Shared, answer, check_local, lock, own_writes, settle};
use crate::consistency::{ClientId, Entry, Micros, Rejection, Seq};
use crate::log::nats::Forward as Which;
use crate::server::hub::Origin;
use crate::server::propagation;
use crate::telemetry::tracing_setup::RPC_SPAN_TARGET;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A thread with a write refused after a conflict this recently is
/// forwarded to its owner.
pub(super) const CONTENDED_WITHIN: Duration = Duration::from_secs(1);
/// How long a node waits for the owner's answer before it publishes the
/// writes itself (a killed owner never answers). The owner answers within
/// a publish round trip when it is well; its own publishes are bounded by
/// the writes' deadline.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// The writes of one thread one node forwards at once.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Forward {
    thread: String,
    /// What the forwarding node counted each write's order error up to.
    after: Seq,
    /// Milliseconds left before the first write's deadline.
    timeout_ms: u64,
    writes: Vec<Write>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Write {
    sender: String,
    contents: String,
    timestamp: i64,
    number: i64,
    /// The writer's token (see [`token`]).
    writer: ClientId,
    /// Its order error up to `after`.
    order_error: u64,
    /// The W3C `traceparent` of the writer's RPC span, when it is traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

/// The owner's answer for one forwarded write.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) enum Answer {
    Stored(Seq),
    Order { error: u64, bound: u64 },
    Numerical { error: u64, bound: u64 },
    Undecided,
    Failed(String),
}

impl Answer {
    pub(super) fn of(outcome: Result<(Seq, Micros), Failure>) -> Answer {
        match outcome {
            Ok((seq, _)) => Answer::Stored(seq),
            Err(Failure::Refused(Rejection::Order { error, bound })) => {
                Answer::Order { error, bound }
            }
            Err(Failure::Refused(Rejection::Numerical { error, bound })) => {
                Answer::Numerical { error, bound }
            }
            Err(Failure::Refused(other)) => Answer::Failed(format!("refused: {other:?}")),
            Err(Failure::Failed(error)) => Answer::Failed(error),
            Err(Failure::Undecided) => Answer::Undecided,
        }
    }
}

/// The subject the node with report key `key` takes forwards on.
fn subject(stream: &str, key: &str) -> String {
    format!("{stream}.fwd.{key}")
}

/// A writer's name for the owner: never one of the owner's client ids
/// (those are positive), and not the id itself (a capability).
fn token(client: ClientId) -> ClientId {
    use std::hash::{BuildHasher, Hasher};
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = KEY.get_or_init(Default::default).build_hasher();
    h.write_i64(client);
    -1 - (h.finish() >> 1) as i64
}

/// The owner among `keys` of `thread`: the highest hash of key and thread
/// (FNV-1a, then mixed so that keys differing in one character spread;
/// the same in every process).
fn owner_among<'a>(keys: impl Iterator<Item = &'a str>, thread: &str) -> Option<&'a str> {
    let hash = |key: &str| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes().chain([0]).chain(thread.bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    };
    keys.max_by_key(|k| (hash(k), *k))
}

/// The node to forward `thread`'s writes to, if it is contended and this
/// node is not its owner.
pub(super) fn owner(shared: &Shared, thread: &str) -> Option<String> {
    let forward = match shared.forward {
        Which::Off => false,
        Which::All => true,
        Which::Contended => lock(&shared.lanes).contended(thread, CONTENDED_WITHIN),
    };
    if !forward {
        return None;
    }
    let own = shared.key.as_str();
    let floors = lock(&shared.floors);
    let owner = owner_among(floors.live_keys().chain([own]), thread)?;
    (owner != own).then(|| owner.to_owned())
}

/// Forwards `writes` (one thread's, in order) to `owner` and answers those
/// it decided; returns the ones to publish here (all of them if no node
/// took the request).
pub(super) async fn propose(
    shared: &Arc<Shared>,
    owner: &str,
    writes: Vec<Proposal>,
) -> Vec<Proposal> {
    let deadline = writes[0].admitted + shared.timeout;
    let ids = own_writes(shared, &writes);
    let request = request(shared, &writes, deadline);
    let subject = subject(&shared.name, owner);
    let thread = writes[0].entry.thread.clone();
    let forwarding = |on| {
        let lanes = &shared.lanes;
        shared
            .hub
            .inspect(|_| lock(lanes).set_forwarding(&thread, on));
    };
    // Set before the request goes out: of two nodes forwarding one thread to
    // each other, the later request finds the other's flag set.
    forwarding(true);
    let wait = deadline.min(tokio::time::Instant::now() + ANSWER_WITHIN);
    let asked = tokio::time::timeout_at(wait, shared.client.request(subject, request.into())).await;
    forwarding(false);
    if asked.is_err() && tokio::time::Instant::now() < deadline {
        // Published here with the same `Nats-Msg-Id`s: if the owner stored
        // one after all, the stream keeps it once.
        tracing::warn!(
            owner,
            thread = %thread,
            writes = writes.len(),
            "the thread's owner did not answer a forward within {ANSWER_WITHIN:?}: publishing its writes here"
        );
        shared.metrics.cluster.forwarded("no_answer", writes.len());
        return writes
            .into_iter()
            .map(|p| Proposal {
                owner_may_store: true,
                ..p
            })
            .collect();
    }
    let answers = match asked {
        Ok(Ok(m)) => serde_json::from_slice::<Vec<Answer>>(&m.payload)
            .map_err(|e| format!("a forward's answer that is not one: {e}")),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            shared.metrics.cluster.forwarded("no_owner", writes.len());
            return writes;
        }
        Ok(Err(e)) => Err(format!("forwarding to the thread's owner: {e}")),
        Err(_) => Err("forwarded to the thread's owner: no answer before the timeout".into()),
    };
    let answers = match answers {
        Ok(a) if a.len() == writes.len() => a,
        Ok(_) => {
            vec![Answer::Failed("a forward's answer of the wrong length".into()); writes.len()]
        }
        Err(error) => {
            tracing::warn!(owner, thread = %thread, %error, "forwarding to the thread's owner failed");
            vec![Answer::Failed(error); writes.len()]
        }
    };
    settle_all(shared, writes, ids, answers)
}

/// The request for `writes`: each write's order error counted up to this
/// node's view of the thread's last commit.
fn request(shared: &Shared, writes: &[Proposal], deadline: tokio::time::Instant) -> Vec<u8> {
    let (after, errors) = shared.hub.inspect(|_| {
        let mut lanes = lock(&shared.lanes);
        let mut after = None;
        let errors: Vec<u64> = writes
            .iter()
            .map(|p| {
                // Only this node's own writes are forwarded.
                let check = check_local(&mut lanes, p, after.is_none());
                after.get_or_insert(check.last);
                p.origin.order_error + check.unseen_since
            })
            .collect();
        (after.unwrap_or(0), errors)
    });
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let forward = Forward {
        thread: writes[0].entry.thread.to_string(),
        after,
        timeout_ms: left.as_millis() as u64,
        writes: writes
            .iter()
            .zip(errors)
            .map(|(p, order_error)| Write {
                sender: p.entry.sender.to_string(),
                contents: p.entry.contents.clone(),
                timestamp: p.origin.timestamp.0,
                number: p.origin.number,
                writer: token(p.origin.client),
                order_error,
                traceparent: propagation::traceparent(&p.span),
            })
            .collect(),
    };
    serde_json::to_vec(&forward).unwrap_or_default()
}

/// Answers each forwarded write by the owner's answer (a stored one once
/// this node applied it); returns the undecided ones, to publish here.
fn settle_all(
    shared: &Arc<Shared>,
    writes: Vec<Proposal>,
    ids: Vec<String>,
    answers: Vec<Answer>,
) -> Vec<Proposal> {
    let mut local = Vec::new();
    let mut decided = Vec::new();
    for ((p, id), a) in writes.into_iter().zip(ids).zip(answers) {
        shared.metrics.cluster.forwarded(label(&a), 1);
        match a {
            Answer::Undecided => local.push(p),
            Answer::Stored(_) => {
                // The stream orders the writer's next write after it.
                p.done.send_replace(true);
                decided.push((p, id, a));
            }
            _ => decided.push((p, id, a)),
        }
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        for (p, id, a) in decided {
            let outcome = match a {
                Answer::Stored(seq) => settle(&shared, &p, &id, seq).await,
                Answer::Order { error, bound } => {
                    Err(Failure::Refused(Rejection::Order { error, bound }))
                }
                Answer::Numerical { error, bound } => {
                    Err(Failure::Refused(Rejection::Numerical { error, bound }))
                }
                Answer::Failed(error) => Err(Failure::Failed(error)),
                Answer::Undecided => continue,
            };
            answer(&shared, p, &id, outcome);
        }
    });
    local
}

fn label(a: &Answer) -> &'static str {
    match a {
        Answer::Stored(_) => "stored",
        Answer::Order { .. } | Answer::Numerical { .. } => "refused",
        Answer::Undecided => "undecided",
        Answer::Failed(_) => "failed",
    }
}

/// Takes the writes other nodes forward to this one and hands them to the
/// publisher (`tx`) in the order they came, as its own.
pub(super) async fn serve(shared: Arc<Shared>, tx: mpsc::UnboundedSender<Proposal>) {
    let subject = subject(&shared.name, &shared.key);
    loop {
        match shared.client.subscribe(subject.clone()).await {
            Ok(mut requests) => {
                // Names this node's key, which the other nodes' logs give
                // for an owner that does not answer.
                tracing::info!(%subject, "taking writes other nodes forward to this one");
                while let Some(m) = requests.next().await {
                    take(&shared, &tx, m);
                }
            }
            Err(e) => tracing::warn!(error = %e, "taking forwarded writes: subscribing again"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One forward: its writes go to the publisher; a task answers once every
/// one of them has an outcome.
fn take(shared: &Arc<Shared>, tx: &mpsc::UnboundedSender<Proposal>, m: async_nats::Message) {
    let Some(reply_to) = m.reply else { return };
    let f = match serde_json::from_slice::<Forward>(&m.payload) {
        // A writer token is negative: a positive one would pass for one of
        // this node's clients.
        Ok(f) if f.writes.iter().all(|w| w.writer < 0) => f,
        Ok(_) => {
            tracing::warn!("a forward naming a writer that is not a token: ignored");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "a forwarded write that is not one: ignored");
            return;
        }
    };
    let thread: Arc<str> = f.thread.into();
    let n = f.writes.len();
    // Under the hub lock, like every change to the lanes: unless this node
    // waits for a forward of the same thread (taking these would have each
    // node wait for the other until the deadline), they are on their way.
    let busy = shared.hub.inspect(|e| {
        let mut lanes = lock(&shared.lanes);
        let busy = lanes.is_forwarding(&thread);
        if !busy {
            for _ in 0..n {
                lanes.forwarded(&thread, e.head());
            }
        }
        busy
    });
    if busy {
        reply(shared, reply_to, vec![Answer::Undecided; n]);
        return;
    }
    let admitted = (tokio::time::Instant::now() + Duration::from_millis(f.timeout_ms))
        .checked_sub(shared.timeout)
        .unwrap_or_else(tokio::time::Instant::now);
    let mut waits = Vec::new();
    for w in f.writes {
        let (reply, rx) = oneshot::channel();
        let p = Proposal {
            entry: Arc::new(Entry {
                seq: f.after + 1,
                thread: thread.clone(),
                contents: w.contents,
                sender: w.sender.into(),
                commit_time: Micros(0),
            }),
            origin: Origin {
                client: w.writer,
                number: w.number,
                timestamp: Micros(w.timestamp),
                order_error: w.order_error,
            },
            reply: Reply::Forwarded(reply),
            forwarded: Some(f.after),
            owner_may_store: false,
            admitted,
            done: watch::channel(false).0,
            // The owner's span is kept below, until the write's outcome.
            span: tracing::Span::none(),
        };
        let span = owner_span(&thread, w.traceparent.as_deref());
        if tx.send(p).is_err() {
            return; // shutting down: the forwarding node times out
        }
        waits.push((rx, span));
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut answers = Vec::with_capacity(waits.len());
        for (rx, span) in waits {
            let a = rx.await;
            let a = a.unwrap_or_else(|_| Answer::Failed("the owner stopped".into()));
            span.record("chat.outcome", label(&a));
            answers.push(a);
        }
        reply(&shared, reply_to, answers);
    });
}

/// The span of a write another node forwarded, at this node (its owner):
/// a child of the writer's RPC span there, when that one is traced. It ends
/// when the write has its outcome.
fn owner_span(thread: &str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        target: RPC_SPAN_TARGET,
        "forwarded",
        otel.name = "cluster/ForwardedWrite",
        otel.kind = "server",
        chat.thread = thread,
        chat.outcome = tracing::field::Empty,
    );
    if let Some(parent) = traceparent
        && !span.is_disabled()
    {
        let _ = span.set_parent(propagation::parent_of(parent));
    }
    span
}

/// Sends `answers` to a forward's reply subject.
fn reply(shared: &Shared, to: async_nats::Subject, answers: Vec<Answer>) {
    let client = shared.client.clone();
    tokio::spawn(async move {
        let body = serde_json::to_vec(&answers).unwrap_or_default();
        if let Err(e) = client.publish(to, body.into()).await {
            tracing::debug!(error = %e, "answering a forward");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_picks_the_same_owner_and_threads_spread_over_nodes() {
        let keys = ["n1", "n2", "n3"];
        let mut owners = std::collections::HashMap::new();
        for t in 0..300 {
            let thread = format!("t{t}");
            let a = owner_among(keys.iter().copied(), &thread).unwrap();
            let b = owner_among(keys.iter().rev().copied(), &thread).unwrap();
            assert_eq!(a, b);
            *owners.entry(a).or_insert(0) += 1;
        }
        assert_eq!(owners.len(), 3);
        assert!(owners.values().all(|&n| n > 60), "{owners:?}");
        // A node leaving moves only its own threads.
        for t in 0..300 {
            let thread = format!("t{t}");
            let before = owner_among(keys.iter().copied(), &thread).unwrap();
            let after = owner_among(["n1", "n2"].into_iter(), &thread).unwrap();
            assert!(before == "n3" || before == after);
        }
    }

    #[test]
    fn a_token_is_negative_stable_and_not_the_id() {
        for id in [1, 42, i64::MAX] {
            assert!(token(id) < 0);
            assert_eq!(token(id), token(id));
            assert_ne!(token(id), -id);
        }
        assert_ne!(token(1), token(2));
    }
}
