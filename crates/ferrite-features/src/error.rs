use std::path::PathBuf;

/// Everything that can go wrong reading or serving features.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("{path}: missing column {column:?}; the file has {available:?}")]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: Vec<String>,
    },
    #[error("{path}: {message}")]
    Offline { path: PathBuf, message: String },
    #[error("online store unavailable: {0}")]
    Unavailable(String),
    /// An unknown view, feature, feature service or entity.
    #[error("{0}")]
    NotFound(String),
    /// A request or row that does not fit the definitions.
    #[error("{0}")]
    Invalid(String),
    /// The definitions themselves are wrong (every problem, with file and line).
    #[error("{0}")]
    Definitions(crate::definitions::Problems),
    /// A request larger than a configured limit; the message names the limit's config key.
    #[error("{0}")]
    LimitExceeded(String),
    /// A store broke its contract (e.g. answered a read with the wrong number of rows).
    #[error("{0}")]
    Internal(String),
}

impl From<redis::RedisError> for FeatureError {
    fn from(e: redis::RedisError) -> Self {
        FeatureError::Unavailable(e.to_string())
    }
}
