//! `inference.GRPCInferenceService`, the KServe v2 Open Inference Protocol with Triton's
//! model-config and repository extensions. Every method of the service is served.
//!
//! A declared scoring pipeline is served as a model of its own name (unless a loaded model
//! has that name): entity ids and request fields in, one row per element of the first
//! dimension, the rows' scores and decisions out, so that Triton's clients and load
//! generators drive a whole pipeline as they drive an ensemble.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferrite_features::value::now_micros;
use ferrite_pipelines::Pipeline;
use ferrite_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use ferrite_proto::inference::repository_index_response::ModelIndex;
use ferrite_proto::inference::*;
use futures::StreamExt;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::AppState;
use crate::kserve_convert as convert;
use crate::status::ApiError;

type AnswerStream = Pin<Box<dyn Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>>;

pub struct KServe {
    state: Arc<AppState>,
    pipeline_stats: Arc<PipelineStats>,
}

impl KServe {
    pub fn new(state: Arc<AppState>) -> Self {
        let pipeline_stats = Arc::new(
            state
                .pipelines
                .pipelines()
                .pipelines
                .keys()
                .map(|name| (name.clone(), CallStats::default()))
                .collect(),
        );
        KServe {
            state,
            pipeline_stats,
        }
    }

    /// The pipeline served under `name`, unless a loaded model has that name.
    fn pipeline(&self, name: &str) -> Option<Arc<Pipeline>> {
        pipeline_model(&self.state, name)
    }
}

/// Only row-scoring (fraud) pipelines are KServe models: one row in, one score out.
/// Recommendations and prices answer lists and bounds, through Recommend and Price.
fn pipeline_model(state: &AppState, name: &str) -> Option<Arc<Pipeline>> {
    let pipeline = state.pipelines.pipelines().pipelines.get(name)?;
    (pipeline.kind == ferrite_pipelines::config::Kind::Fraud && state.models.get(name).is_err())
        .then(|| pipeline.clone())
}

/// Refuses any version but the pipeline's one (empty: that one).
fn pipeline_version(p: &Pipeline, version: &str) -> Result<(), Status> {
    if version.is_empty() || version == convert::PIPELINE_VERSION.to_string() {
        Ok(())
    } else {
        Err(Status::not_found(format!(
            "pipeline {:?} has no version {version:?}; its one version is \"{}\"",
            p.name,
            convert::PIPELINE_VERSION
        )))
    }
}

/// Triton's ModelStatistics for a pipeline served as a model (perf_analyzer reads them).
#[derive(Default)]
struct CallStats {
    success_count: AtomicU64,
    success_ns: AtomicU64,
    fail_count: AtomicU64,
    fail_ns: AtomicU64,
    rows: AtomicU64,
    last_ms: AtomicU64,
}

type PipelineStats = BTreeMap<String, CallStats>;

impl CallStats {
    fn record(&self, ok: bool, rows: usize, took: std::time::Duration) {
        let ns = took.as_nanos() as u64;
        if ok {
            self.success_count.fetch_add(1, Ordering::Relaxed);
            self.success_ns.fetch_add(ns, Ordering::Relaxed);
            self.rows.fetch_add(rows as u64, Ordering::Relaxed);
        } else {
            self.fail_count.fetch_add(1, Ordering::Relaxed);
            self.fail_ns.fetch_add(ns, Ordering::Relaxed);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn to_pb(&self, name: &str) -> ModelStatistics {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let success = Some(StatisticDuration {
            count: load(&self.success_count),
            ns: load(&self.success_ns),
        });
        ModelStatistics {
            name: name.to_string(),
            version: convert::PIPELINE_VERSION.to_string(),
            last_inference: load(&self.last_ms),
            inference_count: load(&self.rows),
            execution_count: load(&self.success_count),
            inference_stats: Some(InferStatistics {
                success,
                fail: Some(StatisticDuration {
                    count: load(&self.fail_count),
                    ns: load(&self.fail_ns),
                }),
                // A pipeline call runs on arrival: no queue, all of it compute. perf_analyzer
                // wants the three compute counts equal.
                queue: Some(StatisticDuration::default()),
                compute_input: Some(StatisticDuration {
                    count: load(&self.success_count),
                    ns: 0,
                }),
                compute_infer: success,
                compute_output: Some(StatisticDuration {
                    count: load(&self.success_count),
                    ns: 0,
                }),
                ..Default::default()
            }),
            batch_stats: Vec::new(),
        }
    }
}

fn model_error(e: ferrite_models::ModelError) -> Status {
    ApiError::from(e).into()
}

/// One inference, off the async workers: a model run is CPU work. `deadline` is the call's
/// (a pipeline's budget shrinks to it).
async fn infer(
    state: Arc<AppState>,
    stats: Arc<PipelineStats>,
    mut req: ModelInferRequest,
    deadline: Option<Instant>,
) -> Result<ModelInferResponse, Status> {
    if let Some(pipeline) = pipeline_model(&state, &req.model_name) {
        let started = Instant::now();
        let mut rows = 0;
        let answer = infer_pipeline(&state, &pipeline, &mut req, deadline, &mut rows).await;
        if let Some(s) = stats.get(&pipeline.name) {
            s.record(answer.is_ok(), rows, started.elapsed());
        }
        return answer;
    }
    let inputs = convert::request_tensors(&mut req)?;
    // Until the deadline at the latest: a request still queued then is not run.
    let (ran, outputs) = state
        .models
        .infer_until(&req.model_name, &req.model_version, inputs, deadline)
        .await
        .map_err(model_error)?;
    convert::response(&mut req, ran, outputs)
}

/// Runs `req`'s rows through `pipeline`; `rows` is set to how many were answered.
async fn infer_pipeline(
    state: &AppState,
    pipeline: &Pipeline,
    req: &mut ModelInferRequest,
    deadline: Option<Instant>,
    rows: &mut usize,
) -> Result<ModelInferResponse, Status> {
    pipeline_version(pipeline, &req.model_version)?;
    let tensors = convert::request_tensors(req)?;
    let input = convert::pipeline_call(pipeline, tensors)?;
    let answer = state
        .pipelines
        .score(&pipeline.name, input, deadline, now_micros())
        .await
        .map_err(ApiError::from)?;
    *rows = answer.rows.len();
    convert::response(
        req,
        convert::PIPELINE_VERSION,
        convert::pipeline_outputs(&answer.rows),
    )
}

#[tonic::async_trait]
impl GrpcInferenceService for KServe {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "ferrite".into(),
            version: crate::VERSION.into(),
            extensions: vec!["model_repository".into(), "model_configuration".into()],
        }))
    }

    async fn model_ready(
        &self,
        req: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let req = req.into_inner();
        if let Some(p) = self.pipeline(&req.name) {
            return Ok(Response::new(ModelReadyResponse {
                ready: pipeline_version(&p, &req.version).is_ok(),
            }));
        }
        // A version whose batching thread died is not ready (the next call restarts it).
        let ready = match self.state.models.get(&req.name) {
            Ok(model) => model.version(&req.version).is_ok_and(|v| v.is_ready()),
            Err(ferrite_models::ModelError::NotFound(_)) => false,
            Err(e) => return Err(model_error(e)),
        };
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let req = req.into_inner();
        if let Some(p) = self.pipeline(&req.name) {
            pipeline_version(&p, &req.version)?;
            return Ok(Response::new(convert::pipeline_metadata(&p)));
        }
        let model = self.state.models.get(&req.name).map_err(model_error)?;
        model.version(&req.version).map_err(model_error)?;
        let config = &model.config;
        Ok(Response::new(ModelMetadataResponse {
            name: model.name.clone(),
            versions: model.versions.keys().map(|v| v.to_string()).collect(),
            platform: convert::triton_config(&model.name, config).platform,
            inputs: config
                .inputs
                .iter()
                .map(|s| convert::tensor_metadata(config, s))
                .collect(),
            outputs: config
                .outputs
                .iter()
                .map(|s| convert::tensor_metadata(config, s))
                .collect(),
        }))
    }

    async fn model_config(
        &self,
        req: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let req = req.into_inner();
        if let Some(p) = self.pipeline(&req.name) {
            pipeline_version(&p, &req.version)?;
            return Ok(Response::new(ModelConfigResponse {
                config: Some(convert::pipeline_config(&p)),
            }));
        }
        let model = self.state.models.get(&req.name).map_err(model_error)?;
        model.version(&req.version).map_err(model_error)?;
        Ok(Response::new(ModelConfigResponse {
            config: Some(convert::triton_config(&model.name, &model.config)),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = super::call_deadline(&req);
        infer(
            self.state.clone(),
            self.pipeline_stats.clone(),
            req.into_inner(),
            deadline,
        )
        .await
        .map(Response::new)
    }

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        // The stream's deadline bounds each of its requests.
        let deadline = super::call_deadline(&req);
        let stopping = self.state.stopping();
        Ok(Response::new(Box::pin(stream_answers(
            self.state.clone(),
            self.pipeline_stats.clone(),
            req.into_inner(),
            deadline,
            stopping,
        ))))
    }

    async fn model_statistics(
        &self,
        req: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let req = req.into_inner();
        if let Some(p) = self.pipeline(&req.name) {
            pipeline_version(&p, &req.version)?;
            let model_stats = self.pipeline_stats.get(&p.name).map(|s| s.to_pb(&p.name));
            return Ok(Response::new(ModelStatisticsResponse {
                model_stats: model_stats.into_iter().collect(),
            }));
        }
        let models = if req.name.is_empty() {
            self.state.models.loaded()
        } else {
            vec![self.state.models.get(&req.name).map_err(model_error)?]
        };
        let mut model_stats = Vec::new();
        for model in models {
            let versions: Vec<_> = if req.version.is_empty() {
                model.versions.values().cloned().collect()
            } else {
                vec![model.version(&req.version).map_err(model_error)?.clone()]
            };
            model_stats.extend(versions.iter().map(|v| convert::statistics(&model.name, v)));
        }
        if req.name.is_empty() {
            // As RepositoryIndex lists them: one entry per served pipeline.
            model_stats.extend(
                self.pipeline_stats
                    .iter()
                    .filter(|(name, _)| self.pipeline(name).is_some())
                    .map(|(name, s)| s.to_pb(name)),
            );
        }
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        req: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let ready_only = req.into_inner().ready;
        let mut models: Vec<ModelIndex> = self
            .state
            .models
            .index()
            .into_iter()
            .filter(|e| !ready_only || e.state == "READY")
            .map(|e| ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.into(),
                reason: e.reason,
            })
            .collect();
        // Pipelines are always ready: when their model is not, their fallback answers.
        for name in self.state.pipelines.pipelines().pipelines.keys() {
            if self.pipeline(name).is_some() {
                models.push(ModelIndex {
                    name: name.clone(),
                    version: convert::PIPELINE_VERSION.to_string(),
                    state: "READY".into(),
                    reason: String::new(),
                });
            }
        }
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        super::load_model(&self.state, req.into_inner().model_name).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        super::model_control(&self.state, "unload")?;
        self.state
            .models
            .unload(&req.into_inner().model_name)
            .map_err(model_error)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

/// Requests of one stream in flight at once. A client that pipelines its requests on one
/// stream (as tritonclient's streaming API does) gets them batched together by the model's
/// queue; answers still come back in request order.
const STREAM_IN_FLIGHT: usize = 64;

/// Answers each streamed request, in order; a failed request yields an `error_message`
/// answer and the stream goes on, as Triton's streaming API does. Up to `STREAM_IN_FLIGHT`
/// requests run at once. When the server begins to stop (`stopping`), no further request is
/// read: those in flight are answered, then the stream ends with UNAVAILABLE, so that an
/// idle stream does not hold the shutdown for its whole grace period.
fn stream_answers(
    state: Arc<AppState>,
    stats: Arc<PipelineStats>,
    requests: Streaming<ModelInferRequest>,
    deadline: Option<Instant>,
    stopping: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = Result<ModelStreamInferResponse, Status>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_IN_FLIGHT);
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let marks_stop = stopped.clone();
    let stopping = async move {
        stopping.await;
        marks_stop.store(true, Ordering::Release);
    };
    tokio::spawn(async move {
        let mut answers = requests
            .take_until(Box::pin(stopping))
            .map(move |item| {
                let state = state.clone();
                let stats = stats.clone();
                async move {
                    let req = item?;
                    Ok(match infer(state, stats, req, deadline).await {
                        Ok(r) => ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(r),
                        },
                        Err(s) => ModelStreamInferResponse {
                            error_message: s.message().to_string(),
                            infer_response: None,
                        },
                    })
                }
            })
            .buffered(STREAM_IN_FLIGHT);
        while let Some(answer) = answers.next().await {
            // A broken incoming stream ends the answers after saying why.
            let end = answer.is_err();
            if tx.send(answer).await.is_err() || end {
                return;
            }
        }
        if stopped.load(Ordering::Acquire) {
            let _ = tx
                .send(Err(Status::unavailable(
                    "the server is shutting down: this stream takes no more requests; \
                     open a new one (to another server) for the rest",
                )))
                .await;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
