//! The load policy's signals, recorded where they happen and taken by the
//! policy task once a period.
//!
//! - *Flush lateness*: how late each scheduler run started after the
//!   engine's earliest deadline (microseconds).
//! - *Write age*: the share of its staleness bound each write had used on
//!   arrival, in thousandths (1,000 and above is refused `STALENESS`).
//! - *Writes*: how many writes were decided, whatever the answer: the
//!   offered load.
//!
//! Each is a bounded buffer under its own lock (the count an atomic),
//! written after the hub lock is dropped, so recording never waits on the
//! engine.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most samples of one signal kept between two policy samples: a few
/// thousand scheduler runs or writes a second. Above that, a period's
/// signal is its first samples.
const MAX_SAMPLES: usize = 8192;

/// Write-age samples are kept in thousandths of the staleness bound.
pub const WRITE_AGE_UNIT: f64 = 1000.0;

/// One signal's samples since the policy last took them.
#[derive(Default)]
pub struct Samples(Mutex<Vec<u32>>);

impl Samples {
    /// Records one sample (clamped to `u32`), unless the buffer is full.
    pub fn push(&self, value: i64) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < MAX_SAMPLES {
            v.push(value.clamp(0, u32::MAX as i64) as u32);
        }
    }

    /// The samples since the last call.
    pub fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Every signal the load policy reads.
#[derive(Default)]
pub struct Signals {
    /// Scheduler runs' lateness, in microseconds.
    pub lateness: Samples,
    /// Writes' age on arrival, in thousandths of their staleness bound.
    pub write_age: Samples,
    /// Writes decided since the policy last took the count.
    writes: AtomicU64,
}

impl Signals {
    /// Counts one decided write.
    pub fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// The writes decided since the last call.
    pub fn take_writes(&self) -> u64 {
        self.writes.swap(0, Ordering::Relaxed)
    }
}

/// The 90th percentile of `samples` divided by `unit`; 0 when there are
/// none.
pub fn p90(mut samples: Vec<u32>, unit: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let k = (samples.len() * 9 / 10).min(samples.len() - 1);
    let (_, p90, _) = samples.select_nth_unstable(k);
    *p90 as f64 / unit.max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p90_is_the_90th_percentile_in_units() {
        assert_eq!(p90(Vec::new(), 1.0), 0.0);
        // The 90th of 100 samples of 100..10,000 is 9,100: 0.455 of 20,000.
        let samples: Vec<u32> = (1..=100).map(|i| i * 100).collect();
        assert!((p90(samples, 20_000.0) - 0.455).abs() < 1e-9);
    }

    #[test]
    fn a_full_buffer_keeps_its_first_samples_and_empties_when_taken() {
        let s = Samples::default();
        for i in 0..MAX_SAMPLES as i64 + 10 {
            s.push(i);
        }
        s.push(-5);
        let taken = s.take();
        assert_eq!(taken.len(), MAX_SAMPLES);
        assert_eq!(taken[0], 0);
        assert_eq!(*taken.last().unwrap(), MAX_SAMPLES as u32 - 1);
        assert!(s.take().is_empty());
    }
}
