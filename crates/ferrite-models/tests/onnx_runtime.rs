//! ONNX Runtime really runs: the committed model gives the outputs Python onnxruntime gave.

use std::path::PathBuf;

use ferrite_models::{ModelBackend, OnnxModel, OnnxRuntime, Tensor, TensorData};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn matrix(name: &str, v: &serde_json::Value) -> Tensor {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone()).unwrap();
    let shape = vec![rows.len(), rows[0].len()];
    Tensor::new(
        name,
        shape,
        TensorData::Fp32(rows.into_iter().flatten().collect()),
    )
    .unwrap()
}

fn zeros(name: &str, shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(name, shape, TensorData::Fp32(vec![0.0; n])).unwrap()
}

#[test]
fn affine_sigmoid_matches_python_onnxruntime() {
    let rt = OnnxRuntime::get(None).expect("ONNX Runtime from the project virtualenv");
    let model = OnnxModel::load(&rt, &data("affine_sigmoid.onnx"), 1).unwrap();
    assert_eq!(model.input_names(), ["x"]);
    assert_eq!(model.output_names(), ["y"]);

    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("affine_sigmoid.expected.json")).unwrap()).unwrap();
    let outputs = model.infer(&[matrix("x", &expected["x"])]).unwrap();
    let want = matrix("y", &expected["y"]);
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].name, "y");
    assert_eq!(outputs[0].shape, want.shape);
    let (TensorData::Fp32(got), TensorData::Fp32(want)) = (&outputs[0].data, &want.data) else {
        panic!("expected FP32 output, got {:?}", outputs[0].dtype());
    };
    for (got, want) in got.iter().zip(want) {
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
        .infer(&[zeros("features", vec![1, 4])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"features\"") && err.contains("\"x\""), "{err}");
}

#[test]
fn a_wrong_shape_or_type_is_an_error_not_a_panic() {
    let rt = OnnxRuntime::get(None).unwrap();
    let model = OnnxModel::load(&rt, &data("affine_sigmoid.onnx"), 1).unwrap();
    assert!(model.infer(&[zeros("x", vec![1, 5])]).is_err());
    let ints = Tensor::new("x", vec![1, 4], TensorData::Int64(vec![0; 4])).unwrap();
    assert!(model.infer(&[ints]).is_err());
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

#[test]
fn every_served_element_type_goes_in_and_comes_out() {
    let rt = OnnxRuntime::get(None).unwrap();
    let model = OnnxModel::load(&rt, &data("every_type.onnx"), 1).unwrap();
    let t = |name: &str, data: TensorData| Tensor::new(name, vec![1, 2], data).unwrap();
    let outputs = model
        .infer(&[
            t("f64", TensorData::Fp64(vec![1.5, -3.0])),
            t("i64", TensorData::Int64(vec![41, i64::MIN + 1])),
            t("i32", TensorData::Int32(vec![7, -7])),
            t("flag", TensorData::Bool(vec![true, false])),
            t(
                "text",
                TensorData::Bytes(vec![b"caf\xc3\xa9".to_vec(), Vec::new()]),
            ),
        ])
        .unwrap();
    let by_name = |n: &str| &outputs.iter().find(|o| o.name == n).unwrap().data;
    assert_eq!(by_name("f64_out"), &TensorData::Fp64(vec![3.0, -6.0]));
    assert_eq!(by_name("i64_out"), &TensorData::Int64(vec![42, i64::MIN + 2]));
    assert_eq!(by_name("i32_out"), &TensorData::Int32(vec![7, -7]));
    assert_eq!(by_name("flag_out"), &TensorData::Bool(vec![false, true]));
    assert_eq!(
        by_name("text_out"),
        &TensorData::Bytes(vec![b"caf\xc3\xa9".to_vec(), Vec::new()])
    );
    assert!(outputs.iter().all(|o| o.shape == [1, 2]));

    // BYTES that are not UTF-8 cannot become ONNX strings: refused, not a panic.
    let err = model
        .infer(&[
            t("f64", TensorData::Fp64(vec![0.0; 2])),
            t("i64", TensorData::Int64(vec![0; 2])),
            t("i32", TensorData::Int32(vec![0; 2])),
            t("flag", TensorData::Bool(vec![false; 2])),
            t("text", TensorData::Bytes(vec![vec![0xff], Vec::new()])),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
}

#[test]
fn zipmap_outputs_are_served_as_a_probability_tensor() {
    let rt = OnnxRuntime::get(None).unwrap();
    let model = OnnxModel::load(&rt, &data("zipmap.onnx"), 1).unwrap();
    let probabilities = Tensor::new(
        "probabilities",
        vec![3, 2],
        TensorData::Fp32(vec![0.2, 0.8, 0.9, 0.1, 0.5, 0.5]),
    )
    .unwrap();
    let outputs = model.infer(&[probabilities]).unwrap();
    let by_name = |n: &str| outputs.iter().find(|o| o.name == n).unwrap();
    assert_eq!(by_name("label").data, TensorData::Int64(vec![1, 0, 0]));
    let zipped = by_name("output_probability");
    assert_eq!(zipped.shape, [3, 2]);
    assert_eq!(zipped.data, TensorData::Fp32(vec![0.2, 0.8, 0.9, 0.1, 0.5, 0.5]));
}

fn fp32(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::Fp32(v) => v,
        other => panic!("{}: expected FP32, got {:?}", t.name, other.dtype()),
    }
}

#[test]
fn runs_of_a_kept_shape_answer_each_request_with_its_own_values() {
    let rt = OnnxRuntime::get(None).unwrap();
    let model = OnnxModel::load(&rt, &data("affine_sigmoid.onnx"), 1).unwrap();
    let batch =
        |rows: &[[f32; 4]]| Tensor::new("x", vec![rows.len(), 4], TensorData::Fp32(rows.concat())).unwrap();
    let a = [
        [0.5, -1.0, 2.0, 0.25],
        [1.5, 0.0, -0.5, 3.0],
        [-2.0, 1.0, 0.75, -0.25],
    ];
    let b = [
        [3.0, 2.0, -1.0, 0.0],
        [0.1, 0.2, 0.3, 0.4],
        [-1.5, -0.5, 2.5, 1.0],
    ];

    // What each batch gives on a model that has never seen its shape (no kept buffers).
    let fresh = |x: &Tensor| {
        let m = OnnxModel::load(&rt, &data("affine_sigmoid.onnx"), 1).unwrap();
        fp32(&m.infer(std::slice::from_ref(x)).unwrap()[0]).to_vec()
    };
    let want_a = fresh(&batch(&a));
    let want_b = fresh(&batch(&b));
    assert_ne!(want_a, want_b);

    // The first run of a shape sets up buffers; later runs of it use them. Alternate shapes
    // and values: every answer is the one for its own request.
    for round in 0..3 {
        let got_a = model.infer(&[batch(&a)]).unwrap();
        assert_eq!(got_a[0].shape, vec![3, 2]);
        assert_eq!(fp32(&got_a[0]), want_a, "round {round}, batch a");
        let got_b = model.infer(&[batch(&b)]).unwrap();
        assert_eq!(fp32(&got_b[0]), want_b, "round {round}, batch b");
        for (i, row) in b.iter().enumerate() {
            let one = model.infer(&[batch(&[*row])]).unwrap();
            assert_eq!(one[0].shape, vec![1, 2]);
            assert_eq!(fp32(&one[0]), &want_b[i * 2..i * 2 + 2], "round {round}, row {i}");
        }
    }
    assert_eq!(
        model.kept_shapes(),
        (2, 0),
        "batches of 3 rows and of 1 row have buffers"
    );

    // A wrong shape is still refused on a kept-buffer model, and changes nothing kept.
    assert!(model.infer(&[zeros("x", vec![3, 5])]).is_err());
    assert_eq!(fp32(&model.infer(&[batch(&a)]).unwrap()[0]), want_a);
    assert_eq!(model.kept_shapes(), (2, 0));
}

#[test]
fn outputs_whose_shape_follows_the_values_are_right_on_every_run() {
    let rt = OnnxRuntime::get(None).unwrap();
    let model = OnnxModel::load(&rt, &data("positives.onnx"), 1).unwrap();
    assert_eq!(model.output_names(), ["where", "doubled"]);
    let x = |v: [f32; 8]| Tensor::new("x", vec![2, 4], TensorData::Fp32(v.to_vec())).unwrap();
    let where_of = |t: &Tensor| match &t.data {
        TensorData::Int64(v) => (t.shape.clone(), v.clone()),
        other => panic!("expected INT64, got {:?}", other.dtype()),
    };
    let three = x([1.0, -1.0, 0.0, 2.0, -3.0, 0.0, 0.0, 4.0]);
    let five = x([1.0, 1.0, -1.0, 2.0, 3.0, 0.0, 5.0, -4.0]);
    for round in 0..3 {
        let out = model.infer(std::slice::from_ref(&three)).unwrap();
        assert_eq!(
            where_of(&out[0]),
            (vec![2, 3], vec![0, 0, 1, 0, 3, 3]),
            "round {round}"
        );
        assert_eq!(fp32(&out[1]), [2.0, -2.0, 0.0, 4.0, -6.0, 0.0, 0.0, 8.0]);
        let out = model.infer(std::slice::from_ref(&five)).unwrap();
        assert_eq!(
            where_of(&out[0]),
            (vec![2, 5], vec![0, 0, 0, 1, 1, 0, 1, 3, 0, 2]),
            "round {round}"
        );
        assert_eq!(fp32(&out[1]), [2.0, 2.0, -2.0, 4.0, 6.0, 0.0, 10.0, -8.0]);
    }
    assert_eq!(
        model.kept_shapes(),
        (0, 1),
        "this input shape runs without kept buffers"
    );
}

#[test]
fn runs_spread_over_several_sessions_each_answer_their_own_request() {
    let rt = OnnxRuntime::get(None).unwrap();
    let one = OnnxModel::load(&rt, &data("affine_sigmoid.onnx"), 1).unwrap();
    let three = OnnxModel::load_instances(&rt, &data("affine_sigmoid.onnx"), 1, 3).unwrap();
    assert_eq!((one.instances(), three.instances()), (1, 3));
    let row = |i: usize| {
        let v = i as f32 * 0.01;
        Tensor::new("x", vec![1, 4], TensorData::Fp32(vec![v, -v, 2.0 * v, 0.5])).unwrap()
    };
    let want: Vec<Vec<f32>> = (0..400)
        .map(|i| fp32(&one.infer(&[row(i)]).unwrap()[0]).to_vec())
        .collect();
    // Four threads at once over three sessions: every answer is its own request's.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (three, want) = (&three, &want);
            scope.spawn(move || {
                for i in (t..400).step_by(4) {
                    let got = fp32(&three.infer(&[row(i)]).unwrap()[0]).to_vec();
                    assert_eq!(got, want[i], "request {i}");
                }
            });
        }
    });
    // The sessions that ran have their kept buffers; no shape fell back to plain runs.
    let (kept, plain) = three.kept_shapes();
    assert!(
        (1..=3).contains(&kept) && plain == 0,
        "{kept} kept, {plain} plain"
    );
}
