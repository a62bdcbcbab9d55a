//! Experiments in the request path: which variant (model version) each row of a call runs,
//! GrowthBook's bucketing through `ferrite-experiments`; how each row went on a canary (its
//! controller rolls a failing canary back by itself); the exposure log; and shadow variants,
//! run on a copy of the rows after the answer is built, never changing it.

use std::sync::Arc;
use std::time::Duration;

use ferrite_experiments::exposure::{ExposureLog, ExposureRecord};
use ferrite_experiments::shadow::{decision_flip, overlap_at_k, score_diff};
use ferrite_experiments::{Assigner, Assignment, CanaryController, ShadowQueue, VariantRef};
use ferrite_features::Value;
use ferrite_models::ModelRepository;

use crate::config::ModelSection;
use crate::engine::RowAnswer;
use crate::input::CallInput;
use crate::model::ModelChoice;
use crate::pipeline::Pipeline;
use crate::recommend::{RecommendedItem, diversify};

/// The experiments a server runs, shared by every call.
pub struct Experiments {
    pub assigner: Arc<Assigner>,
    pub canaries: Arc<CanaryController>,
    exposures: Option<Arc<ExposureLog>>,
    shadows: ShadowQueue<ShadowJob>,
}

/// Where one row goes.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) choice: ModelChoice,
    /// The row's assignment, under an experiment on the pipeline.
    pub(crate) assignment: Option<Assignment>,
    /// The unit's id (the experiment's `unit` field of the row).
    pub(crate) unit: String,
}

impl Route {
    pub(crate) fn variant(&self) -> Option<&Arc<str>> {
        self.assignment.as_ref().map(|a| &a.variant.name)
    }
}

/// What answered one unit, for its exposure record.
pub(crate) struct Served {
    pub(crate) request_id: String,
    pub(crate) variant: String,
    pub(crate) model: String,
    pub(crate) model_version: String,
    pub(crate) score: Option<f64>,
    pub(crate) decision: Option<String>,
    pub(crate) latency_us: u64,
    pub(crate) fallback: bool,
}

/// Rows of one call a shadow variant runs on.
pub struct ShadowJob {
    experiment: Arc<str>,
    variant: VariantRef,
    model: String,
    input: String,
    output: String,
    output_index: usize,
    compare: Compare,
    width: usize,
    x: Vec<f32>,
    served: Vec<f64>,
    units: Vec<String>,
    request_ids: Vec<String>,
}

/// How a shadow's answer is compared with the served one, beyond each row's score difference.
pub(crate) enum Compare {
    /// Rows scored one by one; with a threshold (fraud: `review_at`) a decision flip is a row
    /// whose score is on the other side of it.
    Scores { threshold: Option<f64> },
    /// The rows are the candidates of one ranked list (recommendations): the shadow's list is
    /// rebuilt from its scores the way the served one was (best first, at most
    /// `per_category` of one category, `k` items), and its overlap with `served` (the ids
    /// answered) is recorded. One exposure record per call, not per candidate.
    TopK {
        served: Vec<String>,
        candidates: Vec<RecommendedItem>,
        per_category: usize,
        k: usize,
    },
}

/// What one call offers its shadow variants: the model inputs its rows used (`x`, `width`
/// values per row), the scores served, and each row's unit and request id.
pub(crate) struct ShadowRows<'a> {
    pub(crate) model: &'a ModelSection,
    pub(crate) x: &'a [f32],
    pub(crate) width: usize,
    pub(crate) served: &'a [f64],
    pub(crate) units: Vec<String>,
    pub(crate) request_ids: Vec<String>,
}

impl Experiments {
    /// Starts the shadow runner (at most `shadow_queue` jobs waiting; more are dropped and
    /// counted). It runs on a thread of its own at the lowest scheduling priority (nice 19),
    /// with its own single-threaded runtime: on a busy machine the primary path's calls take
    /// the CPU first and the shadows wait (then fill the queue and are dropped), instead of
    /// sharing the server's workers with them. Woken by a job, it waits `SHADOW_TICK` and
    /// runs what the queue then holds, one model run per shadow model version.
    pub fn new(
        assigner: Arc<Assigner>,
        canaries: Arc<CanaryController>,
        exposures: Option<Arc<ExposureLog>>,
        models: Arc<ModelRepository>,
        shadow_queue: usize,
    ) -> Arc<Experiments> {
        let (shadows, mut jobs) = ShadowQueue::new("experiments", shadow_queue);
        let log = exposures.clone();
        let runner = std::thread::Builder::new()
            .name("shadow-runner".into())
            .spawn(move || {
                // The thread's own nice value (Linux: priorities are per thread); the threads
                // its runtime starts inherit it.
                if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
                    tracing::warn!(error = %e, "shadow runner: priority not lowered");
                }
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "shadow runner: no runtime; shadow jobs are dropped");
                        return;
                    }
                };
                runtime.block_on(async move {
                    // The first job wakes the runner; it then waits a tick and takes the
                    // queue whole: the request path's offers meanwhile wake nobody, and the
                    // jobs of one model run as one batch, whose rows share the model's memory
                    // (one cold walk of the trees instead of one per call).
                    let mut open = true;
                    while open {
                        let Some(first) = jobs.recv().await else { break };
                        tokio::time::sleep(SHADOW_TICK).await;
                        let mut taken = vec![first];
                        loop {
                            match jobs.try_recv() {
                                Ok(job) => taken.push(job),
                                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                                    open = false;
                                    break;
                                }
                            }
                        }
                        run_shadows(&models, log.as_deref(), taken).await;
                    }
                });
            });
        if let Err(e) = runner {
            tracing::error!(error = %e, "shadow runner not started; shadow jobs are dropped");
        }
        Arc::new(Experiments {
            assigner,
            canaries,
            exposures,
            shadows,
        })
    }

    /// Shadow jobs dropped because the queue was full.
    pub fn shadows_dropped(&self) -> u64 {
        self.shadows.dropped()
    }

    /// The route of every row of `input` on `pipeline`.
    pub(crate) fn routes(&self, pipeline: &Pipeline, input: &CallInput, rows: usize) -> Vec<Route> {
        let model = pipeline.experiment_model();
        let configured = ModelChoice {
            name: model.name.clone(),
            version: model.version.clone(),
        };
        let Some(unit_field) = self.assigner.unit_of(&pipeline.name) else {
            return vec![
                Route {
                    choice: configured,
                    assignment: None,
                    unit: String::new(),
                };
                rows
            ];
        };
        let column = input
            .entities
            .get(&unit_field)
            .or_else(|| input.fields.get(&unit_field));
        (0..rows)
            .map(|row| {
                let unit = match column.and_then(|c| c.get(row)) {
                    Some(v) => unit_string(v),
                    None if unit_field == "request_id" || unit_field == "transaction_id" => {
                        input.request_ids.get(row).cloned().unwrap_or_default()
                    }
                    None => String::new(),
                };
                match self
                    .assigner
                    .assign(&pipeline.name, &unit, input.force_variant.as_deref())
                {
                    Some(a) => Route {
                        choice: ModelChoice {
                            name: model.name.clone(),
                            version: a.variant.model_version.to_string(),
                        },
                        assignment: Some(a),
                        unit,
                    },
                    None => Route {
                        choice: configured.clone(),
                        assignment: None,
                        unit,
                    },
                }
            })
            .collect()
    }

    /// The route of a one-unit call (recommendations, pricing) under an experiment on
    /// `pipeline`; `None` when no experiment runs on it.
    pub(crate) fn route_one(&self, pipeline: &Pipeline, input: &CallInput) -> Option<Route> {
        self.routes(pipeline, input, 1)
            .pop()
            .filter(|r| r.assignment.is_some())
    }

    /// How one row went on its variant: the canary controller judges the canary on it.
    pub(crate) fn record(&self, route: &Route, ok: bool, latency: Duration) {
        if let Some(a) = &route.assignment {
            self.canaries.record(&a.experiment, &a.variant.name, ok, latency);
        }
    }

    /// Appends each row's exposure to the log (never blocks; a full queue drops and counts).
    pub(crate) fn log_exposures(
        &self,
        routes: &[Route],
        answers: &[RowAnswer],
        input: &CallInput,
        latency_us: u64,
    ) {
        for (row, (route, answer)) in routes.iter().zip(answers).enumerate() {
            self.log_exposure(
                route,
                Served {
                    request_id: input.request_ids.get(row).cloned().unwrap_or_default(),
                    variant: answer.variant.clone(),
                    model: answer.model_name.clone(),
                    model_version: answer.model_version.clone(),
                    score: Some(answer.score),
                    decision: Some(answer.decision.as_str().to_string()),
                    latency_us,
                    fallback: answer.fallback.is_some(),
                },
            );
        }
    }

    /// Appends one unit's exposure to the log, when `route` is under an experiment.
    pub(crate) fn log_exposure(&self, route: &Route, served: Served) {
        let (Some(log), Some(a)) = (&self.exposures, &route.assignment) else {
            return;
        };
        log.log(ExposureRecord {
            time: now_us(),
            experiment: a.experiment.to_string(),
            variant: served.variant,
            unit_id: route.unit.clone(),
            request_id: served.request_id,
            model: served.model,
            model_version: served.model_version,
            score: served.score,
            decision: served.decision,
            latency_us: served.latency_us as i64,
            fallback: served.fallback,
            forced: a.forced,
        });
    }

    /// Queues the shadow variants of the rows' assignments on the model inputs the rows used
    /// and their served scores.
    pub(crate) fn offer_shadows(
        &self,
        assignment: &Assignment,
        rows: ShadowRows<'_>,
        compare: impl Fn() -> Compare,
    ) {
        for shadow in assignment.shadows.iter() {
            let job = ShadowJob {
                experiment: assignment.experiment.clone(),
                variant: shadow.clone(),
                model: rows.model.name.clone(),
                input: rows.model.input.clone(),
                output: rows.model.output.clone(),
                output_index: rows.model.output_index,
                compare: compare(),
                width: rows.width,
                x: rows.x.to_vec(),
                served: rows.served.to_vec(),
                units: rows.units.clone(),
                request_ids: rows.request_ids.clone(),
            };
            self.shadows.offer(job);
        }
    }

    /// Flushes the exposure log (the server calls it on shutdown).
    pub fn shutdown(&self) {
        if let Some(log) = &self.exposures
            && let Err(e) = log.shutdown()
        {
            tracing::warn!(error = %e, "exposure log not flushed");
        }
    }
}

/// A unit id as text: integers in decimal, strings as they are.
pub(crate) fn unit_string(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Str(s) => s.clone(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null | Value::FloatVec(_) => String::new(),
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// How long the shadow runner, woken by a job, waits for more before it runs them.
const SHADOW_TICK: Duration = Duration::from_millis(50);

/// Runs `jobs`: those of one model version (and input, output, width) together in batches of
/// at most the model's `max_batch_size` rows, then records each job's comparison with the
/// served scores.
async fn run_shadows(models: &ModelRepository, log: Option<&ExposureLog>, jobs: Vec<ShadowJob>) {
    type Key = (String, String, String, String, usize, usize);
    let mut groups: Vec<(Key, Vec<ShadowJob>)> = Vec::new();
    for job in jobs {
        let key = (
            job.model.clone(),
            job.variant.model_version.to_string(),
            job.input.clone(),
            job.output.clone(),
            job.output_index,
            job.width,
        );
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(job),
            None => groups.push((key, vec![job])),
        }
    }
    for ((model, version, ..), group) in groups {
        // A model without a batch dimension runs one job at a time.
        let max_rows = models.get(&model).map_or(0, |m| m.config.max_batch_size).max(1);
        let mut batch: Vec<ShadowJob> = Vec::new();
        let mut rows = 0;
        for job in group {
            if !batch.is_empty() && rows + job.served.len() > max_rows {
                run_batch(models, log, &version, std::mem::take(&mut batch)).await;
                rows = 0;
            }
            rows += job.served.len();
            batch.push(job);
        }
        if !batch.is_empty() {
            run_batch(models, log, &version, batch).await;
        }
    }
}

/// Runs the jobs of one batch (same model version, input, output and width) in one model run
/// and records how each job's scores differ from its served ones.
async fn run_batch(
    models: &ModelRepository,
    log: Option<&ExposureLog>,
    version: &str,
    mut jobs: Vec<ShadowJob>,
) {
    let results = score_batch(models, version, &mut jobs).await;
    for (job, (scores, latency_us)) in jobs.into_iter().zip(results) {
        record_shadow(log, job, scores, latency_us);
    }
}

/// One shadow job's scores with the version that ran them (`None`: the run failed), and the
/// µs of that run.
type JobScores = (Option<(u64, Vec<f64>)>, i64);

/// Each job's shadow scores (with the version that ran) and the µs of the run that gave them,
/// from one model run over all the jobs' rows; when that run fails, each job runs alone, so
/// that a row the shadow model refuses fails its own job only (`None`). Takes the jobs' rows.
async fn score_batch(models: &ModelRepository, version: &str, jobs: &mut [ShadowJob]) -> Vec<JobScores> {
    let Some(first) = jobs.first() else {
        return Vec::new();
    };
    let spec = ShadowRun {
        model: first.model.clone(),
        version: version.to_string(),
        input: first.input.clone(),
        output: first.output.clone(),
        output_index: first.output_index,
        width: first.width,
    };
    let mut x = Vec::with_capacity(jobs.iter().map(|j| j.x.len()).sum());
    for job in jobs.iter() {
        x.extend_from_slice(&job.x);
    }
    let started = std::time::Instant::now();
    let ran = spec.scores(models, x).await;
    let latency_us = started.elapsed().as_micros() as i64;
    match ran {
        Some((version, scores)) => {
            let mut scores = scores.into_iter();
            jobs.iter()
                .map(|job| {
                    let own = scores.by_ref().take(job.served.len()).collect();
                    (Some((version, own)), latency_us)
                })
                .collect()
        }
        None if jobs.len() == 1 => vec![(None, latency_us)],
        None => {
            let mut alone = Vec::with_capacity(jobs.len());
            for job in jobs.iter_mut() {
                let started = std::time::Instant::now();
                let ran = spec.scores(models, std::mem::take(&mut job.x)).await;
                alone.push((ran, started.elapsed().as_micros() as i64));
            }
            alone
        }
    }
}

/// One model run of a shadow variant.
struct ShadowRun {
    model: String,
    version: String,
    input: String,
    output: String,
    output_index: usize,
    width: usize,
}

impl ShadowRun {
    /// The version that ran and each row's score of `x` (rows of `width` values), read as the
    /// served scores were ([`crate::engine::infer_matrix`]); `None` when the run failed or
    /// its output lacks the scores.
    async fn scores(&self, models: &ModelRepository, x: Vec<f32>) -> Option<(u64, Vec<f64>)> {
        let rows = x.len() / self.width.max(1);
        let (version, values, columns) = crate::engine::infer_matrix(
            models,
            &self.model,
            &self.version,
            &self.input,
            &self.output,
            x,
            rows,
        )
        .await
        .ok()?;
        if self.output_index >= columns {
            return None;
        }
        let scores = (0..rows)
            .map(|r| f64::from(values[r * columns + self.output_index]))
            .collect();
        Some((version, scores))
    }
}

/// Records how one job's shadow scores (`None`: the shadow's run failed) differ from the
/// served ones; `latency_us` is the run of the batch it was part of.
fn record_shadow(
    log: Option<&ExposureLog>,
    job: ShadowJob,
    scores: Option<(u64, Vec<f64>)>,
    latency_us: i64,
) {
    let labels = [
        ("experiment", job.experiment.to_string()),
        ("variant", job.variant.name.to_string()),
    ];
    let Some((ran, scores)) = scores else {
        metrics::counter!("ferrite_shadow_errors_total", &labels).increment(1);
        return;
    };
    let now = now_us();
    for (&served, &shadow) in job.served.iter().zip(&scores) {
        metrics::histogram!("ferrite_shadow_score_diff", &labels).record(score_diff(served, shadow).abs());
        if let Compare::Scores { threshold: Some(t) } = job.compare
            && decision_flip(served, shadow, t)
        {
            metrics::counter!("ferrite_shadow_decision_flips_total", &labels).increment(1);
        }
        metrics::counter!("ferrite_shadow_rows_total", &labels).increment(1);
    }
    let record = |row: usize, score: f64| ExposureRecord {
        time: now,
        // Apart from the experiment's own rows, which a report counts per unit.
        experiment: format!("{}/shadow", job.experiment),
        variant: job.variant.name.to_string(),
        unit_id: job.units.get(row).cloned().unwrap_or_default(),
        request_id: job.request_ids.get(row).cloned().unwrap_or_default(),
        model: job.model.clone(),
        model_version: ran.to_string(),
        score: Some(score),
        decision: None,
        latency_us,
        fallback: false,
        forced: false,
    };
    match job.compare {
        Compare::Scores { .. } => {
            if let Some(log) = log {
                for (row, &shadow) in scores.iter().enumerate() {
                    log.log(record(row, shadow));
                }
            }
        }
        Compare::TopK {
            served,
            mut candidates,
            per_category,
            k,
        } => {
            for (item, &s) in candidates.iter_mut().zip(&scores) {
                item.score = s;
            }
            candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
            let listed = diversify(candidates, per_category, k);
            let ids: Vec<String> = listed.iter().map(|i| unit_string(&i.id)).collect();
            metrics::histogram!("ferrite_shadow_overlap_at_k", &labels)
                .record(overlap_at_k(&served, &ids, k));
            if let (Some(log), Some(top)) = (log, listed.first()) {
                log.log(record(0, top.score));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_experiments::config::ModelVersion;
    use ferrite_models::{ModelBackend, ModelConfig, ModelError, OnnxRuntime, Tensor, TensorData};
    use std::sync::Mutex;

    /// Scores each row as twice its first value; refuses a run holding a negative value, and
    /// records the rows of every run it is given.
    struct Doubler {
        runs: Mutex<Vec<usize>>,
    }

    impl ModelBackend for Doubler {
        fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
            let x = &inputs[0];
            self.runs.lock().unwrap().push(x.shape[0]);
            let TensorData::Fp32(v) = &x.data else {
                unreachable!()
            };
            if v.iter().any(|&f| f < 0.0) {
                return Err(ModelError::Inference("a negative value".into()));
            }
            let width = x.shape[1];
            let y = v.chunks(width).map(|row| row[0] * 2.0).collect::<Vec<f32>>();
            Ok(vec![Tensor::new(
                "score",
                vec![x.shape[0], 1],
                TensorData::Fp32(y),
            )?])
        }
    }

    fn served(max_batch_size: usize) -> (ModelRepository, Arc<Doubler>) {
        let repo = ModelRepository::new(
            tempfile::tempdir().unwrap().keep(),
            OnnxRuntime::get(None).unwrap(),
        );
        let config: ModelConfig = toml::from_str(&format!(
            r#"
backend = "onnx"
max_batch_size = {max_batch_size}
inputs = [{{ name = "x", dtype = "FP32", dims = [2] }}]
outputs = [{{ name = "score", dtype = "FP32", dims = [1] }}]
"#
        ))
        .unwrap();
        let backend = Arc::new(Doubler {
            runs: Mutex::new(Vec::new()),
        });
        repo.insert("m", config, vec![(7, backend.clone() as Arc<dyn ModelBackend>)])
            .unwrap();
        (repo, backend)
    }

    /// A job over `rows` (first values; the second value of each row is 0).
    fn job(rows: &[f32]) -> ShadowJob {
        ShadowJob {
            experiment: "e".into(),
            variant: VariantRef {
                name: "shadow".into(),
                model_version: ModelVersion::Number(7),
            },
            model: "m".into(),
            input: "x".into(),
            output: "score".into(),
            output_index: 0,
            compare: Compare::Scores { threshold: None },
            width: 2,
            x: rows.iter().flat_map(|&v| [v, 0.0]).collect(),
            served: vec![0.0; rows.len()],
            units: Vec::new(),
            request_ids: Vec::new(),
        }
    }

    fn scores(results: &[JobScores]) -> Vec<Option<Vec<f64>>> {
        results
            .iter()
            .map(|(r, _)| {
                r.as_ref().map(|(version, s)| {
                    assert_eq!(*version, 7);
                    s.clone()
                })
            })
            .collect()
    }

    #[tokio::test]
    async fn jobs_of_one_model_run_as_one_batch_and_each_gets_its_own_rows_scores() {
        let (repo, backend) = served(64);
        let mut jobs = vec![job(&[1.0, 2.0]), job(&[3.0]), job(&[4.0, 5.0, 6.0])];
        let results = score_batch(&repo, "7", &mut jobs).await;
        assert_eq!(*backend.runs.lock().unwrap(), vec![6]);
        assert_eq!(
            scores(&results),
            vec![Some(vec![2.0, 4.0]), Some(vec![6.0]), Some(vec![8.0, 10.0, 12.0])]
        );
    }

    #[tokio::test]
    async fn a_failed_batch_runs_again_job_by_job_and_only_the_bad_job_fails() {
        let (repo, backend) = served(64);
        let mut jobs = vec![job(&[1.0]), job(&[-1.0, 2.0]), job(&[3.0])];
        let results = score_batch(&repo, "7", &mut jobs).await;
        assert_eq!(*backend.runs.lock().unwrap(), vec![4, 1, 2, 1]);
        assert_eq!(scores(&results), vec![Some(vec![2.0]), None, Some(vec![6.0])]);
    }

    #[tokio::test]
    async fn batches_hold_at_most_the_models_max_batch_size_rows() {
        let (repo, backend) = served(3);
        let jobs = vec![job(&[1.0, 2.0]), job(&[3.0]), job(&[4.0, 5.0]), job(&[6.0])];
        run_shadows(&repo, None, jobs).await;
        assert_eq!(*backend.runs.lock().unwrap(), vec![3, 3]);
    }
}
