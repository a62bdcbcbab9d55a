//! Fraud scores from the model's trees walked in Rust (`ferrite_models::trees`) instead of an
//! ONNX Runtime run, for a model version that earned it.
//!
//! A version qualifies when its ONNX graph is its tree ensemble alone between the pipeline's
//! input and output (`TreeEnsemble::computes`). It is then checked on live traffic: its
//! first [`TRUST_AFTER`] rows are scored by ONNX Runtime as before and by the trees beside,
//! and only when every one agrees within [`TREES_AGREE`] are its later rows scored by the
//! trees. One disagreement, ever, and the version stays on ONNX Runtime (logged once). A
//! reloaded version is a new ensemble and is checked again. The trees' run is counted in the
//! version's statistics as a model run is. Why: a 400-tree model run costs ONNX Runtime
//! 52–87 µs when its caches have gone cold between calls (and a hop to the blocking pool,
//! above 100 µs), the walk in Rust 30–46 µs (BENCHMARKS.md §1).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferrite_models::repository::LoadedVersion;
use ferrite_models::trees::TreeEnsemble;

/// How far the trees' score may be from ONNX Runtime's (an f32 probability).
pub(crate) const TREES_AGREE: f64 = 1e-5;

/// Rows of a version both scored alike before the trees score it alone.
pub(crate) const TRUST_AFTER: u64 = 1_000;

/// What scores a version's rows now.
pub(crate) enum Plan {
    /// ONNX Runtime, and the trees beside it until the version is trusted.
    Check(Arc<TreeEnsemble>),
    /// The trees alone.
    Trees(Arc<TreeEnsemble>),
    /// ONNX Runtime alone.
    Model,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Checking { agreed: u64 },
    Trusted,
    Refused,
}

/// A model version's ensemble (the one it was checked with) and its standing.
type Standing = (Arc<TreeEnsemble>, State);

/// Each model version's standing, shared by the engine's calls: by model name, then version
/// (looked up by `&str`, so a call allocates nothing once its model is known).
#[derive(Default)]
pub(crate) struct NativeTrees {
    versions: Mutex<HashMap<String, HashMap<u64, Standing>>>,
}

impl NativeTrees {
    /// How `version` of `model` scores rows read as model input `input` and output `output`.
    pub(crate) fn plan(&self, model: &str, version: &LoadedVersion, input: &str, output: &str) -> Plan {
        let Some(trees) = version.backend.tree_ensemble() else {
            return Plan::Model;
        };
        if !trees.computes(input, output) {
            return Plan::Model;
        }
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        if !versions.contains_key(model) {
            versions.insert(model.to_string(), HashMap::new());
        }
        let entry = versions
            .get_mut(model)
            .expect("inserted above")
            .entry(version.version)
            .or_insert_with(|| (trees.clone(), State::Checking { agreed: 0 }));
        if !Arc::ptr_eq(&entry.0, trees) {
            // The version was reloaded: its ensemble is checked again.
            *entry = (trees.clone(), State::Checking { agreed: 0 });
        }
        match entry.1 {
            State::Checking { .. } => Plan::Check(trees.clone()),
            State::Trusted => Plan::Trees(trees.clone()),
            State::Refused => Plan::Model,
        }
    }

    /// Whether `version` of `model` is scored by its trees now.
    pub(crate) fn trusted(&self, model: &str, version: u64) -> bool {
        let versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        versions
            .get(model)
            .and_then(|v| v.get(&version))
            .is_some_and(|(_, state)| *state == State::Trusted)
    }

    /// Compares the trees' scores for the rows of `x` (`served.len()` rows) with ONNX
    /// Runtime's `served` ones: trusts the version once [`TRUST_AFTER`] rows agreed, refuses
    /// it at the first row that does not.
    pub(crate) fn check(
        &self,
        pipeline: &str,
        model: &str,
        version: u64,
        trees: &Arc<TreeEnsemble>,
        x: &[f32],
        served: &[f64],
    ) {
        let width = x.len().checked_div(served.len()).unwrap_or(0);
        let disagreement = x
            .chunks_exact(width.max(1))
            .zip(served)
            .find_map(|(row, &score)| match trees.predict(row) {
                Ok(own) if (own - score).abs() <= TREES_AGREE => None,
                Ok(own) => Some(format!("the trees give {own} where ONNX Runtime gave {score}")),
                Err(e) => Some(e),
            });
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let Some((held, state)) = versions.get_mut(model).and_then(|v| v.get_mut(&version)) else {
            return;
        };
        if !Arc::ptr_eq(held, trees) {
            return;
        }
        let State::Checking { agreed } = *state else {
            return;
        };
        *state = match disagreement {
            Some(why) => {
                tracing::warn!(
                    pipeline,
                    model,
                    version,
                    "{why}: scores keep coming from ONNX Runtime"
                );
                State::Refused
            }
            None if agreed + served.len() as u64 >= TRUST_AFTER => {
                tracing::info!(
                    pipeline,
                    model,
                    version,
                    "the model's trees agreed with ONNX Runtime on {} rows: they score its rows from now on",
                    agreed + served.len() as u64
                );
                State::Trusted
            }
            None => State::Checking {
                agreed: agreed + served.len() as u64,
            },
        };
    }
}

/// The trees' score for each row of `x` (`rows` rows), counted in `version`'s statistics as
/// one model run; `None` when a row does not fit the trees (ONNX Runtime runs them then).
pub(crate) fn scores(
    trees: &TreeEnsemble,
    version: &LoadedVersion,
    x: &[f32],
    rows: usize,
) -> Option<Vec<f64>> {
    let width = x.len().checked_div(rows)?;
    let started = Instant::now();
    let scores = x
        .chunks_exact(width.max(1))
        .map(|row| trees.predict(row).ok())
        .collect::<Option<Vec<f64>>>()?;
    let took = started.elapsed();
    version.stats.record_execution(rows, took);
    version.stats.record_request(true, took);
    Some(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_models::{ModelRepository, OnnxRuntime};

    fn fraud_model() -> (ModelRepository, Arc<LoadedVersion>) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let repo = ModelRepository::new(root, OnnxRuntime::get(None).unwrap());
        let model = repo.load("fraud_txn_gbdt").unwrap();
        let version = model.version("1").unwrap().clone();
        (repo, version)
    }

    /// `n` rows of the model's width, and the trees' own score of each plus `off`.
    fn rows(trees: &TreeEnsemble, n: usize, off: f64) -> (Vec<f32>, Vec<f64>) {
        let width = trees.width();
        let x: Vec<f32> = (0..n * width).map(|i| (i % 97) as f32 * 0.37).collect();
        let scores = x
            .chunks_exact(width)
            .map(|r| trees.predict(r).unwrap() + off)
            .collect();
        (x, scores)
    }

    #[test]
    fn a_version_is_trusted_after_enough_agreeing_rows_and_refused_at_one_disagreement() {
        let (_repo, v) = fraud_model();
        let trees = v.backend.tree_ensemble().unwrap().clone();
        let native = NativeTrees::default();
        let plan = || native.plan("m", &v, "features", "probabilities");
        // Another output than the ensemble's score is never the trees'.
        assert!(matches!(native.plan("m", &v, "features", "label"), Plan::Model));

        let (x, agreeing) = rows(&trees, 100, 1e-7);
        for _ in 0..TRUST_AFTER / 100 - 1 {
            assert!(matches!(plan(), Plan::Check(_)));
            native.check("p", "m", v.version, &trees, &x, &agreeing);
        }
        assert!(!native.trusted("m", v.version));
        native.check("p", "m", v.version, &trees, &x, &agreeing);
        assert!(native.trusted("m", v.version));
        assert!(matches!(plan(), Plan::Trees(_)));

        // Another engine's version: one row off by more than the tolerance refuses it for good.
        let other = NativeTrees::default();
        assert!(matches!(
            other.plan("m", &v, "features", "probabilities"),
            Plan::Check(_)
        ));
        let (x, mut scores) = rows(&trees, 100, 0.0);
        scores[37] += 10.0 * TREES_AGREE;
        other.check("p", "m", v.version, &trees, &x, &scores);
        assert!(matches!(
            other.plan("m", &v, "features", "probabilities"),
            Plan::Model
        ));
        let (x, agreeing) = rows(&trees, 2_000, 0.0);
        other.check("p", "m", v.version, &trees, &x, &agreeing);
        assert!(!other.trusted("m", v.version));
    }

    #[test]
    fn a_reloaded_version_is_checked_again() {
        let (_repo, v) = fraud_model();
        let trees = v.backend.tree_ensemble().unwrap().clone();
        let native = NativeTrees::default();
        let (x, agreeing) = rows(&trees, TRUST_AFTER as usize, 0.0);
        native.plan("m", &v, "features", "probabilities");
        native.check("p", "m", v.version, &trees, &x, &agreeing);
        assert!(native.trusted("m", v.version));
        // The same version number, loaded again: a new ensemble.
        let (_repo2, reloaded) = fraud_model();
        assert!(matches!(
            native.plan("m", &reloaded, "features", "probabilities"),
            Plan::Check(_)
        ));
        assert!(!native.trusted("m", v.version));
        // A late check of the old ensemble does not count for the new one.
        native.check("p", "m", v.version, &trees, &x, &agreeing);
        assert!(!native.trusted("m", v.version));
    }
}
