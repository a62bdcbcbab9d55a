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
use ferrite_models::{ModelRepository, Tensor, TensorData};

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
    /// sharing the server's workers with them.
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
                    while let Some(job) = jobs.recv().await {
                        run_shadow(&models, log.as_deref(), job).await;
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

/// Runs one shadow job and records how its scores differ from the served ones.
async fn run_shadow(models: &ModelRepository, log: Option<&ExposureLog>, job: ShadowJob) {
    let rows = job.served.len();
    let started = std::time::Instant::now();
    let tensor = match Tensor::new(job.input.clone(), vec![rows, job.width], TensorData::Fp32(job.x)) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(experiment = %job.experiment, error = %e, "shadow input not built");
            return;
        }
    };
    let version = job.variant.model_version.to_string();
    let labels = [
        ("experiment", job.experiment.to_string()),
        ("variant", job.variant.name.to_string()),
    ];
    let outcome = models.infer(&job.model, &version, vec![tensor]).await;
    let scores: Option<(u64, Vec<f64>)> = outcome.ok().and_then(|(v, outputs)| {
        let out = outputs.into_iter().find(|t| t.name == job.output)?;
        let columns = (out.data.len() / rows.max(1)).max(1);
        let values: Vec<f64> = match out.data {
            TensorData::Fp32(v) => v.into_iter().map(f64::from).collect(),
            TensorData::Fp64(v) => v,
            _ => return None,
        };
        let s = (0..rows)
            .map(|r| values.get(r * columns + job.output_index).copied())
            .collect::<Option<Vec<f64>>>()?;
        Some((v, s))
    });
    let Some((ran, scores)) = scores else {
        metrics::counter!("ferrite_shadow_errors_total", &labels).increment(1);
        return;
    };
    let latency_us = started.elapsed().as_micros() as i64;
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
