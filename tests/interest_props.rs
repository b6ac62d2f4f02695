//! Property tests of the interest policy in the pure core: with it on, every
//! client still receives every commit exactly once and in commit order, a
//! thread a client takes part in reaches it within the thread's own
//! staleness, every other thread within the loosened staleness, and no
//! Update is counted late against what the client was promised.

use dyconit_chat::consistency::interest::InterestConfig;
use dyconit_chat::consistency::{
    Bounds, BoundsTable, Engine, Event, Micros, Rejection, Settings, Submission, SubmissionAck,
    Verdict,
};
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

const T0: Micros = Micros(1_700_000_000_000_000);
const THREADS: [&str; 3] = ["", "hot", "quiet"];

struct Reader {
    id: i64,
    /// The thread it writes to (None: it only reads).
    home: Option<&'static str>,
    /// The first seq after its first write to `home`, accepted or refused
    /// by a bound: from then on it takes part in `home`.
    joined: Option<u64>,
    sent: i64,
    next_seq: u64,
    updates: u64,
}

struct Sim {
    engine: Engine,
    cfg: InterestConfig,
    staleness: HashMap<&'static str, Duration>,
    now: Micros,
    clients: Vec<Reader>,
    /// (thread, commit time) by seq - 1.
    commits: Vec<(&'static str, Micros)>,
}

impl Sim {
    fn new(staleness_ms: [u64; 3], cfg: InterestConfig, readers: usize) -> Self {
        let homes = (0..readers).map(|i| THREADS.get(i).copied()).collect();
        Self::build(staleness_ms, cfg, homes, 1_000_000)
    }

    /// Clients with these homes (None: only reads), under this order bound.
    fn build(
        staleness_ms: [u64; 3],
        cfg: InterestConfig,
        homes: Vec<Option<&'static str>>,
        order: u64,
    ) -> Self {
        let mut bounds = BoundsTable::new(Bounds {
            staleness: Duration::from_millis(staleness_ms[0]),
            numerical: 1_000_000,
            order,
        })
        .unwrap();
        let mut staleness = HashMap::new();
        for (t, ms) in THREADS.iter().zip(staleness_ms) {
            let s = Duration::from_millis(ms);
            staleness.insert(*t, s);
            if !t.is_empty() {
                let own = dyconit_chat::consistency::BoundsOverride {
                    staleness: Some(s),
                    ..Default::default()
                };
                bounds.set_thread(t, own).unwrap();
            }
        }
        let settings = Settings {
            bounds,
            ..Settings::default()
        };
        let mut engine = Engine::new(settings, 0, Vec::new());
        engine.set_interest(Some(cfg), T0);
        let mut clients = Vec::new();
        for (i, home) in homes.into_iter().enumerate() {
            let id = i as i64 + 1;
            assert!(engine.connect(id, id as u64, format!("c{id}").into(), T0));
            let first = engine.start_stream(id, T0).unwrap();
            clients.push(Reader {
                id,
                home,
                joined: None,
                sent: 0,
                next_seq: 1,
                updates: first.len() as u64,
            });
        }
        Sim {
            engine,
            cfg,
            staleness,
            now: T0,
            clients,
            commits: Vec::new(),
        }
    }

    fn write(&mut self, who: usize) {
        assert_ne!(self.try_write(who), Some(false), "client {who} refused");
    }

    /// Client `who` writes to its home: whether it was accepted (None if it
    /// only reads). A write refused by a bound makes it take part too.
    fn try_write(&mut self, who: usize) -> Option<bool> {
        let head = self.engine.head();
        let c = &mut self.clients[who];
        let home = c.home?;
        c.sent += 1;
        let sub = Submission {
            ack: Some(SubmissionAck {
                client: Some(c.id),
                updates_received: c.updates as i64,
                messages_sent: c.sent,
            }),
            thread: home.to_owned(),
            contents: format!("m{}", c.sent),
            timestamp: Some(self.now),
        };
        let (d, _) = self.engine.submit(sub, self.now);
        match d.verdict {
            Verdict::Accepted { seq, at, .. } => {
                c.joined.get_or_insert(seq);
                self.commits.push((home, at));
                self.engine.mark_durable(seq);
                Some(true)
            }
            Verdict::Rejected {
                reason: Rejection::Order { .. } | Rejection::Staleness { .. },
                ..
            } => {
                c.joined.get_or_insert(head + 1);
                Some(false)
            }
            v => panic!("unexpected {v:?}"),
        }
    }

    /// The staleness client `who` was promised for commit `seq`.
    fn promised(&self, who: usize, seq: u64) -> Duration {
        let (thread, _) = self.commits[seq as usize - 1];
        let c = &self.clients[who];
        let own = self.staleness[thread];
        // Its home thread stays covered once it wrote there (its latest
        // message names it, however old).
        if c.home == Some(thread) && c.joined.is_some_and(|j| j <= seq) {
            own
        } else {
            self.cfg.loosen(own)
        }
    }

    fn check(&mut self, events: Vec<Event>) -> Result<(), TestCaseError> {
        for ev in events {
            let Event::Update { client, batch } = ev else {
                prop_assert!(false, "unexpected {ev:?}");
                continue;
            };
            let who = self.clients.iter().position(|c| c.id == client).unwrap();
            prop_assert_eq!(batch.late, 0, "an Update counted late");
            for e in batch.entries.iter() {
                prop_assert_eq!(e.seq, self.clients[who].next_seq, "commit order");
                let promised = self.promised(who, e.seq);
                prop_assert!(
                    self.now <= e.commit_time.plus(promised),
                    "seq {} to client {} at {:?} after commit {:?} + {:?}",
                    e.seq,
                    client,
                    self.now,
                    e.commit_time,
                    promised
                );
                self.clients[who].next_seq += 1;
            }
            let c = &mut self.clients[who];
            c.updates += 1;
            self.engine
                .acknowledge(c.id, c.updates as i64, self.now)
                .unwrap();
        }
        Ok(())
    }

    fn advance(&mut self, ms: u64) -> Result<(), TestCaseError> {
        let target = self.now.plus(Duration::from_millis(ms));
        while self.engine.next_wake() <= target {
            self.now = self.now.max(self.engine.next_wake());
            let events = self.engine.poll(self.now);
            self.check(events)?;
        }
        self.now = target;
        Ok(())
    }

    /// Runs long enough for every loosened deadline (or a heartbeat), then
    /// checks that every client has every commit.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        self.advance(20_000)?;
        let head = self.commits.len() as u64;
        for c in &self.clients {
            prop_assert_eq!(c.next_seq, head + 1, "client {} missed commits", c.id);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_commit_arrives_once_in_order_within_what_was_promised(
        staleness_ms in prop::array::uniform3(20u64..800),
        factor in 1.0f64..20.0,
        window_s in 1u64..30,
        readers in 3usize..7,
        ops in prop::collection::vec((0usize..7, 0u64..400), 1..120),
    ) {
        let cfg = InterestConfig {
            window: Duration::from_secs(window_s),
            recent: 1,
            factor,
        };
        let mut sim = Sim::new(staleness_ms, cfg, readers);
        for (who, gap) in ops {
            if who < readers {
                sim.write(who);
            }
            sim.advance(gap)?;
        }
        sim.settle()?;
    }

    /// Two writers on each thread and a small order bound, so writes are
    /// refused: a writer takes part in its thread from its first try on,
    /// accepted or not, and gets that thread's later commits at the
    /// thread's own staleness (it must catch up there to get in).
    #[test]
    fn a_refused_writer_takes_part_from_its_first_try(
        staleness_ms in prop::array::uniform3(20u64..800),
        factor in 2.0f64..20.0,
        order in 0u64..4,
        ops in prop::collection::vec((0usize..7, 0u64..300), 1..150),
    ) {
        let cfg = InterestConfig {
            window: Duration::from_secs(60),
            recent: 1,
            factor,
        };
        let mut homes: Vec<Option<&'static str>> = THREADS.iter().chain(&THREADS).map(|t| Some(*t)).collect();
        homes.push(None);
        let mut sim = Sim::build(staleness_ms, cfg, homes, order);
        for (who, gap) in ops {
            sim.try_write(who);
            sim.advance(gap)?;
        }
        sim.settle()?;
    }
}

/// What the interest benchmark ran into: a member of a busy thread whose
/// first write there is refused for the order bound (it has not seen the
/// others' latest) must get the thread at its own staleness from then on.
/// When only accepted writes counted, it got the thread at ten times the
/// staleness, so its retries kept being refused and it stayed unknown to
/// the policy, with its own thread at the loosened bound.
#[test]
fn a_member_refused_for_the_order_bound_catches_up_and_gets_in() {
    let cfg = InterestConfig {
        window: Duration::from_secs(60),
        recent: 1,
        factor: 10.0,
    };
    let mut sim = Sim::build([100; 3], cfg, vec![Some("hot"), Some("hot")], 8);
    // Client 0 writes every 20 ms. Client 1 is sent it at 1 s (the
    // loosened staleness); from 1.2 s on it tries every 240 ms.
    let mut tries = Vec::new();
    for step in 0..150 {
        sim.write(0);
        if step >= 60 && step % 12 == 0 && !tries.contains(&true) {
            tries.extend(sim.try_write(1));
        }
        sim.advance(20).unwrap();
    }
    sim.settle().unwrap();
    // Refused once (dozens unseen), then in: it was sent the thread at
    // its own staleness since.
    assert_eq!(tries, [false, true]);
}

/// On a busy thread a reader who takes part gets many Updates, one who does
/// not gets a few (the loosened staleness batches more per Update).
#[test]
fn an_uninterested_reader_gets_fewer_updates() {
    let cfg = InterestConfig {
        window: Duration::from_secs(60),
        recent: 1,
        factor: 10.0,
    };
    let mut sim = Sim::new([100, 100, 100], cfg, 4);
    // Client 0 writes to "" every 30 ms for 10 s; client 3 only reads.
    let before: Vec<u64> = sim.clients.iter().map(|c| c.updates).collect();
    for _ in 0..333 {
        sim.write(0);
        sim.advance(30).unwrap();
    }
    sim.advance(20_000).unwrap();
    let got: Vec<u64> = sim
        .clients
        .iter()
        .zip(before)
        .map(|(c, b)| c.updates - b)
        .collect();
    // Measured: the writer got 115 (one per 100 ms staleness window),
    // the reader 15 (one per loosened second, plus heartbeats); with a
    // factor of 1 both get 115.
    assert!(got[0] >= 50, "{got:?}");
    assert!(got[3] * 4 <= got[0], "{got:?}");
}
