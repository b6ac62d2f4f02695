//! How late the flush scheduler has been getting to run, so that flush
//! deadlines can allow for it.
//!
//! A flush is due a safety margin before its staleness bound. The margin is
//! fixed ([`safety_margin`](super::settings::safety_margin): an eighth of
//! the bound, at most 20 ms), but the delay it must absorb is not: on a
//! busy machine the scheduler's thread wakes later than asked, and a round of
//! a thousand Updates delays the next round. Measured on the 2-core
//! benchmark machine at 1,000 clients and a 100 ms bound (margin 12.5 ms):
//! bursts of tens of thousands of messages delivered past their bound in
//! runs whose median delay was far below the margin, at loads the machine
//! otherwise carried. Each burst was one or two scheduler runs more than a
//! margin late.
//!
//! [`SchedulerDelay`] keeps the largest delay of each of the last few
//! seconds. It is measured as how late each poll runs after the wake time
//! the engine asked for, so it also counts commits that became deliverable
//! only after their flush was due (a slow store, a cluster node's consumer
//! behind the stream): time the margin has to absorb all the same. The
//! flush schedule then acts that much earlier (with headroom, and never
//! more than half the bound, see [`schedule`](super::schedule)).
//! The price is Updates sent a little
//! earlier, so carrying slightly fewer messages each, and only while the
//! machine is actually late.

use super::time::Micros;
use std::time::Duration;

/// Seconds of history: a spike keeps the deadlines early this long.
const SLOTS: usize = 8;
const SLOT: i64 = 1_000_000;

/// The largest scheduler delay per second over the last `SLOTS` seconds.
#[derive(Debug, Clone, Default)]
pub struct SchedulerDelay {
    /// `(second, largest delay in it)`, one per second that had a run.
    slots: [(i64, Duration); SLOTS],
}

impl SchedulerDelay {
    /// A scheduler run at `now` that started `delay` after its deadline.
    pub fn record(&mut self, now: Micros, delay: Duration) {
        let second = now.0.div_euclid(SLOT);
        let slot = &mut self.slots[second.rem_euclid(SLOTS as i64) as usize];
        if slot.0 != second {
            *slot = (second, Duration::ZERO);
        }
        slot.1 = slot.1.max(delay);
    }

    /// The largest delay recorded in the last `SLOTS` seconds before
    /// `now` (zero if none).
    pub fn recent_max(&self, now: Micros) -> Duration {
        let second = now.0.div_euclid(SLOT);
        self.slots
            .iter()
            .filter(|&&(s, _)| s <= second && second - s < SLOTS as i64)
            .map(|&(_, d)| d)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// How much earlier than the fixed safety margin flushes should act:
    /// the recent largest delay and half as much again, rounded up to a
    /// millisecond so that the deadlines move only on a real change.
    pub fn lead(&self, now: Micros) -> Duration {
        let d = self.recent_max(now).mul_f64(1.5);
        let ms = d.as_micros().div_ceil(1000) as u64;
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(ms: i64) -> Micros {
        Micros(1_700_000_000_000_000 + ms * 1000)
    }

    #[test]
    fn the_largest_delay_is_remembered_for_eight_seconds() {
        let mut d = SchedulerDelay::default();
        assert_eq!(d.lead(at(0)), Duration::ZERO);
        d.record(at(100), 4 * MS);
        d.record(at(200), 10 * MS);
        d.record(at(1_300), 2 * MS);
        assert_eq!(d.recent_max(at(1_400)), 10 * MS);
        assert_eq!(d.lead(at(1_400)), 15 * MS);
        assert_eq!(d.recent_max(at(7_999)), 10 * MS);
        // The first second has left the window; the 2 ms of the second one
        // is what is left.
        assert_eq!(d.recent_max(at(8_000)), 2 * MS);
        assert_eq!(d.recent_max(at(9_400)), Duration::ZERO);
    }

    #[test]
    fn a_slot_reused_after_the_window_starts_afresh() {
        let mut d = SchedulerDelay::default();
        d.record(at(0), 30 * MS);
        d.record(at(8_000), MS);
        assert_eq!(d.recent_max(at(8_001)), MS);
    }

    #[test]
    fn the_lead_moves_in_whole_milliseconds() {
        let mut d = SchedulerDelay::default();
        d.record(at(0), Duration::from_micros(1_100));
        assert_eq!(d.lead(at(0)), 2 * MS);
    }
}
