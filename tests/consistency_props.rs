//! Property tests of the pure dyconit core: random interleavings of connects,
//! streams, writes, acknowledgements, the passing of time, and the storage
//! reporting commits durable or failed, checked against an independent model
//! of the definitions in DESIGN.md §2–§4 and of durability before visibility.

use dyconit_chat::consistency::parts::entry_bytes;
use dyconit_chat::consistency::{
    Bounds, BoundsOverride, BoundsTable, Engine, Event, Micros, Rejection, Settings, Submission,
    SubmissionAck, Verdict,
};
use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const CLIENTS: usize = 4;
const THREADS: [&str; 3] = ["", "a", "b"];

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Stream(usize),
    /// Acknowledge `frac`/4 of the way from the acked count to the received one.
    Ack(usize, u8),
    /// Send on a thread: `lag`/4 of received Updates acknowledged in the
    /// message, number offset (0 = next, 1 = skip one, 2 = repeat the last),
    /// age of the timestamp in ms; `hold`: leave the commit pending instead
    /// of reporting it durable at once.
    Send {
        client: usize,
        thread: usize,
        lag: u8,
        number: u8,
        age_ms: u16,
        hold: bool,
    },
    Advance(u16),
    /// The storage reports `frac`/4 of the pending commits durable.
    Persist(u8),
    /// The storage fails: every pending commit is discarded.
    Fail,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..CLIENTS).prop_map(Op::Connect),
        1 => (0..CLIENTS).prop_map(Op::Stream),
        2 => (0..CLIENTS, 0u8..=4).prop_map(|(c, f)| Op::Ack(c, f)),
        5 => (0..CLIENTS, 0..THREADS.len(), 0u8..=4, 0u8..3, 0u16..400, prop::bool::weighted(0.4)).prop_map(
            |(client, thread, lag, number, age_ms, hold)| Op::Send { client, thread, lag, number, age_ms, hold }
        ),
        3 => (1u16..600).prop_map(Op::Advance),
        2 => (0u8..=4).prop_map(Op::Persist),
        1 => Just(Op::Fail),
    ]
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        (1u64..300, 1u64..8, 0u64..5),
        (1u64..300, 1u64..8, 0u64..5),
        200u64..2000,
        100u64..1500,
        (0usize..5, 80usize..260),
    )
        .prop_map(
            |((s, n, o), (ts, tn, to), lease, ack, (history, update_bytes))| {
                let mut bounds = BoundsTable::new(Bounds {
                    staleness: Duration::from_millis(s),
                    numerical: n,
                    order: o,
                })
                .unwrap();
                bounds
                    .set_thread(
                        "a",
                        BoundsOverride {
                            staleness: Some(Duration::from_millis(ts)),
                            numerical: Some(tn),
                            order: Some(to),
                        },
                    )
                    .unwrap();
                Settings {
                    bounds,
                    lease: Duration::from_millis(lease),
                    ack_timeout: Duration::from_millis(ack),
                    history,
                    // A few tiny messages per Update, so flushes and histories
                    // are split (the server's floor is 16 KiB; the engine
                    // itself takes any limit).
                    max_update_bytes: update_bytes,
                    ..Settings::default()
                }
            },
        )
}

/// What the model knows of one client.
#[derive(Default)]
struct ModelClient {
    id: i64,
    streaming: bool,
    /// positions[n]: the seen position after n Updates.
    positions: Vec<u64>,
    /// The baseline: the position after the last Update of the history.
    baseline: u64,
    acked: usize,
    /// Seqs received, in order.
    seqs: Vec<u64>,
    last_update_at: Option<Micros>,
    last_number: i64,
    arrived: HashSet<i64>,
    accepted: HashMap<i64, (String, String, u64)>,
}

struct Harness {
    engine: Engine,
    settings: Settings,
    now: Micros,
    clients: Vec<Option<ModelClient>>,
    /// (seq, thread, author, commit time), pending ones included.
    commits: Vec<(u64, &'static str, i64, Micros)>,
    /// The last commit reported durable: only commits up to here may be seen.
    durable: u64,
    /// When each commit (by seq - 1) was reported durable.
    durable_at: Vec<Micros>,
    next_id: i64,
}

impl Harness {
    fn bounds(&self, thread: &str) -> Bounds {
        self.settings.bounds.for_thread(thread)
    }

    fn poll_due(&mut self) -> Result<(), TestCaseError> {
        if self.engine.next_wake() <= self.now {
            let events = self.engine.poll(self.now);
            self.check_events(events)?;
            prop_assert!(self.engine.next_wake() > self.now, "poll made no progress");
        }
        Ok(())
    }

    fn advance(&mut self, ms: u16) -> Result<(), TestCaseError> {
        let target = self.now.plus(Duration::from_millis(ms as u64));
        while self.engine.next_wake() <= target {
            self.now = self.now.max(self.engine.next_wake());
            self.poll_due()?;
        }
        self.now = target;
        Ok(())
    }

    fn slot_of(&self, id: i64) -> usize {
        self.clients
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.id == id))
            .expect("event for a known client")
    }

    fn check_events(&mut self, events: Vec<Event>) -> Result<(), TestCaseError> {
        let lease = self.settings.lease;
        for ev in events {
            match ev {
                Event::Update { client, batch } => {
                    let slot = self.slot_of(client);
                    let mut late = Vec::new();
                    let mut late_count = 0;
                    for e in batch.entries.iter() {
                        // Never a commit that is not durable.
                        prop_assert!(e.seq <= self.durable, "seq {} not durable", e.seq);
                        let s = self.bounds(&e.thread).staleness;
                        if batch.current_time > e.commit_time.plus(s) {
                            late_count += 1;
                            // Late only if it became durable late, and then
                            // sent the moment it did.
                            if batch.current_time > self.durable_at[e.seq as usize - 1] {
                                late.push(e.seq);
                            }
                        }
                    }
                    let c = self.clients[slot].as_mut().unwrap();
                    prop_assert!(c.streaming);
                    // Delivered within the staleness bound.
                    prop_assert!(late.is_empty(), "late deliveries {late:?}");
                    prop_assert_eq!(batch.late, late_count);
                    // Heartbeat no later than half a lease after the last one.
                    if let Some(prev) = c.last_update_at {
                        prop_assert!(batch.current_time <= prev.plus(lease / 2));
                    }
                    prop_assert_eq!(batch.expiration, batch.current_time.plus(lease));
                    // One commit order, no gaps: continues exactly where the
                    // previous Update ended.
                    let prev_pos = *c.positions.last().unwrap();
                    let seqs: Vec<u64> = batch.entries.iter().map(|e| e.seq).collect();
                    // A flush larger than the Update limit is split; each
                    // part continues the previous one.
                    let size: usize = batch.entries.iter().map(|e| entry_bytes(e)).sum();
                    prop_assert!(seqs.len() <= 1 || size <= self.settings.max_update_bytes);
                    let want: Vec<u64> = (prev_pos + 1..=prev_pos + seqs.len() as u64).collect();
                    prop_assert_eq!(&seqs, &want);
                    c.seqs.extend(&seqs);
                    c.positions.push(prev_pos + seqs.len() as u64);
                    c.last_update_at = Some(batch.current_time);
                }
                Event::Dropped { client, .. } => {
                    let slot = self.slot_of(client);
                    self.clients[slot] = None;
                    prop_assert!(self.engine.client(client).is_none());
                }
            }
        }
        Ok(())
    }

    fn min_streaming_pos(&self) -> Option<u64> {
        self.clients
            .iter()
            .flatten()
            .filter(|c| c.streaming)
            .map(|c| c.positions[c.acked])
            .min()
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Connect(k) => {
                if self.clients[k].is_none() {
                    self.next_id += 1;
                    let id = self.next_id;
                    let name = format!("c{k}");
                    prop_assert!(self.engine.connect(id, id as u64, name.into(), self.now));
                    self.clients[k] = Some(ModelClient {
                        id,
                        positions: vec![self.durable],
                        ..Default::default()
                    });
                }
            }
            Op::Stream(k) => {
                let Some(c) = self.clients[k].as_mut() else {
                    return Ok(());
                };
                let r = self.engine.start_stream(c.id, self.now);
                if c.streaming {
                    prop_assert!(r.is_err());
                    return Ok(());
                }
                let batches = r.unwrap();
                let head = self.durable;
                prop_assert_eq!(self.engine.durable(), head);
                let history: Vec<u64> = batches
                    .iter()
                    .flat_map(|b| b.entries.iter().map(|e| e.seq))
                    .collect();
                // Split by bytes: a part holds more than one message only
                // if they fit the limit, and only the first may be empty.
                for (i, b) in batches.iter().enumerate() {
                    prop_assert!(i == 0 || !b.entries.is_empty());
                    let size: usize = b.entries.iter().map(|e| entry_bytes(e)).sum();
                    prop_assert!(b.entries.len() <= 1 || size <= self.settings.max_update_bytes);
                }
                let want_len = (head as usize).min(self.settings.history);
                // The most recent `history` durable commits (fewer if the
                // window was never that long), ending at the durable one.
                prop_assert!(history.len() <= want_len);
                if let Some(&last) = history.last() {
                    prop_assert_eq!(last, head);
                }
                c.streaming = true;
                // Each part's seen position is its last commit (never below
                // the position from Connect); the last part's is the baseline.
                let mut positions = vec![c.positions[0]];
                for b in &batches[..batches.len() - 1] {
                    let last = b.entries.last().map_or(0, |e| e.seq);
                    positions.push(last.max(*positions.last().unwrap()));
                }
                positions.push(head);
                c.positions = positions;
                c.baseline = head;
                c.last_update_at = Some(self.now);
            }
            Op::Ack(k, frac) => {
                let Some(c) = self.clients[k].as_mut() else {
                    return Ok(());
                };
                let received = c.positions.len() - 1;
                let count = c.acked + (received - c.acked) * frac as usize / 4;
                self.engine
                    .acknowledge(c.id, count as i64, self.now)
                    .unwrap();
                c.acked = c.acked.max(count);
            }
            Op::Send {
                client,
                thread,
                lag,
                number,
                age_ms,
                hold,
            } => {
                let Some(c) = self.clients[client].as_ref() else {
                    return Ok(());
                };
                let thread = THREADS[thread];
                let received = c.positions.len() - 1;
                let in_msg = received * lag as usize / 4;
                let n = match number {
                    0 => c.last_number + 1,
                    1 => c.last_number + 2,
                    _ => c.last_number.max(1),
                };
                let contents = format!("m{n}");
                let timestamp = self.now.minus(Duration::from_millis(age_ms as u64));
                let sub = Submission {
                    ack: Some(SubmissionAck {
                        client: Some(c.id),
                        updates_received: in_msg as i64,
                        messages_sent: n,
                    }),
                    thread: thread.to_owned(),
                    contents: contents.clone(),
                    timestamp: Some(timestamp),
                };
                // The model's expectations, computed before the call.
                let id = c.id;
                let effective = c.acked.max(in_msg);
                let pos = c.positions[effective];
                let retry = c
                    .accepted
                    .get(&n)
                    .filter(|(t, m, _)| t == thread && *m == contents)
                    .map(|x| x.2);
                let missing = (1..n).filter(|i| !c.arrived.contains(i)).count() as u64;
                let unseen = self
                    .commits
                    .iter()
                    .filter(|(s, t, a, _)| *s > pos && *t == thread && *a != id)
                    .count() as u64;
                // The acknowledgement inside the message counts first.
                self.clients[client].as_mut().unwrap().acked = effective;
                let num_err = self.min_streaming_pos().map_or(0, |p| {
                    self.commits
                        .iter()
                        .filter(|(s, t, _, _)| *s > p && *t == thread)
                        .count() as u64
                });
                let b = self.bounds(thread);
                let (decision, entry) = self.engine.submit(sub, self.now);
                let mut persist_now = None;
                let c = self.clients[client].as_mut().unwrap();
                c.last_number = c.last_number.max(n);
                match decision.verdict {
                    Verdict::Accepted {
                        seq, retry: true, ..
                    } => {
                        prop_assert_eq!(retry, Some(seq));
                        prop_assert!(entry.is_none());
                    }
                    _ if retry.is_some() => prop_assert!(false, "retry not recognised"),
                    Verdict::Rejected {
                        reason: Rejection::Staleness { .. },
                        ..
                    } => {
                        prop_assert!(timestamp < self.now.minus(b.staleness));
                    }
                    Verdict::Rejected {
                        reason: Rejection::Order { error, bound },
                        ..
                    } => {
                        prop_assert_eq!(error, unseen + missing);
                        prop_assert!(error > bound);
                    }
                    Verdict::Rejected {
                        reason: Rejection::Numerical { error, bound },
                        ..
                    } => {
                        prop_assert_eq!(decision.order_error, Some(unseen + missing));
                        prop_assert!(unseen + missing <= b.order);
                        prop_assert_eq!(error, num_err);
                        prop_assert!(error >= bound);
                    }
                    Verdict::Accepted {
                        seq,
                        at,
                        retry: false,
                    } => {
                        prop_assert!(timestamp >= self.now.minus(b.staleness));
                        prop_assert_eq!(decision.order_error, Some(unseen + missing));
                        prop_assert!(unseen + missing <= b.order);
                        prop_assert_eq!(decision.numerical_error, Some(num_err));
                        prop_assert!(num_err < b.numerical);
                        prop_assert_eq!(seq, self.commits.len() as u64 + 1);
                        prop_assert_eq!(entry.as_ref().map(|e| e.seq), Some(seq));
                        // The OK carries the commit time clients are sent.
                        prop_assert_eq!(entry.map(|e| e.commit_time), Some(at));
                        self.commits.push((seq, thread, id, at));
                        c.accepted.insert(n, (thread.to_owned(), contents, seq));
                        if !hold {
                            persist_now = Some(seq);
                        }
                    }
                    Verdict::Rejected { reason, .. } => {
                        prop_assert!(false, "unexpected {reason:?}")
                    }
                }
                if retry.is_none() {
                    c.arrived.insert(n);
                }
                if let Some(seq) = persist_now {
                    self.persist(seq);
                }
            }
            Op::Advance(ms) => self.advance(ms)?,
            Op::Persist(frac) => {
                let pending = self.commits.len() as u64 - self.durable;
                self.persist(self.durable + pending * frac as u64 / 4);
            }
            Op::Fail => {
                let durable = self.durable;
                let pending = self.commits.len() as u64 - durable;
                prop_assert_eq!(self.engine.discard_pending(), pending);
                prop_assert_eq!(self.engine.head(), durable);
                self.commits.truncate(durable as usize);
                for c in self.clients.iter_mut().flatten() {
                    c.accepted.retain(|_, (_, _, seq)| *seq <= durable);
                }
            }
        }
        self.poll_due()
    }

    /// The storage reports commits up to `upto` durable.
    fn persist(&mut self, upto: u64) {
        self.engine.mark_durable(upto);
        while self.durable < upto {
            self.durable += 1;
            self.durable_at.push(self.now);
        }
        self.durable_at.truncate(self.durable as usize);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn bounds_hold_under_random_interleavings(settings in settings(), ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness {
            engine: Engine::new(settings.clone(), 0, Vec::new()),
            settings,
            now: Micros(1_700_000_000_000_000),
            clients: (0..CLIENTS).map(|_| None).collect(),
            commits: Vec::new(),
            durable: 0,
            durable_at: Vec::new(),
            next_id: 0,
        };
        for op in ops {
            h.apply(op)?;
        }
        // Let everything drain: every streaming client ends with every
        // commit after its baseline, in commit order.
        let head = h.commits.len() as u64;
        h.persist(head);
        prop_assert_eq!(h.engine.durable(), head);
        h.advance(2000)?;
        for c in h.clients.iter().flatten().filter(|c| c.streaming) {
            let base = c.baseline;
            let want: Vec<u64> = (base + 1..=h.commits.len() as u64).collect();
            prop_assert_eq!(&c.seqs, &want);
        }
    }
}

/// Idle clients that connected at scattered times are heartbeated in a few
/// groups, not one wake-up each, and none waits longer than half a lease.
#[test]
fn heartbeats_of_idle_clients_coalesce_into_few_wake_ups() {
    let settings = Settings {
        lease: Duration::from_secs(10),
        ack_timeout: Duration::from_secs(60),
        ..Settings::default()
    };
    let mut engine = Engine::new(settings.clone(), 0, Vec::new());
    let mut now = Micros(1_700_000_000_000_000);
    let mut last: HashMap<i64, Micros> = HashMap::new();
    let clients = 1000;
    for id in 1..=clients {
        // One client every 5 ms: spread over a whole half lease.
        now = now.plus(Duration::from_millis(5));
        assert!(engine.connect(id, id as u64, "c".into(), now));
        engine.start_stream(id, now).unwrap();
        last.insert(id, now);
    }
    let end = now.plus(Duration::from_secs(60));
    let mut wake_ups = 0;
    while engine.next_wake() <= end {
        now = now.max(engine.next_wake());
        wake_ups += 1;
        for ev in engine.poll(now) {
            let Event::Update { client, batch } = ev else {
                panic!("unexpected {ev:?}")
            };
            let prev = last.insert(client, batch.current_time).unwrap();
            assert!(batch.current_time <= prev.plus(settings.lease / 2));
            // Acknowledge at once, as a live client would.
            let n = engine.client(client).unwrap().updates_sent as i64;
            engine.acknowledge(client, n, now).unwrap();
        }
    }
    // 60 s is 12 half leases; one wake-up per client would be 12,000.
    assert!(
        wake_ups <= 12 * 6,
        "{wake_ups} wake-ups for {clients} idle clients"
    );
    assert!(
        last.values()
            .all(|&t| t.plus(settings.lease / 2) >= end.minus(Duration::from_secs(1)))
    );
}

/// Many clients at one cursor do not all flush in one instant: each goes out
/// by its own share of the spread ahead of the group's deadline, never after
/// it and never more than a sixteenth of the bound (plus the safety
/// margin) before it; the group is
/// served in a dozen or so wake-ups; and over later cycles the clients' flush
/// times drift apart instead of staying one burst.
#[test]
fn a_large_cursor_group_is_flushed_spread_out_and_drifts_apart() {
    let settings = Settings {
        ack_timeout: Duration::from_secs(3600),
        lease: Duration::from_secs(3600),
        ..Settings::default()
    };
    let staleness = Duration::from_millis(500);
    let mut engine = Engine::new(settings, 0, Vec::new());
    let t0 = Micros(1_700_000_000_000_000);
    let clients = 5000;
    for id in 1..=clients {
        assert!(engine.connect(id, id as u64, "c".into(), t0));
        engine.start_stream(id, t0).unwrap();
    }
    let writer = clients + 1;
    assert!(engine.connect(writer, 0, "w".into(), t0));
    let mut sent = 0;
    let mut send = |engine: &mut Engine, at: Micros| {
        sent += 1;
        let sub = Submission {
            ack: Some(SubmissionAck {
                client: Some(writer),
                updates_received: 0,
                messages_sent: sent,
            }),
            thread: String::new(),
            contents: "m".into(),
            timestamp: Some(at),
        };
        let (d, _) = engine.submit(sub, at);
        assert!(matches!(d.verdict, Verdict::Accepted { .. }), "{d:?}");
        engine.mark_durable(engine.head());
    };
    // One commit every 10 ms for 20 s; every client acknowledges at once.
    let mut now = t0;
    let mut next_send = t0.plus(Duration::from_millis(10));
    let end = t0.plus(Duration::from_secs(20));
    let mut first_cycle: Vec<Micros> = Vec::new();
    let mut wake_ups_first_cycle = 0;
    // Per 10 ms slot of the last 5 s: how many Updates went out.
    let mut late_slots: HashMap<i64, usize> = HashMap::new();
    while now < end {
        let wake = engine.next_wake().min(next_send);
        now = now.max(wake);
        if now >= next_send {
            send(&mut engine, now);
            next_send = next_send.plus(Duration::from_millis(10));
        }
        let events = engine.poll(now);
        let mut any = false;
        for ev in events {
            let Event::Update { client, batch } = ev else {
                panic!("unexpected {ev:?}")
            };
            let oldest = batch.entries.first().expect("a flush carries messages");
            let age = now.since(oldest.commit_time);
            assert!(
                age <= staleness,
                "client {client} flushed {age:?} after a commit"
            );
            if now < t0.plus(Duration::from_millis(500)) {
                any = true;
                first_cycle.push(now);
                assert!(
                    age >= staleness - Duration::from_millis(20) - staleness / 16 - staleness / 128,
                    "client {client} flushed only {age:?} after the first commit"
                );
            }
            if now >= end.minus(Duration::from_secs(5)) {
                *late_slots.entry((now.0 - t0.0) / 10_000).or_default() += 1;
            }
            let n = engine.client(client).unwrap().updates_sent as i64;
            engine.acknowledge(client, n, now).unwrap();
        }
        wake_ups_first_cycle += usize::from(any);
    }
    assert_eq!(
        first_cycle.len(),
        clients as usize,
        "every client got the first commit"
    );
    let spread = first_cycle.iter().max().unwrap().0 - first_cycle.iter().min().unwrap().0;
    assert!(spread >= 25_000, "first flush spread over only {spread} µs");
    assert!(
        (4..=24).contains(&wake_ups_first_cycle),
        "first flush took {wake_ups_first_cycle} wake-ups"
    );
    // Later, the busiest 10 ms carries a small share of the clients, not
    // all of them (one burst would be 5,000 in one slot every 500 ms).
    let busiest = late_slots.values().copied().max().unwrap();
    assert!(
        busiest <= clients as usize / 8,
        "busiest 10 ms slot: {busiest} Updates"
    );
    // The price: a flush at most 1/16 of the bound early, so not much more
    // than one Update per client per (500 - 20 - 31) ms.
    let updates: usize = late_slots.values().sum();
    assert!(
        updates <= clients as usize * 5000 / 449,
        "{updates} Updates in 5 s for {clients} clients"
    );
}

/// The acknowledgement inside a SentMessage is reported with the decision,
/// so the server can observe acknowledgement lag from it.
#[test]
fn an_acknowledgement_inside_a_message_is_reported() {
    let mut engine = Engine::new(Settings::default(), 0, Vec::new());
    let t0 = Micros(1_700_000_000_000_000);
    assert!(engine.connect(1, 1, "a".into(), t0));
    engine.start_stream(1, t0).unwrap();
    let sub = |updates| Submission {
        ack: Some(SubmissionAck {
            client: Some(1),
            updates_received: updates,
            messages_sent: 1,
        }),
        thread: String::new(),
        contents: "x".into(),
        timestamp: Some(t0),
    };
    let later = t0.plus(Duration::from_millis(7));
    let (d, _) = engine.submit(sub(1), later);
    let info = d.ack.expect("the ack advanced");
    assert_eq!(info.round_trip_micros, 7_000);
    assert_eq!(info.lag_messages, 0);
    // The same count again is not news.
    let (d, _) = engine.submit(sub(1), later);
    assert!(d.ack.is_none());
}

fn staleness_table(ms: u64) -> BoundsTable {
    BoundsTable::new(Bounds {
        staleness: Duration::from_millis(ms),
        ..Bounds::default()
    })
    .unwrap()
}

/// An engine with staleness `ms`, reader 1 streaming and writer 2.
fn reader_and_writer(ms: u64, t0: Micros) -> Engine {
    let settings = Settings {
        bounds: staleness_table(ms),
        ..Settings::default()
    };
    let mut engine = Engine::new(settings, 0, Vec::new());
    assert!(engine.connect(1, 1, "r".into(), t0));
    engine.start_stream(1, t0).unwrap();
    assert!(engine.connect(2, 2, "w".into(), t0));
    engine
}

/// Writer 2's message number `n`, committed and durable at `at`.
fn commit(engine: &mut Engine, n: i64, at: Micros) -> u64 {
    let sub = Submission {
        ack: Some(SubmissionAck {
            client: Some(2),
            updates_received: 0,
            messages_sent: n,
        }),
        thread: String::new(),
        contents: "x".into(),
        timestamp: Some(at),
    };
    let (d, _) = engine.submit(sub, at);
    let Verdict::Accepted { seq, .. } = d.verdict else {
        panic!("{d:?}")
    };
    engine.mark_durable(seq);
    engine.poll(at);
    seq
}

/// The positions a poll at `at` delivered to reader 1, and how many of
/// them it counted late.
fn deliver(engine: &mut Engine, at: Micros) -> (Vec<u64>, u64) {
    let mut seqs = Vec::new();
    let mut late = 0;
    for ev in engine.poll(at) {
        if let Event::Update { client: 1, batch } = ev {
            seqs.extend(batch.entries.iter().map(|e| e.seq));
            late += batch.late;
        }
    }
    (seqs, late)
}

/// Tightening staleness does not make the pending messages overdue: they
/// were promised the old bound and still go out by it, instead of every
/// client being flushed at once the moment the bound drops. A message
/// committed after the change is due at the new bound and carries the old
/// one along; neither is counted late.
#[test]
fn tightening_staleness_leaves_old_messages_on_the_old_bound() {
    let ms = Duration::from_millis;
    let t0 = Micros(1_700_000_000_000_000);
    let mut engine = reader_and_writer(1000, t0);
    let old = commit(&mut engine, 1, t0);
    engine.set_bounds(staleness_table(100));
    let changed = t0.plus(ms(200));
    assert_eq!(deliver(&mut engine, changed), (vec![], 0));
    assert!(engine.next_wake() > t0.plus(ms(900)));

    let new = commit(&mut engine, 2, changed);
    let due = engine.next_wake();
    assert!(due > changed.plus(ms(50)) && due <= changed.plus(ms(100)));
    assert_eq!(deliver(&mut engine, due), (vec![old, new], 0));
}

/// A message that really is delivered after its bound is counted late.
#[test]
fn a_poll_past_the_bound_counts_the_message_late() {
    let t0 = Micros(1_700_000_000_000_000);
    let mut engine = reader_and_writer(1000, t0);
    let seq = commit(&mut engine, 1, t0);
    let too_late = t0.plus(Duration::from_millis(1500));
    assert_eq!(deliver(&mut engine, too_late), (vec![seq], 1));
}
