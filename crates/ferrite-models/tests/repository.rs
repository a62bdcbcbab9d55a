//! The model repository on real files: versions, labels, hot reload, refusal of broken models.

use std::path::Path;

use ferrite_models::{ModelError, ModelRepository, OnnxRuntime, Tensor, TensorData};

fn repo_with_example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/fraud_logreg");
    let dst = dir.path().join("fraud_logreg");
    for v in ["1", "2"] {
        std::fs::create_dir_all(dst.join(v)).unwrap();
        std::fs::copy(src.join(v).join("model.onnx"), dst.join(v).join("model.onnx")).unwrap();
    }
    std::fs::copy(src.join("config.toml"), dst.join("config.toml")).unwrap();
    dir
}

fn features() -> Vec<Tensor> {
    vec![Tensor::new("features", vec![1, 8], TensorData::Fp32(vec![0.5; 8])).unwrap()]
}

fn ready_versions(repo: &ModelRepository) -> Vec<String> {
    repo.index()
        .into_iter()
        .filter(|e| e.state == "READY")
        .map(|e| e.version)
        .collect()
}

#[tokio::test]
async fn a_new_version_is_picked_up_and_a_removed_model_is_unloaded() {
    let dir = repo_with_example();
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    assert!(repo.load_all().unwrap().iter().all(|(_, r)| r.is_ok()));
    assert_eq!(ready_versions(&repo), ["1", "2"]);
    assert!(
        repo.reload_changed().is_empty(),
        "nothing changed, nothing reloads"
    );

    // A team drops version 3: with `latest = 2`, versions 2 and 3 serve.
    let model = dir.path().join("fraud_logreg");
    std::fs::create_dir_all(model.join("3")).unwrap();
    std::fs::copy(model.join("2/model.onnx"), model.join("3/model.onnx")).unwrap();
    let held = repo.get("fraud_logreg").unwrap();
    let reloaded = repo.reload_changed();
    assert_eq!(reloaded.len(), 1);
    assert!(reloaded[0].1.is_ok(), "{:?}", reloaded[0].1);
    assert_eq!(ready_versions(&repo), ["2", "3"]);
    assert_eq!(repo.infer("fraud_logreg", "", features()).await.unwrap().0, 3);
    // A request that took the model before the swap still runs on what it took.
    assert!(held.version("1").is_ok());

    std::fs::remove_dir_all(&model).unwrap();
    let reloaded = repo.reload_changed();
    assert_eq!(reloaded.len(), 1);
    assert!(repo.get("fraud_logreg").is_err());
}

#[tokio::test]
async fn a_broken_new_version_leaves_the_serving_versions_in_place() {
    let dir = repo_with_example();
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    repo.load_all().unwrap();
    let model = dir.path().join("fraud_logreg");
    std::fs::create_dir_all(model.join("3")).unwrap();
    std::fs::write(model.join("3/model.onnx"), b"garbage").unwrap();
    let reloaded = repo.reload_changed();
    assert!(reloaded[0].1.is_err());
    assert_eq!(ready_versions(&repo), ["1", "2"]);
    assert_eq!(repo.infer("fraud_logreg", "", features()).await.unwrap().0, 2);
    // The failure is not retried until the files change again.
    assert!(repo.reload_changed().is_empty());
}

#[test]
fn a_config_that_does_not_parse_is_reported_with_its_path() {
    let dir = repo_with_example();
    std::fs::write(
        dir.path().join("fraud_logreg/config.toml"),
        "backend = \"tensorflow\"\n",
    )
    .unwrap();
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    let results = repo.load_all().unwrap();
    let err = results[0].1.as_ref().unwrap_err().to_string();
    assert!(err.contains("config.toml") && err.contains("tensorflow"), "{err}");
    let index = repo.index();
    assert_eq!(index[0].state, "UNAVAILABLE");
}

#[test]
fn an_unloaded_model_stays_unloaded_until_its_files_change() {
    let dir = repo_with_example();
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    repo.load_all().unwrap();
    repo.unload("fraud_logreg").unwrap();
    assert!(repo.reload_changed().is_empty());
    assert!(repo.get("fraud_logreg").is_err());

    let model = dir.path().join("fraud_logreg");
    std::fs::create_dir_all(model.join("3")).unwrap();
    std::fs::copy(model.join("2/model.onnx"), model.join("3/model.onnx")).unwrap();
    assert_eq!(repo.reload_changed().len(), 1);
    assert_eq!(ready_versions(&repo), ["2", "3"]);
}

/// Gives `fraud_logreg` two warm-ups: a full batch of random rows, and a recorded row read from
/// `warmup/features.bin`.
fn add_warmup(dir: &Path) {
    let config = dir.join("fraud_logreg/config.toml");
    let warmup = r#"
[[model_warmup]]
name = "full batch"
batch_size = 256
inputs = { features = { random_data = true } }

[[model_warmup]]
name = "recorded"
inputs = { features = { input_data_file = "warmup/features.bin" } }
"#;
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(config, format!("{text}{warmup}")).unwrap();
}

fn record(dir: &Path, values: &[f32]) {
    let warmup = dir.join("fraud_logreg/warmup");
    std::fs::create_dir_all(&warmup).unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(warmup.join("features.bin"), bytes).unwrap();
}

#[tokio::test]
async fn a_version_serves_only_after_its_warm_up_passes() {
    let dir = repo_with_example();
    add_warmup(dir.path());
    record(dir.path(), &[0.5; 8]);
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    let results = repo.load_all().unwrap();
    assert!(results[0].1.is_ok(), "{:?}", results[0].1);
    assert_eq!(ready_versions(&repo), ["1", "2"]);

    // Version 3 arrives with a warm-up file one value short: refused, 1 and 2 keep serving.
    let model = dir.path().join("fraud_logreg");
    std::fs::create_dir_all(model.join("3")).unwrap();
    std::fs::copy(model.join("2/model.onnx"), model.join("3/model.onnx")).unwrap();
    record(dir.path(), &[0.5; 7]);
    let reloaded = repo.reload_changed();
    let err = reloaded[0].1.as_ref().unwrap_err().to_string();
    assert!(
        err.contains("warm-up failed")
            && err.contains("model_warmup[1] \"recorded\"")
            && err.contains("warmup/features.bin has 28 bytes; expected 32"),
        "{err}"
    );
    assert_eq!(ready_versions(&repo), ["1", "2"]);
    assert_eq!(repo.infer("fraud_logreg", "", features()).await.unwrap().0, 2);

    // The warm-up file is watched: fixed, the model reloads and version 3 serves.
    record(dir.path(), &[0.25; 8]);
    let reloaded = repo.reload_changed();
    assert!(reloaded[0].1.is_ok(), "{:?}", reloaded[0].1);
    assert_eq!(ready_versions(&repo), ["2", "3"]);
}

fn set_feature_dims(dir: &Path, dims: &str) {
    let config = dir.join("fraud_logreg/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("dims = [8]"), "{text}");
    std::fs::write(config, text.replacen("dims = [8]", &format!("dims = {dims}"), 1)).unwrap();
}

#[tokio::test]
async fn a_minus_one_dim_the_onnx_file_fixes_is_narrowed_so_wrong_widths_are_caller_mistakes() {
    // fraud_logreg's ONNX file takes features of width 8; the config says any width.
    let dir = repo_with_example();
    set_feature_dims(dir.path(), "[-1]");
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    let results = repo.load_all().unwrap();
    assert!(results[0].1.is_ok(), "{:?}", results[0].1);
    let model = repo.get("fraud_logreg").unwrap();
    assert_eq!(
        model.config.inputs[0].dims,
        [8],
        "metadata shows the file's width"
    );
    for version in ["1", "2"] {
        assert_eq!(model.version(version).unwrap().config.inputs[0].dims, [8]);
    }

    let narrow = vec![Tensor::new("features", vec![1, 5], TensorData::Fp32(vec![0.5; 5])).unwrap()];
    let err = repo.infer("fraud_logreg", "", narrow).await.unwrap_err();
    assert!(matches!(err, ModelError::InvalidInput(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("input \"features\"") && msg.contains("expected [-1, 8]"),
        "{msg}"
    );
    assert_eq!(repo.infer("fraud_logreg", "", features()).await.unwrap().0, 2);
}

#[test]
fn a_size_the_onnx_file_contradicts_is_refused_at_load() {
    let dir = repo_with_example();
    set_feature_dims(dir.path(), "[9]");
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    let results = repo.load_all().unwrap();
    let err = results[0].1.as_ref().unwrap_err().to_string();
    assert!(
        err.contains("model.onnx")
            && err.contains("input \"features\"")
            && err.contains("dims[0] is 9 in the config but 8 in the ONNX file"),
        "{err}"
    );
    assert_eq!(repo.index()[0].state, "UNAVAILABLE");

    // A rank the file does not have is refused the same way, naming the file's shape.
    let dir = repo_with_example();
    set_feature_dims(dir.path(), "[8, 2]");
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    let err = repo.load("fraud_logreg").err().unwrap().to_string();
    assert!(err.contains("input \"features\" has shape"), "{err}");
}
