//! Assignments equal the `growthbook` Python package's (pinned in scripts/requirements.txt)
//! for 120,000 seeded random unit ids over five weight/coverage configs, run through
//! `GrowthBook.run(Experiment(..., hashVersion=2))` by tests/growthbook_assignments.py.

use std::path::PathBuf;
use std::process::Command;

use ferrite_experiments::assign::assign_one;
use ferrite_experiments::{ExperimentConfig, ModelVersion, VariantConfig, VariantKind};

const UNITS_PER_CONFIG: usize = 24_000;

fn config(seed: &str, coverage: f64, weights: &[f64]) -> ExperimentConfig {
    ExperimentConfig {
        name: "parity".into(),
        target: "t".into(),
        unit: "id".into(),
        seed: Some(seed.into()),
        coverage,
        bucket_version: 0,
        hash_version: 2,
        variants: weights
            .iter()
            .enumerate()
            .map(|(i, w)| VariantConfig {
                name: format!("v{i}"),
                model_version: ModelVersion::Number(i as u64),
                weight: *w,
                kind: VariantKind::Arm,
            })
            .collect(),
        canary: None,
    }
}

#[test]
fn assignments_equal_the_growthbook_python_package() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../../.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh, which creates .venv from scripts/requirements.txt \
         (this test needs its pinned `growthbook` package)",
        python.display()
    );
    let out = Command::new(&python)
        .arg(root.join("tests/growthbook_assignments.py"))
        .arg(UNITS_PER_CONFIG.to_string())
        .output()
        .expect("the virtualenv's python runs");
    assert!(
        out.status.success(),
        "growthbook_assignments.py failed (is `growthbook` installed in .venv?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    let mut current: Option<ExperimentConfig> = None;
    let (mut compared, mut outside) = (0usize, 0usize);
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields[0] == "config" {
            let weights: Vec<f64> = fields[4].split(',').map(|w| w.parse().unwrap()).collect();
            current = Some(config(fields[2], fields[3].parse().unwrap(), &weights));
            continue;
        }
        let exp = current.as_ref().expect("a config line first");
        let (unit, want): (&str, i64) = (fields[1], fields[2].parse().unwrap());
        let got = assign_one(exp, unit, None);
        let got_index = match got.in_coverage {
            true => got.variant.name[1..].parse::<i64>().unwrap(),
            false => -1,
        };
        assert_eq!(got_index, want, "seed {:?}, unit {unit:?}", exp.seed);
        compared += 1;
        outside += usize::from(want == -1);
    }
    assert_eq!(compared, 5 * UNITS_PER_CONFIG);
    assert!(
        outside > 0,
        "the configs with partial coverage left some units out"
    );
}
