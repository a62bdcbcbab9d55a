//! The repository's own pipelines, features and models, with a real online store filled by
//! materialization, for the integration tests. Each test binary uses a part of it.
#![allow(dead_code)]

use std::sync::Arc;

use ferrite_features::materialize::materialize;
use ferrite_features::{OnlineStore, Registry, StoreConfig, Value};
use ferrite_models::{ModelRepository, OnnxRuntime};
use ferrite_pipelines::{CallInput, Engine, PipelineSet};
use ferrite_test_support::repo_root;
use serde::Deserialize;

/// `tests/data/fraud_parity.json`, written by scripts/train_fraud_model.py: transactions at
/// one cut time, the training-set vector `ferrite training-set` gave for each, and the score
/// Python onnxruntime gave for that vector.
#[derive(Debug, Deserialize)]
pub struct Parity {
    pub cut_time_us: i64,
    pub features: Vec<String>,
    pub rows: Vec<ParityRow>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ParityRow {
    #[allow(dead_code)]
    pub transaction_id: i64,
    pub user_id: i64,
    pub merchant_id: i64,
    pub amount: f64,
    pub currency: String,
    pub device_type: String,
    pub event_timestamp_us: i64,
    pub vector: Vec<Option<f64>>,
    pub score: f64,
}

pub fn parity() -> Parity {
    let path = repo_root().join("crates/ferrite-pipelines/tests/data/fraud_parity.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

pub fn registry() -> Arc<Registry> {
    Arc::new(Registry::load(&repo_root().join("features"), None).unwrap())
}

/// The model repository with only the fraud pipeline's model loaded.
pub fn models() -> Arc<ModelRepository> {
    models_loaded(&["fraud_txn_gbdt"])
}

/// The model repository with `names` loaded.
pub fn models_loaded(names: &[&str]) -> Arc<ModelRepository> {
    let runtime = OnnxRuntime::get(None).unwrap();
    let models = Arc::new(ModelRepository::new(repo_root().join("models"), runtime));
    for name in names {
        models.load(name).unwrap();
    }
    models
}

/// Every online view materialized up to and including `cut` (windows end before their end).
pub async fn fill(registry: &Registry, store: &dyn OnlineStore, cut: i64) {
    materialize(registry, store, &[], 0, cut + 1, false)
        .await
        .unwrap();
}

pub async fn embedded_store() -> Arc<dyn OnlineStore> {
    let dir = tempfile::tempdir().unwrap().keep();
    ferrite_features::online::open(&StoreConfig::Embedded { path: dir })
        .await
        .unwrap()
}

pub fn engine(registry: Arc<Registry>, store: Arc<dyn OnlineStore>, models: Arc<ModelRepository>) -> Engine {
    let pipelines = PipelineSet::load(&repo_root().join("pipelines"), &registry).unwrap();
    let engine = Engine::new(store, models, pipelines);
    engine.preload();
    engine
}

/// The repository's pipelines with every budget set to `budget_ms`: functional tests must not
/// depend on how fast a debug build runs on a busy machine.
pub fn relaxed_engine(
    registry: Arc<Registry>,
    store: Arc<dyn OnlineStore>,
    models: Arc<ModelRepository>,
    budget_ms: u64,
) -> Engine {
    edited_engine(registry, store, models, budget_ms, |line| Some(line.to_string()))
}

/// `relaxed_engine` with each line of the pipeline files passed through `edit` (`None` drops it).
pub fn edited_engine(
    registry: Arc<Registry>,
    store: Arc<dyn OnlineStore>,
    models: Arc<ModelRepository>,
    budget_ms: u64,
    edit: impl Fn(&str) -> Option<String>,
) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    ferrite_test_support::copy_pipelines(dir.path(), budget_ms, edit);
    let pipelines = PipelineSet::load(dir.path(), &registry).unwrap();
    let engine = Engine::new(store, models, pipelines);
    engine.preload();
    engine
}

/// One transaction as a pipeline row.
pub fn push_transaction(input: &mut CallInput, r: &ParityRow) {
    input.push_row(
        [
            ("user_id".to_string(), Value::Int(r.user_id)),
            ("merchant_id".to_string(), Value::Int(r.merchant_id)),
        ],
        [
            ("amount".to_string(), Value::Float(r.amount)),
            ("currency".to_string(), Value::Str(r.currency.clone())),
            ("device_type".to_string(), Value::Str(r.device_type.clone())),
            ("event_timestamp".to_string(), Value::Int(r.event_timestamp_us)),
        ],
    );
}

pub fn transactions(rows: &[ParityRow]) -> CallInput {
    let mut input = CallInput::default();
    for r in rows {
        push_transaction(&mut input, r);
    }
    input
}
