//! Assignment behaviour over many units: the split follows the weights (a χ² bound),
//! changing weights moves only the units that must move, ramping coverage never changes a
//! unit's variant, and a bucket-version bump reassigns.

use std::sync::Arc;

use ferrite_experiments::assign::assign_one;
use ferrite_experiments::{
    Assigner, CanaryController, ExperimentConfig, ManualClock, MemoryCanaryStore, ModelVersion,
    VariantConfig, VariantKind,
};

const UNITS: usize = 100_000;

fn experiment(weights: &[f64], coverage: f64) -> ExperimentConfig {
    ExperimentConfig {
        name: "split".into(),
        target: "fraud".into(),
        unit: "user_id".into(),
        seed: None,
        coverage,
        bucket_version: 0,
        hash_version: 2,
        variants: weights
            .iter()
            .enumerate()
            .map(|(i, w)| VariantConfig {
                name: format!("v{i}"),
                model_version: ModelVersion::Number(i as u64 + 1),
                weight: *w,
                kind: VariantKind::Arm,
            })
            .collect(),
        canary: None,
    }
}

fn unit(i: usize) -> String {
    format!("user-{i}")
}

/// The arm index of every unit (`None` outside coverage).
fn arms(config: &ExperimentConfig) -> Vec<Option<usize>> {
    (0..UNITS)
        .map(|i| {
            let a = assign_one(config, &unit(i), None);
            a.in_coverage.then(|| a.variant.name[1..].parse().unwrap())
        })
        .collect()
}

/// The 0.999 quantile of χ² with `df` degrees of freedom.
fn chi2_999(df: usize) -> f64 {
    [10.828, 13.816, 16.266, 18.467][df - 1]
}

#[test]
fn the_split_matches_the_weights() {
    for weights in [
        vec![0.5, 0.5],
        vec![0.95, 0.05],
        vec![0.5, 0.3, 0.2],
        vec![0.25; 4],
    ] {
        let mut counts = vec![0usize; weights.len()];
        for a in arms(&experiment(&weights, 1.0)) {
            counts[a.expect("full coverage")] += 1;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&weights)
            .map(|(&o, w)| {
                let e = w * UNITS as f64;
                (o as f64 - e).powi(2) / e
            })
            .sum();
        let bound = chi2_999(weights.len() - 1);
        assert!(
            chi2 < bound,
            "{weights:?}: counts {counts:?}, χ² {chi2:.2} >= {bound}"
        );
    }
}

#[test]
fn moving_from_95_5_to_90_10_moves_only_units_that_must_move() {
    let before = arms(&experiment(&[0.95, 0.05], 1.0));
    let after = arms(&experiment(&[0.9, 0.1], 1.0));
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        match (b.unwrap(), a.unwrap()) {
            (1, 1) | (0, 0) => {}
            (0, 1) => moved += 1,
            (b, a) => panic!("a unit moved from v{b} to v{a}"),
        }
    }
    // About 5 % of units must move (the new share); none more than that by much.
    let share = moved as f64 / UNITS as f64;
    assert!((0.04..0.06).contains(&share), "{share} of units moved");
}

#[test]
fn ramping_coverage_never_changes_a_units_variant() {
    let ramp = [0.05, 0.2, 0.5, 0.8, 1.0];
    let steps: Vec<_> = ramp
        .iter()
        .map(|c| arms(&experiment(&[0.5, 0.3, 0.2], *c)))
        .collect();
    for pair in steps.windows(2) {
        for (lower, higher) in pair[0].iter().zip(&pair[1]) {
            if let Some(v) = lower {
                assert_eq!(Some(*v), *higher, "a covered unit changed variant or left");
            }
        }
    }
    let covered = steps[0].iter().filter(|a| a.is_some()).count() as f64 / UNITS as f64;
    assert!((0.04..0.06).contains(&covered), "{covered} covered at 5 %");
}

#[test]
fn a_bucket_version_bump_reassigns() {
    let v0 = experiment(&[0.5, 0.5], 1.0);
    let mut v1 = v0.clone();
    v1.bucket_version = 1;
    let changed = arms(&v0).iter().zip(arms(&v1)).filter(|(a, b)| **a != *b).count() as f64 / UNITS as f64;
    // Independent reassignment of a 50/50 split changes about half.
    assert!((0.45..0.55).contains(&changed), "{changed} changed");
}

#[test]
fn out_of_coverage_gets_stable_flagged_and_forced_wins() {
    let mut config = experiment(&[0.5, 0.5], 0.0);
    config.canary = Some(toml::from_str("variant = \"v0\"\nstable = \"v1\"").expect("a canary config"));
    let assigner = Assigner::new(vec![config], None).unwrap();
    let a = assigner.assign("fraud", "u1", None).unwrap();
    assert!(!a.in_coverage && !a.forced);
    assert_eq!(&*a.variant.name, "v1", "the canary's stable arm");
    assert_eq!(a.fallback, None);
    let f = assigner.assign("fraud", "u1", Some("v0")).unwrap();
    assert!(f.forced && f.in_coverage);
    assert_eq!(&*f.variant.name, "v0");
    assert_eq!(f.fallback.as_ref().map(|v| &*v.name), Some("v1"));
    // An unknown forced name is ignored.
    assert!(!assigner.assign("fraud", "u1", Some("v9")).unwrap().forced);
    assert!(assigner.assign("search", "u1", None).is_none());
}

#[test]
fn canary_units_carry_their_fallback_and_shadows_are_listed() {
    let mut config = experiment(&[0.9, 0.1], 1.0);
    config.variants.push(VariantConfig {
        name: "shadow".into(),
        model_version: ModelVersion::Label("next".into()),
        weight: 0.0,
        kind: VariantKind::Shadow,
    });
    config.canary = Some(toml::from_str("variant = \"v1\"\nstable = \"v0\"").unwrap());
    let clock = Arc::new(ManualClock::default());
    let canary = CanaryController::new(
        std::slice::from_ref(&config),
        Arc::new(MemoryCanaryStore::default()),
        clock,
        "r1",
    );
    let assigner = Assigner::new(vec![config], Some(canary)).unwrap();
    let mut canaries = 0;
    for i in 0..10_000 {
        let a = assigner.assign("fraud", &unit(i), None).unwrap();
        assert_eq!(a.shadows.len(), 1);
        assert_eq!(a.shadows[0].model_version, ModelVersion::Label("next".into()));
        match &*a.variant.name {
            "v1" => {
                canaries += 1;
                assert_eq!(a.fallback.as_ref().map(|v| &*v.name), Some("v0"));
            }
            _ => assert!(a.fallback.is_none()),
        }
    }
    assert!(
        (800..1200).contains(&canaries),
        "{canaries} canary units of 10,000"
    );
}

#[test]
fn reload_swaps_all_experiments_and_a_bad_set_changes_nothing() {
    let assigner = Assigner::new(vec![experiment(&[1.0, 0.0], 1.0)], None).unwrap();
    assert_eq!(&*assigner.assign("fraud", "u", None).unwrap().variant.name, "v0");
    assigner.reload(vec![experiment(&[0.0, 1.0], 1.0)]).unwrap();
    assert_eq!(&*assigner.assign("fraud", "u", None).unwrap().variant.name, "v1");
    assert!(assigner.reload(vec![experiment(&[0.7, 0.7], 1.0)]).is_err());
    assert_eq!(&*assigner.assign("fraud", "u", None).unwrap().variant.name, "v1");
}
