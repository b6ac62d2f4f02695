//! `--warm-up`: before the window, each writer sends one message to its own
//! (first) thread, and the window starts once every client has it.
//!
//! Why: the interest policy learns which threads a client takes part in
//! from what it writes. Without a warm-up, a client with one thread of its
//! own is still "uninterested" everywhere until its first write in the
//! window, and at 1,000 writers and 200 msg/s that first write comes only
//! after 5 s: the start of the window measures the policy before it knows
//! anything, with the loose bounds on the client's own thread.

use super::{BenchArgs, READY};
use super::{Connection, Slot, Stats, bench_threads, message, plan_of, send_unary};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Message ids from `id_base + WARM_UP_IDS` on are warm-up writes: far above
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

/// Sends the warm-up writes and waits (up to `--drain`) until every ready
/// client received all of them.
pub(super) async fn warm_up(
    args: &BenchArgs,
    slots: &[Arc<Slot>],
    channels: &[Connection],
    stats: &Arc<Stats>,
) {
    let (first_writer, writers) = super::writer_range(args);
    let (id_base, plan) = plan_run(args, stats);
    let threads = bench_threads(args);
    let mut tasks = Vec::with_capacity(writers);
    for (i, w) in (first_writer..first_writer + writers).enumerate() {
        let slot = &slots[w];
        if slot.state.load(Ordering::Relaxed) != READY {
            continue;
        }
        let thread = &threads[plan.first_own(w).unwrap_or(w % threads.len())];
        let id = id_base.wrapping_add(WARM_UP_IDS + i as u64);
        let m = message(slot, thread, id, args.size);
        if let Some(r) = &stats.recording {
            r.send(w, &m, id, false);
        }
        stats.dispatched.fetch_add(1, Ordering::Relaxed);
        let channel = channels[w % channels.len()].clone();
        tasks.push(send_unary(channel, m, id, Instant::now(), stats.clone()));
    }
    let by = Instant::now() + args.drain.max(Duration::from_secs(1));
    for t in tasks {
        let _ = tokio::time::timeout_at(by.into(), t).await;
    }
    super::wait_delivered(slots, stats, by).await;
}
