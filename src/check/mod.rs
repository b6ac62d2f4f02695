//! `dyconit-chat check FILE…`: verifies a recorded run (`bench --record`)
//! against the promises of the protocol, from the recording alone.
//!
//! Two streaming passes over the files: [`catalog`] collects every message
//! and rebuilds the one commit order; [`verify`] replays every client's
//! Updates and acknowledgements against it. Memory is per message and per
//! client (a bit per client and message for exactly-once), not per event.
//!
//! - [`input`]: several recordings merged into one event stream.
//! - [`bounds`]: the bounds in force over time, from the server's change log.
//! - [`violation`]: broken promises and their counterexamples.

pub mod bounds;
pub mod catalog;
pub mod input;
pub mod verify;
pub mod violation;

pub use verify::Outage;

use anyhow::Context;
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 50ms, 1s)"))
}

/// `FROM/TO`, two RFC 3339 times: a stretch of time in µs since the epoch.
fn parse_outage(s: &str) -> Result<verify::Outage, String> {
    let example = "(example: 2026-12-04T14:41:49.8Z/2026-12-04T14:41:56Z)";
    let (from, to) = s
        .split_once('/')
        .ok_or_else(|| format!("expected FROM/TO {example}"))?;
    let micros = |t: &str| {
        let at =
            humantime::parse_rfc3339_weak(t.trim()).map_err(|e| format!("{t}: {e} {example}"))?;
        let since = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?;
        Ok::<i64, String>(since.as_micros() as i64)
    };
    let (from, to) = (micros(from)?, micros(to)?);
    if to < from {
        return Err(format!("the outage ends before it begins {example}"));
    }
    Ok(verify::Outage { from, to })
}

const AFTER_HELP: &str = "\
What is checked (DESIGN.md sections 2-4):
  - every message committed after a client's stream began reached it exactly
    once, if the client stayed active (its stream was not lost) and the
    message was due before the client's end or a later one reached it;
  - one order: every client received the messages in the one commit order
    (commit times, ties broken by the first delivery seen);
  - each writer's SendMessages stream committed in its order;
  - commit -> receive within the thread's staleness + --allowance (for a
    commit stored during an --outage: its end -> receive);
  - every Update received before the previous one's expirationTime +
    --allowance (and the run did not end past it);
  - no write admitted with an order error above its thread's order bound,
    or while its numerical error was at the numerical bound;
  - a retry is committed once (an OK carries the first commit time), a
    rejected message is never delivered (INTERNAL_ERROR is no rejection: the
    outcome is not known, so such a message may be delivered, once), and a
    delivery carries its OK's commit time.
A client that failed over is two clients: the one on the lost node lost
its stream; the one on the next node starts with the history it joined
with, and a message it sends again unchanged (its answer was lost with the
node) is a retry of the same message, from then on its own.
The bounds in force come from the recording (the server's bounds at the
start and its change log at the end). What the checker cannot see is taken
in the server's favour: acknowledgements count from when they were sent,
commits and clients outside the recording are not counted. The order and
numerical errors are therefore lower bounds of the server's, and every
failure reported is a real one.

Exit status: 0 all promises held, 1 a promise was broken (the first
examples of each kind are printed with the events involved), 2 the
recording could not be read.

Example:
  dyconit-chat bench --spawn-server --clients 30 --rate 300 --record run.rec
  dyconit-chat check run.rec";

/// Flags of `dyconit-chat check`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct CheckArgs {
    /// Recordings of one run (`bench --record`); several files (several
    /// bench processes) are merged by time
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Time allowed on top of the staleness bound for a delivery, and after
    /// an expirationTime for the next Update: network, scheduling and
    /// receive delay between the server and the client
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DUR")]
    pub allowance: Duration,
    /// The server is a cluster (`serve --storage nats`): a client's writes
    /// to different threads may commit in another order than they arrived,
    /// so a write's earlier-numbered writes that committed after it count
    /// as not yet arrived only in its own thread
    #[arg(long)]
    pub cluster: bool,
    /// A time the server could not make commits visible (in a cluster: the
    /// stream's NATS leader was lost, until a new one was elected), as
    /// FROM/TO in RFC 3339 (UTC). A commit stored within it may reach
    /// clients only after it: its staleness counts from TO. The server
    /// counts such deliveries as late all the same. May be repeated
    #[arg(long, value_parser = parse_outage, value_name = "FROM/TO")]
    pub outage: Vec<verify::Outage>,
}

/// What `check` concluded.
#[derive(Debug)]
pub struct Checked {
    /// Broken promises by kind ([`violation::Violation::kind`]); empty if
    /// every promise held.
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    /// The report: figures, and the counterexamples of a failure.
    pub report: String,
}

impl Checked {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn meta<'a>(metas: &'a [Value], kind: &str) -> Option<&'a Value> {
    metas
        .iter()
        .find(|m| m.get("kind").and_then(Value::as_str) == Some(kind))
}

/// Checks the recordings. `Err` if they could not be read.
pub fn run(args: &CheckArgs) -> anyhow::Result<Checked> {
    let started = Instant::now();
    let read_err = |(p, e): (PathBuf, _)| anyhow::anyhow!("{}: {e}", p.display());
    let cat = catalog::build(&args.files).map_err(read_err)?;
    let timeline = bounds::Timeline::new(meta(&cat.metas, "start"), meta(&cat.metas, "end"));
    let allowance = args.allowance.as_micros() as i64;
    let mut v = verify::Verifier::new(&cat, &timeline, allowance);
    v.cluster = args.cluster;
    v.outages = args.outage.clone();
    let mut last_time = 0;
    input::stream(&args.files, |pos, _, e| {
        if let input::Ev::Update { time, .. }
        | input::Ev::End { time, .. }
        | input::Ev::Status { time, .. } = &e
        {
            last_time = last_time.max(*time);
        }
        v.event(pos, e);
    })
    .map_err(read_err)?;
    v.finish(last_time);
    let mut found = std::mem::take(&mut v.found);
    for x in &cat.violations {
        found.add(x.clone());
    }
    first_deliveries(&args.files, &cat, &mut found.examples).map_err(read_err)?;
    let report = report(&cat, &timeline, &found, args, started.elapsed());
    Ok(Checked {
        failures: found.counts,
        report,
    })
}

/// Completes the duplicate-delivery counterexamples with the Update that
/// first brought the message (one more pass, only when there are some).
fn first_deliveries(
    files: &[PathBuf],
    cat: &catalog::Catalog,
    examples: &mut [violation::Violation],
) -> Result<(), (PathBuf, crate::bench::record::ReadError)> {
    use violation::{UpdateRef, Violation};
    let wanted: Vec<(u32, u64)> = (examples.iter())
        .filter_map(|v| match v {
            Violation::Duplicate { msg, again_in, .. } => Some((again_in.client, msg.id)),
            _ => None,
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut updates = vec![0u64; cat.clients.len()];
    let mut firsts: std::collections::HashMap<(u32, u64), UpdateRef> = Default::default();
    input::stream(files, |_, _, e| {
        if let input::Ev::Update {
            client,
            time,
            current_time,
            expiration,
            messages,
        } = e
        {
            updates[client as usize] += 1;
            for d in &messages {
                let Some(id) = d.id else { continue };
                if wanted.contains(&(client, id)) {
                    firsts.entry((client, id)).or_insert(UpdateRef {
                        client,
                        index: updates[client as usize],
                        received: time,
                        current_time,
                        expiration,
                    });
                }
            }
        }
    })?;
    for v in examples.iter_mut() {
        if let Violation::Duplicate {
            msg,
            first_in,
            again_in,
        } = v
        {
            *first_in = firsts.get(&(again_in.client, msg.id)).cloned();
        }
    }
    Ok(())
}

/// Runs `check` for the command line: exit status 0, 1 or 2.
pub fn main(args: CheckArgs) -> std::process::ExitCode {
    match run(&args).context("check") {
        Ok(c) => {
            print!("{}", c.report);
            if c.passed() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn ms(us: i64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// The figures of the run, one line per promise.
fn figures(
    cat: &catalog::Catalog,
    found: &verify::Findings,
    args: &CheckArgs,
    took: Duration,
) -> String {
    use std::fmt::Write;
    let f = &found.figures;
    let mut s = String::new();
    let committed = cat.order.len();
    let ok = cat.msgs.iter().filter(|m| m.ok()).count();
    let lost = (cat.clients.iter())
        .filter(|c| matches!(c.end, Some((crate::bench::record::EndKind::Lost, _, _))))
        .count();
    let _ = writeln!(
        s,
        "check: {} file(s), {} events, {} clients ({} lost their stream, {} continued on another node), {} messages sent, {} OK, {} committed; {} deliveries ({} of messages from outside the recording); {:.1} s",
        args.files.len(),
        cat.events,
        cat.clients.len(),
        lost,
        cat.failovers,
        cat.msgs.len(),
        ok,
        committed,
        f.deliveries,
        f.foreign,
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "  exactly once, one order:  {} of {} active clients complete",
        f.clients_complete,
        cat.clients.len() - lost
    );
    let _ = writeln!(
        s,
        "  commit -> receive:        p50 {}, p99 {}, max {}; most over staleness {} (allowance {})",
        ms(f.latency.quantile(0.5) as i64),
        ms(f.latency.quantile(0.99) as i64),
        ms(f.latency.max() as i64),
        ms(f.max_over_staleness),
        ms(args.allowance.as_micros() as i64)
    );
    if !args.outage.is_empty() {
        let _ = writeln!(
            s,
            "  outages:                  {} given; {} deliveries late from their commit time, in time from the end of the outage their commit fell in",
            args.outage.len(),
            f.late_for_outage
        );
    }
    let _ = writeln!(
        s,
        "  Update built -> received: p50 {}, p99 {}, max {} (the network and receive delay); latest Update {} relative to the previous expirationTime",
        ms(f.transit.quantile(0.5) as i64),
        ms(f.transit.quantile(0.99) as i64),
        ms(f.transit.max() as i64),
        ms(f.max_after_expiration)
    );
    let _ = writeln!(
        s,
        "  order bound:              {} writes checked, order error at least {} at most",
        f.order_checked, f.max_order_error
    );
    let _ = writeln!(
        s,
        "  numerical bound:          {} writes checked, numerical error at least {} at most",
        f.numerical_checked, f.max_numerical_error
    );
    let _ = writeln!(
        s,
        "  (order and numerical errors are lower bounds of the server's: acknowledgements count from when they were sent; commits and clients outside the recording are not counted)"
    );
    s
}

fn report(
    cat: &catalog::Catalog,
    timeline: &bounds::Timeline,
    found: &verify::Findings,
    args: &CheckArgs,
    took: Duration,
) -> String {
    use std::fmt::Write;
    let mut s = figures(cat, found, args, took);
    for n in &timeline.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    let fmt = violation::Fmt {
        t0: cat.t0,
        clients: cat.names.clients.clone(),
        files: args.files.len(),
    };
    if found.counts.is_empty() {
        let _ = writeln!(s, "PASSED: every promise held");
        return s;
    }
    for (kind, n) in &found.counts {
        let _ = writeln!(s, "FAILED: {kind}: {n}");
    }
    let _ = writeln!(s, "\nCounterexamples (times relative to the first event):");
    for v in &found.examples {
        let _ = write!(s, "{}", fmt.render(v));
    }
    s
}
