//! The tree ensembles of the example GBDT models, evaluated in Rust, give what ONNX Runtime
//! gives for the same rows: the positive class's probability for each row, and for each
//! one-feature variant of a row (the rows a leave-one-out explanation would run).

use std::path::PathBuf;

use ferrite_models::{ModelRepository, OnnxRuntime, Tensor, TensorData};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Deterministic values in [0, 1) (a linear congruential generator).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` rows of `width` features: each value a random multiple (0 to 3×) of the feature's
/// `scale`, a tenth of them exactly zero, a fifth on a multiple of one half, and a tenth
/// missing (NaN) when `missing`.
fn rows(n: usize, scale: &[f64], missing: bool, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| {
            scale
                .iter()
                .map(|&s| match rng.next() {
                    u if u < 0.1 && missing => f32::NAN,
                    u if u < 0.2 => 0.0,
                    // On a half: where integer features have their thresholds (1.5, 5.5).
                    u if u < 0.4 => ((s * 6.0 * rng.next()).round() / 2.0) as f32,
                    _ => (s * 3.0 * rng.next()) as f32,
                })
                .collect()
        })
        .collect()
}

/// ONNX Runtime's probability of the positive class (column 1 of `probabilities`).
async fn served(
    repo: &ModelRepository,
    name: &str,
    version: &str,
    output: &str,
    rows: &[Vec<f32>],
) -> Vec<f64> {
    let input_name = repo.get(name).unwrap().config.inputs[0].name.clone();
    let x = Tensor::new(
        input_name,
        vec![rows.len(), rows[0].len()],
        TensorData::Fp32(rows.concat()),
    )
    .unwrap();
    let (_, outputs) = repo.infer(name, version, vec![x]).await.unwrap();
    let p = outputs.iter().find(|t| t.name == output).unwrap();
    match &p.data {
        TensorData::Fp32(v) => v.chunks(2).map(|c| f64::from(c[1])).collect(),
        other => panic!("{name}: {output} is {:?}", other.dtype()),
    }
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 2e-6
}

#[tokio::test]
async fn native_trees_give_onnx_runtimes_probabilities_for_rows_and_their_one_feature_variants() {
    let repo = ModelRepository::new(repo_root().join("models"), OnnxRuntime::get(None).unwrap());
    let txn_meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("models/fraud_txn_gbdt/1/features.json")).unwrap(),
    )
    .unwrap();
    let txn_scale: Vec<f64> = txn_meta["baseline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap_or(1.0).abs().max(1.0))
        .collect();
    // The 130-feature LightGBM model of the fraud pipeline (both versions) and the 40-feature
    // LightGBM, XGBoost and scikit-learn examples.
    let cases = [
        ("fraud_txn_gbdt", "1", "probabilities", txn_scale.clone()),
        ("fraud_txn_gbdt", "2", "probabilities", txn_scale),
        ("fraud_lightgbm", "1", "probabilities", vec![2.0; 40]),
        ("fraud_xgboost", "1", "probabilities", vec![2.0; 40]),
        ("fraud_gbdt", "1", "probabilities", vec![2.0; 40]),
    ];
    let mut native = Vec::new();
    for (i, (name, version, output, scale)) in cases.iter().enumerate() {
        let model = repo.load(name).unwrap();
        let backend = &model.version(version).unwrap().backend;
        let Some(trees) = backend.tree_ensemble() else {
            continue;
        };
        native.push(*name);
        assert_eq!(trees.width(), scale.len().min(trees.width()), "{name}");
        let missing = model.config.allow_non_finite;
        let sample = rows(200, scale, missing, 7 + i as u64);
        let want = served(&repo, name, version, output, &sample).await;
        for (row, want) in sample.iter().zip(&want) {
            let got = trees.predict(row).unwrap();
            assert!(
                close(got, *want),
                "{name} v{version}: native {got}, ONNX Runtime {want}"
            );
        }

        // Leave one out on a few rows: each feature set to another row's value.
        let others = rows(8, scale, missing, 99 + i as u64);
        for (row, other) in sample.iter().take(8).zip(&others) {
            let changes: Vec<(usize, f32)> = (0..row.len()).map(|f| (f, other[f])).collect();
            let (score, got) = trees.predict_changed(row, &changes).unwrap();
            assert!(close(score, trees.predict(row).unwrap()));
            let variants: Vec<Vec<f32>> = changes
                .iter()
                .map(|&(f, v)| {
                    let mut r = row.clone();
                    r[f] = v;
                    r
                })
                .collect();
            let want = served(&repo, name, version, output, &variants).await;
            for ((f, got), want) in got.iter().enumerate().zip(want) {
                assert!(
                    close(*got, want),
                    "{name} v{version}, feature {f}: native {got}, ONNX Runtime {want}"
                );
            }
        }
    }
    let names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    assert_eq!(native, names, "every example GBDT is evaluated natively");
}

#[tokio::test]
async fn the_trees_stand_for_an_output_only_when_the_graph_adds_nothing_to_them() {
    let repo = ModelRepository::new(repo_root().join("models"), OnnxRuntime::get(None).unwrap());
    let trees = |name: &str| {
        let model = repo.load(name).unwrap();
        model
            .version("1")
            .unwrap()
            .backend
            .tree_ensemble()
            .unwrap()
            .clone()
    };
    // LightGBM through onnxmltools: the ensemble, then Identity and a Mul by a constant 1.
    let txn = trees("fraud_txn_gbdt");
    assert!(txn.computes("features", "probabilities"));
    assert!(
        !txn.computes("features", "label"),
        "the label is a Cast of the class, not the score"
    );
    assert!(!txn.computes("other", "probabilities"));
    // scikit-learn (an Identity) and XGBoost (the ensemble alone).
    assert!(trees("fraud_gbdt").computes("X", "probabilities"));
    assert!(trees("fraud_xgboost").computes("features", "probabilities"));
    // A ZipMap after the ensemble changes what the output is.
    assert!(!trees("fraud_lightgbm").computes("features", "probabilities"));
}
