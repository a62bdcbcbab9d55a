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
}

impl From<redis::RedisError> for FeatureError {
    fn from(e: redis::RedisError) -> Self {
        FeatureError::Unavailable(e.to_string())
    }
}
