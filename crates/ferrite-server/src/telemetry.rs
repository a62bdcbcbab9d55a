//! Logs (`tracing`) and metrics (Prometheus text on an HTTP endpoint).

use std::collections::HashMap;
use std::net::SocketAddr;
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
        handle
    })
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
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                handle.render(),
            )
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
}
