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
}

criterion_group!(benches, onnx);
criterion_main!(benches);
