//! `dyconit-chat check` on what a cluster may legitimately do and a single
//! node never does: a client's writes to different threads committed out of
//! their arrival order (each thread publishes on its own), and a write
//! answered `INTERNAL_ERROR` (its outcome not known) that was stored after
//! all. Small hand-made recordings, each next to the fault it must still
//! find.

use dyconit_chat::bench::record::{self, Delivery, EndKind, Event};
use dyconit_chat::check::{self, CheckArgs, Outage};
use std::path::Path;
use std::time::Duration;

const T: i64 = 1_795_000_000_000_000;

fn check(path: &Path, cluster: bool) -> check::Checked {
    check_across(path, cluster, &[])
}

/// `check`, told of outages `(from, to)` µs after `T`.
fn check_across(path: &Path, cluster: bool, outages: &[(i64, i64)]) -> check::Checked {
    check::run(&CheckArgs {
        files: vec![path.to_owned()],
        allowance: Duration::from_millis(100),
        cluster,
        outage: (outages.iter())
            .map(|&(from, to)| Outage {
                from: T + from,
                to: T + to,
            })
            .collect(),
    })
    .expect("the recording reads")
}

/// Two clients on threads "a" and "b", bounds order `order`; client 0's
/// `sends` (number, thread, status code, server time) in that order, then
/// one Update to both clients carrying `delivered` (message number, commit
/// time) in that order.
fn run(order: u64, sends: &[(i64, u32, i32, i64)], delivered: &[(i64, i64)]) -> Vec<Event> {
    let bounds = serde_json::json!({"default": {"staleness_ms": 500.0, "numerical": 100, "order": order}, "threads": [], "changes": []});
    let mut ev = vec![Event::Meta(
        serde_json::json!({"kind": "start", "at": T, "bounds": bounds}),
    )];
    for (index, name) in ["a", "b"].into_iter().enumerate() {
        let name = name.to_owned();
        ev.push(Event::Thread {
            index: index as u32,
            name,
        });
    }
    for c in 0..2 {
        ev.push(Event::Connect { client: c, time: T });
        ev.push(Event::Update {
            client: c,
            time: T + 10,
            current_time: T + 5,
            expiration: T + 10_000_005,
            messages: vec![],
        });
    }
    let id = |n: i64| (1u64 << 32) + n as u64;
    for &(n, thread, _, _) in sends {
        let time = T + 1000 + n;
        ev.push(Event::Send {
            client: 0,
            n,
            thread,
            id: id(n),
            timestamp: time,
            acked: 1,
            stream: 0,
            time,
        });
    }
    for &(n, _, code, at) in sends {
        let (server_time, time) = (T + at, T + at + 50);
        let id = id(n);
        ev.push(Event::Status {
            id,
            code,
            server_time,
            time,
        });
    }
    let messages: Vec<Delivery> = delivered
        .iter()
        .map(|&(n, at)| Delivery {
            id: Some(id(n)),
            server_time: T + at,
        })
        .collect();
    for c in 0..2 {
        ev.push(Event::Update {
            client: c,
            time: T + 100_000,
            current_time: T + 99_000,
            expiration: T + 10_099_000,
            messages: messages.clone(),
        });
        ev.push(Event::End {
            client: c,
            time: T + 200_000,
            kind: EndKind::Stopped,
            reason: String::new(),
        });
    }
    ev
}

fn write(dir: &Path, events: &[Event]) -> std::path::PathBuf {
    let path = dir.join("run.rec");
    record::write_all(&path, events).expect("write the recording");
    path
}

#[test]
fn on_a_cluster_writes_to_other_threads_committed_later_had_arrived() {
    let dir = tempfile::tempdir().unwrap();
    // Order bound 0. #1 to "a" committed after #2 to "b": on one node that
    // means #1 had not arrived when #2 was admitted (order error 1); on a
    // cluster "a" may simply have published later.
    let path = write(
        dir.path(),
        &run(
            0,
            &[(1, 0, 0, 2100), (2, 1, 0, 2000)],
            &[(2, 2000), (1, 2100)],
        ),
    );
    let single = check(&path, false);
    assert!(
        single
            .failures
            .contains_key("write admitted over its order bound"),
        "{}",
        single.report
    );
    let cluster = check(&path, true);
    assert!(cluster.passed(), "{}", cluster.report);
    // In one thread, committed later still means arrived later.
    let path = write(
        dir.path(),
        &run(
            0,
            &[(1, 0, 0, 2100), (2, 0, 0, 2000)],
            &[(2, 2000), (1, 2100)],
        ),
    );
    let cluster = check(&path, true);
    assert!(
        cluster
            .failures
            .contains_key("write admitted over its order bound"),
        "{}",
        cluster.report
    );
}

#[test]
fn a_write_answered_internal_error_may_be_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    // #1 answered INTERNAL_ERROR (2) and stored all the same; #2 OK.
    let sends = [(1, 0, 2, 2000), (2, 0, 0, 2100)];
    let path = write(dir.path(), &run(100, &sends, &[(1, 2000), (2, 2100)]));
    let c = check(&path, true);
    assert!(c.passed(), "{}", c.report);
    // Not stored: nobody gets it, and that is no loss either.
    let path = write(dir.path(), &run(100, &sends, &[(2, 2100)]));
    let c = check(&path, true);
    assert!(c.passed(), "{}", c.report);
    // At most once.
    let twice = [(1, 2000), (2, 2100), (1, 2000)];
    let path = write(dir.path(), &run(100, &sends, &twice));
    let c = check(&path, true);
    assert!(
        c.failures.contains_key("duplicate delivery"),
        "{}",
        c.report
    );
    // A real rejection (ORDER_ERROR, 3) delivered is still a fault.
    let rejected = [(1, 0, 3, 2000), (2, 0, 0, 2100)];
    let path = write(dir.path(), &run(100, &rejected, &[(1, 2000), (2, 2100)]));
    let c = check(&path, true);
    assert!(
        c.failures.contains_key("rejected message delivered"),
        "{}",
        c.report
    );
}

/// Client 0 sends #1 to "a" and loses its node before the status; client 1
/// commits two writes to "a"; client 2 (`continues`: linked to client 0 by
/// a `Failover` record) joins another node with them as history and sends
/// #1 again unchanged, which commits after them. Order bound 1.
fn failed_over(continues: bool) -> Vec<Event> {
    let bounds = serde_json::json!({"default": {"staleness_ms": 500.0, "numerical": 100, "order": 1}, "threads": [], "changes": []});
    let mut ev = vec![
        Event::Meta(serde_json::json!({"kind": "start", "at": T, "bounds": bounds})),
        Event::Thread {
            index: 0,
            name: "a".into(),
        },
    ];
    let update = |client, at: i64, messages: &[(u64, i64)]| Event::Update {
        client,
        time: T + at,
        current_time: T + at - 10,
        expiration: T + at + 10_000_000,
        messages: (messages.iter())
            .map(|&(id, t)| Delivery {
                id: Some(id),
                server_time: T + t,
            })
            .collect(),
    };
    let send = |client, n, id, timestamp: i64, at: i64| Event::Send {
        client,
        n,
        thread: 0,
        id,
        timestamp: T + timestamp,
        acked: 1,
        stream: 0,
        time: T + at,
    };
    let ok = |id, t: i64| Event::Status {
        id,
        code: 0,
        server_time: T + t,
        time: T + t + 50,
    };
    for c in 0..2 {
        ev.push(Event::Connect { client: c, time: T });
        ev.push(update(c, 10, &[]));
    }
    ev.extend([send(0, 1, 100, 1000, 1000), send(1, 1, 11, 1100, 1100)]);
    ev.extend([ok(11, 2000), send(1, 2, 12, 2050, 2050), ok(12, 2100)]);
    ev.push(update(1, 2200, &[(11, 2000), (12, 2100)]));
    ev.push(Event::End {
        client: 0,
        time: T + 3000,
        kind: EndKind::Lost,
        reason: "h2 protocol error".into(),
    });
    if continues {
        ev.push(Event::Failover {
            from: 0,
            to: 2,
            time: T + 3050,
        });
    }
    ev.push(Event::Connect {
        client: 2,
        time: T + 3100,
    });
    ev.push(update(2, 3200, &[(11, 2000), (12, 2100)]));
    ev.extend([send(2, 1, 100, 1000, 3300), ok(100, 3400)]);
    for c in 1..3 {
        ev.push(update(c, 3500, &[(100, 3400)]));
        ev.push(Event::End {
            client: c,
            time: T + 4000,
            kind: EndKind::Stopped,
            reason: String::new(),
        });
    }
    ev
}

#[test]
fn a_send_made_again_through_the_next_node_is_the_successors_retry() {
    let dir = tempfile::tempdir().unwrap();
    // Judged as client 2's write: it had seen both commits of "a" (its
    // history), so its order error is 0. As client 0's, it would be 2.
    let path = write(dir.path(), &failed_over(true));
    let c = check(&path, true);
    assert!(c.passed(), "{}", c.report);
    assert!(
        c.report.contains("1 continued on another node"),
        "{}",
        c.report
    );
    // Without the record linking the two clients, one id sent by two
    // clients is two messages under one id.
    let path = write(dir.path(), &failed_over(false));
    let c = check(&path, true);
    assert!(
        c.failures
            .contains_key("one contents id sent as two messages"),
        "{}",
        c.report
    );
}

#[test]
fn a_commit_stored_during_an_outage_is_due_from_its_end() {
    let dir = tempfile::tempdir().unwrap();
    // #1 committed at +2 ms (staleness 500 ms, allowance 100 ms) reaches
    // both clients at +3 s: as if the stream's leader had stored it just
    // before it died, and its successor was elected at +2.8 s.
    let mut events = run(0, &[(1, 0, 0, 2000)], &[(1, 2000)]);
    for e in &mut events {
        match e {
            Event::Update {
                time, current_time, ..
            } if *time == T + 100_000 => {
                *time = T + 3_000_000;
                *current_time = T + 2_999_000;
            }
            Event::End { time, .. } => *time = T + 4_000_000,
            _ => {}
        }
    }
    let path = write(dir.path(), &events);
    let late = "late delivery";
    let plain = check(&path, true);
    assert_eq!(plain.failures.get(late), Some(&2), "{}", plain.report);
    let across = check_across(&path, true, &[(1500, 2_800_000)]);
    assert!(across.passed(), "{}", across.report);
    assert!(
        across
            .report
            .contains("2 deliveries late from their commit time"),
        "{}",
        across.report
    );
    // Still late: 2 s after the outage ended, or stored before it began.
    for outage in [(1500, 1_000_000), (2500, 2_800_000)] {
        let c = check_across(&path, true, &[outage]);
        assert_eq!(c.failures.get(late), Some(&2), "{outage:?}: {}", c.report);
    }
}
