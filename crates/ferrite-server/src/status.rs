//! The one place where domain errors become gRPC statuses.

use ferrite_features::FeatureError;
use ferrite_models::ModelError;
use ferrite_pipelines::PipelineError;
use ferrite_search::SearchError;
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
                ModelError::Config { .. } | ModelError::Load { .. } | ModelError::Inference(_),
            ) => Status::internal(message),
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
    }
}
