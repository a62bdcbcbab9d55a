//! `ferrite bench`: the load generator every benchmark of this project uses.
//!
//! Closed loop: `--concurrency` callers, each sending its next call when the last one
//! answered. Open loop: calls start on a fixed schedule (`--rate` per second) whatever the
//! server does, and each latency is measured from the call's *scheduled* start, so a server
//! that stalls is charged for the calls queued behind the stall (no coordinated omission).
//! Both stop at `--requests` calls or `--duration-s` seconds, whichever comes first.

mod feast;
mod fraud;
mod host;
mod procs;
mod raw;
mod rpc;
mod search;
mod search_raw;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

pub use host::{CpuShares, HostReport};
pub use procs::{ProcessCpu, ServerCpu};
pub use rpc::Rpc;
use rpc::Target;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server address, host:port. Only loopback addresses are sensible on a shared machine.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// The RPC to drive.
    #[arg(long, value_enum, default_value_t = Rpc::Health)]
    pub rpc: Rpc,
    /// Open loop at this many calls per second. Without it: closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: callers in parallel. Open loop: the most calls in flight at once
    /// (calls beyond it are counted as `skipped`, never silently dropped).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Stop after this many measured calls.
    #[arg(long, default_value_t = 10_000)]
    pub requests: u64,
    /// Stop after this many seconds of measurement, whatever the count.
    #[arg(long, default_value_t = 30.0)]
    pub duration_s: f64,
    /// Unmeasured calls sent first (closed loop, one caller) to warm connections and caches.
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// HTTP/2 connections to spread the calls over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// The largest HTTP/2 frame the client accepts (SETTINGS_MAX_FRAME_SIZE; the protocol's
    /// default is 16 KiB). The server writes a response in frames of at most this size,
    /// one socket write each.
    #[arg(long, default_value_t = 16_384)]
    pub max_frame_size: u32,
    /// Rows per model request (the model RPCs send `[batch, width]` inputs); transactions
    /// per `score-fraud-batch` call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// The model the model RPCs call, instead of their example model (same inputs needed).
    #[arg(long)]
    pub model: Option<String>,
    /// Entity ids are drawn from 1..=keys with a Zipf distribution (for RPCs that take ids).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Zipf exponent; 0 is uniform.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// Seed for the key sequence.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also measure the empty-RPC floor (the gRPC health check; for the Feast RPCs, Feast's
    /// `GET /health`) first, with the same settings.
    #[arg(long)]
    pub with_floor: bool,
    /// With `--with-floor`: call the floor on this server instead of `--addr` (e.g. a bare
    /// tonic server answering only the health check, `ferrite floor-server`), its legs still
    /// alternated with the run's, its CPU time read from `--floor-pid`.
    #[arg(long, requires = "with_floor")]
    pub floor_addr: Option<SocketAddr>,
    /// With `--floor-addr`: the floor server's processes, as `--server-pid` is the run's.
    #[arg(long, value_delimiter = ',', requires = "floor_addr")]
    pub floor_pid: Vec<u32>,
    /// With `--with-floor`: alternate the floor and the run this many times, each leg with
    /// its share of `--requests` and `--duration-s`, and report both pooled over all legs
    /// plus each round's gap. A host whose speed drifts (a shared VM) then slows both alike.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Model RPCs: also call the model in this process, with no server in between (batch 1
    /// and 64, up to `--requests` calls and `--duration-s` seconds a leg, one thread), and
    /// report the run against it. With `--rate`,
    /// batch 1 is also called on the run's schedule, the thread asleep in between: the
    /// model's own cost at that rate, caches colder than back to back.
    /// `visual-search-embedding`: search the server's catalog index in this process instead
    /// (`--server-config`; the same queries in the order the run's first caller sends them,
    /// `--top-k` and filter; batch 1, one thread; with `--rate`, also on the run's schedule).
    /// `recommend`, `price`: each model run one call of the pipeline makes, at the rows it
    /// runs (Price: the demand model on 50 candidate prices; Recommend: the user tower on one
    /// row, the ranker on 200), and Recommend's search of 200 candidates over an exact index
    /// of the sample's 500 items, back to back and with `--rate` on the run's schedule; the
    /// report adds their p50s up.
    #[arg(long)]
    pub with_raw: bool,
    /// The server's config file: `--with-raw` on `visual-search-embedding` loads its
    /// `[search] index_dir` and searches it with its `[search]` settings.
    #[arg(long)]
    pub server_config: Option<PathBuf>,
    /// Threads of the load generator's async runtime; 0 is one per core. On a machine the
    /// server shares, fewer client threads leave it more of the cores.
    #[arg(long, default_value_t = 0)]
    pub client_threads: usize,
    /// The model repository `--with-raw` loads the model from.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// The transactions the fraud RPCs send (Parquet, the columns of the sample's
    /// transactions.parquet); key k sends the k-th, wrapping around.
    #[arg(long, default_value = "features/data/transactions.parquet")]
    pub transactions: PathBuf,
    /// The feature definitions (`*.toml`) that name the features `feast-features` asks for.
    #[arg(long, default_value = "features")]
    pub feature_repo: PathBuf,
    /// The images `visual-search` sends (JPEG, PNG or WebP files).
    #[arg(long, default_value = "data/photos")]
    pub images: PathBuf,
    /// The embeddings `visual-search-embedding` sends (a float32 `[n, d]` `.npy` file).
    #[arg(long)]
    pub queries: Option<PathBuf>,
    /// Items per search answer.
    #[arg(long, default_value_t = 10)]
    pub top_k: u32,
    /// Search only these categories (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub filter_category: Vec<String>,
    /// The server's processes (all of them: e.g. the server and its Redis), comma-separated:
    /// their CPU time over each measured leg is read from /proc and reported per call.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub rpc: String,
    /// "closed" or "open".
    pub mode: String,
    pub target_rate: Option<f64>,
    pub concurrency: usize,
    pub connections: usize,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    /// Closed loop: calls still in flight when `--duration-s` ended, cut at the bound. Not
    /// errors (the server never answered with one) and not in the latency figures (their
    /// latency is unknown); counted apart so that a short run does not report failures the
    /// server never made.
    pub cut: u64,
    /// Answers (for score-fraud-batch: transactions) that said they were a fallback, not a
    /// model output.
    pub fallbacks: u64,
    /// Feature reads: the share of values answered present, in percent (none for other RPCs).
    pub present_pct: Option<f64>,
    /// Open loop: calls not started because `concurrency` calls were already in flight.
    pub skipped: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub duration_s: f64,
    pub rps: f64,
    pub latency_us: Percentiles,
    /// With `--server-pid`: the server's CPU time over the measured calls.
    pub server_cpu: Option<ServerCpu>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// Everything one `ferrite bench` invocation measured: the raw model and the floor (if
/// asked) and the RPC.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub addr: String,
    /// `--floor-addr`: where the floor was measured, when not at `addr`.
    pub floor_addr: Option<String>,
    /// Rows per model request.
    pub batch: usize,
    pub raw: Vec<raw::RawReport>,
    pub floor: Option<RunReport>,
    pub run: RunReport,
    /// With a floor: each round's floor and run, in the order they ran.
    pub rounds: Vec<Round>,
    /// Steal and halt polling over the whole invocation.
    pub host: HostReport,
}

/// One round of alternated legs: the floor, then the run.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub floor_us: Percentiles,
    pub run_us: Percentiles,
    /// The machine's CPU time over the round (where `/proc/stat` exists).
    pub cpu: Option<CpuShares>,
    /// With `--server-pid` (and `--floor-pid` for a floor on its own server): the servers'
    /// CPU time per answered call in this round's floor and run legs, in µs.
    pub floor_cpu_us: Option<f64>,
    pub run_cpu_us: Option<f64>,
}

impl Round {
    fn gap_text(&self, label: &str) -> String {
        let steal = self
            .cpu
            .map(|c| format!("  steal {:.1} %", c.steal_pct))
            .unwrap_or_default();
        let cpu = match (self.floor_cpu_us, self.run_cpu_us) {
            (Some(f), Some(r)) => format!("  CPU/call floor {f:.1}µs run {r:.1}µs"),
            _ => String::new(),
        };
        format!(
            "{label:<13}floor p50={:.1}µs p99={:.1}µs  run p50={:.1}µs p99={:.1}µs  gap p50={:+.1}µs p99={:+.1}µs{cpu}{steal}\n",
            self.floor_us.p50,
            self.floor_us.p99,
            self.run_us.p50,
            self.run_us.p99,
            self.run_us.p50 - self.floor_us.p50,
            self.run_us.p99 - self.floor_us.p99,
        )
    }
}

impl Report {
    /// The raw leg of the run's batch size run by ONNX Runtime or FAISS (not the trees in
    /// Rust): back to back, or on the run's schedule when `paced`.
    fn raw_leg(&self, paced: bool) -> Option<&raw::RawReport> {
        self.raw
            .iter()
            .find(|r| !r.trees && !r.stage && r.batch == self.batch && r.rate.is_some() == paced)
    }

    /// A pipeline call's raw work (`--with-raw` on recommend or price): the p50s of the model
    /// runs and the search one call makes, added up, back to back or on the run's schedule.
    pub fn raw_stages_p50(&self, paced: bool) -> Option<f64> {
        let legs: Vec<f64> = self
            .raw
            .iter()
            .filter(|r| r.stage && r.rate.is_some() == paced)
            .map(|r| r.latency_us.p50)
            .collect();
        (!legs.is_empty()).then(|| legs.iter().sum())
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let line = |r: &RunReport| {
            let rate = r.target_rate.map(|x| format!(" at {x}/s")).unwrap_or_default();
            format!(
                "{:<14} {:<6}{} c={} conns={}  sent={} ok={} err={} cut={} fallback={} skipped={}  {:.0} rps  \
                 p50={:.1}µs p90={:.1}µs p99={:.1}µs p99.9={:.1}µs max={:.1}µs{}\n",
                r.rpc,
                r.mode,
                rate,
                r.concurrency,
                r.connections,
                r.sent,
                r.ok,
                r.errors,
                r.cut,
                r.fallbacks,
                r.skipped,
                r.rps,
                r.latency_us.p50,
                r.latency_us.p90,
                r.latency_us.p99,
                r.latency_us.p999,
                r.latency_us.max,
                r.present_pct
                    .map(|p| format!("  values present {p:.1} %"))
                    .unwrap_or_default()
            )
        };
        out.push_str(&format!("ferrite bench against {}", self.addr));
        if let Some(floor) = &self.floor_addr {
            out.push_str(&format!(" (floor: {floor})"));
        }
        out.push('\n');
        for raw in &self.raw {
            out.push_str(&raw.to_text());
        }
        if let Some(b2b) = self.raw_stages_p50(false) {
            let paced = self
                .raw_stages_p50(true)
                .map(|p| format!(", {p:.1}µs at the run's rate"))
                .unwrap_or_default();
            out.push_str(&format!(
                "raw    one call's model runs and search, p50s added: {b2b:.1}µs back to back{paced}\n"
            ));
        }
        let per = (self.run.rpc == Rpc::ScoreFraudBatch.name()).then_some((self.batch, "transaction"));
        let cpu = |r: &RunReport, per: Option<(usize, &str)>| {
            r.server_cpu
                .as_ref()
                .map(|c| format!("       {}", c.to_text(r.ok + r.errors, per)))
                .unwrap_or_default()
        };
        if let Some(floor) = &self.floor {
            out.push_str(&format!("floor  {}", line(floor)));
            out.push_str(&cpu(floor, None));
        }
        out.push_str(&format!("run    {}", line(&self.run)));
        out.push_str(&cpu(&self.run, per));
        if self.rounds.len() > 1 {
            for (i, round) in self.rounds.iter().enumerate() {
                out.push_str(&round.gap_text(&format!("round {}", i + 1)));
            }
        }
        if let Some(floor) = &self.floor {
            let pooled = Round {
                floor_us: floor.latency_us.clone(),
                run_us: self.run.latency_us.clone(),
                cpu: None,
                floor_cpu_us: floor.server_cpu.as_ref().map(|c| c.us_per_call),
                run_cpu_us: self.run.server_cpu.as_ref().map(|c| c.us_per_call),
            };
            out.push_str(&pooled.gap_text("vs floor"));
            let paced = self
                .raw_leg(true)
                .map(|r| r.latency_us.p50)
                .or(self.raw_stages_p50(true));
            if let Some(paced) = paced {
                out.push_str(&format!(
                    "less model   gap p50 {:+.1}µs - raw at the run's rate p50 {:.1}µs = {:+.1}µs of work around the model\n",
                    self.run.latency_us.p50 - floor.latency_us.p50,
                    paced,
                    self.run.latency_us.p50 - floor.latency_us.p50 - paced,
                ));
            }
        }
        if let Some(raw) = self.raw_leg(false) {
            out.push_str(&format!(
                "vs raw throughput {:.1} % of raw batch-{b} calls/s ({:.0} of {:.0}); p50 {:.2}× p99 {:.2}× raw batch {b}\n",
                100.0 * self.run.rps / raw.calls_per_s,
                self.run.rps,
                raw.calls_per_s,
                self.run.latency_us.p50 / raw.latency_us.p50.max(1.0),
                self.run.latency_us.p99 / raw.latency_us.p99.max(1.0),
                b = self.batch
            ));
        }
        if let Some(paced) = self.raw_leg(true) {
            out.push_str(&format!(
                "vs raw at the run's rate  p50 {:.2}× p99 {:.2}× raw batch {}\n",
                self.run.latency_us.p50 / paced.latency_us.p50.max(1.0),
                self.run.latency_us.p99 / paced.latency_us.p99.max(1.0),
                self.batch
            ));
        }
        for (code, n) in &self.run.errors_by_code {
            out.push_str(&format!("  error {code}: {n}\n"));
        }
        out.push_str(&self.host.to_text());
        out
    }
}

/// Runs the benchmark `args` describes.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(args.duration_s > 0.0, "--duration-s must be positive");
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be a positive number");
    }
    anyhow::ensure!(
        args.batch == 1 || args.rpc != Rpc::ScoreFraud,
        "score-fraud sends one transaction per call; score-fraud-batch sends --batch"
    );
    for (pid, sample) in args.server_pid.iter().zip(procs::read_all(&args.server_pid)) {
        anyhow::ensure!(sample.is_some(), "--server-pid {pid}: no such process in /proc");
    }
    let cpu_at_start = host::CpuTimes::now();
    let raw = match (args.with_raw, args.rpc.raw_model()) {
        (false, _) => Vec::new(),
        (true, None) if args.rpc == Rpc::VisualSearchEmbedding => {
            let (Some(config), Some(queries)) = (args.server_config.clone(), args.queries.clone()) else {
                anyhow::bail!("--with-raw on visual-search-embedding needs --server-config and --queries");
            };
            let (categories, top_k) = (args.filter_category.clone(), args.top_k as usize);
            let (calls, duration_s, rate) = (args.requests, args.duration_s, args.rate);
            // The keys the run's first caller (or its open-loop pacer) draws, in order.
            let mut stream = Keys::new(args, 0)?;
            let keys: Vec<u64> = (0..calls.min(1_000_000)).map(|_| stream.next()).collect();
            tokio::task::spawn_blocking(move || {
                search_raw::measure(&search_raw::Plan {
                    server_config: &config,
                    queries: &queries,
                    top_k,
                    categories: &categories,
                    calls,
                    duration_s,
                    rate,
                    keys: &keys,
                })
            })
            .await??
        }
        (true, None) if !args.rpc.pipeline_stages().is_empty() => {
            let (models, rpc, calls) = (args.models.clone(), args.rpc, args.requests);
            let (rate, duration_s) = (args.rate, args.duration_s);
            tokio::task::spawn_blocking(move || {
                raw::pipeline(
                    &models,
                    rpc.pipeline_stages(),
                    rpc.pipeline_search(),
                    calls,
                    rate,
                    duration_s,
                )
            })
            .await??
        }
        (true, None) => anyhow::bail!(
            "--with-raw needs a model or pipeline RPC, not {}",
            args.rpc.name()
        ),
        (true, Some((default, input, width))) => {
            let model = args.model.clone().unwrap_or_else(|| default.to_string());
            let (models, calls, batch) = (args.models.clone(), args.requests, args.batch);
            let (rate, duration_s) = (args.rate, args.duration_s);
            tokio::task::spawn_blocking(move || {
                raw::measure(&raw::Plan {
                    models: &models,
                    model: &model,
                    input,
                    width,
                    calls,
                    batch,
                    rate,
                    duration_s,
                    only_batch: false,
                })
            })
            .await??
        }
    };
    let transactions = if args.rpc.takes_transactions() {
        let (path, limit) = (args.transactions.clone(), args.keys);
        let loaded = tokio::task::spawn_blocking(move || fraud::Transactions::load(&path, limit)).await??;
        Some(Arc::new(loaded))
    } else {
        None
    };
    let queries = if args.rpc.takes_queries() {
        let filter = (!args.filter_category.is_empty()).then(|| ferrite_proto::ferrite::v1::SearchFilter {
            categories: args.filter_category.clone(),
            ..Default::default()
        });
        let (images, npy, top_k, rpc) = (args.images.clone(), args.queries.clone(), args.top_k, args.rpc);
        let loaded = tokio::task::spawn_blocking(move || match (rpc, npy) {
            (Rpc::VisualSearch, _) => search::Queries::images(&images, top_k, filter),
            (_, Some(npy)) => search::Queries::embeddings(&npy, top_k, filter),
            (_, None) => anyhow::bail!("visual-search-embedding needs --queries FILE.npy"),
        })
        .await??;
        Some(Arc::new(loaded))
    } else {
        None
    };
    let feast = if args.rpc.is_feast() {
        let (addr, repo) = (args.addr, args.feature_repo.clone());
        let client = tokio::task::spawn_blocking(move || feast::FeastClient::new(addr, &repo)).await??;
        Some(Arc::new(client))
    } else {
        None
    };
    let channels: Vec<Arc<Target>> = connect(args)
        .await?
        .into_iter()
        .map(|c| {
            Arc::new(Target::new(
                c,
                args.model.clone(),
                args.batch,
                transactions.clone(),
                queries.clone(),
                feast.clone(),
            ))
        })
        .collect();
    let (floor, run, rounds) = if args.with_floor {
        let floor = match args.floor_addr {
            Some(addr) => Some(floor_target(args, addr).await?),
            None => None,
        };
        alternated(args, &channels, floor.as_ref()).await?
    } else {
        (
            None,
            measure(args, args.rpc, &channels).await?.report(args, args.rpc),
            Vec::new(),
        )
    };
    let host = HostReport {
        cpu: host::CpuTimes::shares_since(cpu_at_start),
        guest_halt_poll_ns: HostReport::read_halt_poll(),
        client_cpus: HostReport::read_client_cpus(),
    };
    Ok(Report {
        addr: args.addr.to_string(),
        floor_addr: args.floor_addr.filter(|_| args.with_floor).map(|a| a.to_string()),
        batch: args.batch,
        raw,
        floor,
        run,
        rounds,
        host,
    })
}

/// The floor's own server (`--floor-addr`) and its channels; its processes are `--floor-pid`.
struct FloorTarget {
    addr: SocketAddr,
    channels: Vec<Arc<Target>>,
}

impl FloorTarget {
    /// `leg`'s settings for a floor leg on this server: its address and its processes.
    fn leg_args(&self, args: &BenchArgs, leg: &BenchArgs) -> BenchArgs {
        BenchArgs {
            addr: self.addr,
            server_pid: args.floor_pid.clone(),
            ..leg.clone()
        }
    }
}

async fn floor_target(args: &BenchArgs, addr: SocketAddr) -> anyhow::Result<FloorTarget> {
    for (pid, sample) in args.floor_pid.iter().zip(procs::read_all(&args.floor_pid)) {
        anyhow::ensure!(sample.is_some(), "--floor-pid {pid}: no such process in /proc");
    }
    let channels = connect(&BenchArgs { addr, ..args.clone() })
        .await?
        .into_iter()
        .map(|c| Arc::new(Target::new(c, None, 1, None, None, None)))
        .collect();
    Ok(FloorTarget { addr, channels })
}

/// The floor and the run, alternated `--rounds` times; the floor on its own server when
/// `floor` is given.
async fn alternated(
    args: &BenchArgs,
    channels: &[Arc<Target>],
    floor_target: Option<&FloorTarget>,
) -> anyhow::Result<(Option<RunReport>, RunReport, Vec<Round>)> {
    let n = u64::from(args.rounds.max(1));
    anyhow::ensure!(args.requests >= n, "--requests must be at least --rounds");
    let (mut floor, mut run, mut rounds): (Option<Leg>, Option<Leg>, Vec<Round>) = (None, None, Vec::new());
    for round in 0..n {
        let mut leg_args = args.clone();
        // The last leg takes what the division leaves.
        leg_args.requests = args.requests / n + if round == n - 1 { args.requests % n } else { 0 };
        leg_args.duration_s = args.duration_s / n as f64;
        // Every leg draws its own keys; only the first of each kind is warmed up.
        leg_args.seed = args.seed.wrapping_add(round.wrapping_mul(1_000_003));
        if round > 0 {
            leg_args.warmup = 0;
        }
        let before = host::CpuTimes::now();
        let f = match floor_target {
            Some(target) => {
                let floor_args = target.leg_args(args, &leg_args);
                measure(&floor_args, args.rpc.floor(), &target.channels).await?
            }
            None => measure(&leg_args, args.rpc.floor(), channels).await?,
        };
        let r = measure(&leg_args, args.rpc, channels).await?;
        rounds.push(Round {
            floor_us: percentiles(&f.tally.histogram),
            run_us: percentiles(&r.tally.histogram),
            cpu: host::CpuTimes::shares_since(before),
            floor_cpu_us: f.server_cpu().map(|c| c.us_per_call),
            run_cpu_us: r.server_cpu().map(|c| c.us_per_call),
        });
        floor = Some(match floor {
            Some(all) => all.merge(f),
            None => f,
        });
        run = Some(match run {
            Some(all) => all.merge(r),
            None => r,
        });
    }
    let (floor, run) = (
        floor.expect("one round at least"),
        run.expect("one round at least"),
    );
    Ok((
        Some(floor.report(args, args.rpc.floor())),
        run.report(args, args.rpc),
        rounds,
    ))
}

async fn connect(args: &BenchArgs) -> anyhow::Result<Vec<Channel>> {
    if args.rpc.is_feast() {
        // HTTP/1.1: the Feast client opens its own connections. Fail now, as a gRPC target
        // does, if nothing listens; the gRPC channel is never used.
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(args.addr))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))
            .and_then(|c| c.map_err(anyhow::Error::from))
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        return Ok(vec![
            Endpoint::from_shared(format!("http://{}", args.addr))?.connect_lazy(),
        ]);
    }
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let channel = Endpoint::from_shared(format!("http://{}", args.addr))?
            .tcp_nodelay(true)
            .max_frame_size(args.max_frame_size)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// What one caller saw.
struct Tally {
    histogram: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// Calls cut off by the end of the run (see `RunReport::cut`).
    cut: u64,
    fallbacks: u64,
    values: u64,
    present: u64,
}

impl Tally {
    /// Calls answered, ok or with an error.
    fn answered(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }

    fn new() -> Self {
        // 1 µs to 60 s at 3 significant figures.
        let histogram = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        Tally {
            histogram,
            ok: 0,
            errors: BTreeMap::new(),
            cut: 0,
            fallbacks: 0,
            values: 0,
            present: 0,
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<rpc::Outcome, tonic::Status>) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        self.histogram.saturating_record(us);
        match outcome {
            Ok(o) => {
                self.ok += 1;
                self.fallbacks += u64::from(o.fallbacks);
                self.values += u64::from(o.values);
                self.present += u64::from(o.present);
            }
            Err(status) => *self.errors.entry(format!("{:?}", status.code())).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms share bounds");
        self.ok += other.ok;
        self.cut += other.cut;
        self.fallbacks += other.fallbacks;
        self.values += other.values;
        self.present += other.present;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

/// A deterministic Zipf-distributed sequence of entity ids in 1..=keys.
struct Keys {
    rng: StdRng,
    zipf: Zipf<f64>,
}

impl Keys {
    fn new(args: &BenchArgs, stream: u64) -> anyhow::Result<Self> {
        let zipf = Zipf::new(args.keys.max(1) as f64, args.zipf_s).context("--keys and --zipf-s")?;
        Ok(Keys {
            rng: StdRng::seed_from_u64(args.seed.wrapping_add(stream)),
            zipf,
        })
    }

    fn next(&mut self) -> u64 {
        self.zipf.sample(&mut self.rng) as u64
    }
}

/// What one leg (one RPC, one stretch of time) measured.
struct Leg {
    tally: Tally,
    sent: u64,
    skipped: u64,
    elapsed_s: f64,
    connections: usize,
    /// With `--server-pid`: each process's CPU time over the measured calls.
    server_cpu: Option<Vec<ProcessCpu>>,
}

impl Leg {
    /// The servers' CPU time over the leg, per answered call (ok or error).
    fn server_cpu(&self) -> Option<ServerCpu> {
        self.server_cpu
            .clone()
            .map(|p| ServerCpu::new(p, self.tally.answered(), self.elapsed_s))
    }

    fn merge(mut self, other: Leg) -> Leg {
        self.tally.merge(other.tally);
        self.sent += other.sent;
        self.skipped += other.skipped;
        self.elapsed_s += other.elapsed_s;
        if let (Some(mine), Some(theirs)) = (&mut self.server_cpu, &other.server_cpu) {
            procs::add(mine, theirs);
        }
        self
    }

    fn report(self, args: &BenchArgs, rpc: Rpc) -> RunReport {
        let server_cpu = self.server_cpu();
        let tally = self.tally;
        let errors: u64 = tally.errors.values().sum();
        RunReport {
            rpc: rpc.name().to_string(),
            mode: if args.rate.is_some() { "open" } else { "closed" }.to_string(),
            target_rate: args.rate,
            concurrency: args.concurrency,
            connections: self.connections,
            sent: self.sent,
            ok: tally.ok,
            errors,
            cut: tally.cut,
            fallbacks: tally.fallbacks,
            present_pct: (tally.values > 0).then(|| 100.0 * tally.present as f64 / tally.values as f64),
            skipped: self.skipped,
            rps: tally.answered() as f64 / self.elapsed_s,
            duration_s: self.elapsed_s,
            latency_us: percentiles(&tally.histogram),
            errors_by_code: tally.errors,
            server_cpu,
        }
    }
}

async fn measure(args: &BenchArgs, rpc: Rpc, channels: &[Arc<Target>]) -> anyhow::Result<Leg> {
    // Warm-up: one caller, not measured, stops at the first error (which the run will report).
    let mut keys = Keys::new(args, u64::MAX)?;
    for _ in 0..args.warmup {
        if rpc.call(&channels[0], keys.next()).await.is_err() {
            break;
        }
    }
    let budget = Duration::from_secs_f64(args.duration_s);
    // Read around the measured calls only; an open loop's last answers arrive before it ends.
    let cpu_before = procs::read_all(&args.server_pid);
    let start = Instant::now();
    let (tally, sent, skipped) = match args.rate {
        None => closed_loop(args, rpc, channels, budget).await?,
        Some(rate) => open_loop(args, rpc, channels, rate, budget).await?,
    };
    let elapsed_s = start.elapsed().as_secs_f64();
    let server_cpu = (!args.server_pid.is_empty())
        .then(|| procs::between(&cpu_before, &procs::read_all(&args.server_pid), &args.server_pid));
    Ok(Leg {
        tally,
        sent,
        skipped,
        elapsed_s,
        connections: channels.len(),
        server_cpu,
    })
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.5) as f64,
        p90: h.value_at_quantile(0.9) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        p999: h.value_at_quantile(0.999) as f64,
        max: h.max() as f64,
        mean: h.mean(),
    }
}

async fn closed_loop(
    args: &BenchArgs,
    rpc: Rpc,
    channels: &[Arc<Target>],
    budget: Duration,
) -> anyhow::Result<(Tally, u64, u64)> {
    let deadline = tokio::time::Instant::now() + budget;
    let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency {
        let channel = channels[w % channels.len()].clone();
        let issued = issued.clone();
        let limit = args.requests;
        let mut keys = Keys::new(args, w as u64)?;
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            while tokio::time::Instant::now() < deadline
                && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < limit
            {
                let key = keys.next();
                let t0 = Instant::now();
                // A call that outlives the run's bound is cut off and counted apart: neither
                // an error nor a latency.
                match tokio::time::timeout_at(deadline, rpc.call(&channel, key)).await {
                    Ok(outcome) => tally.record(t0.elapsed(), outcome),
                    Err(_) => tally.cut += 1,
                }
            }
            tally
        }));
    }
    let mut total = Tally::new();
    for w in workers {
        total.merge(w.await?);
    }
    let sent = total.answered() + total.cut;
    Ok((total, sent, 0))
}

async fn open_loop(
    args: &BenchArgs,
    rpc: Rpc,
    channels: &[Arc<Target>],
    rate: f64,
    budget: Duration,
) -> anyhow::Result<(Tally, u64, u64)> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let in_flight = Arc::new(Semaphore::new(args.concurrency));
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Duration, Result<rpc::Outcome, tonic::Status>)>();
    let mut keys = Keys::new(args, 0)?;
    let channels = channels.to_vec();
    let requests = args.requests;
    let runtime = tokio::runtime::Handle::current();
    // Pacing runs on its own thread: an OS sleep wakes within tens of microseconds, where
    // tokio's timer wheel rounds to whole milliseconds and would bias every latency.
    let pacer = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let end = start + budget;
        let (mut sent, mut skipped) = (0u64, 0u64);
        for i in 0..requests {
            let scheduled = start + interval.mul_f64(i as f64);
            if scheduled >= end {
                break;
            }
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                skipped += 1;
                continue;
            };
            sent += 1;
            let channel = channels[i as usize % channels.len()].clone();
            let key = keys.next();
            let tx = tx.clone();
            let give_up = tokio::time::Instant::from_std(end + Duration::from_secs(5));
            runtime.spawn(async move {
                let outcome = match tokio::time::timeout_at(give_up, rpc.call(&channel, key)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(tonic::Status::deadline_exceeded(
                        "no answer 5 s after the run ended",
                    )),
                };
                // Measured from the scheduled start, not from when the call was actually sent.
                let _ = tx.send((scheduled.elapsed(), outcome));
                drop(permit);
            });
        }
        (sent, skipped)
    });
    let mut tally = Tally::new();
    while let Some((latency, outcome)) = rx.recv().await {
        tally.record(latency, outcome);
    }
    let (sent, skipped) = pacer.await?;
    Ok((tally, sent, skipped))
}
