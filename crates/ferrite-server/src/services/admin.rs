//! `ferrite.v1.AdminService`: what the server runs.

use std::sync::Arc;

use ferrite_proto::ferrite::v1::admin_service_server::AdminService;
use ferrite_proto::ferrite::v1::{GetServerInfoRequest, GetServerInfoResponse};
use tonic::{Request, Response, Status};

use crate::AppState;

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
            online_store: String::new(),
            model_repository: config.models.repository.display().to_string(),
            feature_repository: config.features.repository.display().to_string(),
            uptime_s: self.state.started.elapsed().as_secs(),
        }))
    }
}
