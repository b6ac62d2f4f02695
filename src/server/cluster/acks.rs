//! The numerical bound across nodes: each node reports the lowest
//! acknowledged position of its active clients into the JetStream
//! key-value bucket `<stream>_acks` (one key per node process, put within
//! [`REPORT_MOVED_WITHIN`] of a change and at least every [`REPORT_EVERY`]),
//! and watches the other nodes' reports. A write is
//! decided again, just before it is published, counting its thread's
//! commits above the lowest position over this node and every report that
//! has not expired. A report expires when the bucket has gone on for
//! [`LEASE`] without its node: its node died or cannot reach NATS. Time the
//! bucket was silent to this node (a NATS outage, a lost watch) does not
//! count, so an outage never makes another node's clients look caught up.
//!
//! Acknowledged positions only grow, so a late report is at most the
//! truth: it can only over-count. See `docs/cluster.md` for the one case
//! that under-counts (a client that becomes active, until its node's next
//! report).
//!
//! A node whose own report stops coming back while the other nodes' still
//! do is about to be taken for gone by them; it leaves itself out first
//! (ends its streams, refuses new ones, not ready) rather than keep clients
//! nobody else counts, and lets itself back in when its report returns.

use crate::consistency::Seq;
use crate::log::StorageHealth;
use crate::log::nats;
use crate::server::hub::Hub;
use async_nats::jetstream::{self, kv};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// How often a node reports its lowest acknowledged position when it has
/// not moved.
pub(crate) const REPORT_EVERY: Duration = Duration::from_millis(250);
/// How soon a node reports its lowest acknowledged position after it moved.
/// Other nodes count from the last report, so its age is numerical error
/// nobody has: at 250 ms, one thread written through 3 nodes at ~1,400
/// msg/s spent a 256 bound on reports alone and most of its writes were
/// refused with `NUMERICAL_ERROR`; at 50 ms the same thread at ~2,500 msg/s
/// spent a 128 bound so (41,524 of 80,000 writes refused, 2,485 msg/s
/// committed), at 10 ms it committed 4,350 msg/s with no `NUMERICAL_ERROR`.
/// A put costs one small key-value write (at most 100 a second per node);
/// the nats-servers' CPU on the fan-out row did not move.
const REPORT_MOVED_WITHIN: Duration = Duration::from_millis(10);
/// A report older than this is ignored (its node is taken for gone). Eight
/// reports: a node's NATS connection may hiccup without its clients
/// dropping out of everyone's count.
pub(crate) const LEASE: Duration = Duration::from_secs(2);
/// A node whose own report has not come back while the bucket went on for
/// this long takes itself for left out: the other nodes, whose bucket time
/// runs with its own, drop its report at [`LEASE`].
const LEFT_OUT_AFTER: Duration = LEASE.saturating_sub(REPORT_EVERY);
/// A put that takes longer is given up and made again: one lost in a
/// leader election would otherwise hold the next report back for the
/// whole request timeout, past the lease.
const PUT_WITHIN: Duration = Duration::from_millis(500);

/// A report in the bucket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Report {
    node: String,
    /// `None`: no active client on that node.
    lowest: Option<Seq>,
}

/// Other nodes' reports and the commits each thread has above the lowest
/// position anyone may count from. Locked inside the hub lock (by the
/// consumer and the check) or alone; never across an await.
#[derive(Debug, Default)]
pub(crate) struct Floors {
    /// By bucket key: the report and the bucket time it arrived at.
    reports: HashMap<String, (Option<Seq>, Duration)>,
    /// The bucket's time, which reports expire by: it runs while this node
    /// hears from the bucket (any report, its own included, every
    /// [`REPORT_EVERY`]) and advances at most [`REPORT_EVERY`] over a
    /// silence.
    clock: Duration,
    /// When this node last heard from the bucket.
    heard: Option<Instant>,
    /// When this node's own report last came back through the bucket.
    own_heard: Option<Instant>,
    /// The bucket's time then (zero before the first).
    own_at: Duration,
    /// Per thread, its commits above the cluster's lowest position.
    commits: HashMap<Arc<str>, VecDeque<Seq>>,
}

impl Floors {
    /// The lowest position over `local` and the reports not expired.
    pub fn lowest(&self, local: Option<Seq>) -> Option<Seq> {
        self.reports
            .values()
            .filter(|(_, at)| self.live(*at))
            .filter_map(|(p, _)| *p)
            .chain(local)
            .min()
    }

    /// The node applied commit `seq` of `thread`.
    pub fn applied(&mut self, thread: &Arc<str>, seq: Seq) {
        self.commits
            .entry(thread.clone())
            .or_default()
            .push_back(seq);
    }

    /// Commits of `thread` above `pos`.
    pub fn count_after(&self, thread: &str, pos: Seq) -> u64 {
        self.commits
            .get(thread)
            .map_or(0, |c| (c.len() - c.partition_point(|&s| s <= pos)) as u64)
    }

    /// Forgets commits nobody counts any more: at or below `floor`, or all
    /// of them when no client is active anywhere (`None`).
    pub fn trim(&mut self, floor: Option<Seq>) {
        let floor = floor.unwrap_or(Seq::MAX);
        self.commits.retain(|_, c| {
            let n = c.partition_point(|&s| s <= floor);
            c.drain(..n);
            !c.is_empty()
        });
    }

    /// A report that arrived at `at` still counts: the bucket has not gone
    /// on for [`LEASE`] without it. Measured against the last time this
    /// node heard from the bucket rather than the clock: while NATS has no
    /// leader (measured 2-5 s on loopback) no report arrives, and expiring
    /// them then let writes through at the numerical bound, counting only
    /// this node's clients.
    /// After a silence every node gets [`LEASE`] less one report interval
    /// of bucket time to report again, whichever report comes back first.
    fn live(&self, at: Duration) -> bool {
        self.clock.saturating_sub(at) < LEASE
    }

    /// Another node's report arrived at `now`.
    fn report(&mut self, key: &str, lowest: Option<Seq>, now: Instant) {
        self.heard(now);
        self.reports.insert(key.to_owned(), (lowest, self.clock));
    }

    /// This node heard from the bucket at `now` (its own report came back).
    fn heard(&mut self, now: Instant) {
        if let Some(h) = self.heard {
            self.clock += now.saturating_duration_since(h).min(REPORT_EVERY);
        }
        self.heard = Some(self.heard.map_or(now, |h| h.max(now)));
    }

    /// This node's own report came back at `now`.
    fn own_report(&mut self, now: Instant) {
        self.heard(now);
        self.own_heard = Some(self.own_heard.map_or(now, |h| h.max(now)));
        self.own_at = self.clock;
    }

    /// Whether the other nodes may have dropped this node's report: the
    /// bucket went on (their reports kept coming) for [`LEFT_OUT_AFTER`]
    /// without it. A bucket silent for everyone leaves nobody out.
    pub fn left_out(&self) -> bool {
        self.clock.saturating_sub(self.own_at) >= LEFT_OUT_AFTER
    }

    /// How long ago this node's own report last came back (`None`: never).
    /// The other nodes keep counting its clients for [`LEASE`] of their
    /// bucket time after it; past that, those that hear from the bucket
    /// no longer do.
    pub fn own_report_age(&self, now: Instant) -> Option<Duration> {
        self.own_heard.map(|h| now.saturating_duration_since(h))
    }

    /// The bucket-time age of the oldest other node's report that still
    /// counts (zero when none does): about [`REPORT_EVERY`] while every
    /// node reports; it expires at [`LEASE`].
    pub fn oldest_report_age(&self) -> Duration {
        self.reports
            .values()
            .filter(|(_, at)| self.live(*at))
            .map(|(_, at)| self.clock.saturating_sub(*at))
            .max()
            .unwrap_or_default()
    }

    /// A node removed its report (it stopped cleanly): its clients are gone.
    fn removed(&mut self, key: &str, now: Instant) {
        self.reports.remove(key);
        self.heard(now);
    }

    /// The keys of the other nodes whose reports have not expired.
    pub fn live_keys(&self) -> impl Iterator<Item = &str> {
        let live = self.reports.iter().filter(|(_, (_, at))| self.live(*at));
        live.map(|(k, _)| k.as_str())
    }

    /// Reports that still count.
    pub fn live_reports(&self) -> usize {
        self.reports
            .values()
            .filter(|(_, at)| self.live(*at))
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reports' gauges: `chat_cluster_ack_reports_live`,
/// `chat_cluster_lowest_ack_position` and the reports' ages.
pub(crate) struct Gauges {
    pub live: prometheus::IntGauge,
    pub lowest: prometheus::IntGauge,
    pub oldest_age: prometheus::Gauge,
    pub own_age: prometheus::Gauge,
}

impl Gauges {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Gauges> {
        let g = Gauges {
            live: prometheus::IntGauge::new(
                "chat_cluster_ack_reports_live",
                "Other nodes' reports of their lowest acknowledged position younger than the lease: the nodes whose clients the numerical bound counts.",
            )?,
            lowest: prometheus::IntGauge::new(
                "chat_cluster_lowest_ack_position",
                "The lowest acknowledged position over the active clients of every node (this one and the live reports); -1 when no client is active anywhere.",
            )?,
            oldest_age: prometheus::Gauge::new(
                "chat_cluster_ack_report_age_seconds",
                "Age of the oldest other node's acknowledgement report that still counts, in bucket time (time this node heard from the reports bucket): about 0.25 s while every node reports; a report expires at 2 s and its node's clients stop counting. 0 when no other node's report counts.",
            )?,
            own_age: prometheus::Gauge::new(
                "chat_cluster_own_ack_report_age_seconds",
                "Time since this node's own acknowledgement report last came back through the reports bucket (since start, before the first): about 0.25 s normally. Past 2 s, other nodes that still hear from the bucket stop counting this node's clients for the numerical bound; a node that hears them leaves itself out at 1.75 s (ends its streams, not ready).",
            )?,
        };
        registry.register(Box::new(g.live.clone()))?;
        registry.register(Box::new(g.lowest.clone()))?;
        registry.register(Box::new(g.oldest_age.clone()))?;
        registry.register(Box::new(g.own_age.clone()))?;
        Ok(g)
    }

    /// Sets every gauge from `f`; `started`: when this node began reporting.
    fn set(&self, f: &Floors, floor: Option<Seq>, started: Instant) {
        let now = Instant::now();
        self.live.set(f.live_reports() as i64);
        self.lowest.set(floor.map_or(-1, |p| p as i64));
        self.oldest_age.set(f.oldest_report_age().as_secs_f64());
        let own = f.own_report_age(now).unwrap_or(now - started);
        self.own_age.set(own.as_secs_f64());
    }
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Opens (or creates) the reports bucket; returns the reporting and the
/// watching tasks.
pub(crate) async fn open(
    js: &jetstream::Context,
    stream: &str,
    (node, key): (&str, &str),
    replicas: usize,
    (hub, health): (&Arc<Hub>, &Arc<StorageHealth>),
    floors: &Arc<Mutex<Floors>>,
    gauges: Gauges,
) -> anyhow::Result<Vec<Task>> {
    let name = format!("{stream}_acks");
    let store = nats::ensure_bucket(
        js,
        kv::Config {
            bucket: name.clone(),
            history: 1,
            // Keys of dead nodes go away by themselves.
            max_age: LEASE * 30,
            storage: jetstream::stream::StorageType::Memory,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await?;
    let key = key.to_owned();
    Ok(vec![
        Box::pin(
            Reporter {
                store: store.clone(),
                key: key.clone(),
                node: node.to_owned(),
                hub: hub.clone(),
                health: health.clone(),
                floors: floors.clone(),
                gauges,
            }
            .run(),
        ),
        Box::pin(watch_loop(store, key, floors.clone())),
    ])
}

/// Reports this node's lowest acknowledged position, and trims the commits
/// nobody counts any more; leaves the node out while the other nodes may
/// no longer count its clients.
struct Reporter {
    store: kv::Store,
    key: String,
    node: String,
    hub: Arc<Hub>,
    health: Arc<StorageHealth>,
    floors: Arc<Mutex<Floors>>,
    gauges: Gauges,
}

impl Reporter {
    async fn run(self) {
        // The last report put, and when.
        let mut reported: Option<(Option<Seq>, Instant)> = None;
        let started = Instant::now();
        let (mut failing, mut left_out) = (false, false);
        loop {
            let (lowest, out) = self.hub.inspect(|e| {
                let local = e.lowest_active_ack();
                let mut f = lock(&self.floors);
                let floor = f.lowest(local);
                f.trim(floor);
                self.gauges.set(&f, floor, started);
                (local, f.left_out())
            });
            if out != left_out {
                left_out = out;
                self.leave_out(out);
            }
            let due = reported
                .is_none_or(|(before, at)| before != lowest || at.elapsed() >= REPORT_EVERY);
            if due {
                reported = Some((lowest, Instant::now()));
                failing = logged_put(self.put(lowest).await, failing);
            }
            tokio::time::sleep(REPORT_MOVED_WITHIN).await;
        }
    }

    async fn put(&self, lowest: Option<Seq>) -> Result<(), String> {
        let report = Report {
            node: self.node.clone(),
            lowest,
        };
        let json = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
        match tokio::time::timeout(PUT_WITHIN, self.store.put(&self.key, json.into())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PUT_WITHIN:?}")),
        }
    }

    /// Ends this node's streams and takes no new ones (not ready) while
    /// the other nodes may not count its clients: writes through them
    /// could leave those clients past the numerical bound. A node that
    /// counts them serves them instead (clients move on `UNAVAILABLE`).
    fn leave_out(&self, out: bool) {
        if out {
            tracing::error!(
                "this node's acknowledgement reports have not come back for {LEFT_OUT_AFTER:?} while other nodes' did: they no longer count its clients, so it ends their streams and takes no new ones until its reports go through"
            );
            self.health.set_excluded(Some(
                "acknowledgement reports do not reach the other chat nodes",
            ));
        } else {
            tracing::info!("this node's acknowledgement reports come back again: taking streams");
            self.health.set_excluded(None);
        }
        self.hub.set_excluded(out);
    }
}

/// Logs the first failed put of a run and the first that goes through
/// after; returns whether puts are failing now.
fn logged_put<E: std::fmt::Display>(put: Result<(), E>, failing: bool) -> bool {
    match put {
        Err(e) if !failing => {
            tracing::warn!(
                error = %e,
                "reporting the lowest acknowledged position failed: past the {LEASE:?} lease, other nodes stop counting this node's clients"
            );
            true
        }
        Err(_) => true,
        Ok(()) if failing => {
            tracing::info!("acknowledgement reports go through again");
            false
        }
        Ok(()) => false,
    }
}

/// Records every other node's reports as they arrive. A watch that errs,
/// ends, or stays silent for a [`LEASE`] (this node's own report should come
/// back every [`REPORT_EVERY`]) is replaced: reports kept by a dead watch
/// would never expire and would hold the numerical bound at what the other
/// nodes' clients had acknowledged when it died.
async fn watch_loop(store: kv::Store, own: String, floors: Arc<Mutex<Floors>>) {
    loop {
        match store.watch(">").await {
            Ok(mut watch) => loop {
                let entry = match tokio::time::timeout(LEASE, watch.next()).await {
                    Ok(Some(Ok(e))) => e,
                    Ok(Some(Err(e))) => {
                        tracing::warn!(error = %e, "watching the acknowledgement reports: watching again");
                        break;
                    }
                    Ok(None) => {
                        tracing::warn!("the acknowledgement reports watch ended: watching again");
                        break;
                    }
                    Err(_) => {
                        tracing::debug!("no acknowledgement report for a lease: watching again");
                        break;
                    }
                };
                record(&floors, &own, &entry);
            },
            Err(e) => tracing::debug!(error = %e, "watching the acknowledgement reports"),
        }
        tokio::time::sleep(REPORT_EVERY).await;
    }
}

/// One entry of the reports bucket.
fn record(floors: &Mutex<Floors>, own: &str, e: &kv::Entry) {
    let now = Instant::now();
    if e.key == own {
        lock(floors).own_report(now);
        return;
    }
    if e.operation != kv::Operation::Put {
        lock(floors).removed(&e.key, now);
        return;
    }
    match serde_json::from_slice::<Report>(&e.value) {
        Ok(r) => lock(floors).report(&e.key, r.lowest, now),
        Err(err) => tracing::warn!(key = e.key, error = %err, "a report that is not ours: ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This node's own reports coming back every interval from `from`
    /// for `span`.
    fn own_reports(f: &mut Floors, from: Instant, span: Duration) -> Instant {
        let mut t = from;
        while t < from + span {
            t += REPORT_EVERY;
            f.own_report(t);
        }
        t
    }

    #[test]
    fn a_report_expires_once_the_bucket_went_on_for_a_lease_without_it() {
        let t0 = Instant::now();
        let mut f = Floors::default();
        assert_eq!(f.lowest(None), None);
        f.report("a", Some(5), t0);
        f.report("b", None, t0);
        assert_eq!(f.lowest(Some(9)), Some(5));
        assert_eq!(f.lowest(Some(3)), Some(3));
        assert_eq!(f.live_reports(), 2);
        // The bucket goes on without "a" and "b": their nodes are gone.
        let t = own_reports(&mut f, t0, LEASE);
        assert_eq!(f.lowest(Some(9)), Some(9));
        assert_eq!(f.live_reports(), 0);
        f.report("a", Some(7), t);
        assert_eq!(f.lowest(Some(9)), Some(7));
        f.removed("a", t);
        assert_eq!(f.lowest(Some(9)), Some(9));
    }

    #[test]
    fn reports_do_not_expire_while_the_bucket_is_silent() {
        // A NATS outage of 10 s: nothing arrives, not even this node's own
        // reports. Another node's clients still count: expiring its report
        // by the wall clock admitted writes at the numerical bound.
        let t0 = Instant::now();
        let mut f = Floors::default();
        f.report("a", Some(5), t0);
        let t = own_reports(&mut f, t0, REPORT_EVERY);
        let back = t + Duration::from_secs(10);
        // This node's own report comes back first after the outage.
        f.own_report(back);
        assert_eq!(f.lowest(Some(9)), Some(5));
        assert_eq!(f.live_reports(), 1);
        // "a" reports again within the lease of bucket time.
        let t = own_reports(&mut f, back, LEASE / 2);
        f.report("a", Some(6), t);
        assert_eq!(f.lowest(Some(9)), Some(6));
    }

    #[test]
    fn report_ages_follow_the_bucket_and_this_nodes_own_report() {
        let t0 = Instant::now();
        let mut f = Floors::default();
        assert_eq!(f.own_report_age(t0), None);
        assert_eq!(f.oldest_report_age(), Duration::ZERO);
        f.own_report(t0);
        f.report("a", Some(5), t0);
        f.report("b", Some(6), t0);
        // "b" keeps reporting, "a" stops; this node's own puts stop coming
        // back after the first.
        let mut t = t0;
        for _ in 0..4 {
            t += REPORT_EVERY;
            f.report("b", Some(6), t);
        }
        assert_eq!(f.oldest_report_age(), REPORT_EVERY * 4);
        assert_eq!(f.own_report_age(t), Some(REPORT_EVERY * 4));
        // Past the lease "a" no longer counts, nor does its age.
        for _ in 0..8 {
            t += REPORT_EVERY;
            f.report("b", Some(6), t);
        }
        assert_eq!(f.live_reports(), 1);
        assert_eq!(f.oldest_report_age(), Duration::ZERO);
        f.own_report(t);
        assert_eq!(f.own_report_age(t + REPORT_EVERY), Some(REPORT_EVERY));
    }

    #[test]
    fn a_node_whose_own_report_stops_coming_back_while_others_do_is_left_out() {
        let t0 = Instant::now();
        let mut f = Floors::default();
        f.own_report(t0);
        // A silent bucket (a NATS outage for everyone) leaves nobody out.
        let mut t = t0 + Duration::from_secs(10);
        f.report("b", Some(1), t);
        assert!(!f.left_out());
        // "b" keeps reporting; this node's reports do not come back.
        let mut went = Duration::ZERO;
        while !f.left_out() {
            t += REPORT_EVERY;
            went += REPORT_EVERY;
            f.report("b", Some(1), t);
            assert!(went <= LEASE, "not left out after {went:?}");
        }
        // Left out before "b" drops this node's report at the lease.
        assert!(went < LEASE, "{went:?}");
        f.own_report(t);
        assert!(!f.left_out());
    }

    #[test]
    fn commits_are_counted_per_thread_and_trimmed_below_the_floor() {
        let (t, u): (Arc<str>, Arc<str>) = ("t".into(), "u".into());
        let mut f = Floors::default();
        for s in 1..=6 {
            f.applied(if s % 2 == 0 { &t } else { &u }, s);
        }
        assert_eq!(f.count_after("t", 0), 3);
        assert_eq!(f.count_after("t", 2), 2);
        f.trim(Some(4));
        assert_eq!(f.count_after("t", 0), 1);
        assert_eq!(f.count_after("u", 0), 1);
        f.trim(None);
        assert_eq!(f.count_after("u", 0), 0);
    }
}
