//! Which variant a unit gets: GrowthBook's bucketing over the experiment's arms, with the
//! canary's current share in place of its configured weight. A pure function of (config,
//! canary share, unit); experiments are swapped atomically on reload.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::canary::CanaryController;
use crate::config::{ExperimentConfig, ModelVersion, VariantKind, validate_set};
use crate::error::ConfigError;
use crate::hash;

/// A variant as the caller runs it: its name and model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantRef {
    pub name: Arc<str>,
    pub model_version: ModelVersion,
}

/// The answer for one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub experiment: Arc<str>,
    /// The arm that serves this call.
    pub variant: VariantRef,
    /// The variant was named by the caller (`forced`), not hashed.
    pub forced: bool,
    /// False when the unit fell outside `coverage`: it gets the stable (or first) arm.
    pub in_coverage: bool,
    /// GrowthBook's hash of the unit, in [0, 1).
    pub bucket: f64,
    /// Set when `variant` is a canary: where the caller sends this call if the canary fails
    /// (the canary's stable arm).
    pub fallback: Option<VariantRef>,
    /// Shadow variants to run on a copy of the request; their answers are never served.
    pub shadows: Arc<[VariantRef]>,
}

/// One experiment, resolved for assignment.
#[derive(Debug)]
struct Compiled {
    config: ExperimentConfig,
    name: Arc<str>,
    seed: String,
    arms: Vec<VariantRef>,
    weights: Vec<f64>,
    /// Index in `arms` of the canary's stable arm, or 0.
    stable: usize,
    /// Index in `arms` of the canary arm.
    canary: Option<usize>,
    shadows: Arc<[VariantRef]>,
}

impl Compiled {
    fn new(config: ExperimentConfig) -> Self {
        let vref = |v: &crate::config::VariantConfig| VariantRef {
            name: Arc::from(v.name.as_str()),
            model_version: v.model_version.clone(),
        };
        let arms: Vec<VariantRef> = config.arms().map(vref).collect();
        let weights = config.arms().map(|v| v.weight).collect();
        let position = |n: &str| arms.iter().position(|a| &*a.name == n);
        let stable = config
            .canary
            .as_ref()
            .and_then(|c| position(&c.stable))
            .unwrap_or(0);
        let canary = config.canary.as_ref().and_then(|c| position(&c.variant));
        let shadows = config
            .variants
            .iter()
            .filter(|v| v.kind == VariantKind::Shadow)
            .map(vref)
            .collect();
        Compiled {
            name: Arc::from(config.name.as_str()),
            seed: config.effective_seed(),
            arms,
            weights,
            stable,
            canary,
            shadows,
            config,
        }
    }

    fn assign(&self, unit: &str, forced: Option<&str>, canary_share: Option<f64>) -> Assignment {
        let bucket = hash::hash(&self.seed, unit, self.config.hash_version).unwrap_or(0.0);
        let forced_arm = forced.and_then(|f| self.arms.iter().position(|a| &*a.name == f));
        let (index, in_coverage) = match forced_arm {
            Some(i) => (i, true),
            None => {
                let weights = match (self.canary, canary_share) {
                    (Some(c), Some(share)) => shared_weights(&self.weights, c, self.stable, share),
                    _ => self.weights.clone(),
                };
                let ranges = hash::bucket_ranges(self.arms.len(), self.config.coverage, Some(&weights));
                match hash::choose_variation(bucket, &ranges) {
                    Some(i) => (i, true),
                    None => (self.stable, false),
                }
            }
        };
        let fallback = (Some(index) == self.canary).then(|| self.arms[self.stable].clone());
        Assignment {
            experiment: self.name.clone(),
            variant: self.arms[index].clone(),
            forced: forced_arm.is_some(),
            in_coverage,
            bucket,
            fallback,
            shadows: self.shadows.clone(),
        }
    }
}

/// The arms' weights with the canary at `share` and the stable arm taking what the other
/// arms leave (never below 0: the canary is capped first).
pub fn shared_weights(configured: &[f64], canary: usize, stable: usize, share: f64) -> Vec<f64> {
    let others: f64 = configured
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != canary && *i != stable)
        .map(|(_, w)| w)
        .sum();
    let room = (1.0 - others).max(0.0);
    let share = share.clamp(0.0, room);
    let mut w = configured.to_vec();
    w[canary] = share;
    w[stable] = room - share;
    w
}

/// The current arm weights of `config` given its canary's share (`None`: as configured).
pub fn current_weights(config: &ExperimentConfig, canary_share: Option<f64>) -> Vec<(String, f64)> {
    let names: Vec<&str> = config.arms().map(|v| v.name.as_str()).collect();
    let configured: Vec<f64> = config.arms().map(|v| v.weight).collect();
    let position = |n: &str| names.iter().position(|a| *a == n);
    let weights = match (&config.canary, canary_share) {
        (Some(c), Some(share)) => match (position(&c.variant), position(&c.stable)) {
            (Some(ci), Some(si)) => shared_weights(&configured, ci, si, share),
            _ => configured,
        },
        _ => configured,
    };
    names
        .into_iter()
        .zip(weights)
        .map(|(n, w)| (n.to_string(), w))
        .collect()
}

/// Assigns units to variants for every experiment, by target.
pub struct Assigner {
    by_target: ArcSwap<HashMap<String, Arc<Compiled>>>,
    canary: Option<Arc<CanaryController>>,
}

impl Assigner {
    /// Validates `configs` as a set; `canary` supplies the canaries' current shares.
    pub fn new(
        configs: Vec<ExperimentConfig>,
        canary: Option<Arc<CanaryController>>,
    ) -> Result<Self, ConfigError> {
        validate_set(&configs)?;
        let assigner = Assigner {
            by_target: ArcSwap::from_pointee(compile(configs)),
            canary,
        };
        Ok(assigner)
    }

    /// Replaces every experiment at once (and the canary controller's runs); a bad set
    /// changes nothing.
    pub fn reload(&self, configs: Vec<ExperimentConfig>) -> Result<(), ConfigError> {
        validate_set(&configs)?;
        if let Some(c) = &self.canary {
            c.reload(&configs);
        }
        let names: Vec<String> = configs.iter().map(|c| c.name.clone()).collect();
        self.by_target.store(Arc::new(compile(configs)));
        tracing::info!(experiments = ?names, "experiments reloaded");
        Ok(())
    }

    /// The variant `unit_value` gets on `target`, or `None` when no experiment targets it.
    /// `forced` names an arm to use instead of the hash (an unknown name is ignored).
    pub fn assign(&self, target: &str, unit_value: &str, forced: Option<&str>) -> Option<Assignment> {
        let map = self.by_target.load();
        let exp = map.get(target)?;
        let share = self
            .canary
            .as_ref()
            .and_then(|c| c.current_share(&exp.config.name));
        Some(exp.assign(unit_value, forced, share))
    }

    /// The experiment on `target`, if any (for the request field it is keyed on: `unit`).
    pub fn experiment(&self, target: &str) -> Option<ExperimentConfig> {
        self.by_target.load().get(target).map(|c| c.config.clone())
    }

    /// The request field the experiment on `target` is keyed on, if one runs on it (without
    /// copying the whole config: it is asked on every call).
    pub fn unit_of(&self, target: &str) -> Option<String> {
        self.by_target.load().get(target).map(|c| c.config.unit.clone())
    }

    /// Every experiment, in name order.
    pub fn experiments(&self) -> Vec<ExperimentConfig> {
        let mut all: Vec<_> = self.by_target.load().values().map(|c| c.config.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

fn compile(configs: Vec<ExperimentConfig>) -> HashMap<String, Arc<Compiled>> {
    configs
        .into_iter()
        .map(|c| (c.target.clone(), Arc::new(Compiled::new(c))))
        .collect()
}

/// Assigns one unit with `config` alone (no canary): the pure function the assigner applies.
pub fn assign_one(config: &ExperimentConfig, unit: &str, canary_share: Option<f64>) -> Assignment {
    Compiled::new(config.clone()).assign(unit, None, canary_share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_share_replaces_its_weight_and_stable_takes_the_rest() {
        let close = |a: Vec<f64>, b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(
            shared_weights(&[0.9, 0.05, 0.05], 1, 0, 0.25),
            &[0.7, 0.25, 0.05]
        ));
        // Rolled back: the canary's share goes to stable.
        assert!(close(shared_weights(&[0.95, 0.05], 1, 0, 0.0), &[1.0, 0.0]));
        // A share larger than the room left is capped.
        assert!(close(
            shared_weights(&[0.5, 0.1, 0.4], 1, 0, 1.0),
            &[0.0, 0.6, 0.4]
        ));
    }
}
