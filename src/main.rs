//! The `dyconit-chat` command: a thin layer over the library.

use clap::{Parser, Subcommand};
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
    Serve(ServeArgs),
}

/// The log filter: `--log`, else `RUST_LOG`, else "info".
fn log_filter(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "info".to_owned())
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

async fn serve(args: ServeArgs, log: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut resolved = args.resolve()?;
    let telemetry = tracing_setup::init(&log_filter(log), resolved.otlp_endpoint.as_deref())?;
    resolved.config.log_filter = Some(telemetry.log_filter.clone());
    let grpc = TcpListener::bind(resolved.listen)
        .await
        .with_context(|| format!("binding the gRPC address {}", resolved.listen))?;
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
        Command::Serve(args) => serve(args, cli.log.as_deref()).await,
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
