//! The group-commit writer: one thread that owns the durable log. It takes
//! everything accepted since its last batch from the hub's queue, stores it
//! in one transaction with one fsync, and then reports it stored (the
//! messages become visible and their writers get OK). While it writes, new
//! messages queue up and form the next batch, so the batch size follows the
//! load with no timer: one writer, no waiting for a batch to fill.
//!
//! On a failure it tells the hub (every pending message is discarded and
//! answered `INTERNAL_ERROR`), marks the storage unhealthy, and from then on
//! recovers the log before each batch, and probes it every
//! [`PROBE_INTERVAL`] while idle, until a write goes through again.

use super::hub::{Hub, Taken};
use crate::consistency::Seq;
use crate::log::{Log, StorageHealth};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most messages stored in one transaction.
pub const MAX_BATCH: usize = 16_384;
/// How often an unhealthy log is probed while no messages arrive.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Starts the writer thread for `log`, whose last stored seq is `durable`.
pub fn spawn(
    hub: Arc<Hub>,
    log: Box<dyn Log>,
    durable: Seq,
    health: Arc<StorageHealth>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            Writer {
                hub,
                log,
                durable,
                health,
                broken: false,
                last_logged: None,
            }
            .run()
        })
}

struct Writer {
    /// Where batches come from and are reported to.
    hub: Arc<Hub>,
    /// The durable log; only this thread touches it.
    log: Box<dyn Log>,
    /// The last seq stored: the log holds exactly `1..=durable` (less what
    /// retention removed at the front).
    durable: Seq,
    /// Storage counters and the readiness bit.
    health: Arc<StorageHealth>,
    /// A write failed and the log has not been recovered since.
    broken: bool,
    /// The last error logged, so a persisting fault logs once, not per probe.
    last_logged: Option<String>,
}

impl Writer {
    fn run(mut self) {
        loop {
            let timeout = self.broken.then_some(PROBE_INTERVAL);
            match self.hub.take_batch(MAX_BATCH, timeout) {
                Taken::Stop => return,
                Taken::Idle => {
                    self.recover();
                }
                Taken::Batch(entries, waiters) => {
                    if self.broken && !self.recover() {
                        self.fail(waiters);
                        continue;
                    }
                    let Some(last) = entries.last().map(|e| e.seq) else {
                        continue;
                    };
                    let started = Instant::now();
                    match self.log.append(&entries) {
                        Ok(()) => {
                            let micros = started.elapsed().as_micros() as u64;
                            self.health.record_batch(entries.len() as u64, micros);
                            self.durable = last;
                            self.hub.batch_stored(last);
                            for tx in waiters {
                                let _ = tx.send(true);
                            }
                        }
                        Err(e) => {
                            self.report(&e.report());
                            self.fail(waiters);
                        }
                    }
                }
            }
        }
    }

    /// Fails the batch in hand and everything pending behind it.
    fn fail(&mut self, waiters: Vec<tokio::sync::oneshot::Sender<bool>>) {
        let discarded = self.hub.batch_failed();
        for tx in waiters {
            let _ = tx.send(false);
        }
        self.health.record_failed_messages(discarded);
        self.broken = true;
    }

    /// Logs and records a storage error (logged once per distinct error).
    fn report(&mut self, error: &str) {
        self.health.record_error(error);
        if self.last_logged.as_deref() != Some(error) {
            tracing::error!(
                %error,
                "message log write failed: answering INTERNAL_ERROR and reporting not ready until a write succeeds"
            );
            self.last_logged = Some(error.to_owned());
        }
    }

    /// Reopens and probes the log; true if it works again.
    fn recover(&mut self) -> bool {
        match self.log.recover(self.durable) {
            Ok(()) => {
                self.broken = false;
                self.last_logged = None;
                if self.health.record_healthy() {
                    tracing::info!(durable = self.durable, "message log works again: ready");
                }
                true
            }
            Err(e) => {
                self.report(&e.report());
                false
            }
        }
    }
}
