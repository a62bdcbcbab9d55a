//! The `ferrite` command.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrite::bench::{self, BenchArgs};
use ferrite::experiment::ExperimentArgs;
use ferrite_server::{Config, telemetry};

/// mimalloc instead of glibc's allocator. A served request allocates on one thread and frees
/// on another (the async workers, the batching thread), which glibc handles in its slow path
/// (about 200 instructions per allocation here); mimalloc frees to the owning thread's page.
/// Measured: 14 % fewer server instructions per streamed inference request, 6 % per unary
/// ModelInfer (BENCHMARKS.md, session 7).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    Bench(Box<BenchArgs>),
    /// A bare tonic server that answers only the gRPC health check (none of Ferrite's layers
    /// or services): the physical floor the benchmarks measure Ferrite's calls against.
    /// Prints `floor listening grpc=ADDR`, serves until SIGINT or SIGTERM.
    #[command(hide = true)]
    FloorServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        grpc_addr: SocketAddr,
        /// Async worker threads; 0: one per CPU core (as `server.worker_threads`).
        #[arg(long, default_value_t = 0)]
        worker_threads: usize,
    },
    /// Check the feature definitions and compare them with the Parquet schemas.
    Validate(FeatureArgs),
    /// Load the latest valid row per entity with an event time in [--start, --end) into the
    /// online store.
    Materialize {
        #[command(flatten)]
        features: FeatureArgs,
        /// Window start, RFC 3339 or a date (2026-08-01).
        #[arg(long)]
        start: String,
        /// Window end (exclusive).
        #[arg(long)]
        end: String,
        /// Only these feature views (default: every online view).
        #[arg(long = "view")]
        views: Vec<String>,
    },
    /// Materialize each view from its watermark (kept in the online store) to --end (default now).
    MaterializeIncremental {
        #[command(flatten)]
        features: FeatureArgs,
        #[arg(long)]
        end: Option<String>,
        #[arg(long = "view")]
        views: Vec<String>,
    },
    /// Build a point-in-time correct training set for entity rows (with labels) in Parquet.
    TrainingSet {
        #[command(flatten)]
        features: FeatureArgs,
        /// Parquet file of entity rows: join keys, a timestamp column, labels, anything else.
        #[arg(long)]
        entities: PathBuf,
        /// The feature service whose features to join.
        #[arg(long, conflicts_with = "feature")]
        service: Option<String>,
        /// Feature references (`view:feature` or `view:*`) instead of a service.
        #[arg(long = "feature")]
        feature: Vec<String>,
        /// The entity rows' event time column.
        #[arg(long, default_value = "event_timestamp")]
        timestamp_column: String,
        /// Where to write the training set (Parquet).
        #[arg(long)]
        out: PathBuf,
    },
    /// Build the visual-search index from a catalog (Parquet or JSON Lines): images embedded
    /// by the served model, or precomputed embeddings (--embeddings).
    BuildIndex(ferrite::build_index::BuildIndexArgs),
    /// Experiments: `ferrite experiment report` reads the exposure log against outcomes.
    Experiment(ExperimentArgs),
}

/// Where the feature definitions, data and online store are.
#[derive(clap::Args)]
struct FeatureArgs {
    /// The TOML configuration file (its `[features]` section). Without it, defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides `features.repository`.
    #[arg(long)]
    features: Option<PathBuf>,
    /// Overrides `features.data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

impl FeatureArgs {
    fn config(&self) -> anyhow::Result<ferrite_server::config::FeaturesConfig> {
        let whole = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        telemetry::init_logging_stderr(&whole.log);
        let mut config = whole.features;
        if let Some(f) = &self.features {
            config.repository = f.clone();
        }
        if let Some(d) = &self.data_dir {
            config.data_dir = Some(d.clone());
        }
        Ok(config)
    }
}

fn time_arg(s: &str) -> anyhow::Result<i64> {
    ferrite_features::value::parse_timestamp(s).map_err(|e| anyhow::anyhow!(e))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before anything can reach FAISS: an unsupported CPU would otherwise die of SIGILL.
    ferrite_search::cpu::check().map_err(anyhow::Error::msg)?;
    if matches!(cli.command, Command::TrainingSet { .. }) {
        use_huge_pages();
    }
    // The raw models of `ferrite bench --with-raw` run as the server runs them.
    let raw_bench = matches!(&cli.command, Command::Bench(args) if args.with_raw);
    if matches!(cli.command, Command::Serve { .. }) || raw_bench {
        serial_candle_math();
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    let (threads, blocking) = match &cli.command {
        Command::Bench(args) => (args.client_threads, 0),
        Command::FloorServer { worker_threads, .. } => (*worker_threads, 0),
        // Read here only to size the runtime; `run` reads it again and reports any error.
        Command::Serve { config, .. } => {
            let server = config
                .as_ref()
                .and_then(|path| Config::from_file(path).ok())
                .map(|c| c.server)
                .unwrap_or_default();
            (server.worker_threads, blocking_threads(server.blocking_threads))
        }
        _ => (0, 0),
    };
    if threads > 0 {
        runtime.worker_threads(threads);
    }
    if blocking > 0 {
        runtime.max_blocking_threads(blocking);
    }
    runtime.enable_all().build()?.block_on(run(cli))
}

/// `server.blocking_threads`, 0 resolved: four per CPU core, at least 8.
fn blocking_threads(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).max(8)
}

/// A server runs many small inferences at once, so each candle model runs its matrix products
/// on the thread that calls it: candle splits every product over `RAYON_NUM_THREADS` threads
/// (default: every core), which on a busy server only adds hand-offs. Measured on the
/// recommendations pipeline at 500 calls/s on 2 cores (a 200-row Wide & Deep ranking per
/// call): server CPU per call 1,585 → 826 µs and p99 220 → 7.9 ms (BENCHMARKS.md). A
/// `RAYON_NUM_THREADS` already in the environment is left as it is. Candle reads it from the
/// environment, which a running process may not safely change, so the command re-executes
/// itself once with it set (the same process id); if that fails, it goes on without.
fn serial_candle_math() {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(CANDLE_THREADS).is_some() {
            return;
        }
        if let Ok(exe) = std::env::current_exe() {
            // `exec` only returns if it failed.
            let _ = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env(CANDLE_THREADS, "1")
                .exec();
        }
    }
}

const CANDLE_THREADS: &str = "RAYON_NUM_THREADS";

/// A training set faults in gigabytes of fresh memory; with transparent huge pages that is
/// 512 times fewer page faults. mimalloc asks the kernel for them only when its
/// `allow_large_os_pages` option is set, and it would also hand freed memory back to the
/// kernel 10 ms later (`purge_delay`) only for the next step to fault it in again. It reads
/// its options from the environment when the process starts, so the command re-executes
/// itself once with `MIMALLOC_ALLOW_LARGE_OS_PAGES=1` and `MIMALLOC_PURGE_DELAY=-1`. A
/// `MIMALLOC_ALLOW_LARGE_OS_PAGES` already in the environment is left as it is (set it to 0
/// to opt out); if the re-execution fails, the command goes on without.
fn use_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(LARGE_PAGES).is_some() {
            return;
        }
        if let Ok(exe) = std::env::current_exe() {
            // `exec` only returns if it failed.
            let _ = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env(LARGE_PAGES, "1")
                .env("MIMALLOC_PURGE_DELAY", "-1")
                .exec();
        }
    }
}

const LARGE_PAGES: &str = "MIMALLOC_ALLOW_LARGE_OS_PAGES";

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
            let stopped = server.shutdown().await?;
            // A stop that cut calls is not a clean exit: a supervisor should see it.
            anyhow::ensure!(
                stopped.cut_calls == 0,
                "{} calls were still in flight when the grace period (server.shutdown_grace_s) expired; they were cut",
                stopped.cut_calls
            );
            Ok(())
        }
        Command::FloorServer { grpc_addr, .. } => {
            use tokio_stream::StreamExt;
            let signal = shutdown_signal()?;
            let listener = tokio::net::TcpListener::bind(grpc_addr).await?;
            let addr = listener.local_addr()?;
            // Answers SERVING for the server as a whole ("").
            let (_reporter, health) = tonic_health::server::health_reporter();
            // As Ferrite's own listener: no Nagle delay on answers.
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
                if let Ok(stream) = &conn {
                    let _ = stream.set_nodelay(true);
                }
                conn
            });
            println!("floor listening grpc={addr}");
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = signal.await;
                })
                .await?;
            Ok(())
        }
        Command::Validate(args) => {
            let config = args.config()?;
            let checked =
                match ferrite_features::Registry::load(&config.repository, config.data_dir.as_deref()) {
                    Ok(registry) => match registry.check_sources() {
                        problems if problems.is_empty() => Ok(registry),
                        problems => Err(problems),
                    },
                    Err(problems) => Err(problems.0),
                };
            let registry = match checked {
                Ok(r) => r,
                Err(problems) => {
                    // Every problem on its own line, file:line first; no error chain.
                    for p in &problems {
                        eprintln!("{p}");
                    }
                    eprintln!("{} problem(s) in {}", problems.len(), config.repository.display());
                    std::process::exit(1);
                }
            };
            println!(
                "ok: {} entities, {} sources, {} feature views, {} request views, {} feature services in {}",
                registry.entities.len(),
                registry.sources.len(),
                registry.views.len(),
                registry.request_views.len(),
                registry.services.len(),
                config.repository.display()
            );
            Ok(())
        }
        Command::Materialize {
            features,
            start,
            end,
            views,
        } => {
            let config = features.config()?;
            let registry = config.registry()?;
            let (start, end) = (time_arg(&start)?, time_arg(&end)?);
            anyhow::ensure!(start < end, "--start must be before --end");
            let store = ferrite_features::online::open(&config.store_config()).await?;
            let reports = ferrite_features::materialize::materialize(
                &registry,
                store.as_ref(),
                &views,
                start,
                end,
                !features.quiet,
            )
            .await?;
            print_reports(&reports);
            Ok(())
        }
        Command::MaterializeIncremental { features, end, views } => {
            let config = features.config()?;
            let registry = config.registry()?;
            let end = match end {
                Some(e) => time_arg(&e)?,
                None => ferrite_features::value::now_micros(),
            };
            let store = ferrite_features::online::open(&config.store_config()).await?;
            let reports = ferrite_features::materialize::materialize_incremental(
                &registry,
                store.as_ref(),
                &views,
                end,
                !features.quiet,
            )
            .await?;
            print_reports(&reports);
            Ok(())
        }
        Command::TrainingSet {
            features,
            entities,
            service,
            feature,
            timestamp_column,
            out,
        } => {
            let config = features.config()?;
            tracing::debug!(
                large_os_pages = std::env::var(LARGE_PAGES).unwrap_or_default(),
                purge_delay = std::env::var("MIMALLOC_PURGE_DELAY").unwrap_or_default(),
                "training set: memory settings"
            );
            let registry = config.registry()?;
            let refs = match service {
                Some(s) => registry.service_refs(&s),
                None if !feature.is_empty() => registry.resolve_refs(&feature),
                None => Err("give --service NAME or --feature view:feature".to_string()),
            }
            .map_err(|e| anyhow::anyhow!(e))?;
            let report = ferrite_features::training::training_set_file(
                &registry,
                &refs,
                &entities,
                &timestamp_column,
                &out,
            )?;
            println!(
                "training set: {} rows x {} columns -> {} in {:.2} s ({:.0} rows/s; built in {:.2} s = {:.0} rows/s, then written)",
                report.rows,
                report.columns.len(),
                out.display(),
                report.elapsed.as_secs_f64(),
                report.rows_per_second(),
                report.built.as_secs_f64(),
                report.rows as f64 / report.built.as_secs_f64().max(1e-9)
            );
            Ok(())
        }
        Command::Experiment(args) => ferrite::experiment::run(&args),
        Command::BuildIndex(args) => {
            let started = std::time::Instant::now();
            let out = args.out.clone();
            let meta = tokio::task::spawn_blocking(move || ferrite::build_index::run(&args)).await??;
            println!(
                "built {}: {} items, model {} version {}, dim {}{}, factory {}, metric {:?}, in {:.1} s",
                out.display(),
                meta.item_count,
                meta.model,
                meta.model_version,
                meta.dim,
                meta.projection
                    .as_ref()
                    .map_or(String::new(), |p| format!(" (PCA to {})", p.out_dim)),
                meta.factory,
                meta.metric,
                started.elapsed().as_secs_f64()
            );
            Ok(())
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

fn print_reports(reports: &[ferrite_features::materialize::MaterializeReport]) {
    let (mut rows, mut written, mut secs) = (0u64, 0u64, 0f64);
    for r in reports {
        println!("{r}");
        rows += r.rows;
        written += r.written;
        secs += r.elapsed.as_secs_f64();
    }
    println!(
        "materialized {} view(s): {rows} rows, {written} written in {secs:.2} s ({:.0} rows/s)",
        reports.len(),
        rows as f64 / secs.max(1e-9)
    );
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
