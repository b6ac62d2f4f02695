//! The flush scheduler: one thread for all clients. It sleeps until the
//! engine's next deadline (or until a commit moves that deadline earlier),
//! then lets the hub flush, heartbeat and drop whatever is due.
//!
//! It has an OS thread of its own, not a task on the server's runtime: a
//! flush is due at a time, and a task becomes runnable at its deadline only
//! to wait for a worker busy with RPC tasks. Every message in a late poll's
//! Updates may count against its bound. Measured on the 2-core benchmark
//! machine, 1,000 clients stepping up to 3,600 msg/s at a 100 ms bound
//! (12.5 ms margin): as a task, 2-15 polls a run were more than 12.8 ms
//! late and 61-5,281 messages were delivered late; as a thread, 0-1 polls
//! and 0-160 messages.
//!
//! It asks for the shortest time slice the kernel allows ([`SLICE`]), so
//! that when it wakes the kernel may preempt a thread in the middle of a
//! longer slice for it, instead of letting that slice run out. It keeps
//! the default priority:
//! at nice -10 it woke late less often, but in 3 of 6 runs of the interest
//! benchmark (1,000 clients, 200 msg/s) deliveries went up to 183 ms past
//! their bound, against none of 6 at the default priority
//! (docs/benchmarks.md).
//!
//! When the thread is late all the same (ready, but with no core), the
//! requests that keep coming do its work: an acknowledgement, a write or a
//! stored batch that finds the poll more than 3 ms overdue runs it on its
//! own thread (`Hub::take_over_late_poll`).

use super::hub::Hub;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The scheduler thread's time slice: the kernel's minimum. A poll takes
/// 0.2 ms of CPU on average at 1,000 clients. Measured with the probe
/// above at the default priority: the thread waited for a core 2.5-3.0 s
/// a run instead of 5.7-6.7 s, and 1-11 polls a run were more than 6.4 ms
/// late instead of 21-49 (docs/benchmarks.md).
const SLICE: Duration = Duration::from_micros(100);

/// The running scheduler thread. Dropped without [`Scheduler::join`] (a
/// server that failed to start), it stops the thread all the same.
pub struct Scheduler {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Scheduler {
    /// Starts the scheduler thread; it runs until `stop` is cancelled.
    pub fn start(hub: Arc<Hub>, stop: CancellationToken) -> std::io::Result<Scheduler> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let until = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flush-scheduler".into())
            .spawn(move || {
                if let Err(e) = crate::sys::request_time_slice(SLICE) {
                    tracing::info!(error = %e, "the flush scheduler thread keeps the kernel's default time slice");
                }
                let _recorded = hub.metrics().scheduler.thread.record_current_thread();
                runtime.block_on(run(hub, until))
            })?;
        Ok(Scheduler {
            thread: Some(thread),
            stop,
        })
    }

    /// Waits for the thread to end (after `stop` was cancelled). A panic
    /// in it was reported when it happened; shutdown goes on.
    pub async fn join(mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await {
            tracing::error!("the flush scheduler thread had panicked: flushes stopped then");
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run(hub: Arc<Hub>, stop: CancellationToken) {
    loop {
        let next = hub.tick();
        tokio::select! {
            _ = hub.wait(next) => {}
            _ = stop.cancelled() => return,
        }
    }
}
