//! A lock-free latency histogram: log-linear buckets (64 per power of two,
//! so a recorded value is known to within 1.6%), shared by every task of the
//! load generator through atomic counters.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values at or above 2^MAX_EXP are counted in the last bucket.
const MAX_EXP: u32 = 40;
const BUCKETS: usize = (2 * SUB + (MAX_EXP as u64 - SUB_BITS as u64 - 1) * SUB) as usize;

/// Counts of values (microseconds) by bucket.
pub struct Histogram {
    /// One counter per bucket.
    buckets: Box<[AtomicU64]>,
    /// Values recorded.
    count: AtomicU64,
    /// The largest value recorded, exactly.
    max: AtomicU64,
    /// Sum of values, for the mean.
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

fn index(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let v = v.min((1 << MAX_EXP) - 1);
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = exp - SUB_BITS;
    let mantissa = (v >> shift) - SUB; // 0..SUB
    (2 * SUB + (exp - SUB_BITS - 1) as u64 * SUB + mantissa) as usize
}

/// The highest value that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let exp = (i - 2 * SUB) / SUB + SUB_BITS as u64 + 1;
    let shift = exp - SUB_BITS as u64;
    let mantissa = (i - 2 * SUB) % SUB;
    ((SUB + mantissa + 1) << shift) - 1
}

impl Histogram {
    pub fn record(&self, v: u64) {
        self.buckets[index(v)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// Records `values` at once: one bucket increment per value, and one
    /// update of the totals (cheaper than [`Histogram::record`] per value
    /// when many tasks share the histogram).
    pub fn record_all(&self, values: impl IntoIterator<Item = u64>) {
        let (mut n, mut sum, mut max) = (0u64, 0u64, 0u64);
        for v in values {
            self.buckets[index(v)].fetch_add(1, Ordering::Relaxed);
            n += 1;
            sum = sum.wrapping_add(v);
            max = max.max(v);
        }
        if n > 0 {
            self.count.fetch_add(n, Ordering::Relaxed);
            self.sum.fetch_add(sum, Ordering::Relaxed);
            self.max.fetch_max(max, Ordering::Relaxed);
        }
    }

    /// One histogram holding the values of all of `parts`.
    pub fn merged(parts: &[Histogram]) -> Histogram {
        let h = Histogram::default();
        for p in parts {
            for (to, from) in h.buckets.iter().zip(p.buckets.iter()) {
                to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            h.count.fetch_add(p.count(), Ordering::Relaxed);
            h.sum
                .fetch_add(p.sum.load(Ordering::Relaxed), Ordering::Relaxed);
            h.max.fetch_max(p.max(), Ordering::Relaxed);
        }
        h
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    pub fn mean(&self) -> f64 {
        let n = self.count();
        if n == 0 {
            0.0
        } else {
            self.sum.load(Ordering::Relaxed) as f64 / n as f64
        }
    }

    /// The value at quantile `q` (0..=1): the upper edge of its bucket, so it
    /// errs high by at most 1.6%, never low; capped at the exact maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return upper(i).min(self.max());
            }
        }
        self.max()
    }
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Median (each quantile errs high by at most 1.6%, never low).
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The largest value, exact.
    pub max_ms: f64,
    /// The mean.
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.count(),
            p50_ms: ms(h.quantile(0.50)),
            p90_ms: ms(h.quantile(0.90)),
            p99_ms: ms(h.quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev = None;
        for v in 0..200_000u64 {
            let i = index(v);
            if let Some(p) = prev {
                assert!(i == p || i == p + 1, "gap at {v}");
            }
            prev = Some(i);
        }
        for v in (0..200_000u64).chain([1 << 30, (1 << 40) - 1]) {
            let i = index(v);
            assert!(upper(i) >= v, "{v} above its bucket's upper {}", upper(i));
            assert!(
                upper(i) as f64 <= v as f64 * 1.016 + 1.0,
                "{v}: {}",
                upper(i)
            );
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn batches_and_merges_equal_single_records() {
        let (a, b, whole) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        a.record_all([5, 500, 5000]);
        b.record_all([50_000, 7]);
        for v in [5, 500, 5000, 50_000, 7] {
            whole.record(v);
        }
        let m = Histogram::merged(&[a, b]);
        assert_eq!(m.count(), 5);
        assert_eq!(m.max(), 50_000);
        assert_eq!(m.mean(), whole.mean());
        for q in [0.1, 0.5, 0.9, 1.0] {
            assert_eq!(m.quantile(q), whole.quantile(q));
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), 1000);
        let p50 = h.quantile(0.5);
        assert!((500..=508).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 1000);
    }
}
