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
    /// The feature service whose features, in order, are the model's input vector (for
    /// recommendations: the user's vector, the user tower's input).
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
    pub recommendations: Option<RecsSection>,
    pub pricing: Option<PricingSection>,
    /// The rule-based answer of a fraud pipeline (recommendations fall back to popular items,
    /// prices to the current list price, with no section).
    pub fallback: Option<FallbackSection>,
}

fn default_max_batch() -> usize {
    1024
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Fraud,
    Recommendations,
    Pricing,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fraud => "fraud",
            Kind::Recommendations => "recommendations",
            Kind::Pricing => "pricing",
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
    /// Score with the model's trees walked in Rust instead of ONNX Runtime, for a model
    /// version whose graph is its tree ensemble alone and whose first rows the trees scored
    /// as ONNX Runtime did (see `native.rs`).
    #[serde(default = "default_native_trees")]
    pub native_trees: bool,
}

fn default_top_reasons() -> usize {
    3
}

fn default_native_trees() -> bool {
    true
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

/// `[recommendations]`: retrieve candidates by the two towers' embeddings, filter, rank,
/// diversify.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecsSection {
    /// The feature service of an item: the item tower's input and the ranker's item part.
    pub item_service: String,
    /// Item vector -> embedding (`FP32 [rows, dim]`, compared by inner product with the user
    /// tower's). Its embeddings of the whole catalogue form the retrieval index.
    pub item_tower: TowerSection,
    /// `user vector ++ item vector ++ [retrieval score]` -> the ranking score.
    pub ranker: ModelSection,
    /// The items' category, `view:feature` (a stored feature of the item entity): what
    /// `max_per_category` and a request's category filter read.
    pub category: String,
    /// A feature of `item_service`: an item is in stock when it is > 0.
    pub in_stock: String,
    /// A feature of `item_service`: an item is on sale when it is true (non-zero).
    pub active: String,
    /// A feature of `item_service`: the fallback (and cold-start) answer's order, largest first.
    pub popularity: String,
    /// Candidates retrieved for ranking.
    #[serde(default = "default_candidates")]
    pub candidates: usize,
    /// Items answered when the request does not say.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// The most a request may ask for.
    #[serde(default = "default_max_top_k")]
    pub max_top_k: usize,
    /// At most this many items of one category in an answer; 0: no limit.
    #[serde(default)]
    pub max_per_category: usize,
    /// Items the user already bought are never recommended: `view:feature`, a stored string
    /// feature of the user entity holding their ids, comma-separated (the feature's window,
    /// e.g. 30 days, is how far back). None: bought items may come back.
    #[serde(default)]
    pub exclude_purchased: Option<String>,
    /// How often the catalogue (item embeddings, categories, popularity) is rebuilt from the
    /// online store, seconds.
    #[serde(default = "default_refresh_s")]
    pub refresh_s: u64,
}

fn default_candidates() -> usize {
    200
}
fn default_top_k() -> usize {
    20
}
fn default_max_top_k() -> usize {
    100
}
fn default_refresh_s() -> u64 {
    300
}

/// A model whose whole output row is a vector (an embedding).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TowerSection {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default = "default_input")]
    pub input: String,
    #[serde(default = "default_embedding")]
    pub output: String,
}

fn default_embedding() -> String {
    "embedding".into()
}

/// `[pricing]`: the demand model evaluated over a grid of candidate prices inside business
/// bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingSection {
    /// The request field of the feature service that takes the candidate price.
    #[serde(default = "default_price_field")]
    pub price_field: String,
    /// A stored feature of the service: the item's unit cost.
    #[serde(default = "default_cost")]
    pub cost: String,
    /// A stored feature of the service: the price charged now (the fallback's answer, and
    /// what the daily change limit is measured from).
    #[serde(default = "default_current_price")]
    pub current_price: String,
    /// Candidate prices evaluated (one batched model run).
    #[serde(default = "default_price_candidates")]
    pub candidates: usize,
    /// The floor: cost × (1 + min_margin).
    pub min_margin: f64,
    /// The most a price may move from the current price in one day, as a fraction (0.1 = 10 %).
    pub max_change: f64,
    /// What the chosen price maximises: expected `revenue` (price × units) or `margin`
    /// ((price − cost) × units).
    #[serde(default)]
    pub objective: Objective,
    /// Allowed price endings, tried in order: prices of the form `k × step + at`, e.g.
    /// `{ step = 1.0, at = 0.99 }` for x.99. When no price of a rule lies within the bounds,
    /// the next rule is tried, then whole cents.
    #[serde(default)]
    pub endings: Vec<Ending>,
    /// How often the catalogue of current prices (the fallback's answers) is refreshed from
    /// the online store, seconds.
    #[serde(default = "default_refresh_s")]
    pub refresh_s: u64,
}

fn default_price_field() -> String {
    "price".into()
}
fn default_cost() -> String {
    "cost".into()
}
fn default_current_price() -> String {
    "list_price".into()
}
fn default_price_candidates() -> usize {
    50
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    #[default]
    Revenue,
    Margin,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ending {
    pub step: f64,
    pub at: f64,
}

impl PipelineFile {
    pub fn read(path: &Path) -> Result<PipelineFile, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::config(path, e.to_string()))?;
        toml::from_str(&text).map_err(|e| PipelineError::config(path, e.to_string()))
    }
}
