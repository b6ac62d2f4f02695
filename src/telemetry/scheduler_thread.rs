//! The flush scheduler thread's time on a core and its run-queue wait
//! (`chat_flush_scheduler_*_seconds_total`), read from `/proc` at each
//! scrape.
//!
//! Flush lateness says how late the scheduler ran; the run-queue wait says
//! whether the reason was a busy machine: time the thread was ready but every
//! core was running something else. On the 2-core benchmark machine (a
//! kernel without preemption of kernel code, `preempt=none`), under a load
//! generator stepping 1,000 clients up to 3,600 msg/s, each of the 14 flush
//! rounds more than 6.4 ms late in three runs came with a 20 ms stretch in
//! which the thread had waited 4.8-13.5 ms for a core (0.2 ms in the median
//! stretch), while the thread used 4% of a core; and that was at nice -10,
//! as the build then ran it (docs/benchmarks.md).

use prometheus::core::{Collector, Desc};
use prometheus::{Counter, Opts, proto::MetricFamily};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// The scheduler thread's times, exported as counters. Clones share the
/// thread id the scheduler records when it starts.
#[derive(Clone)]
pub struct SchedulerThreadTimes {
    /// The thread's kernel id; 0 until it has started.
    tid: Arc<AtomicI32>,
    ran: Counter,
    waited: Counter,
    /// The times last exported, `(ran, waited)` in seconds: counters only
    /// go up by the difference.
    last: Arc<Mutex<(f64, f64)>>,
}

impl SchedulerThreadTimes {
    pub(crate) fn new() -> Self {
        let counter = |name: &str, help: &str| {
            Counter::with_opts(Opts::new(name, help)).expect("valid counter")
        };
        SchedulerThreadTimes {
            tid: Arc::default(),
            ran: counter(
                "chat_flush_scheduler_cpu_seconds_total",
                "CPU time the flush scheduler thread has run.",
            ),
            waited: counter(
                "chat_flush_scheduler_wait_seconds_total",
                "Time the flush scheduler thread was ready to run but waited for a busy core (run-queue wait): flush lateness rising with it comes from CPU contention.",
            ),
            last: Arc::default(),
        }
    }

    /// Called on the scheduler thread when it starts; the thread keeps the
    /// guard until it ends. Dropped, the guard stops the reading of its
    /// times: the kernel may give its id to another thread.
    pub fn record_current_thread(&self) -> RecordedThread {
        self.tid.store(crate::sys::thread_id(), Ordering::Relaxed);
        RecordedThread(self.tid.clone())
    }

    /// Brings the counters up to the thread's times now.
    fn refresh(&self) {
        let tid = self.tid.load(Ordering::Relaxed);
        let Some(t) = (tid != 0).then(|| crate::sys::thread_times(tid)).flatten() else {
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = (t.ran.as_secs_f64(), t.waited.as_secs_f64());
        self.ran.inc_by((now.0 - last.0).max(0.0));
        self.waited.inc_by((now.1 - last.1).max(0.0));
        *last = now;
    }
}

/// The scheduler thread's id recorded until this is dropped (see
/// [`SchedulerThreadTimes::record_current_thread`]).
#[must_use = "the thread's times are read only while this is kept"]
pub struct RecordedThread(Arc<AtomicI32>);

impl Drop for RecordedThread {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

impl Collector for SchedulerThreadTimes {
    fn desc(&self) -> Vec<&Desc> {
        self.ran
            .desc()
            .into_iter()
            .chain(self.waited.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.refresh();
        let mut families = self.ran.collect();
        families.extend(self.waited.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread that ended is no longer read: its id may be another's now.
    #[test]
    fn the_times_stop_being_read_when_the_thread_ends() {
        let times = SchedulerThreadTimes::new();
        let recorder = times.clone();
        let (own, recorded) = std::thread::spawn(move || {
            let _recorded = recorder.record_current_thread();
            (
                crate::sys::thread_id(),
                recorder.tid.load(Ordering::Relaxed),
            )
        })
        .join()
        .unwrap();
        assert_eq!(recorded, own, "read while it runs");
        assert_eq!(
            times.tid.load(Ordering::Relaxed),
            0,
            "not read after it ended"
        );
    }
}
