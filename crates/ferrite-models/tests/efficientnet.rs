//! EfficientNet-Lite0 with its real ImageNet weights, served through the model repository by
//! both backends: candle (`models/image_embedder`) and ONNX Runtime
//! (`models/image_embedder_onnx`, the same weights as an ONNX graph), each against PyTorch's
//! answers for the same crops (`tests/data/efficientnet/reference.json`, made by
//! `scripts/efficientnet_reference.py`).
//!
//! Needs the set-up's files (`models/image_embedder/1/model.safetensors` and
//! `models/image_embedder_onnx/1/model.onnx`), which `scripts/setup.sh` makes.

use std::path::{Path, PathBuf};

use ferrite_models::efficientnet::{IMAGE_SIZE, normalize_rgb};
use ferrite_models::{ModelError, ModelRepository, OnnxRuntime, Tensor, TensorData};
use serde_json::Value;

const PIXELS: usize = 3 * IMAGE_SIZE * IMAGE_SIZE;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn data(file: &str) -> PathBuf {
    manifest().join("tests/data/efficientnet").join(file)
}

/// A binary PPM (P6) of 224x224 RGB bytes, as the reference script writes it.
fn read_ppm(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let header = format!("P6\n{IMAGE_SIZE} {IMAGE_SIZE}\n255\n");
    assert!(bytes.starts_with(header.as_bytes()), "{}", path.display());
    let pixels = bytes[header.len()..].to_vec();
    assert_eq!(pixels.len(), PIXELS);
    pixels
}

struct Reference {
    name: String,
    input: Vec<f32>,
    top5: Vec<usize>,
    top5_logits: Vec<f32>,
    embedding: Vec<f32>,
}

fn references() -> Vec<Reference> {
    let json: Value = serde_json::from_slice(&std::fs::read(data("reference.json")).unwrap()).unwrap();
    assert_eq!(
        (json["mean"].as_f64(), json["std"].as_f64()),
        (Some(127.0), Some(128.0))
    );
    json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            let pixels = read_ppm(&data(image["file"].as_str().unwrap()));
            let top5 = image["top5"].as_array().unwrap();
            Reference {
                name: image["name"].as_str().unwrap().to_string(),
                input: normalize_rgb(&pixels, IMAGE_SIZE, IMAGE_SIZE).unwrap(),
                top5: top5
                    .iter()
                    .map(|t| t["class"].as_u64().unwrap() as usize)
                    .collect(),
                top5_logits: top5.iter().map(|t| t["logit"].as_f64().unwrap() as f32).collect(),
                embedding: serde_json::from_value(image["embedding"].clone()).unwrap(),
            }
        })
        .collect()
}

/// The repository with `model` loaded.
fn repository(model: &str) -> ModelRepository {
    let repo = ModelRepository::new(manifest().join("../../models"), OnnxRuntime::get(None).unwrap());
    if let Err(e) = repo.load(model) {
        panic!("{model} loads (its file is made by scripts/setup.sh): {e}");
    }
    repo
}

/// Runs images (concatenated NCHW values) through `model` as one request; returns
/// (embeddings, logits) rows.
async fn run(repo: &ModelRepository, model: &str, inputs: &[&[f32]]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let values = inputs.concat();
    let image = Tensor::new(
        "image",
        vec![inputs.len(), 3, IMAGE_SIZE, IMAGE_SIZE],
        TensorData::Fp32(values),
    );
    let (_, outputs) = repo.infer(model, "", vec![image.unwrap()]).await.unwrap();
    let rows = |t: &Tensor, width: usize| {
        assert_eq!(t.shape, [inputs.len(), width], "{}", t.name);
        let TensorData::Fp32(v) = &t.data else {
            panic!("{} is not FP32", t.name)
        };
        v.chunks(width).map(<[f32]>::to_vec).collect::<Vec<_>>()
    };
    assert_eq!(
        (outputs[0].name.as_str(), outputs[1].name.as_str()),
        ("embedding", "logits")
    );
    (rows(&outputs[0], 1280), rows(&outputs[1], 1000))
}

fn top5(logits: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(5);
    order
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[tokio::test]
async fn candle_classes_and_embeddings_equal_pytorchs_and_a_batch_equals_single_images() {
    equals_pytorch("image_embedder").await;
}

#[tokio::test]
async fn onnx_classes_and_embeddings_equal_pytorchs_and_a_batch_equals_single_images() {
    equals_pytorch("image_embedder_onnx").await;
}

/// `model`'s top-5 classes are PyTorch's, with the same logits (within 1e-3) and the same
/// embedding (within 1e-4); a batch of the images gives what each gave alone.
async fn equals_pytorch(model: &str) {
    let repo = repository(model);
    let references = references();
    let mut singles = Vec::new();
    for r in &references {
        let (embedding, logits) = run(&repo, model, &[&r.input]).await;
        let (embedding, logits) = (&embedding[0], &logits[0]);
        assert_eq!(
            top5(logits),
            r.top5,
            "{model} {}: top-5 classes against PyTorch's",
            r.name
        );
        let picked: Vec<f32> = r.top5.iter().map(|&c| logits[c]).collect();
        assert!(
            max_abs_diff(&picked, &r.top5_logits) <= 1e-3,
            "{model} {}: {picked:?} vs {:?}",
            r.name,
            r.top5_logits
        );
        let diff = max_abs_diff(embedding, &r.embedding);
        println!(
            "{model} {}: top-5 {:?}, embedding max |diff| {diff:.1e}",
            r.name, r.top5
        );
        assert!(
            diff <= 1e-4,
            "{model} {}: embedding differs from PyTorch's by {diff}",
            r.name
        );
        let norm: f32 = embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "{model} {}: |embedding| = {norm}",
            r.name
        );
        singles.push((embedding.clone(), logits.clone()));
    }

    // Sensible ImageNet classes, not only PyTorch's: espresso (967) or cup (968); tiger
    // cat (282), tabby (281) or Egyptian cat (285); missile (657) or projectile (744).
    let top1 = |name: &str| {
        let i = references.iter().position(|r| r.name == name).unwrap();
        top5(&singles[i].1)[0]
    };
    assert!(
        [967, 968].contains(&top1("coffee")),
        "{model} coffee: {}",
        top1("coffee")
    );
    assert!(
        [281, 282, 285].contains(&top1("chelsea")),
        "{model} chelsea: {}",
        top1("chelsea")
    );
    assert!(
        [657, 744].contains(&top1("rocket")),
        "{model} rocket: {}",
        top1("rocket")
    );

    let inputs: Vec<&[f32]> = references.iter().map(|r| r.input.as_slice()).collect();
    let (embeddings, logits) = run(&repo, model, &inputs).await;
    for (i, (embedding, logit)) in singles.iter().enumerate() {
        assert!(
            max_abs_diff(&embeddings[i], embedding) <= 1e-6,
            "{model} {}: a batch against one image",
            references[i].name
        );
        assert!(
            max_abs_diff(&logits[i], logit) <= 1e-5,
            "{model} {}",
            references[i].name
        );
    }
}

/// `models/image_embedder` with its config edited and no weights file, in a repository of
/// its own: the load error.
fn image_embedder_without_weights(edit: impl Fn(&str) -> String) -> ModelError {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("image_embedder");
    std::fs::create_dir_all(model.join("1")).unwrap();
    let config = std::fs::read_to_string(manifest().join("../../models/image_embedder/config.toml")).unwrap();
    std::fs::write(model.join("config.toml"), edit(&config)).unwrap();
    let repo = ModelRepository::new(dir.path(), OnnxRuntime::get(None).unwrap());
    repo.load("image_embedder").err().expect("the model is refused")
}

#[test]
fn missing_weights_name_the_set_up_step() {
    let err = image_embedder_without_weights(str::to_string);
    let message = err.to_string();
    assert!(
        message.contains("model.safetensors") && message.contains("scripts/setup.sh"),
        "{message}"
    );
}

#[test]
fn configs_that_do_not_fit_the_architecture_are_refused() {
    for (from, to, expect) in [
        ("[candle]", "[candle]\ndims = [1280]", "dims does not apply"),
        (
            "[candle]",
            "[candle]\noutput = \"l2_normalize\"",
            "output does not apply",
        ),
        ("name = \"logits\"", "name = \"classes\"", "no output \"classes\""),
        ("dims = [1000]", "dims = [10]", "FP32 dims [1000]"),
        (
            "dims = [3, 224, 224]",
            "dims = [224, 224, 3]",
            "dims [3, 224, 224]",
        ),
        ("max_batch_size = 32", "max_batch_size = 0", "max_batch_size > 0"),
    ] {
        let err = image_embedder_without_weights(|c| c.replace(from, to));
        assert!(err.to_string().contains(expect), "{to}: {err}");
    }
}
