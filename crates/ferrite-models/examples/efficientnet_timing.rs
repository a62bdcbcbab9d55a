//! Time per image of EfficientNet-Lite0 on the CPU, candle beside ONNX Runtime, at batch 1
//! and batch 16 or at the batch sizes given (`-- 1 4`): `models/image_embedder` (candle) and
//! `models/image_embedder_onnx` with 1 and with 2 ONNX Runtime intra-op threads, each loaded as
//! the model repository loads it and run through `ModelBackend::infer` (the server's path,
//! input and output copies included).
//!
//! The backends take turns (the first changing from round to round): in its turn a backend
//! waits until the process is idle, then runs `BURST` calls back to back. Per backend:
//!   - `wall`: every call, median (min, max);
//!   - `first`: the median of the first call of each turn, after the idle pause (thread pools
//!     asleep, caches holding the other backends' data), as a lone request finds the server;
//!   - `CPU`: the process's CPU time (every thread's) per call, from the turn's start until the
//!     process is idle again: an ONNX Runtime pool of 2 threads keeps spinning for more work
//!     for tens of milliseconds after a run, at the cost of a core, and that counts against
//!     the calls (and stays out of the next backend's turn).
//!
//! Candle runs on `RAYON_NUM_THREADS` threads (default: one per core); `ferrite serve` sets 1,
//! so `RAYON_NUM_THREADS=1` times candle as served. Needs the set-up's files
//! (`scripts/setup.sh`):
//!     cargo run --release -p ferrite-models --example efficientnet_timing
//!     RAYON_NUM_THREADS=1 cargo run --release -p ferrite-models --example efficientnet_timing -- 1

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrite_models::candle_backend::CandleModel;
use ferrite_models::efficientnet::IMAGE_SIZE;
use ferrite_models::{ModelBackend, ModelConfig, OnnxModel, OnnxRuntime, Tensor, TensorData};

/// Calls a backend runs back to back in its turn.
const BURST: usize = 4;
/// The process counts as idle again once a window this long used less than `IDLE_CPU` of CPU
/// time (or at the latest after `MAX_SETTLE`).
const IDLE_WINDOW: Duration = Duration::from_millis(5);
const IDLE_CPU: Duration = Duration::from_micros(500);
const MAX_SETTLE: Duration = Duration::from_millis(500);

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// CPU time of every thread of this process, ns (Linux: the first field of each thread's
/// `schedstat`, nanosecond resolution); `None` elsewhere.
fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// Waits until the process is idle (see `IDLE_WINDOW`); returns its CPU time then.
fn settle() -> Option<u64> {
    let start = Instant::now();
    let mut last = process_cpu_ns()?;
    loop {
        std::thread::sleep(IDLE_WINDOW);
        let now = process_cpu_ns()?;
        if now.saturating_sub(last) < IDLE_CPU.as_nanos() as u64 || start.elapsed() > MAX_SETTLE {
            return Some(now);
        }
        last = now;
    }
}

struct Backend {
    name: String,
    model: Box<dyn ModelBackend>,
    wall: Vec<Duration>,
    first: Vec<Duration>,
    cpu: Vec<Duration>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut batches: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if batches.is_empty() {
        batches = vec![1, 16];
    }
    let candle_dir = models().join("image_embedder");
    let config = ModelConfig::from_file(&candle_dir.join("config.toml"))?;
    let candle = CandleModel::load(&config, &candle_dir.join("1/model.safetensors"))?;
    let onnx = models().join("image_embedder_onnx/1/model.onnx");
    let rt = OnnxRuntime::get(None)?;
    let backend = |name: String, model: Box<dyn ModelBackend>| Backend {
        name,
        model,
        wall: Vec::new(),
        first: Vec::new(),
        cpu: Vec::new(),
    };
    let mut backends = vec![backend(
        format!("candle, {} threads", candle_core::utils::get_num_threads()),
        Box::new(candle),
    )];
    for threads in [1, 2] {
        backends.push(backend(
            format!("ORT, {threads} thread{}", if threads == 1 { "" } else { "s" }),
            Box::new(OnnxModel::load(&rt, &onnx, threads)?),
        ));
    }
    println!("ONNX Runtime: {}", rt.library().display());

    for batch in batches {
        let rounds = (32 / (batch * BURST)).max(2);
        let values: Vec<f32> = (0..batch * 3 * IMAGE_SIZE * IMAGE_SIZE)
            .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
            .collect();
        let input = [Tensor::new(
            "image",
            vec![batch, 3, IMAGE_SIZE, IMAGE_SIZE],
            TensorData::Fp32(values),
        )?];
        for b in &mut backends {
            b.model.infer(&input)?;
            b.wall.clear();
            b.first.clear();
            b.cpu.clear();
        }
        let n = backends.len();
        for round in 0..rounds {
            for k in 0..n {
                let b = &mut backends[(round + k) % n];
                let before = settle();
                for call in 0..BURST {
                    let start = Instant::now();
                    b.model.infer(&input)?;
                    let took = start.elapsed();
                    b.wall.push(took);
                    if call == 0 {
                        b.first.push(took);
                    }
                }
                if let (Some(before), Some(after)) = (before, settle()) {
                    b.cpu
                        .push(Duration::from_nanos(after.saturating_sub(before)) / BURST as u32);
                }
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / batch as f64;
        println!(
            "batch {batch}: {rounds} turns of {BURST} calls per backend; ms per image, median (min, max)"
        );
        for b in &mut backends {
            for times in [&mut b.wall, &mut b.first, &mut b.cpu] {
                times.sort();
            }
            let median = |t: &[Duration]| ms(t[t.len() / 2]);
            println!(
                "  {:<18} wall {:6.2} ({:.2}, {:.2})   first {:6.2}   CPU {:6.2}",
                b.name,
                median(&b.wall),
                ms(b.wall[0]),
                ms(b.wall[b.wall.len() - 1]),
                median(&b.first),
                median(&b.cpu),
            );
        }
    }
    Ok(())
}
