//! The interest and size policies from flags and the `--config` file: the
//! plain switches give the documented defaults, a table sets its keys (and
//! turns the policy on unless `enabled = false`), bad values are refused
//! naming the table.

use dyconit_chat::config::ServeArgs;
use dyconit_chat::consistency::interest::InterestConfig;
use dyconit_chat::consistency::policy::SizeConfig;
use std::path::Path;
use std::time::Duration;

fn with_file(dir: &Path, name: &str, toml: &str) -> ServeArgs {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    ServeArgs {
        config: Some(path),
        ..Default::default()
    }
}

#[test]
fn switches_give_the_documented_defaults() {
    let c = ServeArgs::default().resolve().unwrap().config;
    assert_eq!((c.interest_policy, c.size_policy), (None, None));
    let args = ServeArgs {
        interest_policy: true,
        size_policy: true,
        ..Default::default()
    };
    let c = args.resolve().unwrap().config;
    assert_eq!(c.interest_policy, Some(InterestConfig::default()));
    let i = c.interest_policy.unwrap();
    assert_eq!(
        (i.window, i.recent, i.factor),
        (Duration::from_secs(60), 1, 10.0)
    );
    let s = c.size_policy.unwrap();
    assert_eq!((s.from, s.per_decade, s.max_factor), (10, 2.0, 8.0));
}

#[test]
fn tables_set_their_keys_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let args = with_file(
        dir.path(),
        "ok.toml",
        "[policy.interest]\nwindow = \"5m\"\nfactor = 4\n[policy.size]\nenabled = false\nfrom = 3\n",
    );
    let c = args.resolve().unwrap().config;
    let i = c.interest_policy.unwrap();
    assert_eq!(
        (i.window, i.recent, i.factor),
        (Duration::from_secs(300), 1, 4.0)
    );
    assert_eq!(c.size_policy, None);
    let args = ServeArgs {
        size_policy: true,
        ..with_file(
            dir.path(),
            "on.toml",
            "[policy.size]\nenabled = false\nmax_factor = 2\n",
        )
    };
    let s: SizeConfig = args.resolve().unwrap().config.size_policy.unwrap();
    assert_eq!(s.max_factor, 2.0);
    let e = with_file(dir.path(), "bad.toml", "[policy.interest]\nfactor = 0.5\n")
        .resolve()
        .unwrap_err();
    assert!(format!("{e:#}").contains("[policy.interest]"), "{e:#}");
    let e = with_file(
        dir.path(),
        "bad2.toml",
        "[policy.size]\nper_decade = 1000\n",
    )
    .resolve()
    .unwrap_err();
    assert!(format!("{e:#}").contains("[policy.size]"), "{e:#}");
}
