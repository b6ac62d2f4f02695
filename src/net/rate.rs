//! Connects per peer address: a token bucket per address, so one address
//! cannot fill the server with registrations faster than they are reaped.

use crate::consistency::Micros;
use crate::consistency::limits::TokenBucket;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

/// Default Connects per second per address. Generous: many users may share
/// one address (an office or a carrier's NAT), and a Connect that is not
/// followed by `ReceiveUpdates` is reaped after the ack timeout anyway, so
/// one address holds at most about rate × ack timeout waiting clients.
pub const DEFAULT_CONNECTS_PER_SECOND: u32 = 100;

/// How many seconds of the rate one address may use at once.
pub const CONNECT_BURST_SECONDS: f64 = 5.0;

/// Most addresses tracked at once. An address whose bucket has refilled is
/// the same as an untracked one and is pruned; if more addresses than this
/// are still refilling (a flood from many addresses), new ones pass
/// untracked: the connection cap still holds, and memory stays bounded
/// (about 64 bytes an address, 6 MB at this size).
const MAX_TRACKED: usize = 100_000;

/// The per-address Connect buckets.
pub struct ConnectLimiter {
    per_second: u32,
    /// Lock rule: held only to look up and update one bucket (or to prune);
    /// never across an await or another lock.
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

/// A refused Connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyConnects {
    pub per_second: u32,
    /// When the next Connect from the address would pass.
    pub wait_micros: i64,
}

impl std::fmt::Display for TooManyConnects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Connect rate limit: at most {} Connects per second from one address (bursts of {}); \
             try again in {} ms",
            self.per_second,
            burst(self.per_second) as u64,
            (self.wait_micros + 999) / 1000
        )
    }
}

fn burst(per_second: u32) -> f64 {
    (per_second as f64 * CONNECT_BURST_SECONDS).max(1.0)
}

/// The key of an address: IPv4 as is (also when mapped into IPv6), IPv6 by
/// its /64 prefix, since one host usually holds a whole /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl ConnectLimiter {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: u32) -> Option<ConnectLimiter> {
        (per_second > 0).then(|| ConnectLimiter {
            per_second,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a Connect token for `ip` at `now`.
    pub fn check(&self, ip: IpAddr, now: Micros) -> Result<(), TooManyConnects> {
        let (rate, burst) = (self.per_second as f64, burst(self.per_second));
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(ip);
        if !map.contains_key(&k) && map.len() >= MAX_TRACKED {
            map.retain(|_, b| !b.is_full(rate, burst, now));
            if map.len() >= MAX_TRACKED {
                return Ok(());
            }
        }
        map.entry(k)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(rate, burst, now)
            .map_err(|wait_micros| TooManyConnects {
                per_second: self.per_second,
                wait_micros,
            })
    }

    /// Addresses tracked now (for tests).
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_its_burst_then_its_rate_and_others_are_separate() {
        let l = ConnectLimiter::new(2).unwrap();
        let t0 = Micros(1_000_000_000);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            assert!(l.check(a, t0).is_ok());
        }
        let refused = l.check(a, t0).unwrap_err();
        assert_eq!(refused.wait_micros, 500_000);
        assert!(
            refused
                .to_string()
                .contains("at most 2 Connects per second")
        );
        assert!(l.check("10.0.0.2".parse().unwrap(), t0).is_ok());
        // The same IPv4 address mapped into IPv6 is the same address.
        assert!(l.check("::ffff:10.0.0.1".parse().unwrap(), t0).is_err());
        assert!(l.check(a, Micros(t0.0 + 500_000)).is_ok());
        // One /64 is one address.
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        for _ in 0..10 {
            assert!(l.check(v6a, t0).is_ok());
        }
        assert!(l.check(v6b, t0).is_err());
        assert_eq!(l.tracked(), 3);
        assert!(ConnectLimiter::new(0).is_none());
    }
}
