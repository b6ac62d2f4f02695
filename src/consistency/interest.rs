//! The interest policy's pure half: which threads a client takes part in,
//! and the flush class that follows from it.
//!
//! A client takes part in a thread it wrote to within [`InterestConfig::window`],
//! or that one of its last [`InterestConfig::recent`] messages went to
//! (however old). A write counts whether it was accepted or refused by a
//! bound: a writer refused for the order bound must catch up on the thread
//! it tried. With the policy on, a client is flushed on those threads'
//! own staleness, and on every other thread's staleness multiplied by
//! [`InterestConfig::factor`]. Clients with the same cursor and the same
//! set of threads share one flush deadline (the schedule keys its groups
//! by both), so there is still no timer per client, and none per
//! (client, thread) either: a group's deadline is the earliest over the
//! conits, each at its own or its loosened staleness.
//!
//! Only staleness is loosened. The numerical bound counts messages *some*
//! active client has not acknowledged, a promise to writers that does not
//! depend on who reads; its flush trigger (half the bound pending) stays
//! the same for every client, or an uninterested reader would hold writers
//! at the bound.

use super::bounds::MAX_STALENESS;
use super::time::Micros;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Most threads one client is remembered to take part in: a client writing
/// to more within the window gets the looser bounds on the oldest ones
/// (memory per client stays bounded).
pub const MAX_TRACKED: usize = 8;

/// Settings of the interest policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InterestConfig {
    /// A write keeps its thread "taken part in" this long.
    pub window: Duration,
    /// The threads of this many of a client's latest messages stay taken
    /// part in, however old.
    pub recent: usize,
    /// Staleness multiplier on the threads a client does not take part in.
    pub factor: f64,
}

impl Default for InterestConfig {
    fn default() -> Self {
        InterestConfig {
            window: Duration::from_secs(60),
            recent: 1,
            factor: 10.0,
        }
    }
}

/// Why an interest policy setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterestError {
    #[error("interest window {0:?} is outside 1s..=1h")]
    Window(Duration),
    #[error("interest recent {0} is outside 0..={MAX_TRACKED}")]
    Recent(usize),
    #[error("interest factor {0} is outside 1..=1000")]
    Factor(f64),
}

impl InterestConfig {
    pub fn validate(&self) -> Result<(), InterestError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.window) {
            return Err(InterestError::Window(self.window));
        }
        if self.recent > MAX_TRACKED {
            return Err(InterestError::Recent(self.recent));
        }
        if !(1.0..=1000.0).contains(&self.factor) {
            return Err(InterestError::Factor(self.factor));
        }
        Ok(())
    }

    /// The staleness an uninterested client is flushed at.
    pub fn loosen(&self, staleness: Duration) -> Duration {
        staleness.mul_f64(self.factor).min(MAX_STALENESS)
    }
}

/// Which threads a client gets at their own bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Every thread (the interest policy is off).
    #[default]
    All,
    /// Only these (sorted, no duplicates; may be empty: a reader who never
    /// wrote gets every thread at the looser bounds).
    Only(Arc<[Arc<str>]>),
}

impl Class {
    /// Whether `thread` is flushed at its own bounds.
    pub fn covers(&self, thread: &str) -> bool {
        match self {
            Class::All => true,
            Class::Only(threads) => threads.binary_search_by(|t| t.as_ref().cmp(thread)).is_ok(),
        }
    }

    /// The threads it covers, `None` for all.
    pub fn threads(&self) -> Option<&[Arc<str>]> {
        match self {
            Class::All => None,
            Class::Only(t) => Some(t),
        }
    }
}

/// A client's recent writes: the threads, newest last, one entry per
/// thread, at most [`MAX_TRACKED`].
#[derive(Debug, Clone, Default)]
pub struct Interest {
    writes: VecDeque<(Arc<str>, Micros)>,
}

impl Interest {
    /// The client wrote (or tried to write) to `thread` at `now`.
    pub fn wrote(&mut self, thread: &Arc<str>, now: Micros) {
        self.writes.retain(|(t, _)| t != thread);
        self.writes.push_back((thread.clone(), now));
        if self.writes.len() > MAX_TRACKED {
            self.writes.pop_front();
        }
    }

    /// The threads it takes part in at `now`, sorted.
    pub fn threads(&self, config: &InterestConfig, now: Micros) -> Vec<Arc<str>> {
        let since = now.minus(config.window);
        let keep_recent = self.writes.len().saturating_sub(config.recent);
        let mut threads: Vec<Arc<str>> = self
            .writes
            .iter()
            .enumerate()
            .filter(|&(i, (_, at))| i >= keep_recent || *at >= since)
            .map(|(_, (t, _))| t.clone())
            .collect();
        threads.sort_unstable();
        threads
    }

    /// Its class at `now`: [`Class::All`] without a config. Reuses
    /// `current` when nothing changed (no allocation on the common path).
    pub fn class(&self, config: Option<&InterestConfig>, now: Micros, current: &Class) -> Class {
        let Some(config) = config else {
            return Class::All;
        };
        let threads = self.threads(config, now);
        if let Class::Only(have) = current
            && have[..] == threads[..]
        {
            return current.clone();
        }
        Class::Only(threads.into())
    }

    /// When its class may next change by time alone (a write leaving the
    /// window), if ever.
    pub fn next_expiry(&self, config: &InterestConfig, now: Micros) -> Option<Micros> {
        let keep_recent = self.writes.len().saturating_sub(config.recent);
        self.writes
            .iter()
            .take(keep_recent)
            .map(|&(_, at)| at.plus(config.window))
            .filter(|&at| at > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Micros = Micros(1_700_000_000_000_000);

    #[test]
    fn a_write_stays_interesting_for_the_window_and_the_latest_for_ever() {
        let cfg = InterestConfig {
            window: Duration::from_secs(10),
            recent: 1,
            factor: 4.0,
        };
        let mut i = Interest::default();
        i.wrote(&"a".into(), T0);
        i.wrote(&"b".into(), T0.plus(Duration::from_secs(5)));
        let at = |s| T0.plus(Duration::from_secs(s));
        let names = |v: Vec<Arc<str>>| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_eq!(names(i.threads(&cfg, at(9))), ["a", "b"]);
        assert_eq!(names(i.threads(&cfg, at(11))), ["b"]);
        assert_eq!(names(i.threads(&cfg, at(1000))), ["b"]);
        assert_eq!(i.next_expiry(&cfg, at(9)), Some(at(10)));
        let c = i.class(Some(&cfg), at(11), &Class::All);
        assert!(c.covers("b") && !c.covers("a"));
        assert_eq!(i.class(None, at(11), &c), Class::All);
    }

    #[test]
    fn at_most_max_tracked_threads_are_remembered() {
        let mut i = Interest::default();
        for n in 0..100 {
            i.wrote(&format!("t{n}").into(), T0);
        }
        let cfg = InterestConfig::default();
        assert_eq!(i.threads(&cfg, T0).len(), MAX_TRACKED);
    }
}
