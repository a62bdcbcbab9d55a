//! Raw in-process ONNX Runtime calls through `ferrite-models`, the floor under ModelInfer.
//!
//!     cargo bench -p ferrite-benches --bench onnx

use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ferrite_models::{ModelBackend, OnnxModel, OnnxRuntime, Tensor, TensorData};

fn onnx(c: &mut Criterion) {
    let rt = OnnxRuntime::get(None).expect("ONNX Runtime: run scripts/setup.sh");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/ferrite-models/tests/data/affine_sigmoid.onnx");
    let model = OnnxModel::load(&rt, &path, 1).unwrap();
    let mut group = c.benchmark_group("onnx_affine_sigmoid");
    for batch in [1usize, 64] {
        let x = Tensor::new("x", vec![batch, 4], TensorData::Fp32(vec![0.5; batch * 4])).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(batch), &x, |b, x| {
            b.iter(|| model.infer(std::slice::from_ref(x)).unwrap())
        });
    }
    group.finish();

    // The fraud GBDT example: 200 trees over 40 features, as exported from scikit-learn.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fraud_gbdt/1/model.onnx");
    let model = OnnxModel::load(&rt, &path, 1).unwrap();
    let mut group = c.benchmark_group("onnx_fraud_gbdt");
    for batch in [1usize, 64] {
        let x = Tensor::new("X", vec![batch, 40], TensorData::Fp32(vec![0.25; batch * 40])).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(batch), &x, |b, x| {
            b.iter(|| model.infer(std::slice::from_ref(x)).unwrap())
        });
    }
    group.finish();

    // The fraud pipeline's model (LightGBM, 400 trees over 130 features): one row, and a
    // leave-one-out explanation of it (each feature at its training mean) as a 130-row run
    // against the trees walked natively.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fraud_txn_gbdt/1");
    let model = OnnxModel::load(&rt, &dir.join("model.onnx"), 1).unwrap();
    let trees = model.tree_ensemble().expect("a tree ensemble").clone();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("features.json")).unwrap()).unwrap();
    let baseline: Vec<f32> = meta["baseline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().map_or(f32::NAN, |m| m as f32))
        .collect();
    // A row away from the means: every feature at 1.7 times its mean.
    let row: Vec<f32> = baseline.iter().map(|m| m * 1.7).collect();
    let changes: Vec<(usize, f32)> = baseline.iter().copied().enumerate().collect();
    let variants: Vec<f32> = changes
        .iter()
        .flat_map(|&(f, m)| {
            let mut r = row.clone();
            r[f] = m;
            r
        })
        .collect();
    let one = Tensor::new("features", vec![1, row.len()], TensorData::Fp32(row.clone())).unwrap();
    let all = Tensor::new(
        "features",
        vec![changes.len(), row.len()],
        TensorData::Fp32(variants),
    )
    .unwrap();
    let mut group = c.benchmark_group("fraud_txn_gbdt");
    group.bench_function("onnx_1_row", |b| {
        b.iter(|| model.infer(std::slice::from_ref(&one)).unwrap())
    });
    group.bench_function("native_1_row", |b| b.iter(|| trees.predict(&row).unwrap()));
    group.bench_function("onnx_explain_130_rows", |b| {
        b.iter(|| model.infer(std::slice::from_ref(&all)).unwrap())
    });
    group.bench_function("native_explain", |b| {
        b.iter(|| trees.predict_changed(&row, &changes).unwrap())
    });
    group.finish();
}

criterion_group!(benches, onnx);
criterion_main!(benches);
