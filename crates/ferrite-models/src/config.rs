//! `models/<name>/config.toml`: how a model is served. Names follow Triton's
//! `config.pbtxt` where the concept is the same.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::{DataType, ModelError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// An ONNX file run by ONNX Runtime.
    Onnx,
    /// An architecture written in Rust with candle, weights from safetensors or a PyTorch
    /// `.pth` state_dict.
    Candle,
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    /// Shape without the batch dimension when `max_batch_size > 0`; -1 is any size.
    pub dims: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicBatching {
    /// How long the first request of a batch may wait for others, in microseconds.
    #[serde(default = "default_queue_delay")]
    pub max_queue_delay_us: u64,
    /// Batch sizes to prefer when forming a batch (each ≤ max_batch_size).
    #[serde(default)]
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests the version may hold at once (queued, or in the batch being formed or run);
    /// one more is refused at once as overloaded. Triton's
    /// `default_queue_policy.max_queue_size`, but never unbounded.
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
}

fn default_queue_delay() -> u64 {
    100
}

/// Requests a version holds at most, by default. With the largest batch the example models
/// take (4096 rows of 130 FP32 features, 2 MB), the worst case is a few GB; typical requests of
/// a few rows hold a few MB. Enough to absorb bursts of thousands of concurrent callers, small
/// enough that an overloaded server answers RESOURCE_EXHAUSTED instead of growing until the
/// kernel kills it.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 4096;

fn default_max_queue_size() -> usize {
    DEFAULT_MAX_QUEUE_SIZE
}

/// Which versions found on disk are served.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The `n` highest versions.
    Latest(u32),
    /// Every version found.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The versions to serve among those on disk, highest first.
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut versions = available.to_vec();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions.dedup();
        match self {
            VersionPolicy::Latest(n) => versions.truncate(*n as usize),
            VersionPolicy::All => {}
            VersionPolicy::Specific(wanted) => versions.retain(|v| wanted.contains(v)),
        }
        versions
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub backend: BackendKind,
    /// The largest batch a request or a formed batch may have. 0: the model takes no batch
    /// dimension and `dims` are the full shape.
    #[serde(default)]
    pub max_batch_size: usize,
    /// The weights file inside each version directory. Default: `model.onnx` for ONNX,
    /// `model.safetensors` for candle (which also reads `.pth`/`.pt` PyTorch state_dicts).
    #[serde(default)]
    pub default_model_filename: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub dynamic_batching: Option<DynamicBatching>,
    #[serde(default)]
    pub version_policy: VersionPolicy,
    /// Named versions, e.g. `stable = 1`, `canary = 2`.
    #[serde(default)]
    pub labels: BTreeMap<String, u64>,
    /// Threads one inference may use (ONNX Runtime intra-op threads). 0: the backend decides.
    #[serde(default)]
    pub threads: usize,
    /// ONNX Runtime sessions of each version (Triton's `instance_group` count): concurrent
    /// runs take a free one instead of queueing on a single session's lock. Each holds its
    /// own copy of the model in memory. 1 to 16.
    #[serde(default = "one_instance")]
    pub instance_count: usize,
    /// Accept NaN and infinite values in float inputs. Refused by default.
    #[serde(default)]
    pub allow_non_finite: bool,
    /// The architecture of a `candle` model.
    #[serde(default)]
    pub candle: Option<crate::candle_backend::CandleConfig>,
    /// Requests each version runs before it takes traffic. None: one batch of zeros.
    #[serde(default)]
    pub model_warmup: Vec<crate::warmup::Warmup>,
}

impl ModelConfig {
    /// Reads and checks `config.toml`; errors name the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<ModelConfig, ModelError> {
        let fail = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let config: ModelConfig = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        config.check().map_err(fail)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err("a model needs at least one input and one output".into());
        }
        if !(1..=MAX_INSTANCES).contains(&self.instance_count) {
            return Err(format!(
                "instance_count = {} (expected 1 to {MAX_INSTANCES})",
                self.instance_count
            ));
        }
        for spec in self.inputs.iter().chain(&self.outputs) {
            if let Some(d) = spec.dims.iter().find(|&&d| d < -1 || d == 0) {
                return Err(format!(
                    "{}: dimension {d} is not allowed (use a positive size or -1)",
                    spec.name
                ));
            }
        }
        let mut names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("input {:?} is declared twice", w[0]));
        }
        if let Some(name) = &self.default_model_filename {
            let plain = Path::new(name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || name.is_empty() {
                return Err(format!(
                    "default_model_filename = {name:?} must be a file name inside the version directory (no '..', no absolute path)"
                ));
            }
        }
        if self.backend == BackendKind::Candle {
            crate::candle_backend::WeightsFormat::of(Path::new(self.model_filename()))?;
        }
        crate::warmup::check(self)?;
        if let Some(b) = &self.dynamic_batching {
            if self.max_batch_size == 0 {
                return Err("dynamic_batching needs max_batch_size > 0".into());
            }
            if let Some(p) = b
                .preferred_batch_sizes
                .iter()
                .find(|&&p| p == 0 || p > self.max_batch_size)
            {
                return Err(format!(
                    "preferred batch size {p} is not in 1..={}",
                    self.max_batch_size
                ));
            }
            if b.max_queue_size == 0 {
                return Err("dynamic_batching.max_queue_size must be at least 1".into());
            }
        }
        Ok(())
    }

    /// Checks a config built in code rather than read from a file (see
    /// [`crate::ModelRepository::insert`]).
    pub fn validate(&self) -> Result<(), String> {
        self.check()
    }

    pub fn model_filename(&self) -> &str {
        match (&self.default_model_filename, self.backend) {
            (Some(name), _) => name,
            (None, BackendKind::Onnx) => "model.onnx",
            (None, BackendKind::Candle) => "model.safetensors",
        }
    }

    /// The full expected shape of a spec, with the batch dimension (-1) first when batching.
    pub fn full_shape(&self, spec: &TensorSpec) -> Vec<i64> {
        let mut shape = Vec::with_capacity(spec.dims.len() + 1);
        if self.max_batch_size > 0 {
            shape.push(-1);
        }
        shape.extend_from_slice(&spec.dims);
        shape
    }
}

fn one_instance() -> usize {
    1
}

/// The most sessions `instance_count` may ask for.
const MAX_INSTANCES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    const FRAUD: &str = r#"
backend = "onnx"
max_batch_size = 64
inputs = [{ name = "features", dtype = "FP32", dims = [40] }]
outputs = [{ name = "probabilities", dtype = "FP32", dims = [2] }]
version_policy = { latest = 2 }
labels = { stable = 1, canary = 2 }
dynamic_batching = { max_queue_delay_us = 200, preferred_batch_sizes = [16, 64] }
"#;

    #[test]
    fn a_full_config_parses() {
        let c: ModelConfig = toml::from_str(FRAUD).unwrap();
        c.check().unwrap();
        assert_eq!(c.backend, BackendKind::Onnx);
        assert_eq!(c.instance_count, 1, "one session unless asked");
        for (count, ok) in [(0, false), (2, true), (16, true), (17, false)] {
            let c: ModelConfig = toml::from_str(&format!("{FRAUD}instance_count = {count}\n")).unwrap();
            match c.check() {
                Ok(()) => assert!(ok, "instance_count = {count} accepted"),
                Err(e) => {
                    assert!(!ok, "instance_count = {count}: {e}");
                    assert!(e.contains("instance_count = ") && e.contains("1 to 16"), "{e}");
                }
            }
        }
        assert_eq!(c.inputs[0].dtype, DataType::Fp32);
        assert_eq!(c.full_shape(&c.inputs[0]), vec![-1, 40]);
        assert_eq!(c.version_policy, VersionPolicy::Latest(2));
        assert_eq!(c.labels["canary"], 2);
        assert_eq!(c.dynamic_batching.as_ref().unwrap().max_queue_delay_us, 200);
        assert_eq!(
            c.dynamic_batching.as_ref().unwrap().max_queue_size,
            DEFAULT_MAX_QUEUE_SIZE
        );
        assert_eq!(c.model_filename().to_string(), "model.onnx");
    }

    #[test]
    fn candle_weights_are_safetensors_or_pytorch_checkpoints() {
        let candle = |file: &str| {
            let c: ModelConfig = toml::from_str(&format!(
                "backend = \"candle\"\n{file}\n{}",
                FRAUD.trim_start().trim_start_matches("backend = \"onnx\"")
            ))
            .unwrap();
            c.check().map(|()| c.model_filename().to_string())
        };
        assert_eq!(candle("").unwrap(), "model.safetensors");
        for name in ["model.pth", "weights.pt", "w.safetensors"] {
            assert_eq!(
                candle(&format!("default_model_filename = {name:?}")).unwrap(),
                name
            );
        }
        let err = candle("default_model_filename = \"model.bin\"").unwrap_err();
        for escape in ["../../secret.onnx", "/etc/model.onnx", ""] {
            let err = candle(&format!("default_model_filename = {escape:?}")).unwrap_err();
            assert!(err.to_string().contains("must be a file name inside"), "{err}");
        }
        assert!(err.contains("model.bin") && err.contains(".pth"), "{err}");
    }

    #[test]
    fn version_policies_select_from_what_is_on_disk() {
        let on_disk = [1, 3, 2];
        assert_eq!(VersionPolicy::Latest(1).select(&on_disk), vec![3]);
        assert_eq!(VersionPolicy::Latest(2).select(&on_disk), vec![3, 2]);
        assert_eq!(VersionPolicy::All.select(&on_disk), vec![3, 2, 1]);
        assert_eq!(VersionPolicy::Specific(vec![1, 7]).select(&on_disk), vec![1]);
    }

    #[test]
    fn mistakes_are_refused_with_what_was_expected() {
        let bad = FRAUD.replace("max_batch_size = 64", "max_batch_size = 8");
        let c: ModelConfig = toml::from_str(&bad).unwrap();
        assert!(c.check().unwrap_err().contains("preferred batch size 16"));
        let err = toml::from_str::<ModelConfig>(&FRAUD.replace("FP32", "FLOAT"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FLOAT"), "{err}");
        let err = toml::from_str::<ModelConfig>(&format!("{FRAUD}\nbatch = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch"), "{err}");
        let unqueued = FRAUD.replace(
            "preferred_batch_sizes",
            "max_queue_size = 0, preferred_batch_sizes",
        );
        let err = toml::from_str::<ModelConfig>(&unqueued)
            .unwrap()
            .check()
            .unwrap_err();
        assert!(err.contains("max_queue_size must be at least 1"), "{err}");
        let zero = FRAUD.replace("dims = [40]", "dims = [0]");
        assert!(
            toml::from_str::<ModelConfig>(&zero)
                .unwrap()
                .check()
                .unwrap_err()
                .contains("dimension 0")
        );
    }
}
