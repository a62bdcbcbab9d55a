//! Which model version a call runs (one small interface, so that experiments can route
//! between versions later), and what a trained version says about its inputs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::pipeline::Pipeline;

/// A model name and a version number or label (empty: the highest ready version).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelChoice {
    pub name: String,
    pub version: String,
}

/// Chooses the model version for one row of a call. Rows of one call that get different
/// choices run as separate model calls.
pub trait ModelSelector: Send + Sync {
    fn choose(&self, pipeline: &Pipeline, row: usize) -> ModelChoice;
}

/// The version the pipeline's file names, for every row.
pub struct Configured;

impl ModelSelector for Configured {
    fn choose(&self, pipeline: &Pipeline, _row: usize) -> ModelChoice {
        ModelChoice {
            name: pipeline.model.name.clone(),
            version: pipeline.model.version.clone(),
        }
    }
}

/// `<model>/<version>/features.json`, written by the training script beside the weights.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelMeta {
    /// The feature service the version was trained on.
    #[serde(default)]
    pub feature_service: String,
    /// Its input features, in order.
    pub features: Vec<String>,
    /// Each feature's mean over the training rows (missing where every row was missing):
    /// the value a feature is set to when measuring how much it moved a score.
    #[serde(default)]
    pub baseline: Vec<Option<f64>>,
}

/// Per (model, version): its metadata, `None` when it has none.
type MetaMap = HashMap<(String, u64), Option<Arc<ModelMeta>>>;

/// Model metadata by (model, version), read once per version.
#[derive(Default)]
pub struct MetaCache {
    entries: ArcSwap<MetaMap>,
}

impl MetaCache {
    /// The metadata of `model` version `version` under `root` (`None` when the version has no
    /// `features.json`; a file that cannot be read is logged and treated as absent).
    pub fn get(&self, root: &Path, model: &str, version: u64) -> Option<Arc<ModelMeta>> {
        if let Some(hit) = self.entries.load().get(&(model.to_string(), version)) {
            return hit.clone();
        }
        let path = root.join(model).join(version.to_string()).join("features.json");
        let meta = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "model metadata not readable");
                None
            }
            Ok(bytes) => match serde_json::from_slice::<ModelMeta>(&bytes) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "model metadata not valid");
                    None
                }
            },
        };
        self.entries.rcu(|old| {
            let mut map = HashMap::clone(old);
            map.insert((model.to_string(), version), meta.clone());
            map
        });
        meta
    }
}
