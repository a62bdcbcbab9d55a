//! Simulated traffic for canary tests: requests keyed by fresh transaction ids, assigned by
//! the real `Assigner`, failing and taking time as each arm is told to, recorded with the
//! real `CanaryController` on a manual clock. Seeded, so every run is the same.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ferrite_experiments::{
    Assigner, CanaryConfig, CanaryController, CanaryStore, ExperimentConfig, ManualClock, ModelVersion,
    VariantConfig, VariantKind,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const TARGET: &str = "fraud";
pub const NAME: &str = "fraud-canary";

/// Stable (`v7`) at 95 %, the canary (`v8`) at 5 %, with `canary` as its canary config.
pub fn experiment(canary: CanaryConfig) -> ExperimentConfig {
    let arm = |name: &str, version, weight| VariantConfig {
        name: name.into(),
        model_version: ModelVersion::Number(version),
        weight,
        kind: VariantKind::Arm,
    };
    ExperimentConfig {
        name: NAME.into(),
        target: TARGET.into(),
        unit: "transaction_id".into(),
        seed: None,
        coverage: 1.0,
        bucket_version: 0,
        hash_version: 2,
        variants: vec![arm("v7", 7, 0.95), arm("v8", 8, 0.05)],
        canary: Some(canary),
    }
}

/// A canary config with the defaults but for the fields set in `extra` (TOML lines).
pub fn canary(extra: &str) -> CanaryConfig {
    toml::from_str(&format!("variant = \"v8\"\nstable = \"v7\"\n{extra}")).expect("canary TOML")
}

/// How an arm behaves.
#[derive(Clone, Copy)]
pub struct Arm {
    pub error_rate: f64,
    pub latency: Duration,
}

pub fn arm(error_rate: f64, latency_ms: u64) -> Arm {
    Arm {
        error_rate,
        latency: Duration::from_millis(latency_ms),
    }
}

pub struct Sim {
    pub rng: StdRng,
    pub clock: Arc<ManualClock>,
    pub controller: Arc<CanaryController>,
    pub assigner: Assigner,
    pub next_id: u64,
    /// Clock advance per request.
    pub tick: Duration,
}

impl Sim {
    pub fn new(config: ExperimentConfig, store: Arc<dyn CanaryStore>, seed: u64) -> Self {
        Self::replica(config, store, seed, "sim")
    }

    /// A simulation whose controller names itself `replica` in transitions.
    pub fn replica(config: ExperimentConfig, store: Arc<dyn CanaryStore>, seed: u64, replica: &str) -> Self {
        let clock = Arc::new(ManualClock::default());
        let controller = CanaryController::new(std::slice::from_ref(&config), store, clock.clone(), replica);
        let assigner = Assigner::new(vec![config], Some(controller.clone())).expect("valid");
        Sim {
            rng: StdRng::seed_from_u64(seed),
            clock,
            controller,
            assigner,
            next_id: 0,
            tick: Duration::from_millis(1),
        }
    }

    /// One request; returns whether it went to the canary.
    pub fn request(&mut self, canary: Arm, stable: Arm) -> bool {
        self.next_id += 1;
        let id = format!("t{}", self.next_id);
        let a = self.assigner.assign(TARGET, &id, None).expect("an experiment");
        let on_canary = &*a.variant.name == "v8";
        let behaviour = if on_canary { canary } else { stable };
        let ok = self.rng.random::<f64>() >= behaviour.error_rate;
        self.controller
            .record(NAME, &a.variant.name, ok, behaviour.latency);
        self.clock.advance(self.tick);
        on_canary
    }

    pub fn share(&self) -> f64 {
        self.controller.current_share(NAME).expect("a canary")
    }
}
