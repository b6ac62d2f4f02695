//! The bounds of a conit and the table that holds them: defaults plus
//! per-thread overrides. Every value is validated here, in one place, so the
//! config file, the command line and (later) the admin API share the ranges.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The three dyconit bounds of one conit (see DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounds {
    /// Longest time between a commit and its delivery to every active client;
    /// also the oldest a `SentMessage.timestamp` may be on arrival.
    #[serde(with = "humantime_serde_compat")]
    pub staleness: Duration,
    /// Most committed messages of the conit that some active client has not
    /// acknowledged; a write that finds this many is rejected.
    pub numerical: u64,
    /// Most commits a writer may not have seen (plus its own earlier messages
    /// not yet arrived) for its write to be accepted.
    pub order: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            staleness: Duration::from_millis(500),
            numerical: 256,
            order: 32,
        }
    }
}

/// Inclusive ranges every bound must fall in.
pub const MAX_STALENESS: Duration = Duration::from_secs(3600);
pub const NUMERICAL_RANGE: (u64, u64) = (1, 1_000_000);
pub const ORDER_RANGE: (u64, u64) = (0, 1_000_000);
/// Longest thread id accepted, in bytes (longer ones get `CLIENT_ERROR`).
pub const MAX_THREAD_ID_BYTES: usize = 128;

/// Why a bound value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("staleness {0:?} is above the maximum of 1h")]
    Staleness(Duration),
    #[error("numerical {0} is outside 1..=1000000")]
    Numerical(u64),
    #[error("order {0} is outside 0..=1000000")]
    Order(u64),
    #[error("thread id is longer than {MAX_THREAD_ID_BYTES} bytes")]
    ThreadId,
}

impl Bounds {
    /// Checks every value against its range.
    pub fn validate(&self) -> Result<(), BoundsError> {
        if self.staleness > MAX_STALENESS {
            return Err(BoundsError::Staleness(self.staleness));
        }
        if !(NUMERICAL_RANGE.0..=NUMERICAL_RANGE.1).contains(&self.numerical) {
            return Err(BoundsError::Numerical(self.numerical));
        }
        if !(ORDER_RANGE.0..=ORDER_RANGE.1).contains(&self.order) {
            return Err(BoundsError::Order(self.order));
        }
        Ok(())
    }

    /// Pending messages of one conit that make a client's queue flush now:
    /// half the numerical bound, at least one.
    pub fn flush_count(&self) -> u64 {
        (self.numerical / 2).max(1)
    }
}

/// A partial set of bounds: the fields given override the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundsOverride {
    #[serde(default, with = "humantime_serde_compat::option")]
    pub staleness: Option<Duration>,
    #[serde(default)]
    pub numerical: Option<u64>,
    #[serde(default)]
    pub order: Option<u64>,
}

impl BoundsOverride {
    /// The bounds that result from applying this override on `base`.
    pub fn apply(&self, base: Bounds) -> Bounds {
        Bounds {
            staleness: self.staleness.unwrap_or(base.staleness),
            numerical: self.numerical.unwrap_or(base.numerical),
            order: self.order.unwrap_or(base.order),
        }
    }
}

/// The default bounds and the per-thread overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoundsTable {
    /// Bounds of every conit without an override.
    default: Bounds,
    /// Overrides by thread id ("" is the main room); kept resolved so lookups
    /// on the hot path are one map access.
    threads: BTreeMap<String, (BoundsOverride, Bounds)>,
}

impl BoundsTable {
    pub fn new(default: Bounds) -> Result<Self, BoundsError> {
        default.validate()?;
        Ok(BoundsTable {
            default,
            threads: BTreeMap::new(),
        })
    }

    pub fn default_bounds(&self) -> Bounds {
        self.default
    }

    /// The bounds in force for a thread.
    pub fn for_thread(&self, thread: &str) -> Bounds {
        self.threads
            .get(thread)
            .map(|(_, b)| *b)
            .unwrap_or(self.default)
    }

    /// Replaces the defaults; overrides keep their own fields.
    pub fn set_default(&mut self, bounds: Bounds) -> Result<Bounds, BoundsError> {
        bounds.validate()?;
        for (o, _) in self.threads.values() {
            o.apply(bounds).validate()?;
        }
        let old = std::mem::replace(&mut self.default, bounds);
        for (o, resolved) in self.threads.values_mut() {
            *resolved = o.apply(bounds);
        }
        Ok(old)
    }

    /// Sets (or replaces) the override of one thread; returns the old bounds
    /// in force for it.
    pub fn set_thread(&mut self, thread: &str, o: BoundsOverride) -> Result<Bounds, BoundsError> {
        if thread.len() > MAX_THREAD_ID_BYTES {
            return Err(BoundsError::ThreadId);
        }
        let resolved = o.apply(self.default);
        resolved.validate()?;
        let old = self.for_thread(thread);
        self.threads.insert(thread.to_owned(), (o, resolved));
        Ok(old)
    }

    /// The metrics tier of a thread: `thread:<id>` if it has its own
    /// bounds, else `default`. Bounded by the number of overrides.
    pub fn tier(&self, thread: &str) -> String {
        if self.threads.contains_key(thread) {
            format!("thread:{thread}")
        } else {
            "default".to_owned()
        }
    }

    /// Removes a thread's override; returns it if there was one.
    pub fn remove_thread(&mut self, thread: &str) -> Option<BoundsOverride> {
        self.threads.remove(thread).map(|(o, _)| o)
    }

    /// The overrides, by thread id, with the bounds they resolve to.
    pub fn overrides(&self) -> impl Iterator<Item = (&str, &BoundsOverride, &Bounds)> {
        self.threads.iter().map(|(t, (o, b))| (t.as_str(), o, b))
    }
}

/// Durations as humantime strings ("300ms", "2s") in config files and JSON.
pub mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    fn parse(text: &str) -> Result<Duration, String> {
        crate::consistency::time::parse_duration(text)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|t| super::parse(&t).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
