//! `ferrite.v1.AdminService`: what the server runs.

use std::sync::Arc;

use ferrite_proto::ferrite::v1::admin_service_server::AdminService;
use ferrite_proto::ferrite::v1::{
    GetServerInfoRequest, GetServerInfoResponse, ListModelsRequest, ListModelsResponse, LoadModelRequest,
    LoadModelResponse, ModelVersionState, UnloadModelRequest, UnloadModelResponse,
};
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::status::ApiError;

fn states(entries: Vec<ferrite_models::IndexEntry>) -> Vec<ModelVersionState> {
    entries
        .into_iter()
        .map(|e| ModelVersionState {
            name: e.name,
            version: e.version,
            state: e.state.into(),
            reason: e.reason,
        })
        .collect()
}

pub struct Admin {
    state: Arc<AppState>,
}

impl Admin {
    pub fn new(state: Arc<AppState>) -> Self {
        Admin { state }
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn get_server_info(
        &self,
        _: Request<GetServerInfoRequest>,
    ) -> Result<Response<GetServerInfoResponse>, Status> {
        let config = &self.state.config;
        Ok(Response::new(GetServerInfoResponse {
            version: crate::VERSION.into(),
            online_store: self.state.features.store.kind().to_string(),
            model_repository: config.models.repository.display().to_string(),
            feature_repository: config.features.repository.display().to_string(),
            uptime_s: self.state.started.elapsed().as_secs(),
        }))
    }

    async fn list_models(
        &self,
        _: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: states(self.state.models.index()),
        }))
    }

    async fn load_model(
        &self,
        req: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        let name = req.into_inner().name;
        super::load_model(&self.state, name.clone()).await?;
        let versions = self
            .state
            .models
            .index()
            .into_iter()
            .filter(|e| e.name == name)
            .collect();
        Ok(Response::new(LoadModelResponse {
            versions: states(versions),
        }))
    }

    async fn unload_model(
        &self,
        req: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        super::model_control(&self.state, "unload")?;
        self.state
            .models
            .unload(&req.into_inner().name)
            .map_err(ApiError::from)?;
        Ok(Response::new(UnloadModelResponse {}))
    }
}
