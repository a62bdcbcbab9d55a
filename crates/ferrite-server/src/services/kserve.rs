//! `inference.GRPCInferenceService`, the KServe v2 Open Inference Protocol.
//! Methods not written here answer UNIMPLEMENTED (tonic's generated default).

use std::sync::Arc;

use ferrite_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use ferrite_proto::inference::*;
use tonic::{Request, Response, Status};

use crate::AppState;

pub struct KServe {
    state: Arc<AppState>,
}

impl KServe {
    pub fn new(state: Arc<AppState>) -> Self {
        KServe { state }
    }
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
            extensions: Vec::new(),
        }))
    }
}
