//! ONNX Runtime really runs: the committed model gives the outputs Python onnxruntime gave.

use std::path::PathBuf;

use ferrite_models::{OnnxModel, OnnxRuntime};
use ndarray::{ArrayD, IxDyn};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn matrix(v: &serde_json::Value) -> ArrayD<f32> {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let (r, c) = (rows.len(), rows[0].len());
    ArrayD::from_shape_vec(IxDyn(&[r, c]), rows.into_iter().flatten().collect()).unwrap()
}

#[test]
fn affine_sigmoid_matches_python_onnxruntime() {
    let rt = OnnxRuntime::get(None).expect("ONNX Runtime from the project virtualenv");
    let model = OnnxModel::load(&rt, &data("affine_sigmoid.onnx"), 1).unwrap();
    assert_eq!(model.input_names(), ["x"]);
    assert_eq!(model.output_names(), ["y"]);

    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("affine_sigmoid.expected.json")).unwrap()).unwrap();
    let outputs = model.run_f32(vec![("x".into(), matrix(&expected["x"]))]).unwrap();
    let want = matrix(&expected["y"]);
    assert_eq!(outputs[0].1.shape(), want.shape());
    for (got, want) in outputs[0].1.iter().zip(want.iter()) {
        assert!(
            (got - want).abs() <= 1e-6,
            "got {got}, Python onnxruntime gave {want}"
        );
    }
}

#[test]
fn an_unknown_input_name_is_rejected_with_the_expected_names() {
    let rt = OnnxRuntime::get(None).unwrap();
    let model = OnnxModel::load(&rt, &data("affine_sigmoid.onnx"), 1).unwrap();
    let err = model
        .run_f32(vec![("features".into(), ArrayD::zeros(IxDyn(&[1, 4])))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"features\"") && err.contains("\"x\""), "{err}");
}

#[test]
fn a_wrong_shape_is_an_error_not_a_panic() {
    let rt = OnnxRuntime::get(None).unwrap();
    let model = OnnxModel::load(&rt, &data("affine_sigmoid.onnx"), 1).unwrap();
    assert!(
        model
            .run_f32(vec![("x".into(), ArrayD::zeros(IxDyn(&[1, 5])))])
            .is_err()
    );
}

#[test]
fn a_file_that_is_not_a_model_fails_to_load_with_its_path() {
    let rt = OnnxRuntime::get(None).unwrap();
    let path = data("affine_sigmoid.expected.json");
    let err = OnnxModel::load(&rt, &path, 1)
        .err()
        .expect("JSON is not an ONNX model")
        .to_string();
    assert!(err.contains("affine_sigmoid.expected.json"), "{err}");
}
