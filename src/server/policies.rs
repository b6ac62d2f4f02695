//! The policy task: once a second it measures the signals, steps every
//! policy that is on, and applies what they decide through the hub's one
//! place for bound changes ([`Hub::apply_policy`]).
//!
//! The load policy's pressure is the larger of two signals, each 1.0 where
//! the bounds are about to be broken:
//!
//! - **Flush lateness**: how long after the engine's earliest deadline the
//!   scheduler got to run. The engine flushes a safety margin before each
//!   deadline (an eighth of the staleness bound, at most 20 ms) precisely to
//!   absorb that delay, so the lateness measured in margins says how close
//!   deliveries are to breaking their bound, whatever the cause of the delay
//!   (CPU, lock contention, a slow disk behind the writer). It is the 90th
//!   percentile of a second's runs divided by the margin of the operator's
//!   default staleness (fixed while the policy widens the bounds, so
//!   widening does not change the yardstick).
//! - **Write age**: the share of its thread's staleness bound in force that
//!   a write had used when the server decided it (its age since the
//!   client's timestamp), the 90th percentile of a second's writes; at 1.0
//!   writes are refused `STALENESS`. Overload often shows here first: the
//!   writes wait in sockets and request queues before the server reads
//!   them, while the scheduler itself still runs on time (measured: at three
//!   times the sustained load of 1,000 clients, half the writes were refused
//!   as stale while the lateness stayed under the target). Measured against
//!   the staleness in force, it falls as the policy widens: the controller
//!   stops where writes use about `target` of their bound. A client whose
//!   clock runs behind looks old here as it does to the staleness check; it
//!   moves the 90th percentile only if it sends a tenth of the writes.
//!
//! Unlike the process's CPU share, neither depends on how many cores the
//! machine has or who else uses them.
//!
//! Its second input is the server's work: the process's CPU time over the
//! period (`/proc/self/stat`), in cores. The controller lowers the bounds
//! fast where the work shows that the load fell, and otherwise in probing
//! steps it undoes if they overload (see `consistency::policy`). Where
//! `/proc` cannot be read, it lowers by probing steps alone.
//!
//! Its third input is the writes decided per second, whatever the answer:
//! the offered load. A probe waits while it is as high as when the bounds
//! it would go down to ran late.

use super::hub::Hub;
use super::signals::{WRITE_AGE_UNIT, p90};
use crate::consistency::interest::InterestConfig;
use crate::consistency::policy::SizeConfig;
use crate::consistency::policy::{LoadConfig, LoadPolicy, Sample, Scale, Step};
use crate::consistency::settings::safety_margin;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the policies sample their signals and may step.
pub const PERIOD: Duration = Duration::from_secs(1);

/// How many of its recent decisions a policy keeps for the admin API.
pub const DECISIONS_KEPT: usize = 60;

/// The load policy's settings as the operator set them (off by default).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadSetting {
    /// Whether the policy runs.
    pub enabled: bool,
    pub config: LoadConfig,
}

/// One sample and what the load policy did with it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Decision {
    /// Microseconds since the epoch.
    pub at: i64,
    /// The larger of the two signals below.
    pub pressure: f64,
    /// The flush lateness, in safety margins.
    pub lateness: f64,
    /// The write age, in shares of the staleness bound.
    pub write_age: f64,
    /// `raise`, `lower`, `hold`, `at_ceiling` or `no_gain`.
    pub step: &'static str,
    /// The server's CPU use over the sample, in cores (absent where it
    /// cannot be measured).
    pub work: Option<f64>,
    /// Writes decided per second over the sample, whatever the answer
    /// (absent for the first sample).
    pub writes: Option<f64>,
    /// The scale after the step.
    pub scale: f64,
}

/// The policies' state, shared by the task and the admin API.
pub struct Policies {
    state: Mutex<State>,
}

/// Under `Policies::state`: short reads and writes only; the hub is never
/// called with this lock held (the task drops it first).
struct State {
    setting: LoadSetting,
    load: LoadPolicy,
    decisions: VecDeque<Decision>,
    /// The interest policy (`None`: off); the engine applies it.
    interest: Option<InterestConfig>,
    /// The size policy (`None`: off).
    size: Option<SizeConfig>,
    /// Its recent changes, oldest first.
    size_decisions: VecDeque<SizeDecision>,
    /// The previous sample: when, and the process's CPU seconds then.
    last: Option<(std::time::Instant, Option<f64>)>,
}

/// One thread whose bounds the size policy changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SizeDecision {
    /// Microseconds since the epoch.
    pub at: i64,
    pub thread: String,
    /// Its active readers then.
    pub readers: u64,
    /// The factor after the change (1 = the operator's bounds).
    pub factor: f64,
}

/// What the admin API shows of the size policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SizeView {
    pub enabled: bool,
    pub from: u64,
    pub per_decade: f64,
    pub max_factor: f64,
    /// The factor of each thread it widens now (at most 50, the widest).
    pub threads: std::collections::BTreeMap<String, f64>,
    /// Its last changes, newest first.
    pub decisions: Vec<SizeDecision>,
}

/// What the admin API shows of the interest policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InterestView {
    pub enabled: bool,
    #[serde(with = "crate::consistency::bounds::humantime_serde_compat")]
    pub window: Duration,
    pub recent: usize,
    pub factor: f64,
    /// Streaming clients now.
    pub streaming: usize,
    /// Of them, those taking part in at least one thread.
    pub taking_part: usize,
    /// (client, thread) pairs flushed at the thread's own bounds.
    pub pairs: usize,
}

/// What the admin API shows of the load policy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadView {
    pub enabled: bool,
    pub target: f64,
    #[serde(with = "crate::consistency::bounds::humantime_serde_compat")]
    pub max_staleness: Duration,
    pub max_numerical: u64,
    pub max_order: u64,
    /// The factor in force (1 = the operator's bounds).
    pub scale: f64,
    /// The newest decision first.
    pub decisions: Vec<Decision>,
}

impl Policies {
    pub fn new(setting: LoadSetting, hub: &Hub) -> Arc<Self> {
        let base = hub.bounds_control().base().default_bounds();
        Arc::new(Policies {
            state: Mutex::new(State {
                setting,
                load: LoadPolicy::new(setting.config, base),
                decisions: VecDeque::new(),
                interest: None,
                size: None,
                size_decisions: VecDeque::new(),
                last: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below leaves the state whole; a panic elsewhere
        // cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn load_view(&self) -> LoadView {
        let s = self.lock();
        LoadView {
            enabled: s.setting.enabled,
            target: s.setting.config.target,
            max_staleness: s.setting.config.max_staleness,
            max_numerical: s.setting.config.max_numerical,
            max_order: s.setting.config.max_order,
            scale: s.load.scale().staleness,
            decisions: s.decisions.iter().rev().copied().collect(),
        }
    }

    /// Turns the interest policy on (`Some`) or off: every client moves to
    /// the flush deadlines of its interest at once.
    pub fn set_interest(&self, config: Option<InterestConfig>, hub: &Hub, who: &str) {
        self.lock().interest = config;
        let now = hub.now();
        hub.reconfigure(|e| e.set_interest(config, now));
        let factor = config.map_or(1.0, |c| c.factor);
        let m = &hub.metrics().policy;
        m.scale.with_label_values(&["interest"]).set(factor);
        tracing::info!(who, enabled = config.is_some(), config = ?config, "interest policy set");
    }

    pub fn interest_view(&self, hub: &Hub) -> InterestView {
        let config = self.lock().interest;
        let summary = hub.inspect(|e| e.interest_summary());
        let shown = config.unwrap_or_default();
        InterestView {
            enabled: config.is_some(),
            window: shown.window,
            recent: shown.recent,
            factor: shown.factor,
            streaming: summary.streaming,
            taking_part: summary.taking_part,
            pairs: summary.pairs,
        }
    }

    /// Turns the size policy on (`Some`) or off (the operator's bounds
    /// back at once); it acts at the next sample.
    pub fn set_size(&self, config: Option<SizeConfig>, hub: &Hub, who: &str) {
        self.lock().size = config;
        tracing::info!(who, enabled = config.is_some(), config = ?config, "size policy set");
        if config.is_none() {
            hub.apply_thread_scale("size", Default::default());
            hub.metrics()
                .policy
                .scale
                .with_label_values(&["size"])
                .set(1.0);
        }
    }

    pub fn size_view(&self, hub: &Hub) -> SizeView {
        let (config, decisions) = {
            let s = self.lock();
            (s.size, s.size_decisions.iter().rev().cloned().collect())
        };
        let control = hub.bounds_control();
        let mut widest: Vec<(&String, &f64)> = control.thread_scale().iter().collect();
        widest.sort_by(|a, b| b.1.total_cmp(a.1));
        let shown = config.unwrap_or_default();
        SizeView {
            enabled: config.is_some(),
            from: shown.from,
            per_decade: shown.per_decade,
            max_factor: shown.max_factor,
            threads: widest
                .into_iter()
                .take(50)
                .map(|(t, f)| (t.clone(), *f))
                .collect(),
            decisions,
        }
    }

    /// One sampling period of the size policy: count each thread's active
    /// readers, and apply the factors that follow.
    fn sample_size(&self, hub: &Hub) {
        let (config, interest) = {
            let s = self.lock();
            (s.size, s.interest.unwrap_or_default())
        };
        let Some(config) = config else { return };
        let now = hub.now();
        let readers = hub.inspect(|e| e.readers(&interest, now));
        let factors = config.factors(readers.iter().map(|(t, &n)| (t.as_ref(), n as u64)));
        let widest = factors.values().copied().fold(1.0, f64::max);
        let m = &hub.metrics().policy;
        m.scale.with_label_values(&["size"]).set(widest);
        let records = hub.apply_thread_scale("size", factors.clone());
        if records.is_empty() {
            return;
        }
        let mut s = self.lock();
        for r in records {
            let super::hub::BoundsTarget::Thread { thread } = r.target else {
                continue;
            };
            let factor = factors.get(&thread).copied().unwrap_or(1.0);
            let raised = r
                .new
                .zip(r.old)
                .is_some_and(|(n, o)| n.staleness > o.staleness);
            let step = if raised { "raise" } else { "lower" };
            m.steps.with_label_values(&["size", step]).inc();
            let n = readers.get(thread.as_str()).copied().unwrap_or(0) as u64;
            s.size_decisions.push_back(SizeDecision {
                at: now.0,
                thread,
                readers: n,
                factor,
            });
            if s.size_decisions.len() > DECISIONS_KEPT {
                s.size_decisions.pop_front();
            }
        }
    }

    pub fn load_setting(&self) -> LoadSetting {
        self.lock().setting
    }

    /// Replaces the load policy's settings (validated by the caller). A
    /// changed configuration starts the controller afresh; turning the
    /// policy off gives the operator's bounds back at once.
    pub fn set_load(&self, setting: LoadSetting, hub: &Hub, who: &str) {
        {
            let mut s = self.lock();
            if s.setting.config != setting.config || !setting.enabled {
                let base = hub.bounds_control().base().default_bounds();
                s.load = LoadPolicy::new(setting.config, base);
            }
            s.setting = setting;
        }
        tracing::info!(who, enabled = setting.enabled, config = ?setting.config, "load policy set");
        self.apply(hub);
    }

    /// One sampling period: measure, step, apply.
    fn sample(&self, hub: &Hub) {
        self.sample_size(hub);
        if self.lock().interest.is_some() {
            let summary = hub.inspect(|e| e.interest_summary());
            let m = &hub.metrics().policy;
            m.interest_clients.set(summary.taking_part as i64);
            m.interest_pairs.set(summary.pairs as i64);
        }
        let base = hub.bounds_control().base().default_bounds();
        let margin = safety_margin(base.staleness).as_micros() as f64;
        let lateness = p90(hub.signals().lateness.take(), margin);
        let write_age = p90(hub.signals().write_age.take(), WRITE_AGE_UNIT);
        let writes = hub.signals().take_writes();
        let pressure = lateness.max(write_age);
        let m = &hub.metrics().policy;
        m.pressure.with_label_values(&["load"]).set(pressure);
        m.signal
            .with_label_values(&["flush_lateness"])
            .set(lateness);
        m.signal.with_label_values(&["write_age"]).set(write_age);
        let (step, at_ceiling) = {
            let mut s = self.lock();
            // Measured every period, so the first one after the policy is
            // turned on covers one period only.
            let (work, writes) = s.rates(writes);
            if !s.setting.enabled {
                return;
            }
            s.load.rebase(base);
            let step = s.load.observe(Sample {
                pressure,
                work,
                writes,
            });
            let decision = Decision {
                at: hub.now().0,
                pressure,
                lateness,
                write_age,
                work,
                writes,
                step: step_name(step),
                scale: s.load.scale().staleness,
            };
            s.decisions.push_back(decision);
            if s.decisions.len() > DECISIONS_KEPT {
                s.decisions.pop_front();
            }
            (step, s.load.limited())
        };
        m.at_ceiling
            .with_label_values(&["load"])
            .set(at_ceiling as i64);
        if matches!(step, Step::Raise | Step::Lower) {
            m.steps.with_label_values(&["load", step_name(step)]).inc();
            self.apply(hub);
        }
    }

    /// Hands the load policy's current scale to the hub.
    fn apply(&self, hub: &Hub) {
        let (scale, ceiling) = {
            let s = self.lock();
            let scale = if s.setting.enabled {
                s.load.scale()
            } else {
                Scale::ONE
            };
            (scale, s.setting.config.ceiling())
        };
        hub.metrics()
            .policy
            .scale
            .with_label_values(&["load"])
            .set(scale.staleness);
        hub.apply_policy("load", scale, ceiling);
    }
}

impl State {
    /// Since the previous call: the process's CPU use in cores (where
    /// `/proc` tells), and `writes` decided, per second.
    fn rates(&mut self, writes: u64) -> (Option<f64>, Option<f64>) {
        let now = std::time::Instant::now();
        let cpu = crate::sys::proc_stats(std::process::id()).map(|p| p.cpu_seconds);
        let Some((then, before)) = self.last.replace((now, cpu)) else {
            return (None, None);
        };
        let elapsed = now.duration_since(then).as_secs_f64();
        if elapsed <= 0.0 {
            return (None, None);
        }
        let work = cpu.zip(before).map(|(c, b)| (c - b).max(0.0) / elapsed);
        (work, Some(writes as f64 / elapsed))
    }
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Hold => "hold",
        Step::Raise => "raise",
        Step::Lower => "lower",
        Step::AtCeiling => "at_ceiling",
        Step::NoGain => "no_gain",
    }
}

/// Samples and steps the policies every [`PERIOD`] until `stop`.
pub async fn run(policies: Arc<Policies>, hub: Arc<Hub>, stop: CancellationToken) {
    policies.apply(&hub);
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => policies.sample(&hub),
            _ = stop.cancelled() => return,
        }
    }
}
