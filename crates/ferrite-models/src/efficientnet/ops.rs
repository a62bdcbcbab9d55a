//! The convolution pieces candle does not do fast on the CPU, as candle custom ops over
//! channels-last (NHWC) f32 tensors: a depthwise convolution (candle runs a grouped
//! convolution as one convolution per group: 1,152 of them for the widest layer), the
//! patches of a small dense convolution (then one matmul), and bias + ReLU6 in place.
//!
//! Padding is TensorFlow's "SAME": the output is `ceil(input / stride)` and the padding
//! that takes, split with the smaller half before (top, left) and the rest after. It is
//! what the EfficientNet-Lite weights were trained with.

use candle_core::{CpuStorage, CustomOp1, InplaceOp1, Layout, Shape, bail};

/// `(output size, padding before)` along one axis for "SAME" padding.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let output = input.div_ceil(stride);
    let total = ((output - 1) * stride + kernel).saturating_sub(input);
    (output, total / 2)
}

/// The f32 values of a contiguous tensor of rank 4, and its dims.
fn nhwc<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<(&'a [f32], [usize; 4])> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("expected a contiguous NHWC tensor")
    };
    let &[n, h, w, c] = layout.dims() else {
        bail!("expected an NHWC tensor, got dims {:?}", layout.dims())
    };
    Ok((&storage.as_slice::<f32>()?[start..end], [n, h, w, c]))
}

/// A depthwise convolution (one `k x k` filter per channel), then a bias per channel and
/// ReLU6: NHWC `[n, h, w, c]` to `[n, ceil(h / stride), ceil(w / stride), c]`.
pub struct Depthwise {
    /// `[k, k, c]`: for each kernel position, a weight per channel.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub kernel: usize,
    pub stride: usize,
}

/// Multiply-adds below which a layer runs on the calling thread: starting a thread costs
/// about as much as ~100k of them.
const PARALLEL_ABOVE: usize = 1 << 20;

impl CustomOp1 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv-relu6"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, [n, h, w, c]) = nhwc(storage, layout)?;
        let k = self.kernel;
        if c != self.bias.len() || self.weight.len() != k * k * c {
            bail!(
                "depthwise conv over {c} channels with weights for {}",
                self.bias.len()
            )
        }
        let (oh, top) = same_padding(h, k, self.stride);
        let (ow, left) = same_padding(w, k, self.stride);
        let plane = Plane {
            h,
            w,
            c,
            oh,
            ow,
            top,
            left,
        };
        let mut out = vec![0f32; n * oh * ow * c];
        // Output rows (over every image of the batch) split between candle's threads.
        let rows = n * oh;
        let threads = if rows * ow * c * k * k > PARALLEL_ABOVE {
            candle_core::utils::get_num_threads().clamp(1, rows)
        } else {
            1
        };
        let per_thread = rows.div_ceil(threads);
        std::thread::scope(|scope| {
            let mut chunks = out.chunks_mut(per_thread * ow * c).enumerate();
            let first = chunks.next();
            for (i, chunk) in chunks {
                scope.spawn(move || self.rows(x, &plane, i * per_thread, chunk));
            }
            if let Some((_, chunk)) = first {
                self.rows(x, &plane, 0, chunk);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, oh, ow, c))))
    }
}

/// The sizes of one depthwise layer: input `h x w x c`, output `oh x ow x c`, padding before.
#[derive(Clone, Copy)]
struct Plane {
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    top: usize,
    left: usize,
}

impl Depthwise {
    /// Output rows `first..` (counted over the whole batch) into `out`.
    fn rows(&self, x: &[f32], p: &Plane, first: usize, out: &mut [f32]) {
        let (k, c) = (self.kernel, p.c);
        for (r, out) in out.chunks_exact_mut(p.ow * c).enumerate() {
            let (image, oy) = ((first + r) / p.oh, (first + r) % p.oh);
            let image = &x[image * p.h * p.w * c..][..p.h * p.w * c];
            for (ox, acc) in out.chunks_exact_mut(c).enumerate() {
                acc.copy_from_slice(&self.bias);
                for ky in 0..k {
                    let Some(iy) = (oy * self.stride + ky).checked_sub(p.top).filter(|&y| y < p.h) else {
                        continue;
                    };
                    for kx in 0..k {
                        let Some(ix) = (ox * self.stride + kx).checked_sub(p.left).filter(|&x| x < p.w)
                        else {
                            continue;
                        };
                        let pixel = &image[(iy * p.w + ix) * c..][..c];
                        let weight = &self.weight[(ky * k + kx) * c..][..c];
                        for ((a, v), wt) in acc.iter_mut().zip(pixel).zip(weight) {
                            *a += v * wt;
                        }
                    }
                }
                for a in acc.iter_mut() {
                    *a = a.clamp(0.0, 6.0);
                }
            }
        }
    }
}

/// The `k x k` patches of a dense convolution with "SAME" padding, one row per output pixel:
/// NHWC `[n, h, w, c]` to `[n * oh * ow, k * k * c]`, each row ordered (ky, kx, channel).
/// A matmul with weights `[k * k * c, out]` then gives the convolution.
pub struct Patches {
    pub kernel: usize,
    pub stride: usize,
}

impl Patches {
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            same_padding(h, self.kernel, self.stride).0,
            same_padding(w, self.kernel, self.stride).0,
        )
    }
}

impl CustomOp1 for Patches {
    fn name(&self) -> &'static str {
        "conv-patches"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, [n, h, w, c]) = nhwc(storage, layout)?;
        let k = self.kernel;
        let (oh, top) = same_padding(h, k, self.stride);
        let (ow, left) = same_padding(w, k, self.stride);
        let row = k * k * c;
        let mut out = vec![0f32; n * oh * ow * row];
        for (image, out) in x.chunks_exact(h * w * c).zip(out.chunks_exact_mut(oh * ow * row)) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let patch = &mut out[(oy * ow + ox) * row..][..row];
                    for ky in 0..k {
                        let Some(iy) = (oy * self.stride + ky).checked_sub(top).filter(|&y| y < h) else {
                            continue;
                        };
                        for kx in 0..k {
                            if let Some(ix) = (ox * self.stride + kx).checked_sub(left).filter(|&x| x < w) {
                                patch[(ky * k + kx) * c..][..c]
                                    .copy_from_slice(&image[(iy * w + ix) * c..][..c]);
                            }
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n * oh * ow, row))))
    }
}

/// In place on a contiguous `[rows, c]` tensor: adds a bias per column, then ReLU6 if asked.
pub struct BiasActivation<'a> {
    pub bias: &'a [f32],
    pub relu6: bool,
}

impl InplaceOp1 for BiasActivation<'_> {
    fn name(&self) -> &'static str {
        "bias-relu6"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("expected a contiguous tensor")
        };
        let CpuStorage::F32(values) = storage else {
            bail!("expected f32 values")
        };
        let c = self.bias.len();
        if layout.dims().last() != Some(&c) {
            bail!("bias of {c} values for a tensor of dims {:?}", layout.dims())
        }
        for row in values[start..end].chunks_exact_mut(c) {
            for (v, b) in row.iter_mut().zip(self.bias) {
                *v += b;
                if self.relu6 {
                    *v = v.clamp(0.0, 6.0);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{BiasActivation, Depthwise, Patches, same_padding};

    #[test]
    fn same_padding_puts_the_odd_pixel_after() {
        // 224 -> 112 with a 3x3 stride 2 kernel needs one pixel, on the bottom/right.
        assert_eq!(same_padding(224, 3, 2), (112, 0));
        assert_eq!(same_padding(56, 5, 2), (28, 1)); // 3 pixels: 1 before, 2 after
        assert_eq!(same_padding(14, 5, 1), (14, 2));
        assert_eq!(same_padding(7, 1, 1), (7, 0));
    }

    /// A direct depthwise convolution with explicit zero padding, for comparison.
    fn naive(x: &[f32], [h, w, c]: [usize; 3], weight: &[f32], bias: &[f32], k: usize, s: usize) -> Vec<f32> {
        let (oh, top) = same_padding(h, k, s);
        let (ow, left) = same_padding(w, k, s);
        let mut out = Vec::new();
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..c {
                    let mut acc = bias[ch];
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (
                                (oy * s + ky) as i64 - top as i64,
                                (ox * s + kx) as i64 - left as i64,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                acc += x[(iy as usize * w + ix as usize) * c + ch]
                                    * weight[(ky * k + kx) * c + ch];
                            }
                        }
                    }
                    out.push(acc.clamp(0.0, 6.0));
                }
            }
        }
        out
    }

    #[test]
    fn depthwise_matches_a_direct_convolution() {
        // Small images run on one thread; a batch of 3 larger ones is split between threads
        // (where there are several), across image boundaries.
        for (n, h, w, c) in [(1, 7, 6, 3), (1, 9, 8, 20), (3, 40, 37, 32)] {
            let x: Vec<f32> = (0..n * h * w * c)
                .map(|i| ((i * 37 % 17) as f32 - 8.0) / 4.0)
                .collect();
            for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
                let weight: Vec<f32> = (0..k * k * c)
                    .map(|i| ((i * 13 % 11) as f32 - 5.0) / 7.0)
                    .collect();
                let bias: Vec<f32> = (0..c).map(|i| (i % 3) as f32 * 0.25 - 0.25).collect();
                let op = Depthwise {
                    weight: weight.clone(),
                    bias: bias.clone(),
                    kernel: k,
                    stride: s,
                };
                let t = Tensor::from_vec(x.clone(), (n, h, w, c), &Device::Cpu).unwrap();
                let y = t.apply_op1_no_bwd(&op).unwrap();
                assert_eq!(y.dims(), &[n, h.div_ceil(s), w.div_ceil(s), c]);
                let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let want: Vec<f32> = x
                    .chunks(h * w * c)
                    .flat_map(|image| naive(image, [h, w, c], &weight, &bias, k, s))
                    .collect();
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "n {n} k {k} s {s}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn patches_times_weights_is_a_dense_convolution() {
        // One 2-channel 4x4 image (values 0..32), a 3x3 stride 2 kernel: output 2x2, the
        // one pixel of padding after. Output 0 sums channel 0 minus channel 1 over the
        // window (-1 per pixel inside the image); output 1 takes the centre's channel 1.
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let t = Tensor::from_vec(x, (1, 4, 4, 2), &Device::Cpu).unwrap();
        let op = Patches { kernel: 3, stride: 2 };
        assert_eq!(op.output_size(4, 4), (2, 2));
        let p = t.apply_op1_no_bwd(&op).unwrap();
        assert_eq!(p.dims(), &[4, 18]);
        let mut weights = Vec::new();
        for i in 0..18 {
            weights.push(if i % 2 == 0 { 1f32 } else { -1.0 });
            weights.push(if i == (3 + 1) * 2 + 1 { 1.0 } else { 0.0 });
        }
        let w = Tensor::from_vec(weights, (18, 2), &Device::Cpu).unwrap();
        let y = p.matmul(&w).unwrap().to_vec2::<f32>().unwrap();
        let centre = |y: usize, x: usize| ((y * 4 + x) * 2 + 1) as f32;
        assert_eq!(
            y,
            vec![
                vec![-9.0, centre(1, 1)],
                vec![-6.0, centre(1, 3)],
                vec![-6.0, centre(3, 1)],
                vec![-4.0, centre(3, 3)],
            ]
        );
    }

    #[test]
    fn bias_activation_adds_then_clamps_to_zero_and_six() {
        let t = Tensor::new(&[[1f32, -3.0], [7.0, 2.0]], &Device::Cpu).unwrap();
        t.inplace_op1(&BiasActivation {
            bias: &[1.0, 2.0],
            relu6: true,
        })
        .unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), vec![vec![2.0, 0.0], vec![6.0, 4.0]]);
        t.inplace_op1(&BiasActivation {
            bias: &[-3.0, -5.0],
            relu6: false,
        })
        .unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![-1.0, -5.0], vec![3.0, -1.0]]
        );
    }
}
