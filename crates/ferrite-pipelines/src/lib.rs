//! Scoring pipelines: what the shop's services call. A pipeline, declared in
//! `pipelines/<name>.toml`, reads a feature service's features for the call's entities from
//! the online store and computes its request-time features, runs a model on the resulting
//! vector, turns the score into a business answer (a fraud decision with its reasons), all
//! inside a latency budget, and answers with a rule-based fallback, flagged with the reason,
//! when the store or the model cannot answer in time.
//!
//! Owns the pipeline definitions (`config`, `pipeline`), the checks on a call's rows
//! (`input`), the assembly of model inputs (`vector`), the choice of model version behind
//! one small trait (`model`), and the request path (`engine`). It does not own the wire
//! protocol (`ferrite-server`), feature storage (`ferrite-features`) or model execution
//! (`ferrite-models`).

pub mod catalog;
pub mod config;
pub mod engine;
mod error;
pub mod experiment;
pub mod input;
pub mod model;
mod native;
pub mod pipeline;
pub mod price;
pub mod recommend;
pub mod vector;

pub use engine::{Answer, Engine, Latency, Reason, RowAnswer};
pub use error::PipelineError;
pub use experiment::Experiments;
pub use input::CallInput;
pub use model::{ModelChoice, ModelSelector};
pub use pipeline::{Decision, Pipeline, PipelineSet};
pub use price::{Bound, PriceAnswer, PriceCall};
pub use recommend::{RecommendCall, Recommendation, RecommendedItem};
