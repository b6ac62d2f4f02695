//! The bounds in force over the run, from the recording's header (the
//! server's `/api/v1/bounds` at the start) and footer (the same at the end,
//! with the server's change log).
//!
//! A change takes effect at its logged time, give or take the time between
//! the server reading its clock and taking its lock; so every question is
//! asked about a window and answered with the loosest bounds in force
//! anywhere in it (a check never fails because of the checker's
//! uncertainty about when a bound changed).

use serde_json::Value;
use std::collections::HashMap;

/// How far around a logged change its effect may be, µs.
const CHANGE_MARGIN: i64 = 50_000;

/// One thread's bounds; staleness in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub staleness: i64,
    pub numerical: u64,
    pub order: u64,
}

impl Limits {
    const UNBOUNDED: Limits = Limits {
        staleness: i64::MAX / 4,
        numerical: u64::MAX,
        order: u64::MAX,
    };

    fn loosest(self, o: Limits) -> Limits {
        Limits {
            staleness: self.staleness.max(o.staleness),
            numerical: self.numerical.max(o.numerical),
            order: self.order.max(o.order),
        }
    }
}

fn limits(v: &Value) -> Option<Limits> {
    Some(Limits {
        staleness: (v.get("staleness_ms")?.as_f64()? * 1000.0).round() as i64,
        numerical: v.get("numerical")?.as_u64()?,
        order: v.get("order")?.as_u64()?,
    })
}

/// The bounds in force from `from` on.
#[derive(Debug, Clone)]
struct State {
    from: i64,
    default: Limits,
    threads: HashMap<String, Limits>,
}

/// The bounds over time.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Ascending by `from`; empty if the bounds are unknown.
    states: Vec<State>,
    /// Before this time the change log may have lost changes (it keeps the
    /// last 100): bounds there are taken as unbounded.
    known_from: i64,
    /// Why some checks could not be made, for the report.
    pub notes: Vec<String>,
}

impl Timeline {
    /// From the header and footer metadata (`bounds` objects as
    /// `GET /api/v1/bounds` returns them).
    pub fn new(start: Option<&Value>, end: Option<&Value>) -> Timeline {
        let mut t = Timeline {
            states: Vec::new(),
            known_from: i64::MIN,
            notes: Vec::new(),
        };
        let Some(first) = start.and_then(|s| initial(s.get("bounds")?, s.get("at")?.as_i64()?))
        else {
            t.notes.push(
                "the server's bounds are not in the recording: the staleness, order and numerical checks were skipped"
                    .into(),
            );
            return t;
        };
        let start_at = first.from;
        t.states.push(first);
        let changes = end
            .and_then(|e| e.get("bounds")?.get("changes")?.as_array().cloned())
            .unwrap_or_default();
        if end.is_none() {
            t.notes.push(
                "the recording has no footer: bound changes during the run are unknown".into(),
            );
        }
        let mut applied = 0;
        for c in &changes {
            let Some(at) = c.get("at").and_then(Value::as_i64) else {
                continue;
            };
            if at < start_at {
                continue;
            }
            let mut next = t.states.last().expect("one state").clone();
            next.from = at;
            apply(&mut next, c);
            t.states.push(next);
            applied += 1;
        }
        // The log keeps the last 100 changes: if it is full and all of them
        // are from the run, older ones of the run may be gone.
        if applied == changes.len() && changes.len() >= 100 {
            t.known_from = t.states[1].from;
            t.notes.push(format!(
                "the server's change log was full: bounds before the oldest logged change ({} s into the run) are unknown and not checked",
                (t.known_from - start_at) / 1_000_000
            ));
        }
        t
    }

    /// Whether the bounds are known at all.
    pub fn known(&self) -> bool {
        !self.states.is_empty()
    }

    /// The loosest bounds of `thread` in force anywhere in `[t0, t1]`.
    pub fn loosest(&self, thread: &str, t0: i64, t1: i64) -> Limits {
        let (t0, t1) = (t0 - CHANGE_MARGIN, t1 + CHANGE_MARGIN);
        if self.states.is_empty() || t0 < self.known_from {
            return Limits::UNBOUNDED;
        }
        let mut out: Option<Limits> = None;
        for (i, s) in self.states.iter().enumerate() {
            let until = self.states.get(i + 1).map_or(i64::MAX, |n| n.from);
            let first = i == 0;
            if (first || s.from <= t1) && until >= t0 {
                let l = s.threads.get(thread).copied().unwrap_or(s.default);
                out = Some(out.map_or(l, |o| o.loosest(l)));
            }
        }
        out.unwrap_or(Limits::UNBOUNDED)
    }
}

/// The state at the start: defaults and per-thread effective bounds.
fn initial(b: &Value, at: i64) -> Option<State> {
    let default = limits(b.get("default")?)?;
    let mut threads = HashMap::new();
    for t in b.get("threads")?.as_array()? {
        let name = t.get("thread")?.as_str()?.to_owned();
        threads.insert(name, limits(t.get("effective")?)?);
    }
    Some(State {
        from: at,
        default,
        threads,
    })
}

/// Applies one logged change. A thread's new bounds are taken as its own
/// in full (the log holds the effective bounds, not which fields the
/// override set), so a later change of the defaults is not passed on to it.
fn apply(s: &mut State, c: &Value) {
    let new = c.get("new").and_then(limits);
    match c.get("scope").and_then(Value::as_str) {
        Some("default") => {
            if let Some(n) = new {
                s.default = n;
            }
        }
        Some("thread") => {
            let Some(thread) = c.get("thread").and_then(Value::as_str) else {
                return;
            };
            match new {
                Some(n) => {
                    s.threads.insert(thread.to_owned(), n);
                }
                None => {
                    s.threads.remove(thread);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b(ms: f64, num: u64, ord: u64) -> Value {
        json!({"staleness_ms": ms, "numerical": num, "order": ord})
    }

    #[test]
    fn changes_apply_from_their_time_and_windows_take_the_loosest() {
        let start = json!({"at": 1_000_000, "bounds": {"default": b(500.0, 256, 32), "threads": [
            {"thread": "alerts", "effective": b(50.0, 256, 0)}]}});
        let end = json!({"bounds": {"changes": [
            {"at": 2_000_000, "scope": "default", "old": b(500.0, 256, 32), "new": b(100.0, 10, 4)},
            {"at": 3_000_000, "scope": "thread", "thread": "alerts", "old": b(50.0, 256, 0), "new": null},
        ]}});
        let t = Timeline::new(Some(&start), Some(&end));
        assert!(t.known());
        assert_eq!(t.loosest("x", 1_500_000, 1_500_000).order, 32);
        assert_eq!(t.loosest("x", 2_500_000, 2_500_000).order, 4);
        assert_eq!(t.loosest("x", 1_500_000, 2_500_000).order, 32);
        assert_eq!(t.loosest("alerts", 2_500_000, 2_500_000).order, 0);
        assert_eq!(t.loosest("alerts", 3_500_000, 3_500_000).staleness, 100_000);
        // Within the margin of a change: the looser of the two.
        assert_eq!(t.loosest("x", 2_010_000, 2_010_000).order, 32);
        assert!(!Timeline::new(None, None).known());
    }
}
