//! The second pass: every client's Updates against the commit order, every
//! admitted write against its bounds, every Update against the previous
//! lease.
//!
//! What the checker cannot see, it takes in the server's favour, so that
//! every failure it reports is a real one:
//! - an acknowledgement counts as applied from the moment it was *sent*
//!   (the server may have learnt it later): the order and numerical errors
//!   computed are lower bounds of the server's;
//! - commits and clients outside the recording are not counted;
//! - a client whose stream was lost counts as active only while it still
//!   received Updates built after the write.

use super::bounds::Timeline;
use super::catalog::{Catalog, NO_RANK};
use super::input::Ev;
use super::violation::{UpdateRef, Violation};
use crate::bench::histogram::Histogram;
use crate::bench::record::{Delivery, EndKind};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Examples kept per kind of violation.
const EXAMPLES: usize = 3;

/// `StatusCode.INTERNAL_ERROR`.
const INTERNAL_ERROR: i32 = 2;

/// Unseen commits listed in an order-bound counterexample.
const UNSEEN_SHOWN: usize = 5;

/// With the bounds unknown, a message must have reached every active client
/// this long after its commit.
pub const UNKNOWN_STALENESS: i64 = 10_000_000;

/// A lost client counts as active for a write if it received an Update
/// built this long after the write's commit.
const ACTIVE_MARGIN: i64 = 10_000;

/// A stretch of time in which the server could not make commits visible,
/// µs since the epoch, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub from: i64,
    pub to: i64,
}

/// Figures of the run, for the report.
#[derive(Default)]
pub struct Figures {
    pub deliveries: u64,
    /// Messages received that no recorded client sent.
    pub foreign: u64,
    /// Commit -> receive, µs.
    pub latency: Histogram,
    /// Update built -> received (`currentTime` -> local receive), µs.
    pub transit: Histogram,
    /// Most over its staleness a delivery was (commit -> receive), µs.
    pub max_over_staleness: i64,
    /// Deliveries later than staleness + allowance after their commit,
    /// but not after the end of the outage their commit was stored in.
    pub late_for_outage: u64,
    /// Latest Update relative to the previous expirationTime, µs
    /// (negative: that much before it).
    pub max_after_expiration: i64,
    pub order_checked: u64,
    pub max_order_error: u64,
    pub numerical_checked: u64,
    pub max_numerical_error: u64,
    pub clients_complete: u64,
}

/// What the second pass found.
#[derive(Default)]
pub struct Findings {
    pub examples: Vec<Violation>,
    pub counts: BTreeMap<&'static str, u64>,
    pub figures: Figures,
}

impl Findings {
    pub fn add(&mut self, v: Violation) {
        let n = self.counts.entry(v.kind()).or_default();
        *n += 1;
        if *n as usize <= EXAMPLES {
            self.examples.push(v);
        }
    }
}

/// One client during the second pass.
#[derive(Default)]
struct ClientRun {
    updates: u64,
    /// Highest rank delivered so far (-1: none).
    max_rank: i64,
    /// The last message delivered, and its rank.
    last: Option<(u32, i64)>,
    prev_update: Option<UpdateRef>,
    /// Highest acknowledgement count sent, and the seen position after it
    /// (an upper bound of the server's).
    acked: i64,
    seen: i64,
    /// Upper bound of its baseline: the highest rank sent before its
    /// `ServerInfo` / first Update arrived.
    base: i64,
    /// `(k, seen after Update k)` for Updates above `acked`.
    pending: VecDeque<(u64, i64)>,
    /// Delivered messages, one bit per rank.
    bits: Vec<u64>,
    /// Its key in the active set, if in it.
    active_key: Option<i64>,
    /// Taken out of the active set for good (its stream was lost).
    retired: bool,
}

pub struct Verifier<'a> {
    cat: &'a Catalog,
    bounds: &'a Timeline,
    allowance: i64,
    clients: Vec<ClientRun>,
    /// Highest rank of a message sent so far.
    max_sent_rank: i64,
    /// `(seen, client)` of the active clients.
    active: BTreeSet<(i64, u32)>,
    /// The server is a cluster: a client's writes to different threads may
    /// commit out of their arrival order (each thread publishes on its own),
    /// so an earlier-numbered write that committed later shows it had not
    /// arrived only when it went to the same thread.
    pub cluster: bool,
    /// Outages given: a commit stored within one is due from its end.
    pub outages: Vec<Outage>,
    pub found: Findings,
}

/// Ranks in `sorted` strictly between `lo` and `hi`.
fn between(sorted: &[u32], lo: i64, hi: i64) -> std::ops::Range<usize> {
    let a = sorted.partition_point(|&x| i64::from(x) <= lo);
    let b = sorted.partition_point(|&x| i64::from(x) < hi);
    a..b.max(a)
}

impl<'a> Verifier<'a> {
    pub fn new(cat: &'a Catalog, bounds: &'a Timeline, allowance: i64) -> Self {
        let clients = (0..cat.clients.len())
            .map(|_| ClientRun {
                max_rank: -1,
                seen: -1,
                base: -1,
                ..ClientRun::default()
            })
            .collect();
        Verifier {
            cat,
            bounds,
            allowance,
            clients,
            max_sent_rank: -1,
            active: BTreeSet::new(),
            cluster: false,
            outages: Vec::new(),
            found: Findings::default(),
        }
    }

    /// When a commit's staleness starts counting: its commit time, or the
    /// end of the outage it was stored in.
    fn due_from(&self, commit: i64) -> i64 {
        (self.outages.iter())
            .filter(|o| (o.from..=o.to).contains(&commit))
            .map(|o| o.to)
            .max()
            .unwrap_or(commit)
    }

    fn thread_name(&self, t: u32) -> &str {
        self.cat.names.threads.get(t as usize).map_or("", |s| s)
    }

    pub fn event(&mut self, pos: u64, e: Ev) {
        match e {
            Ev::Connect { client, .. } => {
                self.clients[client as usize].base = self.max_sent_rank;
                let c = &mut self.clients[client as usize];
                c.seen = c.seen.max(c.base);
            }
            Ev::Send {
                client, id, acked, ..
            } => {
                if let Some(&m) = self.cat.by_id.get(&id) {
                    let r = self.cat.msgs[m as usize].rank;
                    if r != NO_RANK {
                        self.max_sent_rank = self.max_sent_rank.max(i64::from(r));
                    }
                }
                self.ack_to(client, acked);
            }
            Ev::AckSent { client, count, .. } => self.ack_to(client, count),
            Ev::Update {
                client,
                time,
                current_time,
                expiration,
                messages,
            } => {
                let u = UpdateRef {
                    client,
                    index: self.clients[client as usize].updates + 1,
                    received: time,
                    current_time,
                    expiration,
                };
                self.update(u, &messages);
            }
            Ev::Status { id, code: 0, .. } => {
                if let Some(&m) = self.cat.by_id.get(&id)
                    && matches!(self.cat.msgs[m as usize].status, Some((0, _, p)) if p == pos)
                    && self.cat.msgs[m as usize].rank != NO_RANK
                {
                    self.check_order(m);
                    self.check_numerical(m);
                }
            }
            _ => {}
        }
    }

    /// The client sent an acknowledgement of `count` Updates.
    fn ack_to(&mut self, client: u32, count: i64) {
        let c = &mut self.clients[client as usize];
        if count <= c.acked {
            return;
        }
        c.acked = count;
        while let Some(&(k, seen)) = c.pending.front() {
            if k as i64 > count {
                break;
            }
            c.seen = c.seen.max(seen);
            c.pending.pop_front();
        }
        if let Some(old) = c.active_key
            && old != c.seen
        {
            self.active.remove(&(old, client));
            self.active.insert((c.seen, client));
            c.active_key = Some(c.seen);
        }
    }

    fn update(&mut self, u: UpdateRef, messages: &[Delivery]) {
        let client = u.client;
        let first = self.clients[client as usize].updates == 0;
        if first {
            let ranks = self.cat.order.len();
            let c = &mut self.clients[client as usize];
            c.base = c.base.max(self.max_sent_rank);
            c.bits = vec![0; ranks.div_ceil(64)];
            c.active_key = Some(c.seen);
            self.active.insert((c.seen, client));
        }
        self.found
            .figures
            .transit
            .record((u.received - u.current_time).max(0) as u64);
        for d in messages {
            self.delivery(&u, d);
        }
        let allowance = self.allowance;
        let c = &mut self.clients[client as usize];
        if let Some(prev) = c.prev_update.take() {
            let after = u.received - prev.expiration;
            let f = &mut self.found.figures;
            f.max_after_expiration = if c.updates == 1 && f.max_after_expiration == 0 {
                after
            } else {
                f.max_after_expiration.max(after)
            };
            if after > allowance {
                let v = Violation::MissedHeartbeat {
                    previous: prev,
                    next: Some(u.clone()),
                    at: u.received,
                    allowance,
                };
                self.found.add(v);
            }
        }
        let c = &mut self.clients[client as usize];
        c.updates += 1;
        let seen = c.max_rank.max(c.base);
        c.pending.push_back((c.updates, seen));
        c.prev_update = Some(u);
    }

    fn delivery(&mut self, u: &UpdateRef, d: &Delivery) {
        let Some(&m) = d.id.and_then(|id| self.cat.by_id.get(&id)) else {
            self.found.figures.foreign += 1;
            return;
        };
        self.found.figures.deliveries += 1;
        let msg = &self.cat.msgs[m as usize];
        let r = i64::from(msg.rank);
        let c = &mut self.clients[u.client as usize];
        let (word, bit) = (msg.rank as usize / 64, 1u64 << (msg.rank % 64));
        if c.bits[word] & bit != 0 {
            let v = Violation::Duplicate {
                msg: self.cat.msg_ref(m),
                first_in: None,
                again_in: u.clone(),
            };
            self.found.add(v);
            return;
        }
        c.bits[word] |= bit;
        let last = c.last.replace((m, r));
        c.max_rank = c.max_rank.max(r);
        if let Some((lm, lr)) = last
            && r < lr
        {
            let v = Violation::Order {
                client: u.client,
                first: self.cat.msg_ref(lm),
                then: self.cat.msg_ref(m),
                in_update: u.clone(),
            };
            self.found.add(v);
        }
        self.delivery_promises(u, m, d.server_time);
    }

    /// The delivered message was OK'd with this commit time, and arrived
    /// within its staleness.
    fn delivery_promises(&mut self, u: &UpdateRef, m: u32, delivered_time: i64) {
        let msg = &self.cat.msgs[m as usize];
        match msg.status {
            Some((0, t, _)) if t != delivered_time => {
                let v = Violation::CommitTimeMismatch {
                    msg: self.cat.msg_ref(m),
                    delivered: delivered_time,
                    update: u.clone(),
                };
                self.found.add(v);
            }
            // INTERNAL_ERROR says the outcome is not known (a publish whose
            // acknowledgement timed out may be stored all the same): such a
            // write may be delivered, once, like any commit.
            Some((code, _, _)) if code != 0 && code != INTERNAL_ERROR => {
                let v = Violation::DeliveredRejected {
                    msg: self.cat.msg_ref(m),
                    update: u.clone(),
                };
                self.found.add(v);
            }
            _ => {}
        }
        // A message sent before the client's stream began may reach it as
        // history, which no staleness bound covers.
        let first = self.cat.clients[u.client as usize].first_update;
        if first.is_some_and(|p| msg.send_pos < p) {
            return;
        }
        let commit = msg.commit_time().unwrap_or(delivered_time);
        let latency = u.received - commit;
        self.found.figures.latency.record(latency.max(0) as u64);
        if !self.bounds.known() {
            return;
        }
        let thread = self.thread_name(msg.thread);
        let staleness = self.bounds.loosest(thread, commit, u.received).staleness;
        let f = &mut self.found.figures;
        f.max_over_staleness = if f.deliveries == 1 {
            latency - staleness
        } else {
            f.max_over_staleness.max(latency - staleness)
        };
        if latency > staleness + self.allowance {
            if u.received - self.due_from(commit) <= staleness + self.allowance {
                self.found.figures.late_for_outage += 1;
                return;
            }
            let v = Violation::Late {
                msg: self.cat.msg_ref(m),
                update: u.clone(),
                staleness,
                allowance: self.allowance,
            };
            self.found.add(v);
        }
    }

    /// The write's order error, from what its writer had acknowledged, must
    /// not exceed its thread's order bound.
    fn check_order(&mut self, m: u32) {
        let msg = &self.cat.msgs[m as usize];
        let (client, r) = (msg.client, i64::from(msg.rank));
        let c = &self.clients[client as usize];
        let seen = c.seen.max(c.base);
        let all = self
            .cat
            .thread_ranks
            .get(msg.thread as usize)
            .map_or(&[][..], |v| v);
        let own = self
            .cat
            .own_ranks
            .get(&(client, msg.thread))
            .map_or(&[][..], |v| v);
        let range = between(all, seen, r);
        let unseen = range.len() - between(own, seen, r).len();
        let own_later = if self.cluster {
            msg.own_later_in_thread
        } else {
            msg.own_later
        };
        let error = unseen as u64 + u64::from(own_later);
        let f = &mut self.found.figures;
        f.order_checked += 1;
        f.max_order_error = f.max_order_error.max(error);
        let commit = msg.commit_time().unwrap_or(0);
        let bound = self
            .bounds
            .loosest(self.thread_name(msg.thread), commit, commit)
            .order;
        if error > bound {
            let shown = all[range]
                .iter()
                .map(|&x| self.cat.order[x as usize])
                .filter(|&x| self.cat.msgs[x as usize].client != client)
                .take(UNSEEN_SHOWN)
                .map(|x| self.cat.msg_ref(x))
                .collect();
            let v = Violation::OrderBound {
                msg: self.cat.msg_ref(m),
                acked: c.acked,
                unseen: shown,
                error,
                bound,
            };
            self.found.add(v);
        }
    }

    /// No write may be admitted while the thread's unacknowledged count over
    /// the active clients is at its numerical bound.
    fn check_numerical(&mut self, m: u32) {
        let msg = &self.cat.msgs[m as usize];
        let commit = msg.commit_time().unwrap_or(0);
        // Clients whose stream was lost before this write stop counting.
        while let Some(&(seen, c)) = self.active.first() {
            let info = &self.cat.clients[c as usize];
            let lost = matches!(info.end, Some((EndKind::Lost, _, _)));
            if !lost || info.last_current_time > commit + ACTIVE_MARGIN {
                break;
            }
            self.active.remove(&(seen, c));
            let run = &mut self.clients[c as usize];
            run.active_key = None;
            run.retired = true;
        }
        let Some(&(lowest, laggard)) = self.active.first() else {
            return;
        };
        let all = self
            .cat
            .thread_ranks
            .get(msg.thread as usize)
            .map_or(&[][..], |v| v);
        let error = between(all, lowest, i64::from(msg.rank)).len() as u64;
        let f = &mut self.found.figures;
        f.numerical_checked += 1;
        f.max_numerical_error = f.max_numerical_error.max(error);
        let bound = self
            .bounds
            .loosest(self.thread_name(msg.thread), commit, commit)
            .numerical;
        if error >= bound {
            let v = Violation::NumericalBound {
                msg: self.cat.msg_ref(m),
                laggard,
                acked: self.clients[laggard as usize].acked,
                error,
                bound,
            };
            self.found.add(v);
        }
    }

    /// After the last event: every client that stayed active received every
    /// message committed after its stream began that was due before its
    /// end, and its last lease did not run out before that end.
    pub fn finish(&mut self, last_time: i64) {
        let due = self.due_times(last_time);
        for (i, info) in self.cat.clients.iter().enumerate() {
            let Some(first) = info.first_update else {
                continue;
            };
            let end = match &info.end {
                Some((EndKind::Lost, _, _)) => continue,
                Some((EndKind::Stopped, t, _)) => *t,
                None => last_time,
            };
            self.check_complete(i as u32, first, end, &due);
            let c = &mut self.clients[i];
            if let Some(prev) = c.prev_update.take()
                && end > prev.expiration + self.allowance
            {
                let v = Violation::MissedHeartbeat {
                    previous: prev,
                    next: None,
                    at: end,
                    allowance: self.allowance,
                };
                self.found.add(v);
            }
        }
    }

    /// By rank: when the message must have reached every active client.
    fn due_times(&self, last_time: i64) -> Vec<i64> {
        let cat = self.cat;
        (cat.order.iter())
            .map(|&m| {
                let msg = &cat.msgs[m as usize];
                let commit = msg.commit_time().unwrap_or(i64::MAX);
                let staleness = if self.bounds.known() {
                    self.bounds
                        .loosest(self.thread_name(msg.thread), commit, last_time)
                        .staleness
                } else {
                    UNKNOWN_STALENESS
                };
                self.due_from(commit)
                    .saturating_add(staleness + self.allowance)
            })
            .collect()
    }

    fn check_complete(&mut self, client: u32, first_update: u64, end: i64, due: &[i64]) {
        let mut complete = true;
        for (r, &m) in self.cat.order.iter().enumerate() {
            let c = &self.clients[client as usize];
            // Not yet due when the client ended, and nothing after it
            // reached the client either (delivery is in commit order).
            let pending = due[r] > end && r as i64 > c.max_rank;
            if c.bits[r / 64] & (1 << (r % 64)) != 0 || pending {
                continue;
            }
            if self.cat.msgs[m as usize].send_pos < first_update {
                continue; // sent before its stream began: maybe before its baseline
            }
            complete = false;
            let v = Violation::Lost {
                client,
                msg: self.cat.msg_ref(m),
            };
            self.found.add(v);
        }
        if complete {
            self.found.figures.clients_complete += 1;
        }
    }
}
