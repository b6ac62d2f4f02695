//! `--warm-up`: before the window, each writer sends one message to its own
//! (first) thread, again while it is refused, and the window starts once
//! every client has them all.
//!
//! Why: the interest policy learns which threads a client takes part in
//! from what it writes. Without a warm-up, a client with one thread of its
//! own is still "uninterested" everywhere until its first write in the
//! window, and at 1,000 writers and 200 msg/s that first write comes only
//! after 5 s: the start of the window measures the policy before it knows
//! anything, with the loose bounds on the client's own thread.

use super::{BenchArgs, READY};
use super::{Slot, Stats, bench_threads, message, plan_of, record_status};
use crate::proto::Thread;
use crate::proto::chat_server_client::ChatServerClient;
use crate::proto::message_status::StatusCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Message ids from `id_base + WARM_UP_IDS` on are warm-up writes (writer
/// index + try << 24): far above
/// any window's (2^31 messages is hours at a million a second). They are
/// delivered and checked like the others, but left out of the latencies.
pub(super) const WARM_UP_IDS: u64 = 1 << 31;

/// The run's id base and thread plan, chosen once (warm-up and window share
/// them).
pub(super) fn plan_run<'a>(
    args: &BenchArgs,
    stats: &'a Stats,
) -> (u64, &'a super::threads::ThreadPlan) {
    let (first_writer, writers) = super::writer_range(args);
    let plan = stats.plan.get_or_init(|| {
        // Ids start at a random base, so runs against one server (and the
        // recordings of several bench processes) never share an id.
        let id_base = u64::from(rand::random::<u32>()) << 32;
        stats.id_base.store(id_base, Ordering::Relaxed);
        plan_of(args, first_writer, writers)
    });
    (stats.id_base.load(Ordering::Relaxed), plan)
}

/// Sends the warm-up writes (trying for up to `--drain`) and waits (up to
/// `--drain` more) until every ready client received all of them.
pub(super) async fn warm_up(args: &BenchArgs, slots: &[Arc<Slot>], stats: &Arc<Stats>) {
    let (first_writer, writers) = super::writer_range(args);
    let (id_base, plan) = plan_run(args, stats);
    let threads = bench_threads(args);
    let by = Instant::now() + args.drain.max(Duration::from_secs(1));
    let mut tasks = Vec::with_capacity(writers);
    for (i, w) in (first_writer..first_writer + writers).enumerate() {
        let slot = &slots[w];
        if slot.state.load(Ordering::Relaxed) != READY {
            continue;
        }
        let thread = threads[plan.first_own(w).unwrap_or(w % threads.len())].clone();
        let id = id_base.wrapping_add(WARM_UP_IDS + i as u64);
        let (slot, stats, size) = (slot.clone(), stats.clone(), args.size);
        tasks.push(tokio::spawn(async move {
            write_until_accepted(&slot, &stats, (thread, id, size), by).await
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout_at(by.into(), t).await;
    }
    // The last accepted write may be on a thread others see only at the
    // loosened staleness.
    super::wait_delivered(slots, stats, Instant::now() + args.drain).await;
}

/// The pause before a refused warm-up write is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// Sends writer `w`'s warm-up write, again after a pause while it is
/// refused: many writes at once exceed the order bound for the writers
/// that have not yet seen the others' (measured: 8 of 200 got
/// `ORDER_ERROR`; the server counts a refused write as taking part too,
/// but each writer should have one accepted). Tries until `by` (the
/// warm-up's end, `--drain` after it began: a writer may see others'
/// commits only at the interest policy's loosened staleness); every try
/// is sent and counted, through the writer's node at the time.
async fn write_until_accepted(
    slot: &Slot,
    stats: &Stats,
    (thread, id, size): (Option<Thread>, u64, usize),
    by: Instant,
) {
    for try_ in 0u64.. {
        let Some(inc) = slot.incarnation() else {
            return;
        };
        let mut rpc = ChatServerClient::new(inc.conn.clone());
        // A new id per try: a recording must never show one id sent twice.
        let id = id + (try_ << 24);
        let m = message(&inc, &thread, id, size);
        if let Some(r) = &stats.recording {
            r.send(inc.recorded as usize, &m, id, false);
        }
        stats.dispatched.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        match rpc.send_message(m).await {
            Ok(s) => {
                record_status(stats, s.get_ref(), id, sent);
                if s.get_ref().status_code == StatusCode::Ok as i32 {
                    return;
                }
            }
            Err(e) => {
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                stats.error(format!("warm-up SendMessage: {e}"));
                return;
            }
        }
        if Instant::now() + RETRY_AFTER >= by {
            return;
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}
