//! Experiments on model versions: which variant a unit (user, visit, transaction) gets,
//! GrowthBook's bucketing exactly; shadow variants; canaries judged against the live baseline
//! and rolled back by themselves; the exposure log and the per-variant report.
//!
//! It does not run models or read features: the scoring pipelines ask it which model version
//! a call runs and tell it how that call went.

pub mod assign;
pub mod canary;
pub mod config;
pub mod error;
pub mod hash;
pub mod redis_store;
pub mod shadow;
pub mod sprt;
pub mod state;
mod window;

pub use assign::{Assigner, Assignment, VariantRef};
pub use canary::{CanaryController, CanaryView, Clock, ManualClock, SystemClock};
pub use config::{CanaryConfig, ExperimentConfig, ModelVersion, VariantConfig, VariantKind};
pub use error::{ConfigError, StoreError};
pub use redis_store::RedisCanaryStore;
pub use shadow::ShadowQueue;
pub use state::{CanaryState, CanaryStatus, CanaryStore, EmbeddedCanaryStore, MemoryCanaryStore};
pub use window::Counts;

pub mod chart;
pub mod exposure;
pub mod report;
