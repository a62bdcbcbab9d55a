//! tonic services: each translates wire types, calls the domain, and translates back.

pub mod admin;
pub mod features;
pub mod kserve;
pub mod scoring;

use tonic::Status;

use crate::AppState;
use crate::status::ApiError;

/// Loads (or reloads) a model off the async workers: loading reads files and runs a warm-up.
/// Shared by the KServe repository extension and the admin service.
pub(crate) async fn load_model(state: &AppState, name: String) -> Result<(), Status> {
    let models = state.models.clone();
    tokio::task::spawn_blocking(move || models.load(&name))
        .await
        .map_err(|e| Status::internal(format!("load task failed: {e}")))?
        .map_err(ApiError::from)?;
    Ok(())
}
