//! `dyconit-chat bench` end to end: short runs against a spawned server that
//! assert correctness only (every accepted message reached every client
//! exactly once; the counts add up), never speed.

use serde_json::Value;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_dyconit-chat");

/// Runs `bench` with `args` and a JSON report; returns the report.
fn bench(name: &str, args: &[&str]) -> Value {
    let json =
        std::env::temp_dir().join(format!("dyconit-bench-{}-{name}.json", std::process::id()));
    let out = Command::new(EXE)
        .args(["bench", "--spawn-server", "--quiet", "--check", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("running bench");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{table}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table.contains("delivery check               PASSED"),
        "{table}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    report
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a count: {v}"))
}

/// The checks every correct run satisfies.
fn assert_consistent(r: &Value, clients: u64) {
    let accepted = n(r, &["accepted"]);
    assert!(accepted > 0, "nothing accepted: {r}");
    let rejected: u64 = r["rejections"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        n(r, &["sent"]),
        accepted + rejected + n(r, &["check", "send_errors"]),
        "every sent message has one status"
    );
    assert_eq!(n(r, &["check", "clients_complete"]), clients);
    assert_eq!(n(r, &["check", "clients_lost"]), 0);
    assert_eq!(n(r, &["check", "missing"]), 0);
    assert_eq!(n(r, &["check", "extra"]), 0);
    assert_eq!(
        n(r, &["deliveries_total"]),
        accepted * clients,
        "each accepted message once per client"
    );
    assert_eq!(n(r, &["latency", "count"]), n(r, &["deliveries_total"]));
    assert_eq!(r["check"]["passed"], true);
    let counted = &r["server_counters"];
    assert!(counted["bound_violations"].is_object(), "{r}");
    assert!(counted["clients_dropped"].is_object(), "{r}");
    let before_window = counted["violations_before_window"].as_u64();
    assert!(
        before_window.is_some_and(|b| b <= n(r, &["check", "server_violations"])),
        "{r}"
    );
    let server = &r["server"];
    assert!(server["peak_rss_bytes"].as_u64().unwrap() > 0, "{server}");
    assert!(server["cpu_seconds"].as_f64().unwrap() >= 0.0);
}

#[test]
fn unary_sends_reach_every_client() {
    let r = bench(
        "unary",
        &[
            "--clients",
            "30",
            "--rate",
            "300",
            "--threads",
            "4",
            "--size",
            "64",
            "--duration",
            "2s",
            "--ramp-up",
            "300ms",
            // Generous: a run the server counted violations in does not
            // pass, and these runs check delivery, not speed, on a
            // machine that may be busy.
            "--staleness",
            "1s",
        ],
    );
    assert_consistent(&r, 30);
    assert_eq!(r["config"]["mode"], "unary");
    // Real users each have their own connection: so do the bench's clients.
    assert_eq!(r["config"]["connections"], 30);
    // 2 s at 300/s, on schedule (open loop): all of them were sent.
    assert!(n(&r, &["sent"]) >= 590, "{}", r["sent"]);
}

/// `--rate-steps`: the same clients send at each step's rate in turn, and
/// every message counts in the step it was scheduled in.
#[test]
fn rate_steps_send_each_step_on_schedule_and_report_it_apart() {
    let r = bench(
        "steps",
        &[
            "--clients",
            "20",
            "--rate-steps",
            "50,0,200",
            "--duration",
            "1s",
            "--threads",
            "4",
            "--ramp-up",
            "300ms",
            "--staleness",
            "1s",
        ],
    );
    assert_consistent(&r, 20);
    assert_eq!(
        r["config"]["rate_steps"],
        serde_json::json!([50.0, 0.0, 200.0])
    );
    let steps = r["steps"].as_array().expect("steps");
    let sent: Vec<u64> = steps.iter().map(|s| n(s, &["sent"])).collect();
    // Open loop: a step sends what falls due within it, whatever the answers.
    assert_eq!(sent, [50, 0, 200], "{r}");
    assert_eq!(sent.iter().sum::<u64>(), n(&r, &["sent"]));
    let accepted: u64 = steps.iter().map(|s| n(s, &["accepted"])).sum();
    assert_eq!(accepted, n(&r, &["accepted"]));
    // Each step's latency counts its own messages, once per client.
    for s in steps {
        assert_eq!(n(s, &["latency", "count"]), n(s, &["accepted"]) * 20, "{s}");
    }
    // The steps tile the window: each starts where the one before ended.
    let span = |s: &Value, i: usize| s["window_wall_micros"][i].as_i64().unwrap();
    assert_eq!(span(&steps[0], 1), span(&steps[1], 0));
    assert_eq!(span(&steps[1], 1), span(&steps[2], 0));
    assert_eq!(span(&steps[2], 1) - span(&steps[0], 0), 3_000_000);
}

#[test]
fn streamed_sends_over_shared_connections_reach_every_client() {
    let r = bench(
        "stream",
        &[
            "--clients",
            "40",
            "--connections",
            "2",
            "--writers",
            "8",
            "--mode",
            "stream",
            "--rate",
            "400",
            "--threads",
            "3",
            "--duration",
            "2s",
            "--ramp-up",
            "300ms",
            // Generous: a run the server counted violations in does not
            // pass, and these runs check delivery, not speed, on a
            // machine that may be busy.
            "--staleness",
            "1s",
        ],
    );
    assert_consistent(&r, 40);
    assert_eq!(r["config"]["connections"], 2);
}

/// The interest workload: Zipf traffic, each client writing to its one
/// thread, against a server with the interest policy on. Every message
/// still reaches every client; the report adds the latency on each
/// client's own thread.
#[test]
fn zipf_traffic_with_one_active_thread_per_client_reaches_every_client() {
    let r = bench(
        "interest",
        &[
            "--clients",
            "30",
            "--rate",
            "300",
            "--threads",
            "10",
            "--zipf",
            "1",
            "--active-threads-per-client",
            "1",
            "--duration",
            "2s",
            "--ramp-up",
            "300ms",
            "--staleness",
            "1s",
            "--server-arg=--interest-policy",
        ],
    );
    assert_consistent(&r, 30);
    assert_eq!(r["config"]["zipf"], 1.0);
    assert_eq!(r["config"]["active_threads_per_client"], 1);
    let own = n(&r, &["own_thread_latency", "count"]);
    // A client's own thread carries some of what it receives, not all.
    assert!(own > 0 && own < n(&r, &["latency", "count"]), "{r}");
}

/// `--warm-up`: each writer writes once to its own thread before the
/// window. The warm-up writes are delivered and checked like the others,
/// but neither in the latencies nor in the window's rates; and the report
/// has the encoded bytes of the Updates received.
#[test]
fn warm_up_writes_are_checked_but_not_measured_and_update_bytes_are_reported() {
    let r = bench(
        "warm-up",
        &[
            "--clients",
            "20",
            "--rate",
            "100",
            "--threads",
            "5",
            "--zipf",
            "1",
            "--active-threads-per-client",
            "1",
            "--warm-up",
            "--duration",
            "2s",
            "--ramp-up",
            "300ms",
            // Uninterested threads flush at 10x this (the interest
            // policy's default factor): within the warm-up's wait (--drain).
            // 1 s like the other runs here: a loaded machine makes tighter
            // bounds late, and the check counts that.
            "--staleness",
            "1s",
            "--drain",
            "15s",
            // 20 writes at once: a tight order bound refuses some of them,
            // and the warm-up must send those again until accepted.
            "--order",
            "4",
            "--server-arg=--interest-policy",
        ],
    );
    assert_eq!(r["config"]["warm_up"], true);
    // The window's 200 and one per writer (again while refused).
    assert!(n(&r, &["sent"]) >= 200 + 20, "{r}");
    assert_eq!(n(&r, &["check", "clients_complete"]), 20, "{r}");
    let accepted = n(&r, &["accepted"]);
    assert_eq!(n(&r, &["deliveries_total"]), accepted * 20);
    // Every client got the 20 warm-up writes (each accepted once, however
    // many tries it took) before the window opened.
    assert_eq!(
        n(&r, &["latency", "count"]),
        (accepted - 20) * 20,
        "warm-up writes are not in the latencies: {r}"
    );
    let per_window_s = r["deliveries_per_window_s"].as_f64().unwrap();
    let window = r["window_s"].as_f64().unwrap();
    assert!(
        (per_window_s * window - ((accepted - 20) * 20) as f64).abs() < 1.0,
        "{r}"
    );
    // Each Update carries at least its messages' 100-byte contents.
    let bytes = r["update_bytes_per_s"].as_f64().unwrap();
    let per_update = bytes / r["updates_per_s"].as_f64().unwrap();
    let messages = r["messages_per_update"].as_f64().unwrap();
    assert!(
        per_update > messages * 100.0,
        "{per_update} B per Update: {r}"
    );
    let (start, end) = (
        r["window_wall_micros"][0].as_i64().unwrap(),
        r["window_wall_micros"][1].as_i64().unwrap(),
    );
    assert!(end - start >= 1_900_000, "{r}");
}

#[test]
fn send_only_writers_do_not_stream_and_readers_get_everything() {
    let r = bench(
        "send-only",
        &[
            "--clients",
            "3",
            "--writers",
            "4",
            "--send-only-writers",
            "--mode",
            "stream",
            "--rate",
            "500",
            "--duration",
            "1s",
            "--ramp-up",
            "100ms",
            "--order",
            "100000",
            "--ack-timeout",
            "30s",
            // Generous: a run the server counted violations in does not
            // pass, and these runs check delivery, not speed, on a
            // machine that may be busy.
            "--staleness",
            "1s",
        ],
    );
    assert_consistent(&r, 3);
    assert_eq!(r["config"]["send_only_writers"], true);
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    let out = Command::new(EXE)
        .args(["bench", "--spawn-server", "--size", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size must be at least 16"));
    let long = "t".repeat(130);
    let out = Command::new(EXE)
        .args(["bench", "--spawn-server", "--thread-prefix", &long])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--thread-prefix is too long"));
    let out = Command::new(EXE).args(["bench"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "neither --server nor --spawn-server"
    );
}

#[test]
fn record_is_refused_with_the_core_nats_fan_out() {
    // Parsing alone decides: no nats-server is reached (port 1 is closed).
    for flag in [
        ["--against", "nats://127.0.0.1:1"],
        ["--spawn-nats", "/nonexistent/nats-server"],
    ] {
        let out = Command::new(EXE)
            .args(["bench", "--record", "/tmp/never-written.rec"])
            .args(flag)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--record <FILE>")
                && err.contains("cannot be used with")
                && err.contains(flag[0]),
            "{flag:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_other_clients_is_warned_about_and_bench_threads_are_its_own() {
    let srv = dyconit_chat::bench::server::SpawnedServer::start(
        EXE.as_ref(),
        &["--storage=memory".to_owned(), "--staleness=1s".to_owned()],
    )
    .await
    .unwrap();
    // A chat user already on the server.
    let user = dyconit_chat::client::ChatClient::connect(&srv.url, Some("carol"))
        .await
        .unwrap();
    let mut updates = user.subscribe().await.unwrap();
    updates.next().await.unwrap().unwrap();
    let json =
        std::env::temp_dir().join(format!("dyconit-bench-{}-other.json", std::process::id()));
    let (url, admin, report) = (srv.url.clone(), srv.admin_url.clone(), json.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(EXE)
            .args(["bench", "--quiet", "--server", &url, "--admin", &admin])
            .args(["--clients", "3", "--rate", "50", "--duration", "1s"])
            .args(["--ramp-up", "100ms", "--json"])
            .arg(&report)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: the server already has 1 client(s) connected"),
        "{err}"
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(r["server_counters"]["other_clients_at_start"], 1, "{r}");
    // The user got the bench's messages on the bench's thread, not the main room.
    assert!(n(&r, &["accepted"]) > 0, "nothing accepted: {r}");
    // Heartbeats may come first; the deadline only bounds a failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let got = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let u = updates
            .next_within(left)
            .await
            .expect("the bench's messages reached the user")
            .unwrap();
        if !u.update.message.is_empty() {
            break u;
        }
    };
    let threads: Vec<&str> = got
        .update
        .message
        .iter()
        .map(|m| m.thread.as_ref().map_or("", |t| t.id.as_str()))
        .collect();
    assert!(
        !threads.is_empty() && threads.iter().all(|t| *t == "bench-0"),
        "{threads:?}"
    );
}
