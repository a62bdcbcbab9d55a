//! The candle backend: architectures written in Rust, weights from safetensors or a PyTorch
//! checkpoint (`.pth`), run on the CPU.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::mlp::{Mlp, WideDeep};
use crate::{DataType, ModelBackend, ModelConfig, ModelError, Tensor, TensorData};

/// `[candle]` in a model's `config.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandleConfig {
    pub architecture: Architecture,
    /// Layer widths `[in, hidden.., out]` (for Wide & Deep: of the deep part).
    pub dims: Vec<usize>,
    /// Applied to the last layer's output.
    #[serde(default)]
    pub output: OutputActivation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    Mlp,
    WideDeep,
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
    Mlp(Mlp),
    WideDeep(WideDeep),
}

/// A candle model: one FP32 input `[batch, in]`, one FP32 output `[batch, out]`.
pub struct CandleModel {
    net: Net,
    output: OutputActivation,
    input_name: String,
    output_name: String,
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
        let (Some(input), Some(output)) = (config.inputs.first(), config.outputs.first()) else {
            return Err(fail("a candle model has one input and one output".into()));
        };
        if config.inputs.len() != 1
            || config.outputs.len() != 1
            || input.dtype != DataType::Fp32
            || output.dtype != DataType::Fp32
        {
            return Err(fail(
                "a candle model takes one FP32 input and gives one FP32 output".into(),
            ));
        }
        if candle.dims.len() < 2 {
            return Err(fail(format!(
                "[candle] dims {:?} needs at least an input and an output width",
                candle.dims
            )));
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
            Architecture::Mlp => Net::Mlp(Mlp::new(vb, &candle.dims).map_err(weights)?),
            Architecture::WideDeep => Net::WideDeep(WideDeep::new(vb, &candle.dims).map_err(weights)?),
        };
        Ok(CandleModel {
            net,
            output: candle.output,
            input_name: input.name.clone(),
            output_name: output.name.clone(),
            dims: candle.dims.clone(),
        })
    }
}

impl ModelBackend for CandleModel {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let input = inputs
            .iter()
            .find(|t| t.name == self.input_name)
            .ok_or_else(|| ModelError::InvalidInput(format!("missing input {:?}", self.input_name)))?;
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
        let y = match &self.net {
            Net::Mlp(m) => m.forward(&x)?,
            Net::WideDeep(m) => m.forward(&x)?,
        };
        let y = activate(y, self.output)?;
        let (r, c) = y.dims2()?;
        let data = y.flatten_all()?.to_vec1::<f32>()?;
        Ok(vec![Tensor::new(
            self.output_name.clone(),
            vec![r, c],
            TensorData::Fp32(data),
        )?])
    }
}

/// The configured activation on the last layer's `[rows, columns]` output.
fn activate(y: candle_core::Tensor, output: OutputActivation) -> Result<candle_core::Tensor, ModelError> {
    Ok(match output {
        OutputActivation::None => y,
        OutputActivation::Sigmoid => candle_nn::ops::sigmoid(&y)?,
        OutputActivation::Softmax => candle_nn::ops::softmax_last_dim(&y)?,
        OutputActivation::Exp => y.exp()?,
        OutputActivation::L2Normalize => {
            let norm = y.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(f32::MIN_POSITIVE)?;
            y.broadcast_div(&norm)?
        }
    })
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
