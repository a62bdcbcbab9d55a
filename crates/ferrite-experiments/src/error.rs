//! Errors of experiment config and of the shared canary state.

use std::path::PathBuf;

/// A config that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid experiment: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// A field holds a value outside what it accepts.
    #[error("experiment `{experiment}`: `{field}` {problem}")]
    Invalid {
        experiment: String,
        field: String,
        problem: String,
    },
    #[error("experiment name `{0}` is used twice; names must be unique")]
    DuplicateName(String),
    #[error(
        "experiments `{first}` and `{second}` both target `{target}`; a target has at most one experiment"
    )]
    DuplicateTarget {
        target: String,
        first: String,
        second: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(experiment: &str, field: &str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            experiment: experiment.to_string(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }
}

/// The shared canary state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("canary state file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("canary state for `{key}` is not valid JSON: {source}")]
    Decode { key: String, source: serde_json::Error },
    #[error("Redis canary store: {0}")]
    Redis(#[from] redis::RedisError),
}
