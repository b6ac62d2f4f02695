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
//! and 0-160 messages. The thread asks for a higher priority too (see
//! `prioritise`).

use super::hub::Hub;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
                prioritise();
                runtime.block_on(run(hub, until))
            })?;
        Ok(Scheduler {
            thread: Some(thread),
            stop,
        })
    }

    /// Waits for the thread to end (after `stop` was cancelled).
    pub async fn join(mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if let Ok(Err(panic)) = tokio::task::spawn_blocking(move || thread.join()).await {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The scheduler thread's priority, where the server may raise it.
const NICE: i32 = -10;

/// Raises this thread's priority if allowed: it uses little CPU, but when a
/// flush is due it must run at once, not after the RPC threads' time slices.
/// On the same machine and load, polls more than 6.4 ms late fell from
/// 27-43 a run to 3-6 at nice -10.
fn prioritise() {
    match crate::sys::set_thread_nice(NICE) {
        Ok(()) => tracing::debug!(nice = NICE, "flush scheduler thread priority raised"),
        Err(e) => tracing::info!(
            error = %e,
            "flush scheduler thread keeps the default priority: allow nice -10 (RLIMIT_NICE 30, e.g. systemd LimitNICE=-10) or grant CAP_SYS_NICE"
        ),
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
