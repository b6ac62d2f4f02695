//! When each streaming client is flushed: the delivery cursors grouped by
//! position, each client's own timer (reap, heartbeat, acknowledgement
//! timeout), and the cached flush deadline of each cursor group. The engine
//! asks it which clients are due at a poll and when the next one is; it
//! keeps the bookkeeping of moving a client between groups in one place.

use super::Seq;
use super::bounds::BoundsTable;
use super::client::ClientState;
use super::conit::ConitLog;
use super::interest::{Class, InterestConfig};
use super::settings::{flush_spread, safety_margin};
use super::time::Micros;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The capability id a client got from `Connect`.
pub type ClientId = i64;

/// A flush group: the clients at one delivery cursor with the same
/// interest [`Class`] share one flush deadline.
pub(super) type GroupKey = (Seq, Class);

pub(super) fn multiset_add(m: &mut BTreeMap<Seq, usize>, k: Seq) {
    *m.entry(k).or_default() += 1;
}

pub(super) fn multiset_remove(m: &mut BTreeMap<Seq, usize>, k: Seq) {
    if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

/// A client's place in the flush spread of its cursor group: 0 flushes at
/// the group's deadline, `u16::MAX` a whole [`flush_spread`] before it. A
/// hash of the id and the cursor, so ranks are uniform, need no storage, and
/// change with every flush: a fixed rank would keep the clients that flushed
/// together once in lockstep, and their groups would merge back into one
/// burst.
pub fn spread_rank(id: ClientId, cursor: Seq) -> u16 {
    let mut z = (id as u64 ^ cursor.rotate_left(32)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z >> 48) as u16
}

/// The flush deadline of the clients at one cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GroupDue {
    /// When the oldest pending commit must go out: the earliest staleness
    /// deadline over the conits, or `Micros(i64::MIN)` if a conit reached
    /// its flush count.
    at: Micros,
    /// The staleness bound of the conit that set `at`; the group's members
    /// are spread ahead of `at` by [`flush_spread`] of it. Zero when a flush
    /// count is reached: everyone is due at once.
    staleness: Duration,
}

impl GroupDue {
    /// When the member of rank `rank` in a group of `members` is due.
    pub(super) fn member(self, rank: u16, members: usize) -> Micros {
        if self.staleness.is_zero() {
            return self.at;
        }
        let spread = flush_spread(self.staleness, members);
        self.at
            .minus(spread.mul_f64(f64::from(rank) / f64::from(u16::MAX)))
    }

    /// Whether that member flushes in a poll at `now`: one poll takes every
    /// member due within the next 1/8 of the spread, so a group is served
    /// in about eight wake-ups, not one per client.
    pub(super) fn member_due(self, rank: u16, members: usize, now: Micros) -> bool {
        let slack = flush_spread(self.staleness, members) / 8;
        now.plus(slack) >= self.member(rank, members)
    }
}

/// When a client whose cursor is `cursor` and whose interest class is
/// `class` must be flushed, counting only visible commits (up to
/// `visible`): `None` if nothing visible is pending. A conit `class` does
/// not cover is due at its staleness loosened by the interest policy.
/// `before` is the last bound change (the head then, the bounds before):
/// what was committed up to it keeps the looser of the two bounds.
fn flush_due(
    conits: &HashMap<Arc<str>, ConitLog>,
    bounds: &BoundsTable,
    visible: Seq,
    (cursor, class): &GroupKey,
    (interest, lead, before): (
        Option<&InterestConfig>,
        Duration,
        Option<&(Seq, BoundsTable)>,
    ),
) -> Option<GroupDue> {
    let cursor = *cursor;
    if cursor >= visible {
        return None;
    }
    let mut due = GroupDue {
        at: Micros::MAX,
        staleness: Duration::ZERO,
    };
    for (thread, log) in conits {
        let Some((first, first_at)) = log.first_after(cursor) else {
            continue;
        };
        if first > visible {
            continue;
        }
        let b = bounds.for_thread(thread);
        if log.count_between(cursor, visible) >= b.flush_count() {
            return Some(GroupDue {
                at: Micros(i64::MIN),
                staleness: Duration::ZERO,
            });
        }
        let mut consider = |commit_time: Micros, staleness: Duration| {
            let staleness = match interest {
                Some(cfg) if !class.covers(thread) => cfg.loosen(staleness),
                _ => staleness,
            };
            let at = staleness_deadline(commit_time, staleness, lead);
            if at < due.at {
                due = GroupDue { at, staleness };
            }
        };
        match before {
            // Committed under the old bounds: due at the looser of old and
            // new (a lowered bound does not make it overdue at once), and
            // the first commit after the change at the new bound.
            Some((changed_at, old)) if first <= *changed_at => {
                consider(first_at, old.for_thread(thread).staleness.max(b.staleness));
                if let Some((next, next_at)) = log.first_after(*changed_at)
                    && next <= visible
                {
                    consider(next_at, b.staleness);
                }
            }
            _ => consider(first_at, b.staleness),
        }
    }
    Some(due)
}

/// When a message committed `at` in a conit with `staleness` must be
/// flushed: [`flush_margin`] before the bound.
pub(super) fn staleness_deadline(at: Micros, staleness: Duration, lead: Duration) -> Micros {
    at.plus(staleness).minus(flush_margin(staleness, lead))
}

/// How long before a staleness bound `staleness` a flush is due: the fixed
/// safety margin, or the scheduler's recent delay allowance `lead` (see
/// [`SchedulerDelay`](super::delay::SchedulerDelay)) if larger, but at most
/// half the bound. Half keeps the cost bounded: an Update then carries at
/// least half a bound's worth of messages, so there are at most twice as
/// many Updates as if flushes waited for the bound itself, and only while
/// the machine runs that late.
///
/// A quarter was the cap before, and it bound where the bound is a few
/// milliseconds: a cluster node whose commits arrive ~1.4 ms after their
/// commit time, on a saturated 2-core machine whose polls ran ~1.1 ms late
/// on average, delivered 10,114-11,038 messages per node past a 5 ms bound
/// in 10 s (the hot-thread row, about 13% of its deliveries); with half,
/// 942-1,966, with 10-12 messages per Update instead of 16-18 and the
/// row's throughput unchanged. At 100 ms bounds the allowance stays far
/// below both caps (7-14 ms in the fan-out row), and a single node
/// overloaded at 1,000 clients spent the same CPU either way (see
/// `docs/benchmarks.md`).
pub(super) fn flush_margin(staleness: Duration, lead: Duration) -> Duration {
    safety_margin(staleness).max(lead.min(staleness / 2))
}

/// The clients a poll visits, and each cursor group's size when it began
/// (a member's place in the spread must not move while the group empties).
pub(super) struct Visit {
    pub clients: Vec<ClientId>,
    pub group_size: HashMap<GroupKey, usize>,
}

/// Cursor groups, client timers and the group deadline cache.
#[derive(Debug, Default)]
pub(super) struct FlushSchedule {
    /// Multiset of the delivery cursors of streaming clients; its minimum is
    /// the client with the most pending, which is due first.
    cursors: BTreeMap<Seq, usize>,
    /// The streaming clients at each delivery cursor, by [`spread_rank`].
    /// Clients at one cursor share their flush deadline (each flushes ahead
    /// of it by its rank's share of [`flush_spread`]), so a poll finds the
    /// due flushes by looking at the few cursors instead of every client.
    /// Keyed by interest class too: members of one group share a deadline.
    members: HashMap<GroupKey, BTreeSet<(u16, ClientId)>>,
    /// Each client's own deadline (reap, heartbeat or acknowledgement
    /// timeout; see [`ClientState::timer`]), so a poll visits only the
    /// clients whose time has come: one timer queue, not a scan of all
    /// clients. An entry may be early (an acknowledgement moved the deadline
    /// later); the poll then just re-arms it.
    timers: BTreeSet<(Micros, ClientId)>,
    /// Flush deadlines of cursor groups, computed for the visible end
    /// `due_cache.0`: a deadline changes only when more commits become
    /// visible or the bounds change, while a group may be polled dozens of
    /// times as its members' shares of the spread come due.
    due_cache: (Seq, HashMap<GroupKey, Option<GroupDue>>),
    /// The interest policy, if on: uncovered conits are due later.
    interest: Option<InterestConfig>,
    /// The scheduler's recent delay, which flush deadlines allow for (see
    /// [`flush_margin`]).
    lead: Duration,
    /// The position of the last bound change and the bounds before it.
    before_change: Option<(Seq, BoundsTable)>,
}

impl FlushSchedule {
    /// Streaming clients.
    pub fn streaming(&self) -> usize {
        self.cursors.values().sum()
    }

    /// The lowest delivery cursor: its group is the first to become due.
    pub fn lowest_cursor(&self) -> Option<Seq> {
        self.cursors.first_key_value().map(|(&c, _)| c)
    }

    /// The earliest client timer.
    pub fn first_timer(&self) -> Option<Micros> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Client `id` of interest class `class` starts streaming at `cursor`.
    pub fn insert(&mut self, id: ClientId, cursor: Seq, class: &Class) {
        multiset_add(&mut self.cursors, cursor);
        self.members
            .entry((cursor, class.clone()))
            .or_default()
            .insert((spread_rank(id, cursor), id));
    }

    /// Client `id` was flushed from cursor `from` up to `to`.
    pub fn move_cursor(&mut self, id: ClientId, from: Seq, to: Seq, class: &Class) {
        self.remove_cursor(id, from, class);
        self.insert(id, to, class);
    }

    /// Client `id` at `cursor` changed interest class.
    pub fn reclass(&mut self, id: ClientId, cursor: Seq, from: &Class, to: &Class) {
        self.remove_cursor(id, cursor, from);
        self.insert(id, cursor, to);
    }

    /// Client `id` at `cursor` stops streaming.
    pub fn remove_cursor(&mut self, id: ClientId, cursor: Seq, class: &Class) {
        multiset_remove(&mut self.cursors, cursor);
        let key = (cursor, class.clone());
        if let Some(members) = self.members.get_mut(&key) {
            members.remove(&(spread_rank(id, cursor), id));
            if members.is_empty() {
                self.members.remove(&key);
            }
        }
    }

    /// Turns the interest policy on (`Some`) or off; every cached group
    /// deadline is stale.
    pub fn set_interest(&mut self, config: Option<InterestConfig>) {
        self.interest = config;
        self.forget_deadlines();
    }

    pub fn interest(&self) -> Option<&InterestConfig> {
        self.interest.as_ref()
    }

    /// Flushes act `lead` earlier than their bound, when that exceeds the
    /// safety margin (see [`flush_margin`]). A change makes every cached
    /// group deadline stale.
    pub fn set_lead(&mut self, lead: Duration) {
        if lead != self.lead {
            self.lead = lead;
            self.forget_deadlines();
        }
    }

    pub fn lead(&self) -> Duration {
        self.lead
    }

    /// Moves client `id`'s timer to `at`.
    pub fn retime(&mut self, id: ClientId, c: &mut ClientState, at: Micros) {
        self.timers.remove(&(c.timer, id));
        self.timers.insert((at, id));
        c.timer = at;
    }

    /// Forgets client `id`'s timer (it left).
    pub fn remove_timer(&mut self, id: ClientId, at: Micros) {
        self.timers.remove(&(at, id));
    }

    /// The bounds changed from `old`, with commits up to `head` made
    /// under them: those commits stay due at the looser of the old and the
    /// new staleness (see [`flush_due`]), and every cached group deadline
    /// is stale.
    pub fn bounds_changed(&mut self, old: BoundsTable, head: Seq) {
        self.before_change = Some((head, old));
        self.forget_deadlines();
    }

    /// Every cached group deadline is stale.
    fn forget_deadlines(&mut self) {
        self.due_cache.1.clear();
    }

    /// The flush deadline of the group `key` with commits up to `visible`
    /// deliverable (memoised per visible end).
    pub fn due(
        &mut self,
        key: &GroupKey,
        conits: &HashMap<Arc<str>, ConitLog>,
        bounds: &BoundsTable,
        visible: Seq,
    ) -> Option<GroupDue> {
        if self.due_cache.0 != visible {
            self.due_cache = (visible, HashMap::new());
        }
        if let Some(&due) = self.due_cache.1.get(key) {
            return due;
        }
        let due = flush_due(
            conits,
            bounds,
            visible,
            key,
            (
                self.interest.as_ref(),
                self.lead,
                self.before_change.as_ref(),
            ),
        );
        self.due_cache.1.insert(key.clone(), due);
        due
    }

    /// The clients with something due at `now`: every member of a cursor
    /// group whose own share of the group's flush is due (the highest ranks
    /// first; all of them if `force`), and every client whose own timer has
    /// passed or comes within `slack`. Their timers are taken out; the
    /// engine re-arms those that stay.
    pub fn visit(
        &mut self,
        now: Micros,
        force: bool,
        slack: Duration,
        conits: &HashMap<Arc<str>, ConitLog>,
        bounds: &BoundsTable,
        visible: Seq,
    ) -> Visit {
        let mut clients = Vec::new();
        let mut group_size = HashMap::new();
        let keys: Vec<GroupKey> = self.members.keys().cloned().collect();
        for key in keys {
            let due = self.due(&key, conits, bounds, visible);
            let members = &self.members[&key];
            group_size.insert(key, members.len());
            let Some(due) = due else { continue };
            clients.extend(
                members
                    .iter()
                    .rev()
                    .take_while(|&&(rank, _)| force || due.member_due(rank, members.len(), now))
                    .map(|&(_, id)| id),
            );
        }
        while let Some(&(at, id)) = self.timers.first() {
            if at > now.plus(slack) {
                break;
            }
            self.timers.pop_first();
            clients.push(id);
        }
        clients.sort_unstable();
        clients.dedup();
        Visit {
            clients,
            group_size,
        }
    }

    /// When the next poll has work: the earliest own timer, or the earliest
    /// pending flush of a cursor group (its highest-ranked member's).
    pub fn next_wake(
        &mut self,
        conits: &HashMap<Arc<str>, ConitLog>,
        bounds: &BoundsTable,
        visible: Seq,
        group_size: &HashMap<GroupKey, usize>,
    ) -> Micros {
        let mut next = self.first_timer().unwrap_or(Micros::MAX);
        let members = &self.members;
        self.due_cache.1.retain(|key, _| members.contains_key(key));
        let groups: Vec<(GroupKey, u16, usize)> = self
            .members
            .iter()
            .filter_map(|(key, m)| m.last().map(|&(rank, _)| (key.clone(), rank, m.len())))
            .collect();
        for (key, rank, len) in groups {
            if let Some(due) = self.due(&key, conits, bounds, visible) {
                let size = group_size.get(&key).copied().unwrap_or(len);
                next = next.min(due.member(rank, size));
            }
        }
        next
    }
}
