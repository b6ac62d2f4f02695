//! `dyconit-chat serve` as a new user meets it: the real binary, its start-up
//! log and its errors.

use std::process::{Command, Output, Stdio};

const EXE: &str = env!("CARGO_BIN_EXE_dyconit-chat");

/// Both output streams, as a terminal shows them.
fn shown(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_bad_config_value_names_the_key_and_the_forms_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.toml");
    std::fs::write(&path, "staleness = \"fast\"\n").unwrap();
    let out = Command::new(EXE)
        .args(["serve", "--storage", "memory", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = shown(&out);
    assert!(text.contains("key \"staleness\""), "{text}");
    assert!(text.contains("\"300ms\""), "{text}");
    assert_eq!(text.matches("invalid duration").count(), 1, "{text}");
}

#[test]
fn a_port_in_use_is_reported_once_and_the_log_names_config_and_bounds() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.toml");
    std::fs::write(
        &path,
        "order = 7\n[threads.\"alerts\"]\nstaleness = \"50ms\"\n",
    )
    .unwrap();
    let out = Command::new(EXE)
        .args([
            "serve",
            "--storage",
            "memory",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg(format!("--listen={}", busy.local_addr().unwrap()))
        .arg("--config")
        .arg(&path)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = shown(&out);
    assert_eq!(
        text.matches("Address already in use").count(),
        1,
        "said more than once:\n{text}"
    );
    assert!(
        text.contains(&format!("config_file={}", path.display())),
        "{text}"
    );
    assert!(text.contains("default bounds in force"), "{text}");
    assert!(text.contains("order=7"), "{text}");
    assert!(
        text.contains("thread=\"alerts\"") || text.contains("thread=alerts"),
        "{text}"
    );
}
