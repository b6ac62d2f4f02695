//! An estimate of the server's clock from request round trips.
//!
//! Each answer that carries a server time, taken between a local send time
//! `t0` and receive time `t1`, says the server's clock read `s` somewhere in
//! `[t0, t1]`: offset `s - (t0+t1)/2`, uncertain by `(t1-t0)/2`. The sample
//! with the smallest uncertainty wins (and ages a little, so a drifting clock
//! is followed).

use std::sync::Mutex;
use std::time::Duration;

/// Local wall clock in microseconds since the Unix epoch.
pub fn local_micros() -> i64 {
    crate::clock::wall_micros().0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// server - local, in microseconds.
    pub offset: i64,
    /// Half the round trip the sample was taken in, in microseconds.
    pub uncertainty: i64,
    /// Local time the sample was taken.
    pub taken_at: i64,
}

/// Uncertainty added per second of a sample's age, so that a fresh but
/// slightly worse sample eventually replaces an old one.
const AGING_PER_SEC: i64 = 100;

#[derive(Debug, Default)]
pub struct ClockEstimate {
    best: Mutex<Option<Sample>>,
}

impl ClockEstimate {
    /// Records a server time `server` seen in an answer sent at local `t0`
    /// and received at local `t1`.
    pub fn observe(&self, t0: i64, t1: i64, server: i64) {
        let sample = Sample {
            offset: server - (t0 + t1) / 2,
            uncertainty: ((t1 - t0) / 2).max(0),
            taken_at: t1,
        };
        let mut best = self.best.lock().unwrap_or_else(|e| e.into_inner());
        let aged =
            |s: &Sample| s.uncertainty + (t1 - s.taken_at).max(0) / 1_000_000 * AGING_PER_SEC;
        if best.is_none_or(|b| sample.uncertainty <= aged(&b)) {
            *best = Some(sample);
        }
    }

    pub fn sample(&self) -> Option<Sample> {
        *self.best.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The estimated server time now, in microseconds.
    pub fn server_now(&self) -> i64 {
        local_micros() + self.sample().map_or(0, |s| s.offset)
    }

    /// A server time the server's clock has certainly passed: the estimate
    /// minus its uncertainty. This is what a `SentMessage.timestamp` carries.
    pub fn server_now_lower(&self) -> i64 {
        let s = self.sample().unwrap_or(Sample {
            offset: 0,
            uncertainty: 0,
            taken_at: 0,
        });
        local_micros() + s.offset - s.uncertainty
    }

    /// The estimated offset (server - local).
    pub fn offset(&self) -> Duration {
        Duration::from_micros(self.sample().map_or(0, |s| s.offset.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tighter_samples_win() {
        let c = ClockEstimate::default();
        c.observe(1_000, 3_000, 10_000); // offset 8000 ± 1000
        assert_eq!(c.sample().unwrap().offset, 8_000);
        c.observe(5_000, 5_200, 13_100); // offset 8000 ± 100
        assert_eq!(c.sample().unwrap().uncertainty, 100);
        c.observe(6_000, 9_000, 20_000); // worse: ignored
        assert_eq!(c.sample().unwrap().uncertainty, 100);
    }
}
