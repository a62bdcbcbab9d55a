use std::path::{Path, PathBuf};

/// Everything that can go wrong loading or calling a pipeline. Outages of the online store or
/// the model are not errors: they are answered with the pipeline's fallback.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// No pipeline of that name (a caller's mistake, like a bad field).
    #[error("{0}")]
    NotFound(String),
    /// A request that does not fit the pipeline: `field` names the request field (with the
    /// row for calls of several rows), `message` what was expected.
    #[error("{}{field}: {message}", row.map(|r| format!("row {r}: ")).unwrap_or_default())]
    Invalid {
        row: Option<usize>,
        field: String,
        message: String,
    },
    /// Neither the model path nor the fallback can answer (e.g. a price for an item the
    /// online store cannot be asked about and the catalogue does not know).
    #[error("{0}")]
    Unavailable(String),
}

impl PipelineError {
    pub(crate) fn config(path: &Path, message: impl Into<String>) -> Self {
        PipelineError::Config {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn invalid(row: Option<usize>, field: impl Into<String>, message: impl Into<String>) -> Self {
        PipelineError::Invalid {
            row,
            field: field.into(),
            message: message.into(),
        }
    }
}
