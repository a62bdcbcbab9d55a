//! `--with-raw`: the model the RPC serves, called in this process with no server in between,
//! so that a report holds the raw cost beside the end-to-end one, measured in the same run.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use ferrite_models::{ModelRepository, OnnxRuntime, Tensor, TensorData};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::Percentiles;

/// Sequential in-process calls of one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct RawReport {
    pub model: String,
    pub batch: usize,
    pub calls: u64,
    pub calls_per_s: f64,
    pub rows_per_s: f64,
    pub latency_us: Percentiles,
}

impl RawReport {
    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        format!(
            "raw    {:<14} batch={:<3} calls={} one thread  {:.0} calls/s {:.0} rows/s  \
             p50={:.1}µs p90={:.1}µs p99={:.1}µs p99.9={:.1}µs max={:.1}µs\n",
            self.model,
            self.batch,
            self.calls,
            self.calls_per_s,
            self.rows_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        )
    }
}

/// Loads `model` from the repository at `models` (warm-up included) and calls its backend
/// directly with the same rows as the RPC sends: `calls` calls of batch 1, then `calls / 64`
/// (at least 100) of batch 64, then, if `batch` is another size, `calls / batch` of it.
pub fn measure(
    models: &Path,
    model: &str,
    input: &str,
    width: usize,
    calls: u64,
    batch: usize,
) -> anyhow::Result<Vec<RawReport>> {
    let runtime = OnnxRuntime::get(None)?;
    let repository = ModelRepository::new(models, runtime);
    let loaded = repository
        .load(model)
        .with_context(|| format!("cannot load {model:?} from {} for --with-raw", models.display()))?;
    let backend = loaded.version("")?.backend.clone();
    let mut reports = Vec::new();
    let mut sizes = vec![(1usize, calls), (64, (calls / 64).max(100))];
    if batch != 1 && batch != 64 {
        sizes.push((batch, (calls / batch as u64).max(100)));
    }
    for (batch, calls) in sizes {
        let inputs: Vec<Vec<Tensor>> = (0..256u64)
            .map(|k| {
                let rows = super::rpc::rows(width as u64, k, batch);
                Tensor::new(input, vec![batch, width], TensorData::Fp32(rows)).map(|t| vec![t])
            })
            .collect::<Result<_, _>>()?;
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let start = Instant::now();
        for i in 0..calls {
            let t0 = Instant::now();
            backend.infer(&inputs[(i % 256) as usize])?;
            histogram.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        }
        let elapsed = start.elapsed().as_secs_f64();
        reports.push(RawReport {
            model: model.to_string(),
            batch,
            calls,
            calls_per_s: calls as f64 / elapsed,
            rows_per_s: (calls * batch as u64) as f64 / elapsed,
            latency_us: super::percentiles(&histogram),
        });
    }
    Ok(reports)
}
