//! The first pass: every message sent, its status, when it was first seen
//! delivered, every client's first and last Update and its end; then the one
//! commit order the second pass checks every client against.
//!
//! The commit order is not on the wire (only commit times, which may tie),
//! so it is rebuilt: by commit time, ties broken by the order in which the
//! messages were first seen delivered. A client that received two messages
//! in the other order then fails the one-order check.

use super::input::{self, Ev, Names};
use super::violation::{MsgRef, Violation};
use crate::bench::record::{EndKind, ReadError};
use std::collections::HashMap;
use std::path::PathBuf;

/// Hashes bench ids (a random base plus a counter) with one multiplication:
/// the map is looked up twice per delivery, and SipHash (made for keys an
/// attacker chooses) made the checker take 57 s instead of 33 s for 10^7
/// deliveries in a debug build.
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;

#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ self.0)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

/// No rank: never committed (rejected, or its outcome unknown and never
/// delivered).
pub const NO_RANK: u32 = u32::MAX;

/// One message the recording sent.
#[derive(Debug, Clone)]
pub struct Msg {
    pub id: u64,
    pub client: u32,
    /// `numMessagesSent`.
    pub n: i64,
    pub thread: u32,
    /// Sent on a `SendMessages` stream.
    pub streamed: bool,
    /// Position of its (first) Send event.
    pub send_pos: u64,
    pub send_time: i64,
    /// Sends of it (more than one: retries).
    pub sends: u32,
    /// First status: code, server time, position.
    pub status: Option<(i32, i64, u64)>,
    /// Where it was first seen delivered (event position, place in the
    /// Update), and the commit time delivered.
    pub first_seen: Option<((u64, u32), i64)>,
    /// Its place in the commit order, or [`NO_RANK`].
    pub rank: u32,
    /// Its writer's messages numbered before it that committed after it:
    /// they had not arrived when it was admitted.
    pub own_later: u32,
    /// The same, counting only its writer's messages to its thread.
    pub own_later_in_thread: u32,
}

impl Msg {
    /// Committed at this time (its OK's, else its first delivery's).
    pub fn commit_time(&self) -> Option<i64> {
        match self.status {
            Some((0, t, _)) => Some(t),
            _ => self.first_seen.map(|(_, t)| t),
        }
    }

    pub fn ok(&self) -> bool {
        matches!(self.status, Some((0, _, _)))
    }
}

/// What the first pass learnt of one client.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub first_update: Option<u64>,
    pub last_update: Option<u64>,
    /// `currentTime` of its last Update.
    pub last_current_time: i64,
    pub updates: u64,
    /// How it ended: kind, local time, reason.
    pub end: Option<(EndKind, i64, String)>,
    /// The client it continues on another node (a failover), if any.
    pub continues: Option<u32>,
}

/// Everything the first pass collects.
#[derive(Debug, Default)]
pub struct Catalog {
    pub names: Names,
    pub metas: Vec<serde_json::Value>,
    pub msgs: Vec<Msg>,
    pub by_id: HashMap<u64, u32, IdHash>,
    pub clients: Vec<ClientInfo>,
    /// Message index by rank.
    pub order: Vec<u32>,
    /// Per thread: the ranks of its commits, ascending.
    pub thread_ranks: Vec<Vec<u32>>,
    /// Per (client, thread): the ranks of the client's commits there.
    pub own_ranks: HashMap<(u32, u32), Vec<u32>>,
    pub events: u64,
    /// The earliest event time (reports give times relative to it).
    pub t0: i64,
    pub violations: Vec<Violation>,
    /// Clients that continued another on another node.
    pub failovers: u64,
}

impl Catalog {
    fn client(&mut self, c: u32) -> &mut ClientInfo {
        let i = c as usize;
        if self.clients.len() <= i {
            self.clients.resize(i + 1, ClientInfo::default());
        }
        &mut self.clients[i]
    }

    /// Message `m` as a counterexample shows it.
    pub fn msg_ref(&self, m: u32) -> MsgRef {
        let msg = &self.msgs[m as usize];
        MsgRef {
            id: msg.id,
            client: msg.client,
            n: msg.n,
            thread: (self.names.threads.get(msg.thread as usize))
                .cloned()
                .unwrap_or_else(|| "?".into()),
            send_time: msg.send_time,
            status: msg.status.map(|(c, t, _)| (c, t)),
            commit_time: msg.commit_time(),
        }
    }

    fn send(&mut self, pos: u64, e: &Ev) {
        let Ev::Send {
            client,
            n,
            thread,
            id,
            stream,
            time,
            ..
        } = *e
        else {
            return;
        };
        if let Some(&m) = self.by_id.get(&id) {
            let prev = &mut self.msgs[m as usize];
            prev.sends += 1;
            let writer = prev.client;
            if prev.thread == thread && prev.client != client && self.continues(client, writer) {
                // Sent again through the next node by the client that
                // continues its writer there: from now on it is that
                // client's message, numbered and acknowledged as its own.
                let prev = &mut self.msgs[m as usize];
                (prev.client, prev.n) = (client, n);
                return;
            }
            let prev = &self.msgs[m as usize];
            if (prev.client, prev.n, prev.thread) != (client, n, thread) {
                let v = Violation::IdReused {
                    first: self.msg_ref(m),
                    client,
                    n,
                };
                self.violations.push(v);
            }
            return;
        }
        self.by_id.insert(id, self.msgs.len() as u32);
        self.msgs.push(Msg {
            id,
            client,
            n,
            thread,
            streamed: stream > 0,
            send_pos: pos,
            send_time: time,
            sends: 1,
            status: None,
            first_seen: None,
            rank: NO_RANK,
            own_later: 0,
            own_later_in_thread: 0,
        });
    }

    /// Whether `client` continues `earlier` (through one failover or more).
    fn continues(&self, client: u32, earlier: u32) -> bool {
        let mut c = client;
        for _ in 0..self.clients.len() {
            match self.clients.get(c as usize).and_then(|i| i.continues) {
                Some(p) if p == earlier => return true,
                Some(p) => c = p,
                None => return false,
            }
        }
        false
    }

    fn status(&mut self, pos: u64, id: u64, code: i32, server_time: i64) {
        let Some(&m) = self.by_id.get(&id) else {
            return;
        };
        let msg = &mut self.msgs[m as usize];
        match msg.status {
            None => msg.status = Some((code, server_time, pos)),
            // A retry: an OK must carry the first OK's commit time.
            Some((0, t, _)) if code == 0 && t != server_time => {
                let v = Violation::RetryCommittedTwice {
                    msg: self.msg_ref(m),
                    second_commit: server_time,
                };
                self.violations.push(v);
            }
            Some((c, _, _)) if c != 0 && code == 0 => msg.status = Some((code, server_time, pos)),
            Some(_) => {}
        }
    }

    fn update(&mut self, pos: u64, e: &Ev) {
        let Ev::Update {
            client,
            current_time,
            ref messages,
            ..
        } = *e
        else {
            return;
        };
        let c = self.client(client);
        c.first_update.get_or_insert(pos);
        c.last_update = Some(pos);
        c.last_current_time = current_time;
        c.updates += 1;
        for (i, d) in messages.iter().enumerate() {
            if let Some(&m) = d.id.and_then(|id| self.by_id.get(&id)) {
                self.msgs[m as usize]
                    .first_seen
                    .get_or_insert(((pos, i as u32), d.server_time));
            }
        }
    }

    fn event(&mut self, pos: u64, e: Ev) {
        self.events = pos + 1;
        let time = match &e {
            Ev::Connect { time, .. }
            | Ev::Send { time, .. }
            | Ev::Update { time, .. }
            | Ev::AckSent { time, .. } => Some(*time),
            _ => None,
        };
        if let Some(t) = time
            && (self.t0 == 0 || t < self.t0)
        {
            self.t0 = t;
        }
        match e {
            Ev::Meta(v) => self.metas.push(v),
            Ev::Send { .. } => self.send(pos, &e),
            Ev::Status {
                id,
                code,
                server_time,
                ..
            } => self.status(pos, id, code, server_time),
            Ev::Update { .. } => self.update(pos, &e),
            Ev::End {
                client,
                time,
                kind,
                reason,
            } => self.client(client).end = Some((kind, time, reason)),
            Ev::Connect { client, .. } => {
                self.client(client);
            }
            Ev::Failover { from, to, .. } => {
                self.client(from);
                self.client(to).continues = Some(from);
                self.failovers += 1;
            }
            _ => {}
        }
    }
}

/// Runs the first pass over `files`.
pub fn build(files: &[PathBuf]) -> Result<Catalog, (PathBuf, ReadError)> {
    let mut cat = Catalog::default();
    let names = input::stream(files, |pos, _, e| cat.event(pos, e))?;
    cat.names = names;
    let n = cat.names.clients.len();
    if cat.clients.len() < n {
        cat.clients.resize(n, ClientInfo::default());
    }
    rank(&mut cat);
    own_later(&mut cat);
    Ok(cat)
}

/// Puts the committed messages in one order and indexes it per thread.
fn rank(cat: &mut Catalog) {
    let mut committed: Vec<u32> = (0..cat.msgs.len() as u32)
        .filter(|&m| cat.msgs[m as usize].commit_time().is_some())
        .collect();
    committed.sort_by_key(|&m| {
        let msg = &cat.msgs[m as usize];
        let seen = msg.first_seen.map_or((u64::MAX, 0), |(p, _)| p);
        (msg.commit_time(), seen, msg.id)
    });
    cat.thread_ranks = vec![Vec::new(); cat.names.threads.len()];
    for (r, &m) in committed.iter().enumerate() {
        let msg = &mut cat.msgs[m as usize];
        msg.rank = r as u32;
        if let Some(t) = cat.thread_ranks.get_mut(msg.thread as usize) {
            t.push(r as u32);
        }
        cat.own_ranks
            .entry((msg.client, msg.thread))
            .or_default()
            .push(r as u32);
    }
    cat.order = committed;
}

/// For each committed message: how many of its writer's earlier-numbered
/// messages committed after it, over all its threads and in its own thread.
/// A `SendMessages` stream must have none.
fn own_later(cat: &mut Catalog) {
    let all = later_counts(cat, |msg| (msg.client, 0));
    let in_thread = later_counts(cat, |msg| (msg.client, msg.thread));
    for (&m, (all, in_thread)) in cat.order.iter().zip(all.into_iter().zip(in_thread)) {
        let msg = &mut cat.msgs[m as usize];
        msg.own_later = all;
        msg.own_later_in_thread = in_thread;
    }
    for &m in &cat.order {
        let msg = &cat.msgs[m as usize];
        if msg.streamed && msg.own_later > 0 {
            let v = Violation::StreamOrder {
                msg: cat.msg_ref(m),
                overtaken_by: msg.own_later,
            };
            cat.violations.push(v);
        }
    }
}

/// For each committed message, in rank order: how many messages of its
/// group (`group`: writer, or writer and thread) numbered before it
/// committed after it (a Fenwick tree over ranks, reused per group).
fn later_counts(cat: &Catalog, group: impl Fn(&Msg) -> (u32, u32)) -> Vec<u32> {
    let mut groups: HashMap<(u32, u32), Vec<u32>> = HashMap::new();
    for &m in &cat.order {
        groups
            .entry(group(&cat.msgs[m as usize]))
            .or_default()
            .push(m);
    }
    let mut counts = vec![0u32; cat.order.len()];
    let mut tree = vec![0u32; cat.order.len() + 1];
    for (_, mut ms) in groups {
        ms.sort_by_key(|&m| cat.msgs[m as usize].n);
        for &m in &ms {
            let r = cat.msgs[m as usize].rank as usize;
            // Inserted so far: the earlier-numbered ones; count those above r.
            let inserted_upto_r = prefix(&tree, r + 1);
            let inserted = total_inserted(&ms, m, cat);
            counts[r] = inserted - inserted_upto_r;
            add(&mut tree, r + 1, 1);
        }
        for &m in &ms {
            add(&mut tree, cat.msgs[m as usize].rank as usize + 1, u32::MAX);
        }
    }
    counts
}

/// How many of `ms` (sorted by number) come before `m`.
fn total_inserted(ms: &[u32], m: u32, cat: &Catalog) -> u32 {
    let n = cat.msgs[m as usize].n;
    ms.partition_point(|&x| cat.msgs[x as usize].n < n) as u32
}

fn prefix(tree: &[u32], mut i: usize) -> u32 {
    let mut s = 0u32;
    while i > 0 {
        s = s.wrapping_add(tree[i]);
        i &= i - 1;
    }
    s
}

fn add(tree: &mut [u32], mut i: usize, v: u32) {
    while i < tree.len() {
        tree[i] = tree[i].wrapping_add(v);
        i += i & i.wrapping_neg();
    }
}
