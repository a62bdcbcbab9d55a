//! Errors of the catalog index.

use std::path::PathBuf;

/// Errors from building, loading, updating or searching a catalog index.
///
/// For a server: `Dimension`, `ZeroK`, `InvalidQuery`, `InvalidItem`, `DuplicateItem`, `InvalidFilter` and
/// `Preprocess` are the caller's input (INVALID_ARGUMENT); `NotFound` is a missing index
/// directory or file (NOT_FOUND); `Mismatch`, `Corrupt` and `Config` mean the index on disk
/// does not fit the model being served or the settings (FAILED_PRECONDITION); `Factory`
/// is a build that FAISS refused (INVALID_ARGUMENT for the CLI, FAILED_PRECONDITION when
/// serving); `Io`, `Faiss` and `Embed` are internal (INTERNAL).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{field} has {got} values, expected {expected}")]
    Dimension {
        field: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("top_k must be at least 1")]
    ZeroK,
    #[error("item {item_id:?}: {reason}")]
    InvalidItem { item_id: String, reason: String },
    #[error("item {item_id:?} appears more than once in one build or update")]
    DuplicateItem { item_id: String },
    #[error("query: {0}")]
    InvalidQuery(String),
    #[error("filter: {0}")]
    InvalidFilter(String),
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
    #[error("{} not found: {what}", path.display())]
    NotFound { path: PathBuf, what: &'static str },
    #[error("index at {} was built for {field} {found:?}, expected {expected:?}", path.display())]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("index config: {0}")]
    Config(String),
    #[error("FAISS factory {factory:?}: {reason}")]
    Factory { factory: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("FAISS {context}: {source}")]
    Faiss {
        context: String,
        #[source]
        source: faiss::error::Error,
    },
    #[error("embedding images: {0}")]
    Embed(String),
}

impl CatalogError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CatalogError {
        let path = path.into();
        move |source| CatalogError::Io { path, source }
    }
}
