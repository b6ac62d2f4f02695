//! The policy benchmark scripts (`scripts/bench-ramp.py`,
//! `scripts/bench-interest.py`) end to end at a tiny scale, against this
//! build: they must run the real server and bench, and print their Markdown
//! tables (and the ramp its SVG plot) with no hand work. Figures are not
//! checked, only that every row the lead pastes is there.

use std::path::{Path, PathBuf};
use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_dyconit-chat");

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dyconit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn script(name: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let out = Command::new("python3")
        .arg(path)
        .args(["--bin", EXE])
        .args(args)
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_ramp_prints_a_row_per_step_and_arm_and_draws_the_plot() {
    let dir = out_dir("ramp");
    let out = script(
        "bench-ramp.py",
        &[
            "--out",
            dir.to_str().unwrap(),
            "--sustained",
            "20",
            "--clients",
            "8",
            "--threads",
            "3",
            "--factors",
            "0.5,2,1",
            "--step",
            "3",
            "--ramp-up",
            "0.5",
            "--reps",
            "1",
        ],
    );
    for step in [
        "| 1 | 0.5× = 10 msg/s",
        "| 2 | 2× = 40 msg/s",
        "| 3 | 1× = 20 msg/s",
    ] {
        for arm in ["off", "on"] {
            assert!(
                out.contains(&format!("{step} | {arm} |")),
                "{step} {arm}:\n{out}"
            );
        }
    }
    assert!(out.contains("| load policy on |"), "{out}");
    let svg = std::fs::read_to_string(dir.join("ramp.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2 + 2 + 2, "{svg}");
    // The saved runs summarise again without running anything.
    let again = script("bench-ramp.py", &["--summarize", dir.to_str().unwrap()]);
    assert_eq!(again, out);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_interest_comparison_prints_both_arms_and_the_ratios() {
    let dir = out_dir("interest");
    let out = script(
        "bench-interest.py",
        &[
            "--out",
            dir.to_str().unwrap(),
            "--reps",
            "1",
            "--clients",
            "10",
            "--threads",
            "5",
            "--rate",
            "20",
            "--duration",
            "2s",
            "--ramp-up",
            "300ms",
        ],
    );
    assert!(out.contains("| off | "), "{out}");
    assert!(out.contains("| on | "), "{out}");
    assert!(out.contains("| Updates/s ("), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("on-1.json")).unwrap()).unwrap();
    assert_eq!(report["config"]["warm_up"], true);
    assert!(
        report["config"]["server_args"]
            .to_string()
            .contains("--interest-policy")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
