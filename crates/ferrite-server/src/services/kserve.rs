//! `inference.GRPCInferenceService`, the KServe v2 Open Inference Protocol with Triton's
//! model-config and repository extensions. Methods not written here answer UNIMPLEMENTED.

use std::pin::Pin;
use std::sync::Arc;

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
}

impl KServe {
    pub fn new(state: Arc<AppState>) -> Self {
        KServe { state }
    }
}

fn model_error(e: ferrite_models::ModelError) -> Status {
    ApiError::from(e).into()
}

/// One inference, off the async workers: a model run is CPU work.
async fn infer(state: Arc<AppState>, mut req: ModelInferRequest) -> Result<ModelInferResponse, Status> {
    let inputs = convert::request_tensors(&mut req)?;
    let (ran, outputs) = state
        .models
        .infer(&req.model_name, &req.model_version, inputs)
        .await
        .map_err(model_error)?;
    convert::response(&mut req, ran, outputs)
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
        let ready = match self.state.models.get(&req.name) {
            Ok(model) => model.version(&req.version).is_ok(),
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
        infer(self.state.clone(), req.into_inner())
            .await
            .map(Response::new)
    }

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        Ok(Response::new(Box::pin(stream_answers(
            self.state.clone(),
            req.into_inner(),
        ))))
    }

    async fn model_statistics(
        &self,
        req: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let req = req.into_inner();
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
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        req: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let ready_only = req.into_inner().ready;
        let models = self
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
/// requests run at once.
fn stream_answers(
    state: Arc<AppState>,
    requests: Streaming<ModelInferRequest>,
) -> impl Stream<Item = Result<ModelStreamInferResponse, Status>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_IN_FLIGHT);
    tokio::spawn(async move {
        let mut answers = requests
            .map(move |item| {
                let state = state.clone();
                async move {
                    let req = item?;
                    Ok(match infer(state, req).await {
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
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
