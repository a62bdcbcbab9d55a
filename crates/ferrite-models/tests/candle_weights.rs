//! Candle weights from a PyTorch checkpoint (`.pth`): the example Wide & Deep ranker loaded
//! from `torch.save`-format weights serves what it serves from safetensors, and what NumPy
//! computes from the same weights.

use std::path::{Path, PathBuf};

use ferrite_models::{ModelRepository, OnnxRuntime, Tensor, TensorData};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A repository with the example ranker twice: `ranker` with its safetensors weights, and
/// `ranker_pth` with weights from `pth` and its config changed by `edit`.
fn repository(pth: &Path, edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let example = manifest().join("../../models/ranker_wide_deep");
    let config = std::fs::read_to_string(example.join("config.toml")).unwrap();
    for (name, file, source, config) in [
        (
            "ranker",
            "model.safetensors",
            example.join("1/model.safetensors"),
            config.clone(),
        ),
        (
            "ranker_pth",
            "model.pth",
            pth.to_path_buf(),
            format!("default_model_filename = \"model.pth\"\n{}", edit(&config)),
        ),
    ] {
        let model = dir.path().join(name);
        std::fs::create_dir_all(model.join("1")).unwrap();
        std::fs::write(model.join("config.toml"), config).unwrap();
        std::fs::copy(source, model.join("1").join(file)).unwrap();
    }
    dir
}

fn scores(outputs: &[Tensor]) -> Vec<f32> {
    match &outputs[0].data {
        TensorData::Fp32(v) => v.clone(),
        other => panic!("expected FP32 scores, got {:?}", other.dtype()),
    }
}

#[tokio::test]
async fn a_pytorch_checkpoint_serves_what_safetensors_and_numpy_give() {
    let dir = repository(
        &manifest().join("tests/data/ranker_wide_deep.pth"),
        str::to_string,
    );
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    for (name, result) in repo.load_all().unwrap() {
        assert!(result.is_ok(), "{name}: {result:?}");
    }

    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(manifest().join("tests/data/ranker_wide_deep.expected.json")).unwrap(),
    )
    .unwrap();
    let features: Vec<Vec<f32>> = serde_json::from_value(expected["features"].clone()).unwrap();
    let numpy: Vec<Vec<f64>> = serde_json::from_value(expected["scores"].clone()).unwrap();
    let input = Tensor::new(
        "features",
        vec![features.len(), 16],
        TensorData::Fp32(features.concat()),
    )
    .unwrap();

    let (_, from_safetensors) = repo.infer("ranker", "", vec![input.clone()]).await.unwrap();
    let (_, from_pth) = repo.infer("ranker_pth", "", vec![input]).await.unwrap();
    assert_eq!(from_pth[0].shape, [features.len(), 1]);
    assert_eq!(from_pth[0].shape, from_safetensors[0].shape);
    let numpy = numpy.concat();
    for ((p, s), n) in scores(&from_pth)
        .iter()
        .zip(scores(&from_safetensors))
        .zip(&numpy)
    {
        assert!((p - s).abs() <= 1e-6, ".pth gave {p}, safetensors gave {s}");
        assert!((f64::from(*p) - n).abs() <= 1e-5, ".pth gave {p}, NumPy gave {n}");
    }
    assert_eq!(scores(&from_pth).len(), numpy.len());
}

fn pth_load_error(pth: &Path, edit: impl Fn(&str) -> String) -> String {
    let dir = repository(pth, edit);
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    let err = repo
        .load("ranker_pth")
        .err()
        .expect("the checkpoint is refused")
        .to_string();
    assert!(
        err.contains("ranker_pth/1/model.pth"),
        "the error names the file: {err}"
    );
    assert!(repo.get("ranker_pth").is_err());
    assert!(repo.load("ranker").is_ok(), "the other model still loads");
    err
}

#[test]
fn a_checkpoint_that_does_not_fit_the_architecture_is_refused_naming_the_tensor() {
    // One more hidden layer than the checkpoint has: deep.layers.2 is 16 -> 1 in the file.
    let err = pth_load_error(&manifest().join("tests/data/ranker_wide_deep.pth"), |c| {
        c.replace("dims = [16, 32, 16, 1]", "dims = [16, 32, 16, 16, 1]")
    });
    assert!(
        err.contains("shape mismatch for deep.layers.2.weight") && !err.contains("inference"),
        "{err}"
    );
}

#[test]
fn files_that_are_not_pytorch_checkpoints_are_refused_not_a_crash() {
    // A pickle whose tensor is rebuilt from two arguments instead of six.
    let err = pth_load_error(&manifest().join("tests/data/malformed.pth"), str::to_string);
    assert!(err.contains("not a PyTorch checkpoint"), "{err}");
    // Not a zip archive at all: safetensors bytes under a .pth name.
    let safetensors = manifest().join("../../models/ranker_wide_deep/1/model.safetensors");
    let err = pth_load_error(&safetensors, str::to_string);
    assert!(err.contains("not a readable PyTorch checkpoint"), "{err}");
}
