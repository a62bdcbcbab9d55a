//! The `ferrite` command.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrite::bench::{self, BenchArgs};
use ferrite_server::{Config, telemetry};

#[derive(Parser)]
#[command(
    name = "ferrite",
    version,
    about = "Low-latency ML serving and feature store for online shops"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (and /metrics) until SIGINT or SIGTERM.
    Serve {
        /// The TOML configuration file. Without it every key takes its default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides `server.grpc_addr`.
        #[arg(long)]
        grpc_addr: Option<SocketAddr>,
        /// Overrides `server.metrics_addr`.
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
    },
    /// Drive one RPC with load and report throughput and latency percentiles.
    Bench(BenchArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve {
            config,
            grpc_addr,
            metrics_addr,
        } => {
            let mut config = match config {
                Some(path) => Config::from_file(&path)?,
                None => Config::default(),
            };
            if let Some(addr) = grpc_addr {
                config.server.grpc_addr = addr;
            }
            if let Some(addr) = metrics_addr {
                config.server.metrics_addr = addr;
            }
            telemetry::init_logging(&config.log);
            // Handlers go in before the server starts: a signal during start-up is then a
            // graceful stop too, not the default kill.
            let signal = shutdown_signal()?;
            let server = ferrite_server::start(config).await?;
            signal.await?;
            tracing::info!("shutting down: draining in-flight calls");
            server.shutdown().await
        }
        Command::Bench(args) => {
            let report = bench::run(&args).await?;
            print!("{}", report.to_text());
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
