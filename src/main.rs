//! The `dyconit-chat` command: a thin layer over the library.

use clap::{Parser, Subcommand};
use dyconit_chat::bench::BenchArgs;
use dyconit_chat::chat::ChatArgs;
use dyconit_chat::config::ServeArgs;
use dyconit_chat::server::{self, Listeners};
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
enum Command {
    /// Run the chat server (gRPC on --listen, admin HTTP on --admin-listen)
    Serve(Box<ServeArgs>),
    /// Chat in the terminal, or send (--send) or follow (--follow) from scripts
    Chat(ChatArgs),
    /// Load-test a server: N streaming clients, a send schedule, a report
    Bench(BenchArgs),
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
}

/// `dyconit-chat token`: the token on stdout.
fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let secret = dyconit_chat::auth::read_secret(&args.secret_file)?;
    println!(
        "{}",
        dyconit_chat::auth::hs256_token(&secret, &args.name, args.ttl)?
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

async fn serve(args: ServeArgs, log: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut resolved = args.resolve()?;
    let telemetry = tracing_setup::init(&log_filter(log), resolved.otlp_endpoint.as_deref())?;
    resolved.config.log_filter = Some(telemetry.log_filter.clone());
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
    server::run(
        Listeners { grpc, admin },
        resolved.config,
        shutdown_signal(),
    )
    .await
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args, cli.log.as_deref()).await,
        // The chat client owns the terminal: it logs only when asked.
        Command::Chat(args) => {
            init_client_logging(cli.log.as_deref().unwrap_or("off"));
            return dyconit_chat::chat::run(args).await;
        }
        Command::Token(args) => token(&args),
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
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
