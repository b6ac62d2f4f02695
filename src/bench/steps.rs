//! Per-step figures of a `--rate-steps` run: each message counts in the
//! step it was scheduled in (its index tells which), so a step's sent,
//! accepted, rejections and commit->receive latency are its own messages',
//! however late their statuses and deliveries arrive.

use super::histogram::{Histogram, Latency};
use super::schedule::Schedule;
use crate::proto::message_status::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shards of each step's latency histogram (many client tasks record at
/// once).
const SHARDS: usize = 8;

/// The counters of one step.
#[derive(Default)]
struct StepCounters {
    /// Messages handed to the transport.
    sent: AtomicU64,
    /// Statuses by `StatusCode` value (0 = OK).
    statuses: [AtomicU64; 6],
    /// Commit -> receive, microseconds.
    latency: [Histogram; SHARDS],
}

/// The counters of every step; empty for a run of one rate.
#[derive(Default)]
pub(super) struct StepStats {
    schedule: Option<Schedule>,
    steps: Vec<StepCounters>,
}

/// One step's figures in the report.
#[derive(Debug, Serialize)]
pub struct StepReport {
    /// Its scheduled send rate.
    pub rate_per_s: f64,
    /// Its start and end on the wall clock, µs since the epoch.
    pub window_wall_micros: (i64, i64),
    /// Its messages handed to the transport.
    pub sent: u64,
    /// Of those, accepted (status OK).
    pub accepted: u64,
    /// Of those, rejected, by status name.
    pub rejections: BTreeMap<String, u64>,
    /// Commit -> receive of its messages, over every receiver.
    pub latency: Latency,
}

impl StepReport {
    /// One line for the report's table.
    pub fn summary(&self) -> String {
        format!(
            "{} msg/s: sent {}, accepted {}, rejected {:?}, commit->receive p99 {:.1} ms",
            self.rate_per_s, self.sent, self.accepted, self.rejections, self.latency.p99_ms
        )
    }
}

impl StepStats {
    /// Counters for the steps of `schedule`, if it has several.
    pub fn new(schedule: Schedule) -> StepStats {
        if !schedule.stepped() {
            return StepStats::default();
        }
        let steps = schedule.steps().map(|_| StepCounters::default()).collect();
        StepStats {
            schedule: Some(schedule),
            steps,
        }
    }

    fn step(&self, k: u64) -> Option<&StepCounters> {
        let s = self.schedule.as_ref()?;
        self.steps.get(s.step_of(k))
    }

    /// Message `k` was sent.
    pub fn sent(&self, k: u64) {
        if let Some(c) = self.step(k) {
            c.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Message `k` got status `code`.
    pub fn status(&self, k: u64, code: usize) {
        if let Some(c) = self.step(k) {
            c.statuses[code].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Receiver `index` got messages `(k, latency µs)` in one Update, in
    /// commit order: recorded a run of one step at a time.
    pub fn delivered(&self, index: usize, mut messages: impl Iterator<Item = (u64, u64)>) {
        let Some(s) = self.schedule.as_ref() else {
            return;
        };
        let mut run: Vec<u64> = Vec::new();
        let mut current = None;
        loop {
            let next = messages.next();
            let step = next.map(|(k, _)| s.step_of(k));
            if step != current || next.is_none() {
                // A message in no step (not of this run's schedule) is
                // dropped with its run, not counted in the next step.
                let values = std::mem::take(&mut run);
                if let Some(c) = current.and_then(|i| self.steps.get(i)) {
                    c.latency[index % SHARDS].record_all(values);
                }
                current = step;
            }
            match next {
                Some((_, latency)) => run.push(latency),
                None => return,
            }
        }
    }

    /// Each step's figures; `start_wall` is the window's start on the wall
    /// clock (µs since the epoch).
    pub fn report(&self, start_wall: i64) -> Vec<StepReport> {
        let Some(s) = self.schedule.as_ref() else {
            return Vec::new();
        };
        let micros = |d: std::time::Duration| start_wall + d.as_micros() as i64;
        s.steps()
            .zip(&self.steps)
            .map(|((rate, from, to), c)| StepReport {
                rate_per_s: rate,
                window_wall_micros: (micros(from), micros(to)),
                sent: c.sent.load(Ordering::Relaxed),
                accepted: c.statuses[0].load(Ordering::Relaxed),
                rejections: rejections(&c.statuses),
                latency: Latency::of(&Histogram::merged(&c.latency)),
            })
            .collect()
    }
}

/// Rejections by status name, from the per-code counts.
pub(super) fn rejections(statuses: &[AtomicU64; 6]) -> BTreeMap<String, u64> {
    let mut rejections = BTreeMap::new();
    for (code, n) in statuses.iter().enumerate().skip(1) {
        let n = n.load(Ordering::Relaxed);
        if n > 0 {
            let name = StatusCode::try_from(code as i32)
                .map(|c| c.as_str_name().to_owned())
                .unwrap_or_else(|_| code.to_string());
            rejections.insert(name, n);
        }
    }
    rejections
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_delivery_counts_in_its_messages_step_and_strays_in_none() {
        let stats = StepStats::new(Schedule::new(&[10.0, 10.0], Duration::from_secs(1)));
        // Messages 0-9 are step 1's, 10-19 step 2's; 25 is in no step.
        stats.delivered(3, [(8, 1_000), (9, 2_000), (10, 3_000)].into_iter());
        stats.delivered(4, [(25, 9_000_000), (11, 4_000)].into_iter());
        stats.sent(9);
        stats.status(10, 0);
        stats.status(11, 2);
        let report = stats.report(0);
        assert_eq!(report[0].latency.count, 2);
        assert_eq!(report[0].latency.max_ms, 2.0);
        assert_eq!(report[1].latency.count, 2);
        assert_eq!(report[1].latency.max_ms, 4.0);
        assert_eq!((report[0].sent, report[1].sent), (1, 0));
        assert_eq!(report[1].accepted, 1);
        assert_eq!(report[1].rejections.values().sum::<u64>(), 1);
        assert_eq!(report[1].window_wall_micros, (1_000_000, 2_000_000));
    }

    #[test]
    fn a_run_of_one_rate_keeps_no_steps() {
        let stats = StepStats::new(Schedule::new(&[10.0], Duration::from_secs(1)));
        stats.delivered(0, [(1, 1_000)].into_iter());
        assert!(stats.report(0).is_empty());
    }
}
