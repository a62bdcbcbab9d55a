//! Experiment config: the example files, defaults, and an error naming the field for each
//! kind of mistake.

use std::path::Path;

use ferrite_experiments::config::{load_dir, validate_set};
use ferrite_experiments::{ConfigError, ExperimentConfig, ModelVersion, VariantKind};

fn examples() -> Vec<ExperimentConfig> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/experiments");
    load_dir(&dir).expect("the examples are valid")
}

fn fraud() -> ExperimentConfig {
    examples().remove(0)
}

type Edit = Box<dyn FnOnce(&mut ExperimentConfig)>;

fn error_of(edit: impl FnOnce(&mut ExperimentConfig)) -> String {
    let mut c = fraud();
    edit(&mut c);
    c.validate().expect_err("invalid").to_string()
}

#[test]
fn examples_load_with_defaults() {
    let all = examples();
    assert_eq!(all.len(), 2);
    let f = &all[0];
    assert_eq!(f.name, "fraud-v8-canary");
    assert_eq!((f.coverage, f.bucket_version, f.hash_version), (1.0, 0, 2));
    assert_eq!(f.effective_seed(), "fraud-v8-canary");
    assert_eq!(f.variants[2].kind, VariantKind::Shadow);
    assert_eq!(f.variants[2].model_version, ModelVersion::Label("nightly".into()));
    let c = f.canary.as_ref().unwrap();
    assert_eq!((c.min_requests, c.max_error_rate, c.alpha), (2000, 0.005, 0.01));
    assert_eq!(c.p99_budget_ms, Some(25.0));
    assert_eq!(c.promote_steps, vec![5.0, 25.0, 50.0, 100.0]);
    let r = &all[1];
    assert_eq!(r.effective_seed(), "ranker-2026-12/v1");
    assert_eq!(
        r.variants[1].model_version,
        ModelVersion::Label("wide-deep-v4".into())
    );
    assert!(r.canary.is_none());
}

#[test]
fn each_mistake_names_its_field() {
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|c| c.name = "a b".into()), "`name`"),
        (Box::new(|c| c.target.clear()), "`target`"),
        (Box::new(|c| c.unit.clear()), "`unit`"),
        (Box::new(|c| c.coverage = 1.5), "`coverage` is 1.5"),
        (Box::new(|c| c.hash_version = 3), "`hash_version` is 3"),
        (
            Box::new(|c| c.variants[1].weight = 0.1),
            "arm weights sum to 1.05",
        ),
        (
            Box::new(|c| c.variants[1].name = "stable".into()),
            "name `stable` is used twice",
        ),
        (
            Box::new(|c| c.variants[2].weight = 0.1),
            "`variants[2].weight` is 0.1",
        ),
        (
            Box::new(|c| c.variants[0].weight = -0.5),
            "`variants[0].weight` is -0.5",
        ),
        (
            Box::new(|c| c.canary.as_mut().unwrap().stable = "nope".into()),
            "`canary.stable` `nope` is not a variant",
        ),
        (
            Box::new(|c| c.canary.as_mut().unwrap().variant = "shadow-v9".into()),
            "`canary.variant` `shadow-v9` is a shadow",
        ),
        (
            Box::new(|c| c.canary.as_mut().unwrap().stable = "candidate".into()),
            "`canary.stable` is `candidate`, the canary itself",
        ),
        (
            Box::new(|c| {
                c.variants[0].weight = 1.0;
                c.variants[1].weight = 0.0;
            }),
            "`canary.variant` `candidate` has weight 0",
        ),
        (
            Box::new(|c| c.canary.as_mut().unwrap().alpha = 0.0),
            "`canary.alpha` is 0",
        ),
        (
            Box::new(|c| c.canary.as_mut().unwrap().max_error_rate = 1.0),
            "`canary.max_error_rate` is 1",
        ),
        (
            Box::new(|c| c.canary.as_mut().unwrap().promote_steps = vec![25.0, 5.0]),
            "`canary.promote_steps` [25.0, 5.0] is not increasing",
        ),
        (
            Box::new(|c| c.canary.as_mut().unwrap().min_requests = 0),
            "`canary.min_requests` is 0",
        ),
    ];
    for (edit, want) in cases {
        let got = error_of(edit);
        assert!(got.contains(want), "{got:?} does not contain {want:?}");
        assert!(got.starts_with("experiment `"), "{got:?} names the experiment");
    }
}

#[test]
fn unknown_fields_and_bad_toml_name_the_file() {
    let text = "name = \"x\"\ntarget = \"t\"\nunit = \"u\"\nweigth = 1\nvariants = []\n";
    let err = ExperimentConfig::from_toml(text, Path::new("experiments/x.toml")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("experiments/x.toml") && msg.contains("weigth"),
        "{msg}"
    );
}

#[test]
fn a_set_has_unique_names_and_one_experiment_per_target() {
    let mut two = examples();
    two[1].target = two[0].target.clone();
    match validate_set(&two) {
        Err(ConfigError::DuplicateTarget { target, .. }) => assert_eq!(target, "fraud"),
        other => panic!("expected a duplicate target, got {other:?}"),
    }
    let mut two = examples();
    two[1].name = two[0].name.clone();
    assert!(matches!(validate_set(&two), Err(ConfigError::DuplicateName(_))));
}
