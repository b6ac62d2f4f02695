//! The engine's side of the interest policy: keeping each client's interest
//! class (and so its flush group) current, and counting late deliveries
//! against the staleness each client was promised.

use super::{Engine, FlushPart};
use crate::consistency::client::Phase;
use crate::consistency::interest::{Class, InterestConfig};
use crate::consistency::settings::Settings;
use crate::consistency::time::Micros;
use crate::consistency::{ClientId, Seq};
use std::collections::HashMap;
use std::sync::Arc;

/// What the interest policy looks like from the outside at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterestSummary {
    /// Streaming clients.
    pub streaming: usize,
    /// Streaming clients taking part in at least one thread.
    pub taking_part: usize,
    /// (client, thread) pairs flushed at the thread's own bounds.
    pub pairs: usize,
}

impl Engine {
    /// Turns the interest policy on (`Some`) or off at `now`: every
    /// streaming client moves to the flush group of its new class, and
    /// every pending deadline is re-armed.
    pub fn set_interest(&mut self, config: Option<InterestConfig>, now: Micros) {
        self.schedule.set_interest(config);
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            self.refresh_class(id, now);
        }
        self.next_wake = Micros(i64::MIN);
    }

    /// The interest policy in force, if on.
    pub fn interest(&self) -> Option<&InterestConfig> {
        self.schedule.interest()
    }

    /// Recomputes client `id`'s interest class at `now` and moves it to
    /// its new flush group if it changed. Called on each of its writes and
    /// each visit of its own timer (at least every half lease), so a write
    /// leaving the window costs no timer of its own.
    pub(super) fn refresh_class(&mut self, id: ClientId, now: Micros) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let class = c.interest.class(self.schedule.interest(), now, &c.class);
        if class == c.class {
            return;
        }
        if c.phase == Phase::Streaming {
            self.schedule.reclass(id, c.delivered, &c.class, &class);
            // Its group's deadline may now be earlier than any the poll
            // planned for.
            self.next_wake = Micros(i64::MIN);
        }
        c.class = class;
        c.class_since = self.head;
    }

    /// Client `id` sent a message to `thread` at `now` (well-formed, within
    /// its message rate), before the bounds decide on it: it takes part in
    /// the thread whether the write is accepted or refused. A refused
    /// writer must catch up on that thread to get in: were it flushed there
    /// only at the loosened staleness, the order bound would refuse its
    /// every retry in a busy thread, and it would never be known to take
    /// part (its own thread at ten times the bound, for good).
    pub(super) fn sent_to(&mut self, id: ClientId, thread: &str, now: Micros) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        // The conit's key if it has one: every entry shares one string.
        let thread: Arc<str> = match self.conits.get_key_value(thread) {
            Some((k, _)) => k.clone(),
            None => thread.into(),
        };
        c.interest.wrote(&thread, now);
        self.refresh_class(id, now);
    }

    /// Counts of the interest policy's effect.
    pub fn interest_summary(&self) -> InterestSummary {
        let mut s = InterestSummary::default();
        for c in self.clients.values() {
            if c.phase != Phase::Streaming {
                continue;
            }
            s.streaming += 1;
            if let Class::Only(t) = &c.class
                && !t.is_empty()
            {
                s.taking_part += 1;
                s.pairs += t.len();
            }
        }
        s
    }

    /// Active readers per thread at `now`: the streaming clients taking
    /// part in it (wrote to it within `config`'s window, or in their latest
    /// messages), whether or not the interest policy is on.
    pub fn readers(&self, config: &InterestConfig, now: Micros) -> HashMap<Arc<str>, usize> {
        let mut readers = HashMap::new();
        for c in self.clients.values() {
            if c.phase != Phase::Streaming {
                continue;
            }
            for t in c.interest.threads(config, now) {
                *readers.entry(t).or_default() += 1;
            }
        }
        readers
    }
}

/// The entries of `part` delivered at `now` later than a client of
/// `class` was promised. Without the policy (or for [`Class::All`]) that is
/// the count the part was built with; otherwise an uncovered thread's
/// entries are late only past the loosened staleness, and so are entries
/// committed up to `class_since` (before the class came to cover their
/// thread). Messages committed up to `changed_at` were promised the old
/// bounds and are not counted.
pub(super) fn late(
    part: &FlushPart,
    (class, class_since): (&Class, Seq),
    interest: Option<&InterestConfig>,
    now: Micros,
    (settings, changed_at): (&Settings, Seq),
) -> u64 {
    let Some(cfg) = interest else {
        return part.late;
    };
    if part.late == 0 || *class == Class::All {
        return part.late;
    }
    part.entries
        .iter()
        .filter(|e| {
            let own = settings.bounds.for_thread(&e.thread).staleness;
            let promised = if e.seq > class_since && class.covers(&e.thread) {
                own
            } else {
                cfg.loosen(own)
            };
            e.seq > changed_at && now > e.commit_time.plus(promised)
        })
        .count() as u64
}
