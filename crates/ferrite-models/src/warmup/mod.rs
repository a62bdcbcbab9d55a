//! Warm-up: requests a version runs before it takes traffic (Triton's `model_warmup`), and the
//! check that its outputs are those its config declares.
//!
//! Without `[[model_warmup]]` a version runs one batch of zeros (batch size 1, every -1
//! dimension 1). A warm-up that fails refuses the version.

mod data;

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::Deserialize;

use self::data::{decode, random, zeros};

use crate::{DataType, ModelBackend, ModelConfig, ModelError, Tensor, TensorData, TensorSpec};

/// One `[[model_warmup]]` entry: a request sent `count` times before the version serves.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    /// Names the entry in errors.
    #[serde(default)]
    pub name: String,
    /// Rows in the request; must be 1 for a model without a batch dimension.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// How many times the request is run.
    #[serde(default = "one")]
    pub count: usize,
    /// The data of every model input, by input name.
    pub inputs: BTreeMap<String, WarmupInput>,
}

fn one() -> usize {
    1
}

/// Where one input's warm-up data comes from: exactly one of the three.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupInput {
    /// Shape of one row (without the batch dimension). Default: the input's `dims`, -1 as 1.
    #[serde(default)]
    pub dims: Option<Vec<i64>>,
    /// Zeros (empty strings for BYTES).
    #[serde(default)]
    pub zero_data: bool,
    /// Seeded pseudo-random values, the same on every load: floats in [0, 1), integers and
    /// booleans 0 or 1. Not for BYTES.
    #[serde(default)]
    pub random_data: bool,
    /// Raw little-endian values (BYTES: each element a 4-byte little-endian length, then its
    /// bytes), relative to the model directory. One row, repeated for every row of the
    /// batch, or the whole batch.
    #[serde(default)]
    pub input_data_file: Option<String>,
}

impl Warmup {
    fn label(&self, index: usize) -> String {
        match self.name.as_str() {
            "" => format!("model_warmup[{index}]"),
            name => format!("model_warmup[{index}] {name:?}"),
        }
    }
}

/// What can be checked without the model's files; errors name the entry and the input.
pub fn check(config: &ModelConfig) -> Result<(), String> {
    for (index, warmup) in config.model_warmup.iter().enumerate() {
        let at = warmup.label(index);
        if warmup.count == 0 {
            return Err(format!("{at}: count must be at least 1"));
        }
        if config.max_batch_size == 0 && warmup.batch_size != 1 {
            return Err(format!(
                "{at}: batch_size {} needs max_batch_size > 0 (this model takes no batch dimension: use 1)",
                warmup.batch_size
            ));
        }
        if config.max_batch_size > 0 && !(1..=config.max_batch_size).contains(&warmup.batch_size) {
            return Err(format!(
                "{at}: batch_size {} is not in 1..={}",
                warmup.batch_size, config.max_batch_size
            ));
        }
        if let Some(name) = warmup
            .inputs
            .keys()
            .find(|n| !config.inputs.iter().any(|s| &s.name == *n))
        {
            let names: Vec<&str> = config.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(format!("{at}: unknown input {name:?}; the model takes {names:?}"));
        }
        for spec in &config.inputs {
            let Some(input) = warmup.inputs.get(&spec.name) else {
                return Err(format!(
                    "{at}: no data for input {:?}; give zero_data, random_data or input_data_file",
                    spec.name
                ));
            };
            check_input(input, spec).map_err(|m| format!("{at}: input {:?}: {m}", spec.name))?;
        }
    }
    Ok(())
}

fn check_input(input: &WarmupInput, spec: &TensorSpec) -> Result<(), String> {
    let sources = usize::from(input.zero_data)
        + usize::from(input.random_data)
        + usize::from(input.input_data_file.is_some());
    if sources != 1 {
        return Err("give exactly one of zero_data = true, random_data = true, input_data_file".into());
    }
    if input.random_data && spec.dtype == DataType::Bytes {
        return Err("random_data is not available for BYTES; use zero_data or input_data_file".into());
    }
    if let Some(file) = &input.input_data_file {
        let path = Path::new(file);
        if file.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!(
                "input_data_file {file:?} must be a path inside the model directory (no '..', not absolute)"
            ));
        }
    }
    if let Some(dims) = &input.dims {
        let fits = dims.len() == spec.dims.len()
            && dims
                .iter()
                .zip(&spec.dims)
                .all(|(&d, &want)| d > 0 && (want == -1 || d == want));
        if !fits {
            return Err(format!(
                "dims {dims:?} do not fit the input's dims {:?} (-1: any positive size)",
                spec.dims
            ));
        }
    }
    Ok(())
}

/// The files the warm-up reads, relative to the model directory (hot reload watches them).
pub fn files(config: &ModelConfig) -> impl Iterator<Item = &str> {
    config
        .model_warmup
        .iter()
        .flat_map(|w| w.inputs.values())
        .filter_map(|i| i.input_data_file.as_deref())
}

/// Runs the configured warm-ups (or one batch of zeros) and checks every run's outputs
/// against the config. `model_dir` is where `input_data_file` paths start.
pub fn run(config: &ModelConfig, model_dir: &Path, backend: &dyn ModelBackend) -> Result<(), ModelError> {
    let zeros;
    let warmups = if config.model_warmup.is_empty() {
        zeros = [Warmup {
            name: String::new(),
            batch_size: 1,
            count: 1,
            inputs: config
                .inputs
                .iter()
                .map(|s| {
                    let zero = WarmupInput {
                        zero_data: true,
                        ..WarmupInput::default()
                    };
                    (s.name.clone(), zero)
                })
                .collect(),
        }];
        &zeros[..]
    } else {
        &config.model_warmup[..]
    };
    for (index, warmup) in warmups.iter().enumerate() {
        let at = if config.model_warmup.is_empty() {
            "the default warm-up (one batch of zeros)".to_string()
        } else {
            warmup.label(index)
        };
        let inputs = config
            .inputs
            .iter()
            .enumerate()
            .map(|(position, spec)| {
                let input = warmup.inputs.get(&spec.name).ok_or_else(|| {
                    ModelError::InvalidInput(format!("{at}: no data for input {:?}", spec.name))
                })?;
                let seed = ((index as u64) << 32) | position as u64;
                build_input(config, spec, input, warmup.batch_size, model_dir, seed)
                    .map_err(|m| ModelError::InvalidInput(format!("{at}: input {:?}: {m}", spec.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        crate::validate::check_inputs(config, &inputs)
            .map_err(|e| ModelError::InvalidInput(format!("{at}: {e}")))?;
        for _ in 0..warmup.count {
            let outputs = backend.infer(&inputs)?;
            check_outputs(config, &outputs).map_err(|m| ModelError::Inference(format!("{at}: {m}")))?;
        }
    }
    Ok(())
}

/// The outputs the config declares are there, with their declared types.
fn check_outputs(config: &ModelConfig, outputs: &[Tensor]) -> Result<(), String> {
    for spec in &config.outputs {
        let Some(out) = outputs.iter().find(|o| o.name == spec.name) else {
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(format!(
                "the model has no output {:?}; it has {names:?}",
                spec.name
            ));
        };
        if out.dtype() != spec.dtype {
            return Err(format!(
                "output {:?} is {}, the config says {}",
                spec.name,
                out.dtype(),
                spec.dtype
            ));
        }
    }
    Ok(())
}

/// A warm-up input larger than this is a mistake in the config, refused before it is allocated.
const MAX_ELEMENTS: usize = 1 << 28;

fn build_input(
    config: &ModelConfig,
    spec: &TensorSpec,
    input: &WarmupInput,
    batch_size: usize,
    model_dir: &Path,
    seed: u64,
) -> Result<Tensor, String> {
    let row_dims: Vec<usize> = input
        .dims
        .as_ref()
        .unwrap_or(&spec.dims)
        .iter()
        .map(|&d| if d < 0 { 1 } else { d as usize })
        .collect();
    let rows = if config.max_batch_size > 0 { batch_size } else { 1 };
    let row_len = row_dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let (row_len, n) = match row_len.and_then(|r| Some((r, r.checked_mul(rows)?))) {
        Some((row_len, n)) if n <= MAX_ELEMENTS => (row_len, n),
        _ => {
            return Err(format!(
                "{rows} rows of {row_dims:?} are more than the {MAX_ELEMENTS} elements a warm-up input may have"
            ));
        }
    };
    let data = if input.zero_data {
        zeros(spec.dtype, n)
    } else if input.random_data {
        random(spec.dtype, n, seed)
    } else {
        let file = input.input_data_file.as_deref().unwrap_or_default();
        let bytes = std::fs::read(model_dir.join(file)).map_err(|e| format!("cannot read {file}: {e}"))?;
        let data = decode(spec.dtype, &bytes, row_len, n).map_err(|m| format!("{file} {m}"))?;
        if data.len() == n {
            data
        } else {
            let copies = vec![&data; rows];
            TensorData::concat(&copies).map_err(|e| e.to_string())?
        }
    };
    let mut shape = Vec::with_capacity(row_dims.len() + 1);
    if config.max_batch_size > 0 {
        shape.push(rows);
    }
    shape.extend(row_dims);
    Tensor::new(spec.name.clone(), shape, data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const MODEL: &str = r#"
backend = "onnx"
max_batch_size = 8
inputs = [{ name = "x", dtype = "FP32", dims = [4] }, { name = "ids", dtype = "INT64", dims = [-1] }]
outputs = [{ name = "y", dtype = "FP32", dims = [1] }]
"#;

    fn config(warmup: &str) -> Result<ModelConfig, String> {
        let c: ModelConfig = toml::from_str(&format!("{MODEL}\n{warmup}")).map_err(|e| e.to_string())?;
        check(&c).map(|()| c)
    }

    /// Records what it was asked to run and answers with one `y` row per input row.
    struct Recorder(Mutex<Vec<Vec<Tensor>>>);

    impl ModelBackend for Recorder {
        fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
            self.0.lock().unwrap().push(inputs.to_vec());
            let rows = inputs[0].shape[0];
            Ok(vec![Tensor::new(
                "y",
                vec![rows, 1],
                TensorData::Fp32(vec![0.5; rows]),
            )?])
        }
    }

    fn run_recorded(c: &ModelConfig, dir: &Path) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let backend = Recorder(Mutex::new(Vec::new()));
        run(c, dir, &backend)?;
        Ok(backend.0.into_inner().unwrap())
    }

    #[test]
    fn configured_warm_ups_run_with_their_batch_size_count_and_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("warmup")).unwrap();
        let ids: Vec<u8> = [7i64, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.path().join("warmup/ids.bin"), ids).unwrap();
        let c = config(
            r#"
[[model_warmup]]
name = "full"
batch_size = 8
count = 2
inputs = { x = { random_data = true }, ids = { zero_data = true, dims = [5] } }

[[model_warmup]]
batch_size = 2
inputs = { x = { zero_data = true }, ids = { input_data_file = "warmup/ids.bin", dims = [3] } }
"#,
        )
        .unwrap();
        let runs = run_recorded(&c, dir.path()).unwrap();
        assert_eq!(runs.len(), 3, "the first warm-up twice, the second once");
        assert_eq!(
            (runs[0][0].shape.clone(), runs[0][1].shape.clone()),
            (vec![8, 4], vec![8, 5])
        );
        assert_eq!(runs[0], runs[1], "random data is the same on every run");
        let TensorData::Fp32(x) = &runs[0][0].data else {
            panic!()
        };
        assert!(x.iter().all(|v| (0.0..1.0).contains(v)), "{x:?}");
        assert!(x.windows(2).any(|w| w[0] != w[1]), "{x:?}");
        // One row in the file, repeated for both rows of the batch.
        assert_eq!(runs[2][1].shape, [2, 3]);
        assert_eq!(runs[2][1].data, TensorData::Int64(vec![7, -2, 3, 7, -2, 3]));
        // Loading again gives the same random values.
        assert_eq!(run_recorded(&c, dir.path()).unwrap()[0], runs[0]);
    }

    #[test]
    fn an_input_too_large_to_allocate_is_refused() {
        let c = config(
            "[[model_warmup]]\ninputs = { x = { zero_data = true }, ids = { zero_data = true, dims = [4294967296] } }",
        )
        .unwrap();
        let err = run_recorded(&c, Path::new(".")).unwrap_err().to_string();
        assert!(
            err.contains("input \"ids\"") && err.contains("more than the 268435456 elements"),
            "{err}"
        );
    }

    #[test]
    fn without_warm_ups_one_batch_of_zeros_runs() {
        let runs = run_recorded(&config("").unwrap(), Path::new("/nonexistent")).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0][0].data, TensorData::Fp32(vec![0.0; 4]));
        assert_eq!(runs[0][1].shape, [1, 1]);
    }

    #[test]
    fn a_file_of_the_wrong_length_says_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.bin"), [0u8; 20]).unwrap();
        let c = config(
            "[[model_warmup]]\nname = \"recorded\"\nbatch_size = 3\n\
             inputs = { x = { input_data_file = \"x.bin\" }, ids = { zero_data = true } }",
        )
        .unwrap();
        let err = run_recorded(&c, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("\"recorded\"")
                && err.contains("input \"x\"")
                && err.contains("x.bin has 20 bytes; expected 16")
                && err.contains("or 48"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("x.bin")).unwrap();
        let err = run_recorded(&c, dir.path()).unwrap_err().to_string();
        assert!(err.contains("cannot read x.bin"), "{err}");
    }

    #[test]
    fn outputs_that_differ_from_the_config_fail_the_warm_up() {
        let c = config("").unwrap();
        let mut wrong = c.clone();
        wrong.outputs[0].dtype = DataType::Fp64;
        let err = run_recorded(&wrong, Path::new(".")).unwrap_err().to_string();
        assert!(
            err.contains("output \"y\" is FP32, the config says FP64"),
            "{err}"
        );
        wrong.outputs[0].name = "score".into();
        let err = run_recorded(&wrong, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("no output \"score\""), "{err}");
    }

    #[test]
    fn config_mistakes_name_the_entry_and_the_input() {
        let both = "{ x = { zero_data = true }, ids = { zero_data = true } }";
        let err = |warmup: &str| config(warmup).unwrap_err();
        let cases = [
            (format!("[[model_warmup]]\nbatch_size = 9\ninputs = {both}"), "batch_size 9 is not in 1..=8"),
            (format!("[[model_warmup]]\ncount = 0\ninputs = {both}"), "count must be at least 1"),
            (
                "[[model_warmup]]\nname = \"w\"\ninputs = { x = { zero_data = true } }".into(),
                "model_warmup[0] \"w\": no data for input \"ids\"",
            ),
            (
                "[[model_warmup]]\ninputs = { x = { zero_data = true }, ids = { zero_data = true }, z = { zero_data = true } }".into(),
                "unknown input \"z\"",
            ),
            (
                "[[model_warmup]]\ninputs = { x = { zero_data = true, random_data = true }, ids = { zero_data = true } }".into(),
                "input \"x\": give exactly one of",
            ),
            (
                "[[model_warmup]]\ninputs = { x = {}, ids = { zero_data = true } }".into(),
                "input \"x\": give exactly one of",
            ),
            (
                "[[model_warmup]]\ninputs = { x = { input_data_file = \"../other/x.bin\" }, ids = { zero_data = true } }".into(),
                "inside the model directory",
            ),
            (
                "[[model_warmup]]\ninputs = { x = { input_data_file = \"/etc/passwd\" }, ids = { zero_data = true } }".into(),
                "inside the model directory",
            ),
            (
                "[[model_warmup]]\ninputs = { x = { zero_data = true, dims = [5] }, ids = { zero_data = true } }".into(),
                "dims [5] do not fit the input's dims [4]",
            ),
            (
                "[[model_warmup]]\ninputs = { x = { zero_data = true }, ids = { zero_data = true, dims = [0] } }".into(),
                "dims [0] do not fit",
            ),
            (
                "[[model_warmup]]\ninputs = { x = { zeros = true }, ids = { zero_data = true } }".into(),
                "unknown field `zeros`",
            ),
        ];
        for (warmup, expected) in cases {
            let e = err(&warmup);
            assert!(e.contains(expected), "{warmup}\n=> {e}");
        }
        let unbatched = MODEL.replace("max_batch_size = 8", "max_batch_size = 0");
        let c: ModelConfig = toml::from_str(&format!(
            "{unbatched}\n[[model_warmup]]\nbatch_size = 2\ninputs = {both}"
        ))
        .unwrap();
        assert!(check(&c).unwrap_err().contains("use 1"));
        let bytes = MODEL.replace("\"INT64\"", "\"BYTES\"");
        let c: ModelConfig = toml::from_str(&format!(
            "{bytes}\n[[model_warmup]]\ninputs = {{ x = {{ zero_data = true }}, ids = {{ random_data = true }} }}"
        ))
        .unwrap();
        assert!(check(&c).unwrap_err().contains("not available for BYTES"));
    }
}
