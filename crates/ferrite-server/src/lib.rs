//! The Ferrite gRPC server: configuration, the tonic services, health, reflection, metrics
//! and graceful shutdown.
//!
//! Owns the transport edge: services translate wire types and delegate to the domain crates
//! (`ferrite-models`, `ferrite-features`, `ferrite-search`); domain errors become gRPC
//! statuses in `status.rs` alone. It owns no model, feature or index logic.

mod admission;
pub mod config;
mod deadline;
mod experiments;
mod kserve_convert;
mod services;
pub mod status;
mod store_health;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferrite_models::{ModelRepository, OnnxRuntime};
use ferrite_proto::ferrite::v1::admin_service_server::AdminServiceServer;
use ferrite_proto::ferrite::v1::experiment_service_server::ExperimentServiceServer;
use ferrite_proto::ferrite::v1::feature_service_server::FeatureServiceServer;
use ferrite_proto::ferrite::v1::scoring_service_server::ScoringServiceServer;
use ferrite_proto::ferrite::v1::search_service_server::SearchServiceServer;
use ferrite_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

pub use config::Config;
pub use services::search::{ModelEmbedder, expected_for, preprocess_config};

/// The server's version, as reported by ServerMetadata and GetServerInfo.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// State shared by every service.
pub struct AppState {
    pub config: Config,
    pub started: Instant,
    pub onnx_runtime: OnnxRuntime,
    pub models: Arc<ModelRepository>,
    /// Feature definitions and the online store.
    pub features: Arc<services::features::FeatureState>,
    /// The scoring pipelines declared in `pipelines.directory`.
    pub pipelines: ferrite_pipelines::Engine,
    ready: AtomicBool,
    /// Becomes true when the server begins to stop.
    stopping: watch::Receiver<bool>,
}

impl AppState {
    /// Started, not shutting down, and the online store answering.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.features.health.is_up()
    }

    /// Resolves once the server has begun to stop: a call that could stay open indefinitely
    /// (an idle stream) ends then, instead of holding the shutdown for its grace period.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            let _ = stopping.wait_for(|s| *s).await;
        }
    }
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Calls still in flight when `server.shutdown_grace_s` expired, which the exit cuts;
    /// 0 when every call finished.
    pub cut_calls: usize,
}

/// A started server. Dropping it does not stop it: call [`RunningServer::shutdown`].
pub struct RunningServer {
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    metrics: JoinHandle<std::io::Result<()>>,
    admission: admission::AdmissionLayer,
}

impl RunningServer {
    /// The address the gRPC API really listens on.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address `/metrics` really listens on.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting calls, lets in-flight calls finish (up to `server.shutdown_grace_s`),
    /// then returns how many were still running (and are cut when the process exits).
    pub async fn shutdown(self) -> anyhow::Result<Stopped> {
        self.state.ready.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        let experiments = self.state.pipelines.experiments().cloned();
        let grace = Duration::from_secs(self.state.config.server.shutdown_grace_s);
        let drained = tokio::time::timeout(grace, async {
            let grpc = self.grpc.await;
            let metrics = self.metrics.await;
            (grpc, metrics)
        })
        .await;
        let mut cut_calls = 0;
        match drained {
            Ok((grpc, metrics)) => {
                grpc.context("gRPC server task")?.context("gRPC server")?;
                metrics
                    .context("metrics server task")?
                    .context("metrics server")?;
                tracing::info!("server stopped");
            }
            Err(_) => {
                cut_calls = self.admission.calls_in_flight();
                tracing::warn!(
                    grace_s = grace.as_secs(),
                    cut_calls,
                    "in-flight calls still running after the grace period (server.shutdown_grace_s): they are cut"
                );
            }
        }
        if let Some(x) = experiments {
            // Writes out the exposure log's last records (blocking file writes).
            let _ = tokio::task::spawn_blocking(move || x.shutdown()).await;
        }
        Ok(Stopped { cut_calls })
    }
}

/// Checks the configuration, loads what the server needs, binds both listeners and starts
/// serving. Returns once the server accepts calls.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    for (key, dir) in [
        ("models.repository", &config.models.repository),
        ("features.repository", &config.features.repository),
    ] {
        anyhow::ensure!(dir.is_dir(), "{key} = {} is not a directory", dir.display());
    }
    config.models.check().map_err(anyhow::Error::msg)?;
    let onnx_runtime = OnnxRuntime::get(config.models.onnxruntime_library.as_deref())?;
    telemetry::prometheus();
    // After the recorder: the layer registers its series.
    let admission = admission_layer(&config)?;
    let models = Arc::new(ModelRepository::new(
        config.models.repository.clone(),
        onnx_runtime.clone(),
    ));
    let loader = models.clone();
    for (name, result) in tokio::task::spawn_blocking(move || loader.load_all()).await?? {
        if let Err(e) = result {
            tracing::warn!(model = %name, error = %e, "model not served");
        }
    }

    let registry = config.features.registry()?;
    let store = ferrite_features::online::open(&config.features.store_config())
        .await
        .context("opening the online store (features.online_store)")?;
    tracing::info!(
        views = registry.views.len(),
        services = registry.services.len(),
        store = store.kind(),
        "feature store ready"
    );
    let registry = Arc::new(registry);
    let pipeline_set = ferrite_pipelines::PipelineSet::load(&config.pipelines.directory, &registry)
        .context("loading the scoring pipelines (pipelines.directory)")?;
    for p in pipeline_set.pipelines.values() {
        if let Err(e) = models.get(&p.model.name) {
            tracing::warn!(pipeline = %p.name, error = %e, "the pipeline's model is not loaded: its calls get the fallback");
        }
    }
    tracing::info!(
        pipelines = ?pipeline_set.pipelines.keys().collect::<Vec<_>>(),
        "scoring pipelines ready"
    );
    // Every call's store: an outage a call sees starts a health check at once.
    let store_up = Arc::new(store_health::StoreHealth::new(store.kind()));
    let served: Arc<dyn ferrite_features::OnlineStore> =
        Arc::new(store_health::Reporting::new(store.clone(), store_up.clone()));
    let mut pipelines = ferrite_pipelines::Engine::new(served.clone(), models.clone(), pipeline_set);
    if let Some(x) = experiments::start(&config, &models).await? {
        pipelines = pipelines.with_experiments(x);
    }
    // Start-up, not a request: reading the models' small metadata files here is fine.
    pipelines.preload();
    let features = Arc::new(services::features::FeatureState {
        registry,
        store: served,
        health: store_up,
    });

    let (grpc_listener, grpc_addr) = telemetry::bind(config.server.grpc_addr, "gRPC").await?;
    let (metrics_listener, metrics_addr) = telemetry::bind(config.server.metrics_addr, "metrics").await?;

    let (stop, stopped) = watch::channel(false);
    let state = Arc::new(AppState {
        config,
        started: Instant::now(),
        onnx_runtime,
        models,
        features,
        pipelines,
        ready: AtomicBool::new(false),
        stopping: stopped.clone(),
    });
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<GrpcInferenceServiceServer<services::kserve::KServe>>()
        .await;
    health
        .set_serving::<AdminServiceServer<services::admin::Admin>>()
        .await;
    health
        .set_serving::<FeatureServiceServer<services::features::Features>>()
        .await;
    health
        .set_serving::<ScoringServiceServer<services::scoring::Scoring>>()
        .await;
    health
        .set_serving::<ExperimentServiceServer<services::experiments::ExperimentsApi>>()
        .await;
    // Visual search: a missing or refused index is logged and answered FAILED_PRECONDITION
    // (health NOT_SERVING) until ReloadIndex loads one; the server starts either way.
    let search = services::search::SearchState::start(
        state.config.search.clone(),
        state.models.clone(),
        Some(health.clone()),
    )
    .await?;
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let max_message = state.config.server.max_message_bytes.get();

    let router = tonic::transport::Server::builder()
        // Outermost, so that a call's arrival is taken before tonic starts its deadline timer.
        .layer(services::ArrivalLayer)
        .layer(telemetry::GrpcMetricsLayer::default())
        .layer(admission.clone())
        // Inside the metrics layer, so that its DEADLINE_EXCEEDED answers are counted, and
        // inside admission, so that a call it ends gives back its slot.
        .layer(deadline::DeadlineLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            GrpcInferenceServiceServer::new(services::kserve::KServe::new(state.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            FeatureServiceServer::new(services::features::Features::new(state.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            AdminServiceServer::new(services::admin::Admin::new(state.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            ScoringServiceServer::new(services::scoring::Scoring::new(state.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            ExperimentServiceServer::new(services::experiments::ExperimentsApi::new(state.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            SearchServiceServer::new(services::search::Search::new(search))
                .max_decoding_message_size(max_message),
        );
    let grpc = tokio::spawn(router.serve_with_incoming_shutdown(incoming(grpc_listener), until_stopped()));
    let metrics = tokio::spawn(telemetry::serve_metrics(metrics_listener, until_stopped()));
    let features_cfg = &state.config.features;
    let reporter = health.clone();
    tokio::spawn(store_health::watch(
        state.features.store.clone(),
        state.features.health.clone(),
        Duration::from_millis(features_cfg.health_interval_ms.get()),
        Duration::from_millis(features_cfg.health_timeout_ms.get()),
        move |up| {
            let reporter = reporter.clone();
            async move {
                type Served = FeatureServiceServer<services::features::Features>;
                match up {
                    true => reporter.set_serving::<Served>().await,
                    false => reporter.set_not_serving::<Served>().await,
                }
            }
        },
        until_stopped(),
    ));
    if let Some(every) = state.config.models.poll_every() {
        tokio::spawn(watch_models(state.models.clone(), every, until_stopped()));
    }
    // The recommendations and pricing pipelines' catalogues: built once before the server says
    // it is ready (a failure is logged, and calls get UNAVAILABLE or the fallback until a
    // rebuild succeeds), then rebuilt on each pipeline's timer.
    for (name, every) in state.pipelines.catalog_refreshes() {
        let _ = state
            .pipelines
            .refresh_catalog(&name, ferrite_features::value::now_micros())
            .await;
        tokio::spawn(refresh_catalog(state.clone(), name, every, until_stopped()));
    }

    state.ready.store(true, Ordering::Release);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(grpc = %grpc_addr, metrics = %metrics_addr, workers, version = VERSION, "ferrite listening");
    Ok(RunningServer {
        grpc_addr,
        metrics_addr,
        state,
        stop,
        grpc,
        metrics,
        admission,
    })
}

/// The in-flight limits of every served service (`server.max_in_flight`, its per-service
/// overrides) and the message size limit the refusals name.
fn admission_layer(config: &Config) -> anyhow::Result<admission::AdmissionLayer> {
    use tonic::server::NamedService;
    let services = [
        <GrpcInferenceServiceServer<services::kserve::KServe> as NamedService>::NAME,
        <FeatureServiceServer<services::features::Features> as NamedService>::NAME,
        <AdminServiceServer<services::admin::Admin> as NamedService>::NAME,
        <ScoringServiceServer<services::scoring::Scoring> as NamedService>::NAME,
        <ExperimentServiceServer<services::experiments::ExperimentsApi> as NamedService>::NAME,
        <SearchServiceServer<services::search::Search> as NamedService>::NAME,
    ];
    admission::AdmissionLayer::new(
        &services,
        config.server.max_in_flight.get(),
        &config.server.max_in_flight_by_service,
        config.server.max_message_bytes.get(),
    )
}

/// Hot reload: checks the model repository every `every` until `stop` resolves.
async fn watch_models(
    models: Arc<ModelRepository>,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    // The first check comes one period after start: start-up has just loaded everything.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {
                let models = models.clone();
                // Results are logged by the repository; a failed reload keeps what serves.
                let _ = tokio::task::spawn_blocking(move || models.reload_changed()).await;
            }
        }
    }
}

/// Rebuilds pipeline `name`'s catalogue every `every` until `stop` resolves.
async fn refresh_catalog(
    state: Arc<AppState>,
    name: String,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            // A failure is logged and counted by the engine; the previous catalogue serves.
            _ = ticks.tick() => {
                let _ = state.pipelines.refresh_catalog(&name, ferrite_features::value::now_micros()).await;
            }
        }
    }
}

/// Accepted connections with Nagle's algorithm off: small answers go out at once instead of
/// waiting up to ~40 ms for the peer's delayed ACK. (`Server::tcp_nodelay` only applies to
/// listeners tonic binds itself.)
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ferrite_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
