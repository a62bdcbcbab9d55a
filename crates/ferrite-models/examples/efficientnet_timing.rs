//! Time per image of EfficientNet-Lite0 on the CPU, at batch 1 and batch 16 (median of
//! several runs after a warm-up), or at the batch sizes given (`-- 1 4`). Needs the converted
//! weights (`scripts/setup.sh`):
//!     cargo run --release -p ferrite-models --example efficientnet_timing

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use ferrite_models::efficientnet::{EfficientNetLite0, IMAGE_SIZE};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let weights = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/image_embedder/1/model.safetensors");
    let net = EfficientNetLite0::load(&weights)?;
    println!("threads: {}", candle_core::utils::get_num_threads());
    let mut batches: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if batches.is_empty() {
        batches = vec![1, 16];
    }
    for batch in batches {
        let runs = (32 / batch).max(6);
        let values: Vec<f32> = (0..batch * 3 * IMAGE_SIZE * IMAGE_SIZE)
            .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
            .collect();
        let x = Tensor::from_vec(values, (batch, 3, IMAGE_SIZE, IMAGE_SIZE), &Device::Cpu)?;
        net.forward(&x)?;
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                net.forward(&x).map(|_| start.elapsed())
            })
            .collect::<Result<_, _>>()?;
        times.sort();
        let per_image = |d: Duration| d.as_secs_f64() * 1e3 / batch as f64;
        println!(
            "batch {batch:>2}: {:.2} ms per image (median of {runs}; min {:.2}, max {:.2})",
            per_image(times[runs / 2]),
            per_image(times[0]),
            per_image(times[runs - 1]),
        );
    }
    Ok(())
}
