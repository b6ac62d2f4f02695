//! Publishing a thread's queued writes together, as one JetStream atomic
//! batch (nats-server 2.12+, a stream with `allow_atomic`).
//!
//! One write at a time, a thread commits at most one write per round trip
//! (publish, replication to a quorum, consumed back): on a loaded R3
//! cluster that round trip took ~115 ms, so a busy thread queued and its
//! writes went stale. A batch takes every write the thread has queued
//! (up to `--nats-batch`) in one round trip, and keeps what makes a single
//! write exact:
//!
//! - **Decided together, in admission order.** Each write's order error is
//!   the admitted one, plus the thread's commits applied since its
//!   admission that its writer did not make, plus the writes ahead of it in
//!   the batch by other writers (its writer has not seen those either).
//!   Its numerical error counts the writes ahead of it too. A write over a
//!   bound is refused and left out; the rest stay in order.
//! - **One check for all.** The first message carries the thread's expected
//!   last sequence, and JetStream checks it when the batch commits, storing
//!   all of it or none: no other node's commit can land inside the batch or
//!   between the check and the batch. (Measured on nats-server 2.15.1: a
//!   commit of the subject stored between a batch's first message and its
//!   commit makes the commit fail with `wrong last sequence`.)
//! - **Each write keeps its `Nats-Msg-Id`.** JetStream remembers every id
//!   of a batch, so a resend through any node commits once; a batch holding
//!   an id already stored is refused whole, and its writes then go one at a
//!   time, where a resend is answered with the first commit.
//!
//! A conflict (another node committed to the thread first) decides the
//! batch again on the view that includes that commit. Anything else (a
//! timeout, a refused batch) hands the writes to the one-at-a-time path,
//! which first looks whether an earlier attempt was stored.

use super::{
    Failure, MAX_CONFLICTS, OVERTAKEN, Proposal, Published, Shared, answer, check_of, committed,
    conflict, error_kind, lock, note_own_stored, note_stored, overtaken, own_writes, propose_one,
    publish_checked, settle, wait_applied,
};
use crate::consistency::{ClientId, Rejection, Seq};
use crate::log::nats;
use async_nats::jetstream::context::PublishErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// A write's outcome, once it has one: stored at (at most) a sequence, or
/// not committed.
type Outcome = Option<Result<Seq, Failure>>;

/// `first` and the writes queued behind it, up to `max`.
pub(super) fn gather(
    first: Proposal,
    rx: &mut mpsc::UnboundedReceiver<Proposal>,
    max: usize,
) -> Vec<Proposal> {
    let mut writes = vec![first];
    while writes.len() < max {
        let Ok(p) = rx.try_recv() else { break };
        writes.push(p);
    }
    writes
}

/// Publishes one thread's writes, in order, until each is stored or
/// refused; a task of their own then waits for the consumer and answers
/// each writer, so the thread's next writes are published meanwhile.
pub(super) async fn propose(shared: &Arc<Shared>, mut writes: Vec<Proposal>) {
    if writes.len() == 1 {
        if let Some(p) = writes.pop() {
            propose_one(shared, p).await;
        }
        return;
    }
    let deadline = writes[0].admitted + shared.timeout;
    let ids = own_writes(shared, &writes);
    let mut outcomes: Vec<Outcome> = writes.iter().map(|_| None).collect();
    commit_batch(shared, &writes, &ids, deadline, &mut outcomes).await;
    // What the batch left undecided goes one at a time, in order.
    for ((p, id), outcome) in writes.iter().zip(&ids).zip(outcomes.iter_mut()) {
        if outcome.is_none() {
            let deadline = p.admitted + shared.timeout;
            *outcome = Some(publish_checked(shared, p, id, deadline).await);
        }
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        for ((p, id), outcome) in writes.into_iter().zip(ids).zip(outcomes) {
            let outcome = match outcome {
                Some(Ok(seq)) => settle(&shared, &p, &id, seq).await,
                Some(Err(failure)) => Err(failure),
                None => Err(Failure::Failed("not decided".into())),
            };
            answer(&shared, p, &id, outcome);
        }
    });
}

/// Publishes the undecided writes as batches until each is committed or
/// refused, or the batch path gives up (those stay `None`).
async fn commit_batch(
    shared: &Shared,
    writes: &[Proposal],
    ids: &[String],
    deadline: tokio::time::Instant,
    outcomes: &mut [Outcome],
) {
    let subject = nats::subject(&shared.name, &writes[0].entry.thread);
    let mut known = None;
    let mut conflicts = 0;
    loop {
        settle_committed(shared, ids, outcomes);
        let expected = recheck(shared, writes, known, conflicts > 0, outcomes);
        let open: Vec<usize> = (0..writes.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if open.len() < 2 {
            return; // none left, or one: the one-at-a-time path takes it
        }
        let items: Vec<_> = open
            .iter()
            .map(|&i| {
                let e = &writes[i].entry;
                (nats::payload(&e.sender, &e.contents), ids[i].as_str())
            })
            .collect();
        let fail = |outcomes: &mut [Outcome], error: String| {
            for &i in &open {
                outcomes[i] = Some(Err(Failure::Failed(error.clone())));
            }
        };
        match publish(shared, &subject, &items, expected, deadline).await {
            Published::Stored(last) => {
                // JetStream stores a batch at consecutive sequences. Each
                // write learns its exact one when this node applies it.
                let first = last + 1 - open.len() as Seq;
                let stored: Vec<(Seq, ClientId)> = (first..=last)
                    .zip(&open)
                    .map(|(seq, &i)| (seq, writes[i].origin.client))
                    .collect();
                note_own_stored(shared, &writes[0].entry.thread, &stored);
                for (&i, &(seq, _)) in open.iter().zip(&stored) {
                    outcomes[i] = Some(Ok(seq));
                }
                // Every write of the batch is stored or refused: their
                // writers' next writes may go.
                for p in writes {
                    p.done.send_replace(true);
                }
                return;
            }
            Published::Conflict(last) => {
                conflicts += 1;
                if conflicts > MAX_CONFLICTS {
                    shared.metrics.cluster.conflict("gave_up");
                    let error = format!("{MAX_CONFLICTS} conflicts in a row on one thread");
                    return fail(outcomes, error);
                }
                shared.metrics.cluster.conflict("retried");
                if let Err(e) = wait_applied(shared, last, deadline).await {
                    return fail(outcomes, e);
                }
                known = Some(last);
            }
            Published::Failed(error) => {
                tracing::debug!(%error, writes = open.len(), "batch not stored: publishing its writes one at a time");
                return;
            }
        }
    }
}

/// Marks stored the writes this node has applied (stored by an earlier
/// attempt).
fn settle_committed(shared: &Shared, ids: &[String], outcomes: &mut [Outcome]) {
    for (id, outcome) in ids.iter().zip(outcomes.iter_mut()) {
        if outcome.is_none() {
            *outcome = committed(shared, id).map(Ok);
        }
    }
}

/// Decides the undecided writes again, in order, on this node's current
/// view, refusing those over a bound; returns the thread's expected last
/// sequence (`known`: the stream's answer to a conflict, applied since).
fn recheck(
    shared: &Shared,
    writes: &[Proposal],
    known: Option<Seq>,
    after_conflict: bool,
    outcomes: &mut [Outcome],
) -> Seq {
    let last = shared.hub.inspect(|engine| {
        let mut lanes = lock(&shared.lanes);
        let floors = lock(&shared.floors);
        let floor = floors.lowest(engine.lowest_active_ack());
        // Writers of the writes ahead in the batch.
        let mut ahead: Vec<ClientId> = Vec::new();
        let mut last = None;
        for (p, outcome) in writes.iter().zip(outcomes.iter_mut()) {
            if outcome.is_some() {
                continue;
            }
            let (e, client) = (&p.entry, p.origin.client);
            if overtaken(shared, p) {
                *outcome = Some(Err(Failure::Failed(OVERTAKEN.into())));
                continue;
            }
            // The first undecided write is the earliest admitted: what its
            // check forgets, no later check needs.
            let Some(check) = check_of(&mut lanes, p, last.is_none()) else {
                *outcome = Some(Err(Failure::Undecided));
                continue;
            };
            last.get_or_insert(check.last);
            let bounds = engine.settings().bounds.for_thread(&e.thread);
            let others = ahead.iter().filter(|&&c| c != client).count() as u64;
            let error = p.origin.order_error + check.unseen_since + others;
            let numerical =
                floor.map(|pos| floors.count_after(&e.thread, pos) + ahead.len() as u64);
            let refusal = if error > bounds.order {
                Some(Rejection::Order {
                    error,
                    bound: bounds.order,
                })
            } else {
                numerical
                    .filter(|&n| n >= bounds.numerical)
                    .map(|error| Rejection::Numerical {
                        error,
                        bound: bounds.numerical,
                    })
            };
            match refusal {
                Some(r) => {
                    if after_conflict {
                        shared.metrics.cluster.conflict("refused");
                        lanes.refused_after_conflict(&e.thread);
                    }
                    *outcome = Some(Err(Failure::Refused(r)));
                }
                None => ahead.push(client),
            }
        }
        last
    });
    known.or(last).unwrap_or(0)
}

/// A batch id no other batch in flight on the stream has: this process's
/// random prefix and a counter.
fn batch_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    format!("{prefix:016x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Publishes `items` (payload, `Nats-Msg-Id`) to `subject` as one atomic
/// batch whose first message expects `expected` as the subject's last
/// sequence, and waits for the commit's acknowledgement (the batch's last
/// sequence).
async fn publish(
    shared: &Shared,
    subject: &str,
    items: &[(bytes::Bytes, &str)],
    expected: Seq,
    deadline: tokio::time::Instant,
) -> Published {
    let m = &shared.metrics.cluster;
    let sent = tokio::time::Instant::now();
    let (id, n) = (batch_id(), items.len());
    let attempt = tokio::time::timeout_at(
        deadline,
        nats::publish_batch(&shared.js, subject, &id, items, expected),
    )
    .await;
    let error = match attempt {
        Ok(Ok(ack)) => {
            m.publish_seconds.observe(sent.elapsed().as_secs_f64());
            m.batch_writes.observe(n as f64);
            note_stored(shared, ack.sequence);
            return Published::Stored(ack.sequence);
        }
        Ok(Err(e)) => e,
        Err(_) => {
            m.publish_error(error_kind(PublishErrorKind::TimedOut));
            return Published::Failed("no acknowledgement before the timeout".into());
        }
    };
    if nats::wrong_last_sequence(&error) {
        return conflict(shared, subject, &error, "publishing a batch").await;
    }
    m.publish_error(error_kind(error.kind()));
    Published::Failed(format!("publishing a batch: {error}"))
}
