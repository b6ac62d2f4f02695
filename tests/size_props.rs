//! Property tests of the size policy's curve and of how its per-thread
//! factors combine with the operator's bounds: non-decreasing in readers,
//! never above its maximum, a thread's bounds never below the operator's
//! nor above the ceiling, and pinned fields left alone.

use dyconit_chat::consistency::policy::{BoundsControl, Pinned, SizeConfig};
use dyconit_chat::consistency::{Bounds, BoundsOverride, BoundsTable};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn size() -> impl Strategy<Value = SizeConfig> {
    (1u64..1000, 1.0f64..20.0, 1.0f64..50.0).prop_map(|(from, per_decade, max_factor)| SizeConfig {
        from,
        per_decade,
        max_factor,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn the_factor_grows_with_readers_and_stays_in_range(
        cfg in size(),
        a in 0u64..1_000_000,
        b in 0u64..1_000_000,
    ) {
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(cfg.factor(lo) <= cfg.factor(hi));
        for n in [lo, hi] {
            let f = cfg.factor(n);
            prop_assert!((1.0..=cfg.max_factor).contains(&f));
            if n <= cfg.from {
                prop_assert_eq!(f, 1.0);
            }
        }
    }

    #[test]
    fn a_widened_thread_stays_between_the_operators_bounds_and_the_ceiling(
        cfg in size(),
        readers in 0u64..100_000,
        staleness_ms in 1u64..5000,
        own in prop::option::of(1u64..5000),
        pin: bool,
    ) {
        let mut base = BoundsTable::new(Bounds {
            staleness: Duration::from_millis(staleness_ms),
            numerical: 256,
            order: 32,
        }).unwrap();
        if let Some(ms) = own {
            let o = BoundsOverride { staleness: Some(Duration::from_millis(ms)), ..Default::default() };
            base.set_thread("big", o).unwrap();
        }
        let mut control = BoundsControl::new(base.clone());
        if pin {
            let pinned = Pinned { staleness: true, numerical: false, order: false };
            let target = own.map(|_| "big");
            control.set_base(base.clone(), target, pinned);
        }
        let scales = cfg.factors([("big", readers), ("small", 0)]);
        control.set_thread_scale(scales);
        let eff = control.effective();
        let (b, e) = (base.for_thread("big"), eff.for_thread("big"));
        prop_assert!(e.staleness >= b.staleness && e.numerical >= b.numerical);
        prop_assert!(e.staleness <= b.staleness.max(Duration::from_secs(5)));
        // The order bound follows the staleness (a writer on a widened
        // thread misses more commits between Updates), under the ceiling.
        prop_assert!(e.order >= b.order && e.order <= b.order.max(4096));
        if pin {
            prop_assert_eq!(e.staleness, b.staleness);
        }
        prop_assert_eq!(eff.for_thread("small"), base.for_thread("small"));
        // Back to no factor: the operator's bounds exactly.
        control.set_thread_scale(BTreeMap::new());
        prop_assert_eq!(control.effective().for_thread("big"), b);
    }
}

#[test]
fn the_default_curve_doubles_per_tenfold_from_ten_readers_up_to_eight() {
    let c = SizeConfig::default();
    assert_eq!(c.factor(10), 1.0);
    assert_eq!(c.factor(100), 2.0);
    assert_eq!(c.factor(1000), 4.0);
    assert_eq!(c.factor(10_000), 8.0);
    assert_eq!(c.factor(10_000_000), 8.0);
}
