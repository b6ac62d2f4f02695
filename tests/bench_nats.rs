//! `dyconit-chat bench --spawn-nats`: the fan-out workload over core NATS
//! against a real `nats-server`, end to end. Ignored unless asked for
//! (`--include-ignored` with `DYCONIT_NATS_SERVER` naming the binary, as
//! `.ci/run` does after installing it). Asserts correctness and that the
//! cost figures are there, never speed.

use serde_json::Value;
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_dyconit-chat");

#[test]
#[ignore = "needs nats-server: set DYCONIT_NATS_SERVER and pass --include-ignored (.ci/run does)"]
fn the_nats_fan_out_reaches_every_subscriber_and_measures_the_server() {
    let nats = std::env::var("DYCONIT_NATS_SERVER")
        .expect("DYCONIT_NATS_SERVER names the nats-server binary");
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("nats.json");
    let out = Command::new(EXE)
        .args(["bench", "--spawn-nats", &nats, "--quiet"])
        .args(["--clients", "20", "--rate", "100", "--size", "100"])
        .args(["--duration", "2s", "--json"])
        .arg(&json)
        .output()
        .expect("running bench");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{table}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["published"], 200, "{r:#}");
    assert_eq!(r["deliveries"], 20 * 200, "{r:#}");
    assert_eq!(r["latency"]["count"], 20 * 200, "{r:#}");
    assert!(
        r["server_cpu_us_per_delivery"].as_f64().unwrap() > 0.0,
        "{r:#}"
    );
    assert!(r["server_rss_bytes"].as_u64().unwrap() > 0, "{r:#}");
    assert!(table.contains("per delivery"), "{table}");
}

#[test]
fn against_refuses_a_url_that_is_not_nats() {
    let out = Command::new(EXE)
        .args(["bench", "--against", "http://127.0.0.1:1", "--quiet"])
        .output()
        .expect("running bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nats://HOST:PORT"), "{err}");
}
