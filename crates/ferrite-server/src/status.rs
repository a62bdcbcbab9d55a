//! The one place where domain errors become gRPC statuses.

use ferrite_features::FeatureError;
use ferrite_models::ModelError;
use ferrite_pipelines::PipelineError;
use ferrite_search::SearchError;
use ferrite_search::catalog::CatalogError;
use ferrite_search::preprocess::PreprocessError;
use tonic::Status;

/// Wraps a domain error so that `?` in a service turns it into the right gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Feature(#[from] FeatureError),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// Visual search has no usable index (none built yet, or one built for another model).
    #[error("{0}")]
    NoIndex(String),
    /// A catalog item named by the caller is not in the index.
    #[error("{0}")]
    UnknownItem(String),
    /// A model load or unload asked for while `models.control_mode` does not allow it.
    #[error("{0}")]
    ModelControlDisabled(String),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let message = e.to_string();
        match e {
            ApiError::Model(ModelError::InvalidInput(_)) => Status::invalid_argument(message),
            ApiError::Model(ModelError::NotFound(_)) => Status::not_found(message),
            ApiError::Model(ModelError::RuntimeNotFound { .. } | ModelError::RuntimeLoad { .. }) => {
                Status::unavailable(message)
            }
            ApiError::Model(
                ModelError::Config { .. }
                | ModelError::Load { .. }
                | ModelError::Inference(_)
                | ModelError::Panicked(_),
            ) => Status::internal(message),
            ApiError::Model(ModelError::Overloaded(_)) => Status::resource_exhausted(message),
            ApiError::Model(ModelError::DeadlineExceeded(_)) => Status::deadline_exceeded(message),
            ApiError::ModelControlDisabled(_) => Status::failed_precondition(message),
            ApiError::Feature(FeatureError::MissingColumn { .. } | FeatureError::Offline { .. }) => {
                Status::failed_precondition(message)
            }
            ApiError::Feature(FeatureError::Unavailable(_)) => Status::unavailable(message),
            ApiError::Feature(FeatureError::NotFound(_)) => Status::not_found(message),
            ApiError::Feature(FeatureError::Invalid(_)) => Status::invalid_argument(message),
            ApiError::Feature(FeatureError::Definitions(_)) => Status::failed_precondition(message),
            // gRPC's own convention for a request over a configured size limit.
            ApiError::Feature(FeatureError::LimitExceeded(_)) => Status::resource_exhausted(message),
            ApiError::Feature(FeatureError::Internal(_)) => Status::internal(message),
            ApiError::Search(SearchError::Faiss(_)) => Status::internal(message),
            ApiError::Search(_) => Status::invalid_argument(message),
            ApiError::Pipeline(PipelineError::Invalid { .. }) => Status::invalid_argument(message),
            ApiError::Pipeline(PipelineError::NotFound(_)) => Status::invalid_argument(message),
            ApiError::Pipeline(PipelineError::Config { .. }) => Status::failed_precondition(message),
            ApiError::Pipeline(PipelineError::Unavailable(_)) => Status::unavailable(message),
            ApiError::Catalog(
                CatalogError::Dimension { .. }
                | CatalogError::ZeroK
                | CatalogError::InvalidItem { .. }
                | CatalogError::DuplicateItem { .. }
                | CatalogError::InvalidQuery(_)
                | CatalogError::InvalidFilter(_),
            ) => Status::invalid_argument(message),
            ApiError::Catalog(CatalogError::Preprocess(PreprocessError::Config(_)))
            | ApiError::Preprocess(PreprocessError::Config(_)) => Status::failed_precondition(message),
            ApiError::Catalog(CatalogError::Preprocess(_)) | ApiError::Preprocess(_) => {
                Status::invalid_argument(message)
            }
            // When serving, an index directory that is missing, refused or unreadable is the
            // operator's to fix (rebuild it, then ReloadIndex).
            ApiError::Catalog(
                CatalogError::NotFound { .. }
                | CatalogError::Mismatch { .. }
                | CatalogError::Corrupt { .. }
                | CatalogError::Config(_)
                | CatalogError::Factory { .. },
            ) => Status::failed_precondition(message),
            ApiError::Catalog(
                CatalogError::Io { .. } | CatalogError::Faiss { .. } | CatalogError::Embed(_),
            ) => Status::internal(message),
            ApiError::NoIndex(_) => Status::failed_precondition(message),
            ApiError::UnknownItem(_) => Status::not_found(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn caller_mistakes_are_invalid_argument_and_outages_unavailable() {
        let s: Status = ApiError::from(ModelError::InvalidInput("no input named \"z\"".into())).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("no input named \"z\""));
        let s: Status = ApiError::from(SearchError::Dimension { expected: 3, got: 2 }).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let s: Status = ApiError::from(FeatureError::Unavailable("down".into())).into();
        assert_eq!(s.code(), Code::Unavailable);
        let s: Status = ApiError::from(ModelError::RuntimeNotFound { searched: "x".into() }).into();
        assert_eq!(s.code(), Code::Unavailable);
        let s: Status = ApiError::from(FeatureError::LimitExceeded(
            "at most 10 (features.max_entities_per_read)".into(),
        ))
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("features.max_entities_per_read"));
        let s: Status = ApiError::from(FeatureError::Internal("one answer per key".into())).into();
        assert_eq!(s.code(), Code::Internal);
        let s: Status = ApiError::from(ModelError::Overloaded("max_queue_size = 8".into())).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("max_queue_size = 8"));
        let s: Status = ApiError::from(ModelError::DeadlineExceeded("queued".into())).into();
        assert_eq!(s.code(), Code::DeadlineExceeded);
        let s: Status = ApiError::from(ModelError::Panicked("the model run panicked".into())).into();
        assert_eq!(s.code(), Code::Internal);
    }
}
