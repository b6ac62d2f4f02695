//! The server's own counters for a bench run, read from its `/metrics` (the
//! admin port) at the start and the end of the run: broken bounds, dropped
//! clients, and how many clients it had before the bench connected. A run in
//! which the server counted late deliveries is not a clean run, whatever the
//! bench itself saw.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One scrape: `name{labels}` -> value, for the series the bench reports.
#[derive(Debug, Clone, Default)]
pub struct Scrape(BTreeMap<String, f64>);

/// Metric families kept from a scrape.
const KEPT: [&str; 3] = [
    "chat_bound_violations_total",
    "chat_clients_dropped_total",
    "chat_clients_connected",
];

impl Scrape {
    /// Parses Prometheus text format, keeping `KEPT` families.
    pub fn parse(text: &str) -> Scrape {
        let mut m = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let family = series.split('{').next().unwrap_or_default();
            if KEPT.contains(&family)
                && let Ok(v) = value.parse::<f64>()
            {
                m.insert(series.to_owned(), v);
            }
        }
        Scrape(m)
    }

    /// Clients connected when scraped.
    pub fn clients_connected(&self) -> Option<u64> {
        self.0.get("chat_clients_connected").map(|v| *v as u64)
    }

    /// `label value -> increase` of one counter family between two scrapes.
    fn increase(&self, later: &Scrape, family: &str, label: &str) -> BTreeMap<String, u64> {
        let prefix = format!("{family}{{{label}=\"");
        later
            .0
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(&prefix)?.split('"').next()?;
                let before = self.0.get(k).copied().unwrap_or(0.0);
                Some((key.to_owned(), (v - before).max(0.0) as u64))
            })
            .collect()
    }
}

/// What the server itself counted during the run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerCounters {
    /// Where they were read (`http://host:port/metrics`).
    pub source: String,
    /// Bound violations during the run, by bound (staleness, lease).
    pub bound_violations: BTreeMap<String, u64>,
    /// Clients dropped during the run, by reason.
    pub clients_dropped: BTreeMap<String, u64>,
    /// Clients the server had before the bench connected its own.
    pub other_clients_at_start: Option<u64>,
    /// Of the bound violations, those counted before the measured window
    /// opened (while the clients connected and warmed up), if the server
    /// was read then too.
    pub violations_before_window: Option<u64>,
}

impl ServerCounters {
    /// The increases from `start` to `end`, and from `start` to `window`
    /// (read as the measured window opened) for the violations before it.
    pub fn between(
        source: &str,
        start: &Scrape,
        window: Option<&Scrape>,
        end: &Scrape,
    ) -> ServerCounters {
        let violations = |later| start.increase(later, "chat_bound_violations_total", "bound");
        ServerCounters {
            source: source.to_owned(),
            bound_violations: violations(end),
            clients_dropped: start.increase(end, "chat_clients_dropped_total", "reason"),
            other_clients_at_start: start.clients_connected(),
            violations_before_window: window.map(|w| violations(w).values().sum()),
        }
    }

    /// Violations of any bound the server counted.
    pub fn violations(&self) -> u64 {
        self.bound_violations.values().sum()
    }
}

/// `GET /metrics` from the admin address `base` (`http://host:port`), over
/// plain HTTP/1.0 (the admin port speaks HTTP/1.1; nothing more is needed
/// for one request).
pub async fn scrape(base: &str) -> anyhow::Result<Scrape> {
    let hostport = base
        .strip_prefix("http://")
        .unwrap_or(base)
        .trim_end_matches('/');
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(hostport).await?;
        let req = format!("GET /metrics HTTP/1.0\r\nHost: {hostport}\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {base} within 5s"))??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        anyhow::bail!(
            "{base}/metrics answered {}",
            head.lines().next().unwrap_or("nothing")
        );
    }
    Ok(Scrape::parse(body))
}

/// Reads the counters at the start of a run, and warns when the server
/// already has clients: they receive every bench message, and their own
/// traffic would be counted in the figures.
pub async fn start(admin: &str) -> Result<Scrape, String> {
    let scrape = scrape(admin)
        .await
        .map_err(|e| format!("not read: {e:#} (give the admin address with --admin)"))?;
    if let Some(n) = scrape.clients_connected().filter(|n| *n > 0) {
        eprintln!(
            "warning: the server already has {n} client(s) connected: they will receive \
             every bench message (threads named by --thread-prefix), and their traffic \
             is in the figures; bench a server of its own (--spawn-server) for clean ones"
        );
    }
    Ok(scrape)
}

/// Reads the counters as the measured window opens (`None` if they could
/// not be read at the start either).
pub async fn window(admin: &str, start: &Result<Scrape, String>) -> Option<Scrape> {
    match start {
        Ok(_) => scrape(admin).await.ok(),
        Err(_) => None,
    }
}

/// Reads the counters at the end of a run: the increase since `start`
/// (and how much of it came before `window`, the scrape as the measured
/// window opened), or why there is none.
pub async fn end(
    admin: &str,
    start: Result<Scrape, String>,
    window: Option<Scrape>,
) -> Result<ServerCounters, String> {
    let start = start?;
    let end = scrape(admin)
        .await
        .map_err(|e| format!("not read at the end: {e:#}"))?;
    Ok(ServerCounters::between(
        &format!("{}/metrics", admin.trim_end_matches('/')),
        &start,
        window.as_ref(),
        &end,
    ))
}

/// The admin address to read counters from when none is given: the
/// `--server` host on the admin port's default, 9090.
pub fn default_admin(server: &str) -> String {
    let rest = server
        .strip_prefix("http://")
        .or_else(|| server.strip_prefix("https://"))
        .unwrap_or(server);
    let host = rest.split('/').next().unwrap_or(rest);
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    format!("http://{host}:9090")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increases_are_per_label_between_two_scrapes() {
        let a = Scrape::parse(
            "# HELP x\nchat_bound_violations_total{bound=\"staleness\"} 3\nchat_bound_violations_total{bound=\"lease\"} 0\nchat_clients_connected 2\nother 9\n",
        );
        let b = Scrape::parse(
            "chat_bound_violations_total{bound=\"staleness\"} 1423\nchat_bound_violations_total{bound=\"lease\"} 0\nchat_clients_dropped_total{reason=\"slow_consumer\"} 4\n",
        );
        let c = ServerCounters::between("x", &a, None, &b);
        assert_eq!(c.bound_violations["staleness"], 1420);
        assert_eq!(c.bound_violations["lease"], 0);
        assert_eq!(c.clients_dropped["slow_consumer"], 4);
        assert_eq!(c.other_clients_at_start, Some(2));
        assert_eq!(c.violations(), 1420);
        assert_eq!(c.violations_before_window, None);
        // Read again as the window opened: what came before it, all bounds.
        let w = Scrape::parse(
            "chat_bound_violations_total{bound=\"staleness\"} 1003\nchat_bound_violations_total{bound=\"lease\"} 2\n",
        );
        let c = ServerCounters::between("x", &a, Some(&w), &b);
        assert_eq!(c.violations(), 1420);
        assert_eq!(c.violations_before_window, Some(1002));
    }

    #[test]
    fn the_default_admin_address_is_the_server_host_on_9090() {
        assert_eq!(
            default_admin("http://127.0.0.1:50051"),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            default_admin("http://chat.local:50051/"),
            "http://chat.local:9090"
        );
        assert_eq!(default_admin("http://[::1]:50051"), "http://[::1]:9090");
    }
}
