//! Policies: bounds that move by themselves, within operator-set limits.
//!
//! Pure, like the rest of the core: a policy is fed measured signals and the
//! time, and answers with a new scale for the bounds; [`effective`] turns
//! the operator's bounds and that scale into the bounds in force. Applying
//! them (logging, counting, re-arming deadlines) is the server's one place
//! for bound changes, the same as for an operator's change.
//!
//! **The load policy** holds a pressure target by scaling staleness,
//! numerical and order bounds together: under overload, bigger batches cost
//! less per message (the per-Update cost is spread over more messages, and
//! fewer acknowledgements come back), so widening the bounds turns overload
//! into a little more delay instead of a flood of `STALENESS` rejections and
//! late deliveries. (Why the order bound moves too: see [`scaled`].)
//!
//! The controller takes three signals each sample ([`Sample`]): the
//! *pressure* (how close deliveries and writes are to breaking their
//! bounds, see the server's policy task) decides whether to move, the
//! server's *work* (CPU cores used) bounds how far down, and the *writes*
//! offered per second say whether a probe down is worth making.
//! It is multiplicative both ways, with a dead band of `BAND` around the
//! target. Work `w(s)` is non-increasing in the scale `s` and falls at most
//! as fast as the scale grows (`w(s) / w(k s) <= k`: doubling the batches
//! can at best halve the work, when all of it is per Update). Lateness does
//! not behave like that: it is a queue's signal, near zero below the
//! machine's capacity and steep above it, so a step sized by lateness alone
//! (divide by `target / p` when `p` is near zero) jumps from a wide scale
//! straight back into overload; measured at 3x overload, the staleness in
//! force swung between 1.5 s and 5 s from one sample to the next. So:
//! - above the band (`p > target * (1 + BAND)`) the scale is multiplied by
//!   `k = p / target` (at most [`MAX_RAISE`]), and the work of that sample is
//!   remembered as the overload work `W`: a load at which deliveries ran
//!   late;
//! - below the band (`p < target * (1 - BAND)`) the scale is divided by
//!   `target / p`, but by no more than `(1 - BAND) W / w` (so the work
//!   predicted after the step stays under `(1 - BAND) W`, below the work at
//!   which lateness appeared) or [`PROBE_STEP`], whichever is larger. The
//!   work rule makes the way down fast when the load has clearly fallen;
//!   the probe finds out whether it has when the prediction, an upper bound
//!   that assumes all work is per Update, is too cautious.
//! - A step down with a sample above the band among the [`PROBE_WINDOW`]
//!   samples after it settles is undone (back to the factor before it,
//!   known calm), and no probe follows for
//!   [`FIRST_HOLD`] calm samples, doubling after each such probe in the
//!   episode up to [`MAX_HOLD`]; meanwhile it lowers only where the work
//!   rule allows more than a probe (the load clearly fell).
//! - A probe is only worth making if the load may have fallen. The third
//!   signal, the writes offered per second, says whether it has: every
//!   settled sample above the band records the scale and the write rate
//!   at which deliveries ran late, and no probe goes down to a scale at or
//!   below a recorded one while the write rate is still within `BAND` of
//!   that record's (the work rule may still lower). Measured on the overload
//!   ramp, probes made during a steady 2x or 3x step overloaded at once,
//!   and their late deliveries were most of each run's. Capacity can grow
//!   under a steady load as well (another process stops), so after
//!   [`MAX_HOLD`] calm samples the probe is made all the same.
//! - A raise must pay: the sample that judges it (the next one above the
//!   band after it settled) must show the work cut by at least
//!   [`MIN_GAIN`]. If not, the cost is per message, not per Update, and
//!   wider bounds would only add delay and bigger bursts of Updates: raising
//!   waits [`MAX_HOLD`] samples above the band ([`Step::NoGain`]), then tries
//!   once more. A pressure measured from queued writes grows with any queue
//!   the bounds cannot empty; without this rule it drove the scale to the
//!   ceiling at 3x overload (measured: staleness 5 s, 686 of 1,000 clients
//!   dropped for acknowledging late).
//!
//! So under a steady load the scale rises until the pressure is in the band,
//! at the ceiling or where widening stops paying, then falls until the band
//! or the operator's bounds or the first probe that overloads, returns one
//! step, and stays there but for a probe (one step of [`PROBE_STEP`] and
//! back) every 30 s at most: a swing of at most [`PROBE_STEP`], never the
//! lateness rule's 4x. Each step waits [`LoadConfig::settle`] samples, so the
//! effect of one step is measured before the next. When the load is gone the
//! work falls with it and each step divides by up to 4: from 50x (100 ms
//! raised to 5 s) back to the operator's bounds in three steps, 6 s at the
//! default sampling.

use super::bounds::{
    Bounds, BoundsOverride, BoundsTable, MAX_STALENESS, NUMERICAL_RANGE, ORDER_RANGE,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// Half the width of the dead band around the target, as a fraction of it.
pub const BAND: f64 = 0.2;
/// The most one step divides the scale by: a pressure sample far off (a
/// burst, a pause) moves the bounds at most this much at once.
pub const MAX_STEP: f64 = 4.0;
/// The most one raise multiplies the scale by. Smaller than [`MAX_STEP`]
/// because the pressure that sizes a raise comes from queues (late
/// scheduler runs, writes waiting to be read), which stay long for a while
/// after the bounds widen: sized by them, raises overshot. Measured in the
/// overload ramp (1,000 clients, 100 ms floor, 500 ms ceiling): at the step
/// to 3x load, 3 runs of 3 raised 2.1-2.7 times at once, to 422-500 ms,
/// where whole flush rounds of Updates then ran up to seconds late (about a
/// million late messages a run); runs that climbed more slowly held at
/// 215-295 ms. Each raise is judged (it must pay) before the next.
pub const MAX_RAISE: f64 = 1.5;

/// How far policies may scale the bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// Multiplies every staleness bound the policy may move (at least 1).
    pub staleness: f64,
    /// Multiplies every numerical bound the policy may move (at least 1).
    pub numerical: f64,
}

impl Scale {
    /// No change: the operator's bounds.
    pub const ONE: Scale = Scale {
        staleness: 1.0,
        numerical: 1.0,
    };
}

/// The highest values a policy may set; an operator's own bound above them
/// is kept as it is (a policy only ever widens the operator's bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub staleness: Duration,
    pub numerical: u64,
    pub order: u64,
}

/// Fields an operator set explicitly at runtime: policies leave them alone
/// until the operator clears them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    /// Fields of the defaults.
    pub default: Pinned,
    /// Fields of each thread's own bounds.
    pub threads: BTreeMap<String, Pinned>,
}

/// Which fields of one set of bounds are pinned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pinned {
    pub staleness: bool,
    pub numerical: bool,
    pub order: bool,
}

impl Pinned {
    /// The fields an operator's change sets.
    pub fn of(change: &BoundsOverride) -> Pinned {
        Pinned {
            staleness: change.staleness.is_some(),
            numerical: change.numerical.is_some(),
            order: change.order.is_some(),
        }
    }

    /// Both sets of pins together.
    pub fn union(self, other: Pinned) -> Pinned {
        Pinned {
            staleness: self.staleness || other.staleness,
            numerical: self.numerical || other.numerical,
            order: self.order || other.order,
        }
    }
}

/// `base` scaled by `scale`, except the pinned fields; never above
/// `ceiling` nor below `base`.
///
/// The order bound follows the staleness scale. A writer sees the other
/// writers' commits only when its next Update comes, so on a thread taking
/// `r` msg/s it writes with about `r * staleness` commits it has not seen:
/// widening the staleness alone turns `STALENESS` rejections into
/// `ORDER_ERROR`s (measured: at 3x overload with staleness raised to 5 s and
/// the order bound left at 32, 37% of writes were refused `ORDER_ERROR`).
/// Scaling both keeps the order a writer may miss in proportion to the
/// batches it is sent. An order bound of 0 (writers must have seen
/// everything) stays 0.
pub fn scaled(base: Bounds, scale: Scale, ceiling: Ceiling, pinned: Pinned) -> Bounds {
    let staleness = if pinned.staleness {
        base.staleness
    } else {
        let want = base.staleness.mul_f64(scale.staleness.max(1.0));
        want.min(ceiling.staleness.min(MAX_STALENESS))
            .max(base.staleness)
    };
    let numerical = if pinned.numerical {
        base.numerical
    } else {
        let want = (base.numerical as f64 * scale.numerical.max(1.0)).round() as u64;
        want.min(ceiling.numerical.min(NUMERICAL_RANGE.1))
            .max(base.numerical)
    };
    let order = if pinned.order {
        base.order
    } else {
        let want = (base.order as f64 * scale.staleness.max(1.0)).round() as u64;
        want.min(ceiling.order.min(ORDER_RANGE.1)).max(base.order)
    };
    Bounds {
        staleness,
        numerical,
        order,
    }
}

/// The bounds in force: the operator's table `base` with every default and
/// every field of a thread's own bounds scaled (see [`scaled`]).
pub fn effective(base: &BoundsTable, pins: &Pins, scale: Scale, ceiling: Ceiling) -> BoundsTable {
    let default = scaled(base.default_bounds(), scale, ceiling, pins.default);
    let mut table = BoundsTable::new(default).expect("scaled bounds stay in range");
    for (thread, o, resolved) in base.overrides() {
        let pinned = pins.threads.get(thread).copied().unwrap_or_default();
        let b = scaled(*resolved, scale, ceiling, pinned);
        // Only the fields the thread sets itself: the rest follow the
        // (scaled) defaults.
        let own = BoundsOverride {
            staleness: o.staleness.map(|_| b.staleness),
            numerical: o.numerical.map(|_| b.numerical),
            order: o.order.map(|_| b.order),
        };
        table
            .set_thread(thread, own)
            .expect("scaled bounds stay in range");
    }
    table
}

/// The bounds as the operator set them, what policies make of them, and
/// the bounds in force that follow. The server keeps one of these in its
/// one place for bound changes: an operator's change edits [`base`] (and pins
/// the fields it sets), a policy's change edits the scale, and either way
/// the engine gets [`BoundsControl::effective`].
///
/// [`base`]: BoundsControl::base
#[derive(Debug, Clone)]
pub struct BoundsControl {
    base: BoundsTable,
    pins: Pins,
    scale: Scale,
    ceiling: Ceiling,
    /// The size policy's factor per thread (only those above 1), applied
    /// on top of `scale`.
    thread_scale: BTreeMap<String, f64>,
}

impl BoundsControl {
    /// The operator's bounds, with no policy applied.
    pub fn new(base: BoundsTable) -> Self {
        BoundsControl {
            base,
            pins: Pins::default(),
            scale: Scale::ONE,
            ceiling: LoadConfig::default().ceiling(),
            thread_scale: BTreeMap::new(),
        }
    }

    pub fn base(&self) -> &BoundsTable {
        &self.base
    }

    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    pub fn scale(&self) -> Scale {
        self.scale
    }

    /// The size policy's factor of each thread it widens.
    pub fn thread_scale(&self) -> &BTreeMap<String, f64> {
        &self.thread_scale
    }

    /// The bounds in force.
    pub fn effective(&self) -> BoundsTable {
        if self.scale == Scale::ONE && self.thread_scale.is_empty() {
            return self.base.clone();
        }
        let mut table = effective(&self.base, &self.pins, self.scale, self.ceiling);
        for (thread, &f) in &self.thread_scale {
            let own = self.base.overrides().find(|(t, _, _)| *t == thread);
            // A field the thread sets itself follows its own pins; one it
            // inherits, the defaults' pins.
            let pinned = match own {
                Some(_) => self.pins.threads.get(thread).copied().unwrap_or_default(),
                None => self.pins.default,
            };
            let scale = Scale {
                staleness: self.scale.staleness * f,
                numerical: self.scale.numerical * f,
            };
            let b = scaled(self.base.for_thread(thread), scale, self.ceiling, pinned);
            let change = BoundsOverride {
                staleness: Some(b.staleness),
                numerical: Some(b.numerical),
                order: Some(b.order),
            };
            table
                .set_thread(thread, change)
                .expect("scaled bounds stay in range");
        }
        table
    }

    /// The size policy's new factors (threads at 1 left out). Returns the
    /// threads whose bounds in force changed.
    pub fn set_thread_scale(&mut self, scales: BTreeMap<String, f64>) -> Vec<String> {
        let before = self.effective();
        let mut touched: Vec<String> = self.thread_scale.keys().cloned().collect();
        touched.extend(scales.keys().cloned());
        touched.sort_unstable();
        touched.dedup();
        self.thread_scale = scales;
        let after = self.effective();
        touched
            .into_iter()
            .filter(|t| before.for_thread(t) != after.for_thread(t))
            .collect()
    }

    /// An operator's new table; `pinned` names the fields the change set
    /// (`None`: the defaults; `Some(thread)`: that thread's), which policies
    /// leave alone from now on. A thread whose own bounds were removed loses
    /// its pins.
    pub fn set_base(&mut self, base: BoundsTable, target: Option<&str>, pinned: Pinned) {
        match target {
            None => self.pins.default = self.pins.default.union(pinned),
            Some(t) => {
                let p = self.pins.threads.entry(t.to_owned()).or_default();
                *p = p.union(pinned);
            }
        }
        self.pins
            .threads
            .retain(|t, _| base.overrides().any(|(o, _, _)| o == t));
        self.base = base;
    }

    /// Policies may move every field again.
    pub fn clear_pins(&mut self) {
        self.pins = Pins::default();
    }

    /// A policy's new scale and ceiling. Returns whether the bounds in force
    /// changed.
    pub fn set_scale(&mut self, scale: Scale, ceiling: Ceiling) -> bool {
        let before = self.effective();
        self.scale = scale;
        self.ceiling = ceiling;
        self.effective() != before
    }
}

/// Settings of the load policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadConfig {
    /// The pressure to hold (see the server's signals: 1.0 means the flush
    /// scheduler runs as late as the safety margin it has, or writes arrive
    /// as old as their staleness bound).
    pub target: f64,
    /// Highest staleness the policy sets.
    pub max_staleness: Duration,
    /// Highest numerical bound the policy sets.
    pub max_numerical: u64,
    /// Highest order bound the policy sets.
    pub max_order: u64,
    /// Samples to wait after a step before the next one.
    pub settle: u32,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            target: 0.5,
            max_staleness: Duration::from_secs(5),
            max_numerical: 4096,
            max_order: 4096,
            settle: 2,
        }
    }
}

/// Why a load policy setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("target {0} is outside 0.05..=10")]
    Target(f64),
    #[error("max staleness {0:?} is outside 1ms..=1h")]
    MaxStaleness(Duration),
    #[error("max numerical {0} is outside 1..=1000000")]
    MaxNumerical(u64),
    #[error("max order {0} is outside 0..=1000000")]
    MaxOrder(u64),
    #[error("settle {0} is outside 1..=60 samples")]
    Settle(u32),
}

impl LoadConfig {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(0.05..=10.0).contains(&self.target) {
            return Err(PolicyError::Target(self.target));
        }
        if !(Duration::from_millis(1)..=MAX_STALENESS).contains(&self.max_staleness) {
            return Err(PolicyError::MaxStaleness(self.max_staleness));
        }
        if !(NUMERICAL_RANGE.0..=NUMERICAL_RANGE.1).contains(&self.max_numerical) {
            return Err(PolicyError::MaxNumerical(self.max_numerical));
        }
        if !(ORDER_RANGE.0..=ORDER_RANGE.1).contains(&self.max_order) {
            return Err(PolicyError::MaxOrder(self.max_order));
        }
        if !(1..=60).contains(&self.settle) {
            return Err(PolicyError::Settle(self.settle));
        }
        Ok(())
    }

    pub fn ceiling(&self) -> Ceiling {
        Ceiling {
            staleness: self.max_staleness,
            numerical: self.max_numerical,
            order: self.max_order,
        }
    }
}

/// Settings of the size policy: a thread's bounds grow with its active
/// readers, by `per_decade` for every tenfold above `from`, at most
/// `max_factor` times the operator's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeConfig {
    /// Readers at (and below) which a thread keeps the operator's bounds.
    pub from: u64,
    /// The factor per tenfold more readers than `from`.
    pub per_decade: f64,
    /// The largest factor.
    pub max_factor: f64,
}

impl Default for SizeConfig {
    fn default() -> Self {
        SizeConfig {
            from: 10,
            per_decade: 2.0,
            max_factor: 8.0,
        }
    }
}

/// Why a size policy setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizeError {
    #[error("size from {0} is outside 1..=1000000 readers")]
    From(u64),
    #[error("size per_decade {0} is outside 1..=100")]
    PerDecade(f64),
    #[error("size max_factor {0} is outside 1..=1000")]
    MaxFactor(f64),
}

impl SizeConfig {
    pub fn validate(&self) -> Result<(), SizeError> {
        if !(1..=1_000_000).contains(&self.from) {
            return Err(SizeError::From(self.from));
        }
        if !(1.0..=100.0).contains(&self.per_decade) {
            return Err(SizeError::PerDecade(self.per_decade));
        }
        if !(1.0..=1000.0).contains(&self.max_factor) {
            return Err(SizeError::MaxFactor(self.max_factor));
        }
        Ok(())
    }

    /// The factor for a thread with `readers` active readers: 1 up to
    /// `from`, then `per_decade ^ log10(readers / from)`, at most
    /// `max_factor`. Non-decreasing in `readers`.
    pub fn factor(&self, readers: u64) -> f64 {
        if readers <= self.from {
            return 1.0;
        }
        let decades = (readers as f64 / self.from as f64).log10();
        // In quarter steps: a reader joining or leaving does not change the
        // bounds (and log a change) every second.
        let f = (self.per_decade.powf(decades) * 4.0).floor() / 4.0;
        f.clamp(1.0, self.max_factor)
    }

    /// The factors of the threads above 1, from each thread's readers.
    pub fn factors<'a>(
        &self,
        readers: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> BTreeMap<String, f64> {
        readers
            .into_iter()
            .map(|(t, n)| (t, self.factor(n)))
            .filter(|&(_, f)| f > 1.0)
            .map(|(t, f)| (t.to_owned(), f))
            .collect()
    }
}

/// What one step of the load controller did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Pressure in the band, or waiting for the last step to settle.
    Hold,
    /// Pressure above the band: bounds widened.
    Raise,
    /// Pressure below the band: bounds narrowed back.
    Lower,
    /// Pressure above the band, but the scale is at its ceiling already.
    AtCeiling,
    /// Pressure above the band, but the last raise did not pay: it cut the
    /// server's work by less than [`MIN_GAIN`], so the cost is per message
    /// and wider batches would only add delay. Raising waits [`MAX_HOLD`]
    /// samples above the band, or until the pressure falls.
    NoGain,
}

/// The least share of the server's work a raise must save for the next
/// raise to follow it.
pub const MIN_GAIN: f64 = 0.05;

/// The step down a lowering may take beyond what the remembered overload
/// work allows: the probe that finds out whether the load has fallen.
pub const PROBE_STEP: f64 = 1.5;
/// Samples, once a step down has settled, over which it is judged: one
/// above the band among them undoes it. Judged by its first sample alone,
/// a step down to the operator's bounds whose first sample was calm ended
/// the overload episode, and the overload the next sample showed began a
/// new one, with no hold: measured in one overload-ramp run, the bounds
/// went between 100 and 150 ms every 2-5 s for a minute, with a burst of
/// late deliveries after each step down.
pub const PROBE_WINDOW: u32 = 5;
/// Calm samples to wait before probing again after a probe overloaded;
/// doubled after each such probe in one episode, up to [`MAX_HOLD`].
pub const FIRST_HOLD: u32 = 10;
/// The longest wait between probes: also the longest the bounds can stay
/// wide after the load fell, if the work rule cannot tell that it did.
pub const MAX_HOLD: u32 = 30;

/// The most overloads remembered per episode: one per scale the episode
/// went through, so a handful.
const MAX_OVERLOADS: usize = 16;

/// One period's measurements, as the load policy takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// How close deliveries and writes are to breaking their bounds.
    pub pressure: f64,
    /// The server's work over the period in cores, where measured.
    pub work: Option<f64>,
    /// Writes offered per second over the period (every write decided,
    /// whatever the answer), where counted.
    pub writes: Option<f64>,
}

/// The load controller: one scale for every bound it may move.
#[derive(Debug, Clone)]
pub struct LoadPolicy {
    config: LoadConfig,
    /// The current factor (1 = the operator's bounds).
    factor: f64,
    /// The largest factor worth having: the one that takes the smallest
    /// default bound to the ceiling.
    max_factor: f64,
    /// Samples since the last step.
    since_step: u32,
    /// The work (server cores) of the latest sample above the band in this
    /// episode (since the bounds last left the operator's).
    overload_work: Option<f64>,
    /// The factor before the last step, if that step lowered the bounds and
    /// its [`PROBE_WINDOW`] has not passed: known calm, to go back to if the
    /// lowering overloaded.
    before_lowering: Option<f64>,
    /// Samples left in the window judging the last step down.
    probe_left: u32,
    /// Calm samples left before the next probe.
    hold: u32,
    /// The work of the sample that last raised the scale by the pressure,
    /// until a later sample above the band judges whether the raise paid.
    raised_at_work: Option<f64>,
    /// Samples above the band left before raising again after a raise that
    /// did not pay.
    no_gain: u32,
    /// Whether the pressure is above the band but the bounds may not, or
    /// should not, go wider: at the ceiling, or since a raise that did not
    /// pay and until one that does. Kept through a retried raise and the
    /// samples it settles for, so an alert on it does not flicker.
    limited: bool,
    /// The wait after the next probe that overloads.
    backoff: u32,
    /// `(factor, writes per second)` at which this episode's settled
    /// samples above the band were taken, the lowest rate per factor: a
    /// probe down to such a factor waits while the writes are as many.
    overloads: Vec<(f64, f64)>,
    /// Calm samples in a row in which a probe waited for the writes to
    /// fall.
    steady: u32,
}

impl LoadPolicy {
    /// A controller for bounds whose default is `base`.
    pub fn new(config: LoadConfig, base: Bounds) -> Self {
        let mut p = LoadPolicy {
            config,
            factor: 1.0,
            max_factor: 1.0,
            since_step: config.settle,
            overload_work: None,
            before_lowering: None,
            probe_left: 0,
            hold: 0,
            backoff: FIRST_HOLD,
            raised_at_work: None,
            no_gain: 0,
            limited: false,
            overloads: Vec::new(),
            steady: 0,
        };
        p.rebase(base);
        p
    }

    pub fn config(&self) -> &LoadConfig {
        &self.config
    }

    /// The operator's default bounds changed: the factor's range follows.
    pub fn rebase(&mut self, base: Bounds) {
        let s = self.config.max_staleness.as_secs_f64() / base.staleness.as_secs_f64().max(1e-6);
        let n = self.config.max_numerical as f64 / base.numerical.max(1) as f64;
        let o = match base.order {
            0 => 1.0,
            order => self.config.max_order as f64 / order as f64,
        };
        self.max_factor = s.max(n).max(o).max(1.0);
        self.factor = self.factor.min(self.max_factor);
    }

    /// The scale in force.
    pub fn scale(&self) -> Scale {
        Scale {
            staleness: self.factor,
            numerical: self.factor,
        }
    }

    /// Takes one sample (one per sampling period) and moves the scale if
    /// the pressure is outside the band around the target.
    pub fn observe(&mut self, sample: Sample) -> Step {
        self.since_step = self.since_step.saturating_add(1);
        let valid = |v: Option<f64>| v.filter(|v| v.is_finite() && *v >= 0.0);
        let (pressure, work, writes) = (sample.pressure, valid(sample.work), valid(sample.writes));
        let target = self.config.target;
        if !pressure.is_finite() {
            return Step::Hold;
        }
        let over = pressure > target * (1.0 + BAND);
        if over && work.is_some() {
            self.overload_work = work;
        }
        if self.since_step < self.config.settle {
            return Step::Hold;
        }
        // Once settled, the sample is the current factor's, not the queues
        // the previous one left.
        if over && let Some(w) = writes {
            self.note_overload(w);
        }
        let probe = self.judge_lowering(over);
        if !over {
            // Out of overload: the last raise paid enough.
            self.raised_at_work = None;
            self.no_gain = 0;
            self.limited = false;
        }
        if !over && self.factor == 1.0 && self.before_lowering.is_none() {
            self.end_episode();
        }
        let step = if over {
            if self.factor >= self.max_factor {
                self.limited = true;
                return Step::AtCeiling;
            }
            if probe.is_none() && self.stalled(work) {
                return Step::NoGain;
            }
            self.factor = match probe {
                Some(calm) => self.back_off(calm),
                None => {
                    self.raised_at_work = work;
                    self.factor * (pressure / target).min(MAX_RAISE)
                }
            }
            .min(self.max_factor);
            Step::Raise
        } else if pressure < target * (1.0 - BAND) && self.factor > 1.0 {
            let Some(k) = self.lowering(pressure, work, writes) else {
                return Step::Hold;
            };
            self.before_lowering = Some(self.factor);
            self.probe_left = PROBE_WINDOW;
            self.factor = (self.factor / k).max(1.0);
            Step::Lower
        } else {
            return Step::Hold;
        };
        self.since_step = 0;
        self.steady = 0;
        step
    }

    /// Records that the current factor overloaded at `writes` a second.
    fn note_overload(&mut self, writes: f64) {
        let f = self.factor;
        match self.overloads.iter_mut().find(|(g, _)| *g == f) {
            Some((_, w)) => *w = w.min(writes),
            None => {
                if self.overloads.len() == MAX_OVERLOADS {
                    self.overloads.remove(0);
                }
                self.overloads.push((f, writes));
            }
        }
    }

    /// Whether a probe down to `factor` would meet a load it overloaded at
    /// before: a factor at least that wide overloaded at a write rate the
    /// current one (`writes`) is still within `BAND` of.
    fn load_unchanged(&self, factor: f64, writes: Option<f64>) -> bool {
        let Some(now) = writes else { return false };
        (self.overloads.iter()).any(|&(f, w)| f >= factor && now >= w * (1.0 - BAND))
    }

    /// The calm factor to go back to if this sample (`over` the band or
    /// not) finds the last step down overloaded, while its window lasts.
    fn judge_lowering(&mut self, over: bool) -> Option<f64> {
        let calm = self.before_lowering?;
        self.probe_left = self.probe_left.saturating_sub(1);
        if over || self.probe_left == 0 {
            self.before_lowering = None;
        }
        over.then_some(calm)
    }

    /// A lowering overloaded: back to the calm factor `calm`, and no probe
    /// for a while (longer after each such probe).
    fn back_off(&mut self, calm: f64) -> f64 {
        self.hold = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_HOLD);
        calm
    }

    /// Whether raising waits: the last raise cut the work by less than
    /// [`MIN_GAIN`] (judged once, by this sample), or such a raise is still
    /// being waited out.
    fn stalled(&mut self, work: Option<f64>) -> bool {
        if self.no_gain > 0 {
            self.no_gain -= 1;
            return true;
        }
        let Some(before) = self.raised_at_work.take() else {
            // Nothing to judge (the first raise, or one retried after the
            // hold): raise.
            return false;
        };
        let paid = work.is_none_or(|now| now <= before * (1.0 - MIN_GAIN));
        if !paid {
            self.no_gain = MAX_HOLD;
        }
        self.limited = !paid;
        !paid
    }

    /// Whether the pressure is above the band while the bounds may not, or
    /// should not, go wider (at the ceiling, or widening saves no work):
    /// only capacity helps then.
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// Calm at the operator's bounds: the next overload is a new episode.
    fn end_episode(&mut self) {
        self.overload_work = None;
        self.overloads.clear();
        self.steady = 0;
        self.hold = 0;
        self.backoff = FIRST_HOLD;
    }

    /// How far to divide the scale now, if at all: by the lateness ratio,
    /// but no further than keeps the predicted work under `1 - BAND` of
    /// the overload work (work grows at most `k` times when the batches
    /// shrink `k` times), except for a probe of [`PROBE_STEP`] when none is
    /// on hold and the writes may have fallen.
    fn lowering(&mut self, pressure: f64, work: Option<f64>, writes: Option<f64>) -> Option<f64> {
        let target = self.config.target;
        let by_lateness = (target / pressure.max(f64::MIN_POSITIVE)).min(MAX_STEP);
        let by_work = match (self.overload_work, work) {
            (Some(over), Some(w)) => Some(over * (1.0 - BAND) / w.max(f64::MIN_POSITIVE)),
            _ => None,
        };
        let k = by_lateness.min(by_work.unwrap_or(PROBE_STEP).max(PROBE_STEP));
        let waiting =
            self.steady < MAX_HOLD && self.load_unchanged((self.factor / k).max(1.0), writes);
        if waiting {
            self.steady += 1;
        }
        if self.hold > 0 || waiting {
            self.hold = self.hold.saturating_sub(1);
            // Only a clear fall of the load: a step the work rule allows
            // beyond a probe's.
            let fallen = by_work.filter(|&k| k >= PROBE_STEP)?;
            return Some(fallen.min(by_lateness));
        }
        Some(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn scaling_keeps_pins_order_and_the_ceiling() {
        let base = Bounds {
            staleness: 500 * MS,
            numerical: 256,
            order: 32,
        };
        let ceiling = Ceiling {
            staleness: 2000 * MS,
            numerical: 1000,
            order: 100,
        };
        let s = Scale {
            staleness: 10.0,
            numerical: 10.0,
        };
        let b = scaled(base, s, ceiling, Pinned::default());
        assert_eq!((b.staleness, b.numerical, b.order), (2000 * MS, 1000, 100));
        let pinned = Pinned {
            staleness: true,
            numerical: false,
            order: true,
        };
        let b = scaled(base, s, ceiling, pinned);
        assert_eq!((b.staleness, b.order), (500 * MS, 32));
        // An operator's bound above the ceiling is not lowered.
        let wide = Bounds {
            staleness: 9000 * MS,
            ..base
        };
        assert_eq!(
            scaled(wide, s, ceiling, Pinned::default()).staleness,
            9000 * MS
        );
    }

    #[test]
    fn a_thread_keeps_following_the_defaults_where_it_sets_nothing() {
        let mut base = BoundsTable::new(Bounds::default()).unwrap();
        let own = BoundsOverride {
            staleness: Some(100 * MS),
            ..Default::default()
        };
        base.set_thread("fast", own).unwrap();
        let s = Scale {
            staleness: 2.0,
            numerical: 2.0,
        };
        let t = effective(&base, &Pins::default(), s, LoadConfig::default().ceiling());
        assert_eq!(t.for_thread("fast").staleness, 200 * MS);
        assert_eq!(t.for_thread("fast").numerical, 512);
        assert_eq!(t.for_thread("other").staleness, 1000 * MS);
    }

    /// A default-configured controller (target 0.5, settle 2) at a 100 ms
    /// staleness.
    fn controller() -> LoadPolicy {
        let base = Bounds {
            staleness: 100 * MS,
            ..Bounds::default()
        };
        LoadPolicy::new(LoadConfig::default(), base)
    }

    /// Steps a controller at
    /// `pressure` and `work` for `n` samples; returns the steps taken.
    fn feed(p: &mut LoadPolicy, pressure: f64, work: f64, n: usize) -> Vec<Step> {
        (0..n)
            .map(|_| {
                p.observe(Sample {
                    pressure,
                    work: Some(work),
                    writes: None,
                })
            })
            .filter(|s| *s != Step::Hold)
            .collect()
    }

    #[test]
    fn a_raise_that_saves_no_work_is_not_followed_by_another() {
        let mut p = controller();
        // Pressure twice the target: the first sample raises, by
        // MAX_RAISE.
        assert_eq!(feed(&mut p, 1.0, 1.0, 1), [Step::Raise]);
        assert_eq!(p.scale().staleness, 1.5);
        // The work stayed at 1 core: the raise did not pay, so raising
        // waits MAX_HOLD samples above the band.
        let steps = feed(&mut p, 1.0, 1.0, 2 + MAX_HOLD as usize);
        assert_eq!(steps.len(), MAX_HOLD as usize + 1, "{steps:?}");
        assert!(steps.iter().all(|s| *s == Step::NoGain), "{steps:?}");
        assert_eq!(p.scale().staleness, 1.5);
        assert!(p.limited());
        // Then it tries again, still limited until the raise is judged;
        // this one saves a tenth of the work.
        assert_eq!(feed(&mut p, 1.0, 1.0, 1), [Step::Raise]);
        assert_eq!(p.scale().staleness, 2.25);
        assert!(p.limited());
        assert_eq!(feed(&mut p, 1.0, 0.9, 1), [], "settling");
        assert!(p.limited());
        assert_eq!(feed(&mut p, 1.0, 0.9, 1), [Step::Raise]);
        assert_eq!(p.scale().staleness, 3.375);
        assert!(!p.limited());
    }

    #[test]
    fn a_step_down_that_overloads_after_a_calm_sample_is_undone() {
        let mut p = controller();
        assert_eq!(feed(&mut p, 1.0, 1.0, 1), [Step::Raise]);
        assert_eq!(feed(&mut p, 0.1, 1.0, 2), [Step::Lower]);
        assert_eq!(p.scale().staleness, 1.0);
        // At the operator's bounds, the first judged sample is calm...
        assert_eq!(feed(&mut p, 0.1, 1.0, 2), []);
        // ...and the next one is over: the step down is undone, and the
        // next probe waits.
        assert_eq!(feed(&mut p, 1.0, 1.0, 1), [Step::Raise]);
        assert_eq!(p.scale().staleness, 1.5);
        // (One sample settles the raise; then the hold's samples.)
        assert_eq!(feed(&mut p, 0.1, 1.0, 1 + FIRST_HOLD as usize), []);
        assert_eq!(feed(&mut p, 0.1, 1.0, 1), [Step::Lower]);
        // Calm through the whole window: the next overload is a new
        // episode, raised by the pressure.
        assert_eq!(feed(&mut p, 0.1, 1.0, 2 + PROBE_WINDOW as usize), []);
        assert_eq!(feed(&mut p, 1.0, 1.0, 1), [Step::Raise]);
        assert_eq!(feed(&mut p, 0.1, 1.0, 2), [Step::Lower], "no hold");
    }

    fn sample(pressure: f64, writes: f64) -> Sample {
        Sample {
            pressure,
            work: Some(1.0),
            writes: Some(writes),
        }
    }

    /// Samples until the first step that is not a hold: which, and after
    /// how many samples (at most `n`).
    fn until_step(p: &mut LoadPolicy, s: Sample, n: usize) -> Option<(Step, usize)> {
        (1..=n).find_map(|i| Some((p.observe(s), i)).filter(|(step, _)| *step != Step::Hold))
    }

    #[test]
    fn a_probe_waits_while_the_writes_have_not_fallen() {
        let mut p = controller();
        assert_eq!(p.observe(sample(1.0, 1000.0)), Step::Raise);
        // Calm at the same load: one sample settles, then MAX_HOLD wait,
        // then it probes all the same (the machine may have got faster).
        let probe = until_step(&mut p, sample(0.1, 900.0), 100);
        assert_eq!(probe, Some((Step::Lower, 2 + MAX_HOLD as usize)));
        // Fallen by more than the band: it probes once settled.
        let mut p = controller();
        assert_eq!(p.observe(sample(1.0, 1000.0)), Step::Raise);
        let probe = until_step(&mut p, sample(0.1, 700.0), 100);
        assert_eq!(probe, Some((Step::Lower, 2)));
    }

    #[test]
    fn a_probe_waits_only_for_the_load_that_overloaded_where_it_goes() {
        let mut p = controller();
        // The operator's bounds overloaded at 1,000 writes a second, 1.5x
        // at 2,000.
        assert_eq!(p.observe(sample(1.0, 1000.0)), Step::Raise);
        let paid = Sample {
            work: Some(0.5),
            ..sample(1.0, 2000.0)
        };
        assert_eq!(until_step(&mut p, paid, 3), Some((Step::Raise, 2)));
        assert_eq!(p.scale().staleness, 2.25);
        // Back to 1,000: 1.5x held that before, so down to it at once...
        assert_eq!(
            until_step(&mut p, sample(0.1, 1000.0), 3),
            Some((Step::Lower, 2))
        );
        assert_eq!(p.scale().staleness, 1.5);
        // ...but not to the operator's, which overloaded at this load.
        let next = until_step(&mut p, sample(0.1, 1000.0), 100);
        assert_eq!(next, Some((Step::Lower, 2 + MAX_HOLD as usize)));
    }

    #[test]
    fn leaving_overload_forgets_a_raise_that_did_not_pay() {
        let mut p = controller();
        assert_eq!(feed(&mut p, 1.0, 1.0, 3), [Step::Raise, Step::NoGain]);
        assert!(p.limited());
        // In the band for a sample: a new overload raises at once.
        assert_eq!(feed(&mut p, 0.5, 1.0, 1), []);
        assert!(!p.limited());
        assert_eq!(feed(&mut p, 1.0, 1.0, 1), [Step::Raise]);
        assert_eq!(p.scale().staleness, 2.25);
    }
}
