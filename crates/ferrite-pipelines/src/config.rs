//! The file format of `pipelines/*.toml`: one pipeline per file. Unknown keys are refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::PipelineError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Defaults to the file's stem.
    pub name: Option<String>,
    pub kind: Kind,
    #[serde(default)]
    pub description: String,
    /// The feature service whose features, in order, are the model's input vector.
    pub feature_service: String,
    /// The longest a call may take, in milliseconds; a client deadline can only shorten it.
    pub budget_ms: u64,
    /// Most rows (transactions) one call may carry.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    pub model: ModelSection,
    /// Checks on request fields beyond their types, by field name.
    #[serde(default)]
    pub field_rules: BTreeMap<String, FieldRule>,
    /// Values a stored feature takes when its entity is unknown (no row at all), by feature
    /// name. Without one the value is missing (NaN), as in training sets.
    #[serde(default)]
    pub cold_start: BTreeMap<String, f64>,
    pub fraud: Option<FraudSection>,
    pub fallback: FallbackSection,
}

fn default_max_batch() -> usize {
    1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Fraud,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fraud => "fraud",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    /// A version number or a label; empty: the highest ready version.
    #[serde(default)]
    pub version: String,
    /// The model input that takes the feature vector, `FP32 [rows, features]`.
    #[serde(default = "default_input")]
    pub input: String,
    /// The output holding the score, `FP32 [rows, classes]` or `[rows]`.
    #[serde(default = "default_output")]
    pub output: String,
    /// The column of `output` that is the score (the positive class).
    #[serde(default = "default_output_index")]
    pub output_index: usize,
}

fn default_input() -> String {
    "features".into()
}
fn default_output() -> String {
    "probabilities".into()
}
fn default_output_index() -> usize {
    1
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub allowed: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudSection {
    /// Scores at or above this are reviewed.
    pub review_at: f64,
    /// Scores at or above this are declined.
    pub decline_at: f64,
    /// How many reasons an answer lists; 0: none.
    #[serde(default = "default_top_reasons")]
    pub top_reasons: usize,
    /// Which answers get reasons: `flagged` (review and decline) or `all`.
    #[serde(default)]
    pub explain: Explain,
}

fn default_top_reasons() -> usize {
    3
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Explain {
    #[default]
    Flagged,
    All,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSection {
    /// A float expression over request fields (the feature-definition expression language):
    /// the score answered when the features or the model cannot answer in time.
    pub score: String,
    /// The score when the expression gives no value (a field it reads is missing).
    #[serde(default = "default_fallback_score")]
    pub default_score: f64,
    /// The decision answered with a fallback score; default `review`.
    pub decision: Option<String>,
}

fn default_fallback_score() -> f64 {
    0.5
}

impl PipelineFile {
    pub fn read(path: &Path) -> Result<PipelineFile, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::config(path, e.to_string()))?;
        toml::from_str(&text).map_err(|e| PipelineError::config(path, e.to_string()))
    }
}
