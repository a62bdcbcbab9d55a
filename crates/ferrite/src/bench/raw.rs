//! `--with-raw`: the model the RPC serves, called in this process with no server in between,
//! so that a report holds the raw cost beside the end-to-end one, measured in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use ferrite_models::{ModelRepository, OnnxRuntime, Tensor, TensorData};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::Percentiles;

/// Sequential in-process calls of one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct RawReport {
    pub model: String,
    /// The model's trees walked in Rust (`ferrite_models::trees`, what the fraud pipeline's
    /// explanations run) rather than its ONNX Runtime session.
    pub trees: bool,
    /// One of the runs a pipeline call makes (`pipeline`); their p50s add up to the call's
    /// raw work.
    pub stage: bool,
    pub batch: usize,
    /// Calls started on this schedule (per second), the thread asleep in between, as a
    /// server's is between calls at that rate; `None`: back to back.
    pub rate: Option<f64>,
    pub calls: u64,
    pub calls_per_s: f64,
    pub rows_per_s: f64,
    pub latency_us: Percentiles,
}

impl RawReport {
    /// The report of `timed`'s calls, each of `batch` rows.
    pub(super) fn of(
        model: String,
        (trees, stage): (bool, bool),
        batch: usize,
        rate: Option<f64>,
        (histogram, elapsed): (Histogram<u64>, f64),
    ) -> RawReport {
        let calls = histogram.len();
        RawReport {
            model,
            trees,
            stage,
            batch,
            rate,
            calls,
            calls_per_s: calls as f64 / elapsed,
            rows_per_s: (calls * batch as u64) as f64 / elapsed,
            latency_us: super::percentiles(&histogram),
        }
    }

    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        let pace = self.rate.map(|r| format!(" at {r}/s")).unwrap_or_default();
        let engine = if self.trees { " (trees in Rust)" } else { "" };
        format!(
            "raw    {:<14}{engine} batch={:<3}{pace} calls={} one thread  {:.0} calls/s {:.0} rows/s  \
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

/// How the raw model is called: the RPC's settings that apply.
pub struct Plan<'a> {
    pub models: &'a Path,
    pub model: &'a str,
    pub input: &'a str,
    pub width: usize,
    pub calls: u64,
    pub batch: usize,
    /// The run's open-loop rate: batch 1 is then also called on that schedule, for at most
    /// `calls` calls and `duration_s` seconds.
    pub rate: Option<f64>,
    pub duration_s: f64,
    /// Only the run's batch: `calls` calls back to back, then on the run's schedule (a stage
    /// of a pipeline call, which runs that batch once per call).
    pub only_batch: bool,
}

/// Loads the model from the repository (warm-up included) and calls its backend directly
/// with the same rows as the RPC sends: `calls` calls of batch 1, then `calls / 64` (at least
/// 100) of batch 64, then, if `batch` is another size, `calls / batch` of it, then with a
/// rate batch 1 on the run's schedule.
///
/// Back to back, a small model runs with its code and data hot in the caches; at 1,000
/// calls/s the thread sleeps between calls and each run starts colder. The paced leg measures
/// that cost, which an RPC at that rate pays too.
pub fn measure(plan: &Plan<'_>) -> anyhow::Result<Vec<RawReport>> {
    let Plan {
        models,
        model,
        input,
        width,
        calls,
        batch,
        rate,
        duration_s,
        only_batch,
    } = *plan;
    let runtime = OnnxRuntime::get(None)?;
    let repository = ModelRepository::new(models, runtime);
    let loaded = repository
        .load(model)
        .with_context(|| format!("cannot load {model:?} from {} for --with-raw", models.display()))?;
    let backend = loaded.version("")?.backend.clone();
    let mut reports = Vec::new();
    // (rows, calls, rate) of each leg.
    let legs: Vec<(usize, u64, Option<f64>)> = if only_batch {
        // A pipeline's stage: its rows, back to back and on the run's schedule.
        two_legs(calls, rate, duration_s)
            .into_iter()
            .map(|(calls, rate)| (batch, calls, rate))
            .collect()
    } else {
        let mut legs = vec![(1, calls, None), (64, (calls / 64).max(100), None)];
        if batch != 1 && batch != 64 {
            legs.push((batch, (calls / batch as u64).max(100), None));
        }
        legs.extend(rate.map(|rate| (1, paced_calls(calls, rate, duration_s), Some(rate))));
        legs
    };
    let report = |trees: bool, batch: usize, rate: Option<f64>, timed| {
        RawReport::of(model.to_string(), (trees, only_batch), batch, rate, timed)
    };
    for (batch, calls, rate) in legs {
        let inputs: Vec<Vec<Tensor>> = (0..256u64)
            .map(|k| {
                let rows = super::rpc::rows(width as u64, k, batch);
                Tensor::new(input, vec![batch, width], TensorData::Fp32(rows)).map(|t| vec![t])
            })
            .collect::<Result<_, _>>()?;
        let timed = timed(calls, rate, duration_s, |i| {
            backend.infer(&inputs[i % 256])?;
            Ok(())
        })?;
        reports.push(report(false, batch, rate, timed));
    }
    // A tree ensemble: the same rows one at a time through its trees walked in Rust, back to
    // back and on the run's schedule, beside ONNX Runtime's runs of them.
    if let Some(trees) = backend.tree_ensemble() {
        let rows: Vec<Vec<f32>> = (0..256u64)
            .map(|k| super::rpc::rows(width as u64, k, 1))
            .collect();
        for (calls, rate) in two_legs(calls, rate, duration_s) {
            let timed = timed(calls, rate, duration_s, |i| {
                std::hint::black_box(trees.predict(&rows[i % 256]).map_err(anyhow::Error::msg)?);
                Ok(())
            })?;
            reports.push(report(true, 1, rate, timed));
        }
    }
    Ok(reports)
}

/// The work of one Recommend or Price call that no server can avoid, in this process: each
/// model run of the pipeline at the rows one call gives it, and for Recommend the search of
/// the candidates over an exact inner-product index of the sample catalogue's size (random
/// unit vectors of the towers' width: a flat search costs the same for any values), through
/// the id selector a filtered search takes. Each back to back and on the run's schedule.
pub fn pipeline(
    models: &Path,
    stages: &[super::rpc::Stage],
    search: Option<super::rpc::Search>,
    calls: u64,
    rate: Option<f64>,
    duration_s: f64,
) -> anyhow::Result<Vec<RawReport>> {
    let mut reports = Vec::new();
    for stage in stages {
        reports.extend(measure(&Plan {
            models,
            model: stage.model,
            input: stage.input,
            width: stage.width,
            calls,
            batch: stage.rows,
            rate,
            duration_s,
            only_batch: true,
        })?);
    }
    if let Some(search) = search {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut unit = |n: usize| -> Vec<f32> {
            (0..n)
                .flat_map(|_| {
                    let v: Vec<f32> = (0..search.dim).map(|_| rng.random::<f32>() - 0.5).collect();
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                    v.into_iter().map(move |x| x / norm)
                })
                .collect()
        };
        let index = ferrite_search::PositionIndex::new(search.dim, unit(search.items))?;
        let queries = unit(256);
        let keep = |_: usize| true;
        let model = format!("faiss Flat top-{} of {}", search.k, search.items);
        for (calls, rate) in two_legs(calls, rate, duration_s) {
            let timed = timed(calls, rate, duration_s, |i| {
                let q = &queries[(i % 256) * search.dim..(i % 256 + 1) * search.dim];
                std::hint::black_box(index.search(q, search.k, Some(&keep))?);
                Ok(())
            })?;
            reports.push(RawReport::of(model.clone(), (false, true), 1, rate, timed));
        }
    }
    Ok(reports)
}

/// Calls of a paced leg at `rate`: bounded by the count and by the duration, like the run.
fn paced_calls(calls: u64, rate: f64, duration_s: f64) -> u64 {
    calls.min((rate * duration_s).floor().max(1.0) as u64)
}

/// A leg back to back, then with a rate one on the run's schedule: (calls, rate) each.
pub(super) fn two_legs(calls: u64, rate: Option<f64>, duration_s: f64) -> Vec<(u64, Option<f64>)> {
    let mut legs = vec![(calls, None)];
    legs.extend(rate.map(|rate| (paced_calls(calls, rate, duration_s), Some(rate))));
    legs
}

/// Times up to `calls` calls of `call` (given the call's index), back to back or started on
/// the schedule of `rate` calls per second with the thread asleep in between, none started
/// after `duration_s` seconds: each call's latency (the histogram's count is the calls
/// made), and the seconds the whole took.
pub(super) fn timed(
    calls: u64,
    rate: Option<f64>,
    duration_s: f64,
    mut call: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<(Histogram<u64>, f64)> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let start = Instant::now();
    for i in 0..calls {
        if start.elapsed().as_secs_f64() >= duration_s {
            break;
        }
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let t0 = Instant::now();
        call(i as usize)?;
        histogram.saturating_record((t0.elapsed().as_micros() as u64).max(1));
    }
    Ok((histogram, start.elapsed().as_secs_f64()))
}
