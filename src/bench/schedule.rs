//! When each message is sent: open loop, message k at a fixed offset from
//! the start of the window, whether or not earlier ones were answered.
//! One rate for the whole window (`--rate`), or steps of `--duration` each
//! at the rates of `--rate-steps` (an overload ramp with the same clients
//! throughout).

use std::time::Duration;

/// One step of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    /// Messages per second.
    rate: f64,
    /// When it starts, after the window's start.
    start: Duration,
    /// The index of its first message.
    first: u64,
    /// Its messages: those due within it, `m / rate < length`.
    count: u64,
}

/// The send schedule of a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schedule {
    steps: Vec<Step>,
    /// The length of each step.
    each: Duration,
}

impl Schedule {
    /// Steps of length `each` at `rates` (msg/s) in turn.
    pub fn new(rates: &[f64], each: Duration) -> Schedule {
        let mut steps = Vec::with_capacity(rates.len());
        let mut first = 0;
        for (i, &rate) in rates.iter().enumerate() {
            let count = (each.as_secs_f64() * rate).ceil() as u64;
            let start = each.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
            steps.push(Step {
                rate,
                start,
                first,
                count,
            });
            first += count;
        }
        Schedule { steps, each }
    }

    /// The whole send window.
    pub fn window(&self) -> Duration {
        self.each
            .saturating_mul(u32::try_from(self.steps.len()).unwrap_or(u32::MAX))
    }

    /// Messages in the window.
    pub fn total(&self) -> u64 {
        self.steps.last().map_or(0, |s| s.first + s.count)
    }

    /// When message `k` (below [`Schedule::total`]) is due, after the
    /// window's start.
    pub fn due(&self, k: u64) -> Duration {
        match self.steps.get(self.step_of(k)) {
            Some(s) => s.start + Duration::from_secs_f64((k - s.first) as f64 / s.rate),
            None => self.window(),
        }
    }

    /// The step message `k` is in (the number of steps if it is in none).
    pub fn step_of(&self, k: u64) -> usize {
        self.steps.partition_point(|s| s.first + s.count <= k)
    }

    /// How many messages are due `elapsed` after the window's start: every
    /// message of the steps before, and those of its step due at or before
    /// it.
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let Some(s) = self.steps.iter().rev().find(|s| s.start <= elapsed) else {
            return 0;
        };
        let into = (elapsed - s.start).as_secs_f64();
        s.first + ((into * s.rate) as u64 + 1).min(s.count)
    }

    /// Each step's rate and its time span after the window's start.
    pub fn steps(&self) -> impl Iterator<Item = (f64, Duration, Duration)> + '_ {
        self.steps
            .iter()
            .map(|s| (s.rate, s.start, s.start + self.each))
    }

    /// More than one step.
    pub fn stepped(&self) -> bool {
        self.steps.len() > 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Equal to within a microsecond (float rounding).
    fn near(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) <= Duration::from_micros(1)
    }

    #[test]
    fn one_rate_sends_what_falls_due_within_the_window() {
        let s = Schedule::new(&[200.0], Duration::from_secs(10));
        assert_eq!(s.total(), 2000);
        assert_eq!(s.window(), Duration::from_secs(10));
        assert_eq!(s.due_by(ms(0)), 1);
        assert_eq!(s.due_by(ms(4)), 1);
        assert_eq!(s.due_by(ms(6)), 2);
        assert_eq!(s.due_by(ms(10_000)), 2000);
        assert!(near(s.due(1999), ms(9995)));
    }

    #[test]
    fn steps_follow_each_other_without_gap_or_overlap() {
        let s = Schedule::new(&[10.0, 0.0, 100.0], Duration::from_secs(2));
        assert_eq!(s.total(), 20 + 200);
        assert_eq!(s.window(), Duration::from_secs(6));
        assert!(near(s.due(19), ms(1900)));
        // The idle step sends nothing; the next starts on time.
        assert_eq!(s.due_by(ms(3999)), 20);
        assert_eq!(s.due_by(ms(4000)), 21);
        assert!(near(s.due(20), ms(4000)));
        assert!(near(s.due(219), ms(5990)));
        assert_eq!(s.due_by(ms(6000)), 220);
        let mut last = Duration::ZERO;
        for k in 0..s.total() {
            let due = s.due(k);
            assert!(due >= last, "message {k} due before the one before it");
            let just_after = due + Duration::from_micros(1);
            assert!(
                s.due_by(just_after) > k,
                "message {k} not due at its own time"
            );
            last = due;
        }
        let spans: Vec<_> = s.steps().map(|(_, a, b)| (a, b)).collect();
        assert_eq!(
            spans,
            [
                (ms(0), ms(2000)),
                (ms(2000), ms(4000)),
                (ms(4000), ms(6000))
            ]
        );
    }
}
