//! The `dyconit-chat` command: a thin layer over the library.

use clap::{Parser, Subcommand};
use dyconit_chat::bench::BenchArgs;
use dyconit_chat::chat::ChatArgs;
use dyconit_chat::check::CheckArgs;
use dyconit_chat::config::ServeArgs;
use dyconit_chat::node::{self, Listeners};
use dyconit_chat::telemetry::tracing_setup;
use tokio::net::TcpListener;

/// Dyconit Chat: a gRPC chat server that batches deliveries within bounded
/// inconsistency (staleness, numerical error, order error) per thread.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing syntax, e.g. "info" or "dyconit_chat=debug");
    /// RUST_LOG is used when this is not given
    #[arg(long, global = true, env = "DYCONIT_LOG")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start and moved out at once: the size of the largest
// variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the chat server (gRPC on --listen, admin HTTP on --admin-listen)
    Serve(Box<ServeArgs>),
    /// Chat in the terminal, or send (--send) or follow (--follow) from scripts
    Chat(ChatArgs),
    /// Load-test a server: N streaming clients, a send schedule, a report
    Bench(BenchArgs),
    /// Verify a recorded run (bench --record) against the protocol's promises
    Check(CheckArgs),
    /// Print an HS256 token for NAME, signed with the secret in FILE, for a
    /// server run with --auth-jwt-secret-file (development and scripts)
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The secret file the server reads (--auth-jwt-secret-file)
    #[arg(long, value_name = "FILE")]
    secret_file: std::path::PathBuf,
    /// The display name the token carries
    #[arg(long, value_name = "NAME")]
    name: String,
    /// How long the token is valid (e.g. 30m, 12h, 7d)
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// Threads the token may read: an id, a prefix ending in `*`, or `*`
    /// (repeatable). With --read or --write the token carries a `threads`
    /// claim and grants only what is listed; without both, every thread
    #[arg(long, value_name = "PATTERN")]
    read: Vec<String>,
    /// Threads the token may write (repeatable; as --read)
    #[arg(long, value_name = "PATTERN")]
    write: Vec<String>,
}

/// `dyconit-chat token`: the token on stdout.
fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let secret = dyconit_chat::auth::read_secret(&args.secret_file)?;
    let threads = (!args.read.is_empty() || !args.write.is_empty()).then(|| {
        dyconit_chat::access::ThreadsClaim {
            read: args.read.clone(),
            write: args.write.clone(),
        }
    });
    if let Some(claim) = &threads {
        dyconit_chat::access::ThreadAccess::from_claim(claim)?;
    }
    println!(
        "{}",
        dyconit_chat::auth::hs256_token_with(&secret, &args.name, args.ttl, threads)?
    );
    Ok(())
}

/// The log filter: `--log`, else `RUST_LOG`, else "info".
fn log_filter(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "info".to_owned())
}

/// Plain logging to stderr for the client commands (`chat`, `bench`), which
/// need neither the server's telemetry nor its stdout.
fn init_client_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Reads the TLS files again on each SIGHUP (new connections use them; open
/// ones keep theirs). A bad file is logged and the old certificate stays.
async fn reload_tls_on_sighup(tls: std::sync::Arc<dyconit_chat::net::tls::TlsState>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: TLS files will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                Err(e) => {
                    tracing::error!(
                        "SIGHUP: TLS reload failed, the previous certificate stays: {e:#}"
                    )
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}

/// Says at start-up where the settings came from and which bounds are in
/// force, so a log shows what the server was actually running with.
fn log_settings(file: Option<&std::path::Path>, config: &dyconit_chat::server::Config) {
    let s = &config.settings;
    let b = s.bounds.default_bounds();
    match file {
        Some(f) => {
            tracing::info!(config_file = %f.display(), "settings from flags, environment, the config file and defaults")
        }
        None => tracing::info!(
            "no config file (--config): settings from flags, environment and defaults"
        ),
    }
    tracing::info!(
        staleness = ?b.staleness,
        numerical = b.numerical,
        order = b.order,
        lease = ?s.lease,
        ack_timeout = ?s.ack_timeout,
        max_message_bytes = s.max_message_bytes,
        storage = ?config.storage,
        "default bounds in force"
    );
    for (thread, _, bounds) in s.bounds.overrides() {
        tracing::info!(
            thread,
            staleness = ?bounds.staleness,
            numerical = bounds.numerical,
            order = bounds.order,
            "thread bounds in force"
        );
    }
}

async fn serve(args: ServeArgs, log: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut resolved = args.resolve()?;
    let traces = resolved
        .otlp_endpoint
        .as_deref()
        .map(dyconit_chat::server::otlp::trace_export)
        .transpose()?;
    let telemetry = tracing_setup::init(&log_filter(log), traces)?;
    resolved.config.log_filter = Some(telemetry.log_filter.clone());
    log_settings(args.config.as_deref(), &resolved.config);
    // Every client holds a connection (or shares one); the usual soft limit
    // of 1024 open files would cap the server far below its capacity.
    dyconit_chat::sys::raise_fd_limit();
    let grpc = TcpListener::bind(resolved.listen)
        .await
        .with_context(|| format!("binding the gRPC address {}", resolved.listen))?;
    if let Some(tls) = resolved.config.tls.clone() {
        tokio::spawn(reload_tls_on_sighup(tls));
    }
    let admin = TcpListener::bind(resolved.admin_listen)
        .await
        .with_context(|| format!("binding the admin address {}", resolved.admin_listen))?;
    let served = node::run(
        Listeners { grpc, admin },
        resolved.config,
        shutdown_signal(),
    )
    .await;
    // The exporter sends its spans every few seconds: the last ones go now.
    telemetry.shutdown().await;
    served
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let is_serve = matches!(cli.command, Command::Serve(_));
    let result = match cli.command {
        Command::Serve(args) => serve(*args, cli.log.as_deref()).await,
        // The chat client owns the terminal: it logs only when asked.
        Command::Chat(args) => {
            init_client_logging(cli.log.as_deref().unwrap_or("off"));
            return dyconit_chat::chat::run(args).await;
        }
        Command::Token(args) => token(&args),
        Command::Check(args) => return dyconit_chat::check::main(args),
        Command::Bench(args) => {
            init_client_logging(cli.log.as_deref().unwrap_or("warn"));
            match dyconit_chat::bench::run(args).await {
                Ok(true) => Ok(()),
                Ok(false) => return std::process::ExitCode::FAILURE,
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once: the server's log goes to stdout, so a terminal showed
            // an "Address already in use" both as the log line and as the
            // stderr line. Once its log is up, the server says it there;
            // before that (a bad flag or config file) and for the client
            // commands, stderr says it.
            if is_serve && tracing::dispatcher::has_been_set() {
                tracing::error!("{e:#}");
            } else {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
