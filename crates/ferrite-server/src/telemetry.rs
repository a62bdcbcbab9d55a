//! Logs (`tracing`) and metrics (Prometheus text on an HTTP endpoint).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global `tracing` subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init_logging(config: &LogConfig) {
    init(config, false)
}

/// The same, to stderr: for the offline commands, whose stdout is their result.
pub fn init_logging_stderr(config: &LogConfig) {
    init(config, true)
}

fn init(config: &LogConfig, stderr: bool) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(!stderr && std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match (config.format, stderr) {
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Json, false) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder.with_writer(std::io::stderr).try_init(),
        (LogFormat::Json, true) => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .try_init(),
    };
}

/// Latency buckets in seconds, from 5 µs (a small model's run) to 1 s: our budget is
/// single-digit milliseconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
];

/// Rows per model run, up to the largest `max_batch_size` worth batching.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Keys per online-store call: one entity of one view up to a large push.
const STORE_ROWS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 200.0, 1000.0, 10_000.0, 100_000.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("ferrite_model_batch_size".into()),
                    BATCH_SIZE_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("ferrite_online_store_rows".into()),
                    STORE_ROWS_BUCKETS,
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (e.g. by a test harness); this one then
        // still renders what is recorded through it, which is nothing, rather than failing.
        let _ = metrics::set_global_recorder(recorder);
        start_upkeep(handle.clone());
        handle
    })
}

/// How often the recorder's upkeep runs. Every histogram sample is kept in the recorder, one
/// per call, until an upkeep (or a scrape) folds it into the buckets: without this, memory
/// grew with every call until someone scraped `/metrics`. What it holds is now at most the
/// samples of one period.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

static UPKEEP_RUNS: AtomicU64 = AtomicU64::new(0);

/// How many background upkeeps have finished in this process (for tests: wait for the next).
pub fn upkeep_runs() -> u64 {
    UPKEEP_RUNS.load(Ordering::Acquire)
}

/// One thread for the process, not a task: the recorder is process-wide and outlives any one
/// server's runtime.
fn start_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
                UPKEEP_RUNS.fetch_add(1, Ordering::Release);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples are folded only when /metrics is scraped");
    }
}

/// The Prometheus text of the standard process metrics (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, ...), read from `/proc/self`. Written by hand because the
/// recorder's counters hold integers and CPU seconds are fractional. Empty where `/proc` is
/// missing; a file that cannot be read leaves its lines out.
pub fn process_metrics() -> String {
    let mut out = String::new();
    let Some(stat) = process::Stat::read() else {
        return out;
    };
    let mut write = |name: &str, kind: &str, help: &str, value: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    write(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stat.cpu_seconds(),
    );
    if let Some(bytes) = process::resident_bytes() {
        write(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            bytes as f64,
        );
    }
    write(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stat.virtual_bytes as f64,
    );
    if let Some(start) = stat.start_time_seconds() {
        write(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        write(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    write(
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
        stat.threads as f64,
    );
    out
}

/// A small reader of `/proc/self` (Linux).
pub mod process {
    /// The kernel reports CPU and start times in clock ticks of `USER_HZ`, which is 100 on
    /// every Linux architecture's user-space ABI (Prometheus' own process collector assumes
    /// the same); reading `sysconf(_SC_CLK_TCK)` would need `unsafe`, which this crate forbids.
    const USER_HZ: f64 = 100.0;

    /// The fields of `/proc/self/stat` the metrics use.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Stat {
        pub utime_ticks: u64,
        pub stime_ticks: u64,
        pub threads: u64,
        pub start_ticks: u64,
        pub virtual_bytes: u64,
    }

    impl Stat {
        pub fn read() -> Option<Stat> {
            Stat::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
        }

        /// Parses the text of `/proc/<pid>/stat`. The command name (field 2) sits in
        /// parentheses and may hold spaces or parentheses itself, so fields are counted from
        /// the last `)`.
        pub fn parse(text: &str) -> Option<Stat> {
            let rest = &text[text.rfind(')')? + 1..];
            // `rest` starts at field 3 (state): field n is at index n - 3.
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
            Some(Stat {
                utime_ticks: field(14)?,
                stime_ticks: field(15)?,
                threads: field(20)?,
                start_ticks: field(22)?,
                virtual_bytes: field(23)?,
            })
        }

        /// User and system CPU time, seconds.
        pub fn cpu_seconds(&self) -> f64 {
            (self.utime_ticks + self.stime_ticks) as f64 / USER_HZ
        }

        /// When the process started, seconds since the Unix epoch: boot time plus the
        /// start's ticks since boot.
        pub fn start_time_seconds(&self) -> Option<f64> {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let boot: u64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("btime "))?
                .trim()
                .parse()
                .ok()?;
            Some(boot as f64 + self.start_ticks as f64 / USER_HZ)
        }
    }

    /// Resident memory (`VmRSS` of `/proc/self/status`), bytes.
    pub fn resident_bytes() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kb * 1024)
    }
}

/// Serves `GET /metrics` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = prometheus();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            handle.run_upkeep();
            let mut text = handle.render();
            text.push_str(&process_metrics());
            ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// A tower layer that counts every gRPC call and records its latency by method and status.
#[derive(Clone, Default)]
pub struct GrpcMetricsLayer {
    series: Arc<Series>,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            series: self.series.clone(),
        }
    }
}

/// The counter and histogram of each (method, status) seen, registered on first use: looking
/// a labelled series up in the recorder on every call costs a few allocations.
#[derive(Default)]
struct Series {
    by_method: RwLock<HashMap<String, HashMap<tonic::Code, Handles>>>,
}

/// A call counter and a latency histogram.
type Handles = (metrics::Counter, metrics::Histogram);

impl Series {
    fn record(&self, method: &str, code: tonic::Code, seconds: f64) {
        let known = self
            .by_method
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(method)
            .and_then(|codes| codes.get(&code))
            .cloned();
        let (counter, histogram) = known.unwrap_or_else(|| {
            let labels = [("method", method.to_string()), ("status", format!("{code:?}"))];
            let handles = (
                metrics::counter!("ferrite_grpc_requests_total", &labels),
                metrics::histogram!("ferrite_grpc_request_duration_seconds", &labels),
            );
            self.by_method
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(method.to_string())
                .or_default()
                .insert(code, handles.clone());
            handles
        });
        counter.increment(1);
        histogram.record(seconds);
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    series: Arc<Series>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The path is kept as the URI's shared bytes: no copy unless a new series is made.
        let uri = req.uri().clone();
        let series = self.series.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(response) => grpc_code(response.headers()),
                Err(_) => tonic::Code::Unavailable,
            };
            // Paths nobody serves would each make a new series: fold them into one.
            let method = if code == tonic::Code::Unimplemented {
                "unknown"
            } else {
                uri.path()
            };
            series.record(method, code, start.elapsed().as_secs_f64());
            result
        })
    }
}

/// A failed unary call carries `grpc-status` in its headers ("trailers-only"); a successful
/// one carries it in trailers, after the body, so no status header means OK.
fn grpc_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
        .unwrap_or(tonic::Code::Ok)
}

/// Binds a TCP listener and says which address it really got (port 0 picks one).
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for {what} on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_comes_from_headers_and_defaults_to_ok() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_code(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(grpc_code(&headers), tonic::Code::InvalidArgument);
    }

    #[test]
    fn proc_stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis, as a process may name itself.
        let text = "4242 (tokio-rt (w) 1) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    250 130 0 0 20 0 17 0 98765 123456789 3000 18446744073709551615";
        let stat = process::Stat::parse(text).unwrap();
        assert_eq!(
            stat,
            process::Stat {
                utime_ticks: 250,
                stime_ticks: 130,
                threads: 17,
                start_ticks: 98765,
                virtual_bytes: 123456789,
            }
        );
        assert_eq!(stat.cpu_seconds(), 3.8);
        assert_eq!(process::Stat::parse("4242 (cut short) S 1 2"), None);
    }

    #[test]
    fn process_metrics_read_this_process() {
        let text = process_metrics();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            let value: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
                .parse()
                .unwrap();
            assert!(value >= 0.0, "{name} {value}");
        }
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        let rss = process::resident_bytes().unwrap();
        assert!(rss > 1024 * 1024, "a test process holds more than 1 MiB: {rss}");
    }
}
