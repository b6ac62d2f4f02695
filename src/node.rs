//! A running chat node: the gRPC listener, the admin port, the flush
//! scheduler and the message log, started together and stopped in order.
//! This is the one place that wires `server` and `admin` together, so
//! neither has to know the other's start-up.

use crate::admin;
use crate::server::policies::Policies;
use crate::server::{self, Config, GrpcServer, hub::Hub};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The sockets the server serves on, bound by the caller (port 0 works).
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

/// What `serve --ready-file` writes once the node serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadyInfo {
    /// The gRPC address, e.g. `127.0.0.1:50051`.
    pub grpc: SocketAddr,
    /// The admin HTTP address.
    pub admin: SocketAddr,
    /// The serving process.
    pub pid: u32,
}

impl ReadyInfo {
    /// Writes `self` as JSON to `path` atomically: a reader sees either no
    /// file or the whole of it (written beside it, then renamed).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file_name = path
            .file_name()
            .with_context(|| format!("ready file {} has no file name", path.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let json = serde_json::to_vec(self)?;
        std::fs::write(&tmp, json)
            .with_context(|| format!("writing the ready file {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    }
}

/// Refuses an admin port reachable from other hosts without a token: it can
/// change bounds.
fn check_admin_exposure(admin_addr: SocketAddr, config: &Config) -> anyhow::Result<()> {
    if config
        .admin_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        anyhow::bail!(
            "the admin token is blank: give a real secret, or none on a loopback address"
        );
    }
    if !admin_addr.ip().is_loopback() && config.admin_token.is_none() {
        anyhow::bail!(
            "refusing to serve the admin API on non-loopback address {admin_addr} without --admin-token (it can change bounds)"
        );
    }
    Ok(())
}

/// The two ports' acceptors, their caps lowered to fit the open-files
/// limit (so the cap, not `accept`, refuses the connection too many).
fn acceptors(
    listeners: Listeners,
    config: &Config,
    metrics: &crate::telemetry::metrics::Metrics,
) -> (crate::net::Acceptor, crate::net::Acceptor) {
    use crate::net::{Acceptor, NetMetrics, Protocol};
    let net = NetMetrics::new(&metrics.registry);
    let (mut grpc, mut admin) = (config.grpc_limits, config.admin_limits);
    let fd_limit = crate::sys::raise_fd_limit();
    let scale =
        crate::net::fit_to_descriptors(grpc.max_connections + admin.max_connections, fd_limit);
    if scale < 1.0 {
        grpc.max_connections = ((grpc.max_connections as f64 * scale) as usize).max(1);
        admin.max_connections = ((admin.max_connections as f64 * scale) as usize).max(1);
        tracing::warn!(
            ?fd_limit,
            grpc = grpc.max_connections,
            admin = admin.max_connections,
            "connection caps lowered to fit the open-files limit"
        );
    }
    (
        Acceptor::new(listeners.grpc, grpc, Protocol::Http2, "grpc", net.clone()),
        Acceptor::new(listeners.admin, admin, Protocol::Bytes, "admin", net),
    )
}

/// What the admin handlers get to see of the node.
fn admin_state(
    config: &Config,
    hub: &Arc<Hub>,
    policies: &Arc<Policies>,
    ready: &admin::Readiness,
) -> admin::AdminState {
    admin::AdminState {
        ready: ready.clone(),
        storage: config.storage_health.clone(),
        hub: hub.clone(),
        policies: policies.clone(),
        metrics: hub.metrics().clone(),
        token: config
            .admin_token
            .clone()
            .filter(|t| !t.is_empty())
            .map(Arc::from),
        log_filter: config
            .log_filter
            .clone()
            .unwrap_or_else(|| crate::telemetry::tracing_setup::LogFilter::detached("info")),
        started: std::time::Instant::now(),
        hosts: config.admin_hosts.clone().into(),
    }
}

/// Serves until `shutdown` completes, then drains: flushes every pending
/// Update, ends the streams, and returns.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.settings.validate().context("invalid settings")?;
    let grpc_addr = listeners.grpc.local_addr()?;
    let admin_addr = listeners.admin.local_addr()?;
    check_admin_exposure(admin_addr, &config)?;
    let metrics = crate::telemetry::metrics::Metrics::new();
    let (grpc_acceptor, admin_acceptor) = acceptors(listeners, &config, &metrics);
    let (hub, storage) = server::open_storage(&config, &config.storage_health, &metrics).await?;

    let stop = CancellationToken::new();
    let ready = admin::Readiness::default();
    let scheduler = server::scheduler::Scheduler::start(hub.clone(), stop.clone())
        .context("starting the flush scheduler thread")?;
    let policies = Policies::new(config.load_policy, &hub);
    if config.interest_policy.is_some() {
        policies.set_interest(config.interest_policy, &hub, "config");
    }
    if config.size_policy.is_some() {
        policies.set_size(config.size_policy, &hub, "config");
    }
    let policy_task = tokio::spawn(server::policies::run(
        policies.clone(),
        hub.clone(),
        stop.clone(),
    ));
    let grpc = GrpcServer::start(grpc_acceptor, &config, hub.clone(), stop.clone()).await?;
    let admin = tokio::spawn(admin::serve(
        admin_acceptor,
        admin_state(&config, &hub, &policies, &ready),
        stop.clone().cancelled_owned(),
        config.admin_limits.handshake_timeout,
        config.tls.clone(),
    ));

    ready.set(true);
    if let Some(path) = &config.ready_file {
        let info = ReadyInfo {
            grpc: grpc_addr,
            admin: admin_addr,
            pid: std::process::id(),
        };
        info.write(path)?;
    }
    tracing::info!(%grpc_addr, %admin_addr, "dyconit-chat serving");

    shutdown.await;
    tracing::info!("shutting down: flushing pending updates and ending streams");
    ready.set(false);
    if let Some(path) = &config.ready_file {
        // A ready file that outlives the server would send the next reader
        // to a closed port.
        let _ = std::fs::remove_file(path);
    }
    grpc.set_not_serving().await;
    let grace = config.shutdown_grace;
    // What was accepted before the signal is stored, then delivered.
    if !hub.wait_settled(grace).await {
        tracing::warn!(?grace, "messages still being stored at shutdown");
    }
    hub.drain();
    stop.cancel();
    grpc.join(grace).await;
    let _ = tokio::time::timeout(grace, admin).await;
    scheduler.join().await;
    let _ = policy_task.await;
    // No RPC is left to submit: the writer stores what is queued and exits.
    hub.stop_writer();
    storage.stop(grace).await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_file_is_written_whole_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        let info = ReadyInfo {
            grpc: "127.0.0.1:4000".parse().unwrap(),
            admin: "127.0.0.1:4001".parse().unwrap(),
            pid: 42,
        };
        info.write(&path).unwrap();
        let back: ReadyInfo = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, info);
        // Only the file itself is left: the temporary was renamed into place.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
