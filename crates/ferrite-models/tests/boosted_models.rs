//! LightGBM and XGBoost classifiers exported with onnxmltools, loaded from the example model
//! repository: Ferrite serves the probabilities Python onnxruntime gives, and those of the
//! libraries' own `predict_proba`.

use std::path::PathBuf;

use ferrite_models::{ModelRepository, OnnxRuntime, Tensor, TensorData};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn expected() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fraud_boosted.expected.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn rows<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Vec<Vec<T>> {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test]
async fn lightgbm_and_xgboost_serve_the_probabilities_of_onnxruntime_and_of_the_libraries() {
    let expected = expected();
    let features: Vec<Vec<f32>> = rows(&expected["features"]);
    let n = features.len();
    let input = Tensor::new(
        "features",
        vec![n, features[0].len()],
        TensorData::Fp32(features.concat()),
    )
    .unwrap();
    let repo = ModelRepository::new(repo_root().join("models"), OnnxRuntime::get(None).unwrap());

    // fraud_lightgbm has ZipMap outputs, fraud_xgboost plain tensors: both serve [n, 2].
    for name in ["fraud_lightgbm", "fraud_xgboost"] {
        let model = repo.load(name).unwrap();
        let (version, outputs) = repo.infer(name, "", vec![input.clone()]).await.unwrap();
        assert_eq!(version, 1, "{name}");

        // What comes out is what config.toml declares: names, types, shapes.
        assert_eq!(outputs.len(), model.config.outputs.len(), "{name}");
        for (out, spec) in outputs.iter().zip(&model.config.outputs) {
            assert_eq!((&out.name, out.dtype()), (&spec.name, spec.dtype), "{name}");
            let declared = model.config.full_shape(spec);
            let fits = out.shape.len() == declared.len()
                && out
                    .shape
                    .iter()
                    .zip(&declared)
                    .all(|(&got, &want)| want == -1 || got as i64 == want);
            assert!(
                fits,
                "{name}: {} has shape {:?}, config says {declared:?}",
                out.name, out.shape
            );
        }

        let want_labels: Vec<i64> = serde_json::from_value(expected[name]["label"].clone()).unwrap();
        assert_eq!(outputs[0].shape, [n], "{name}");
        assert_eq!(outputs[0].data, TensorData::Int64(want_labels), "{name}");

        assert_eq!(outputs[1].shape, [n, 2], "{name}");
        let TensorData::Fp32(got) = &outputs[1].data else {
            panic!("{name}: probabilities are {}", outputs[1].dtype());
        };
        let onnxruntime: Vec<Vec<f64>> = rows(&expected[name]["onnxruntime"]);
        let native: Vec<Vec<f64>> = rows(&expected[name]["native"]);
        for ((g, o), s) in got.iter().zip(onnxruntime.concat()).zip(native.concat()) {
            let g = f64::from(*g);
            assert!(
                (g - o).abs() <= 1e-6,
                "{name}: got {g}, Python onnxruntime gave {o}"
            );
            assert!(
                (g - s).abs() <= 1e-5,
                "{name}: got {g}, the library's predict_proba gave {s}"
            );
        }
    }
}
