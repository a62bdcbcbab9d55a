use std::path::PathBuf;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library not found (looked in: {searched}); install it with \
         `bash scripts/setup.sh`, or point `models.onnxruntime_library` or ORT_DYLIB_PATH at libonnxruntime.so"
    )]
    RuntimeNotFound { searched: String },
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    RuntimeLoad { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("cannot load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("inference failed: {0}")]
    Inference(String),
    /// The version's queue is full: the call is refused at once rather than waiting.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The caller's deadline passed before the model could answer.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The model run panicked; the version keeps serving.
    #[error("internal error: {0}")]
    Panicked(String),
}

impl From<ort::Error> for ModelError {
    fn from(e: ort::Error) -> Self {
        ModelError::Inference(e.to_string())
    }
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Inference(e.to_string())
    }
}
