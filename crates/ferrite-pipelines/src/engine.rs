//! The request path of every pipeline, top to bottom: check the rows → read their features
//! (one online-store read for the call) → run the model (one run per model version the rows
//! go to) → decide and explain. All of it inside the smaller of the pipeline's budget and the
//! caller's deadline; when the store or the model errors or is too slow, the pipeline's
//! fallback answers instead, flagged with the reason, before the deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferrite_features::serving::read_planned;
use ferrite_features::{FeatureError, Micros, OnlineStore, Value};
use ferrite_models::{ModelError, ModelRepository, Tensor, TensorData};

use crate::PipelineError;
use crate::config::{Kind, ModelSection};
use crate::experiment::{Compare, Experiments, Route, ShadowRows};
use crate::input::{CallInput, check};
use crate::model::{Configured, MetaCache, ModelChoice, ModelMeta, ModelSelector};
// How far the native trees' score may be from the served one (an f32 probability).
use crate::native::TREES_AGREE;
use crate::pipeline::{Decision, Pipeline, PipelineSet};
use crate::vector::Vectors;

/// A feature that moved a score: the score minus the score with the feature at its training
/// mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub feature: String,
    pub value: f64,
    pub contribution: f64,
}

/// One row's answer.
#[derive(Debug, Clone)]
pub struct RowAnswer {
    pub score: f64,
    pub decision: Decision,
    pub reasons: Vec<Reason>,
    pub model_name: String,
    /// Empty for a fallback answer.
    pub model_version: String,
    /// The experiment variant that answered; empty outside experiments.
    pub variant: String,
    /// Why the fallback answered; `None` for a model answer.
    pub fallback: Option<String>,
    pub cold_start: bool,
    /// Age of the oldest stored feature used, µs (0: none used).
    pub feature_age_us: u64,
}

/// Server-side time by stage, µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub features_us: u64,
    pub inference_us: u64,
    pub postprocess_us: u64,
    pub total_us: u64,
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub rows: Vec<RowAnswer>,
    pub latency: Latency,
}

/// Runs the declared pipelines.
pub struct Engine {
    pub(crate) store: Arc<dyn OnlineStore>,
    pub(crate) models: Arc<ModelRepository>,
    pub(crate) pipelines: PipelineSet,
    selector: Arc<dyn ModelSelector>,
    pub(crate) experiments: Option<Arc<Experiments>>,
    meta: MetaCache,
    pub(crate) meters: std::collections::HashMap<String, Meters>,
    /// Recommendations and pricing pipelines' catalogues, by pipeline.
    pub(crate) catalogs: std::collections::HashMap<String, arc_swap::ArcSwapOption<crate::catalog::Catalog>>,
    /// Model versions whose native trees once disagreed with the served score: their
    /// explanations use model runs from then on.
    trees_disagree: std::sync::Mutex<std::collections::HashSet<(String, u64)>>,
    /// Which fraud model versions' rows their trees score in Rust.
    native: crate::native::NativeTrees,
}

/// How long before the deadline the work stops and the fallback answers: enough to build and
/// send the answer.
fn reserve(window: Duration) -> Duration {
    (window / 10).min(Duration::from_millis(2))
}

/// One call's clock: when it started, the caller's deadline, the time it has (the smaller of
/// the pipeline's budget and that deadline), and when its work must stop for the fallback to
/// answer in time.
pub(crate) struct CallClock {
    started: Instant,
    deadline: Option<Instant>,
    window: Duration,
    pub(crate) until: Instant,
}

impl CallClock {
    pub(crate) fn new(pipeline: &Pipeline, deadline: Option<Instant>, started: Instant) -> CallClock {
        let mut window = pipeline.budget;
        if let Some(d) = deadline {
            window = window.min(d.saturating_duration_since(started));
        }
        CallClock {
            started,
            deadline,
            window,
            until: started + window - reserve(window),
        }
    }

    /// Why the call stopped at its deadline: `stages` names the features, model and
    /// post-processing stages, and the one `progress` was in is named.
    pub(crate) fn deadline_cause(
        &self,
        pipeline: &Pipeline,
        progress: &Progress,
        stages: [&str; 3],
    ) -> FallbackCause {
        let what = stages[usize::from(progress.stage.load(Ordering::Relaxed)).min(2)];
        FallbackCause {
            kind: "deadline",
            message: format!(
                "deadline: {what} did not answer within {} ms (budget {} ms, the caller's deadline {})",
                self.window.as_millis(),
                pipeline.budget.as_millis(),
                self.deadline.map_or("none".to_string(), |d| format!(
                    "{} ms",
                    d.saturating_duration_since(self.started).as_millis()
                ))
            ),
        }
    }

    /// The call's time by stage: what `progress` recorded, the rest post-processing.
    pub(crate) fn latency(&self, progress: &Progress) -> Latency {
        let features_us = progress.features_us.load(Ordering::Relaxed);
        let inference_us = progress.inference_us.load(Ordering::Relaxed);
        let total_us = self.started.elapsed().as_micros() as u64;
        Latency {
            features_us,
            inference_us,
            postprocess_us: total_us.saturating_sub(features_us + inference_us),
            total_us,
        }
    }
}

/// Stages of `Progress`: reading features (0, where it starts), running models, the rest.
pub(crate) const STAGE_MODEL: u8 = 1;
pub(crate) const STAGE_POST: u8 = 2;

/// What the work in flight has done; read after a timeout, when the work was dropped.
#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) stage: AtomicU8,
    pub(crate) features_us: AtomicU64,
    pub(crate) inference_us: AtomicU64,
}

/// Why a store read sends a call to the fallback.
pub(crate) fn store_cause(e: FeatureError) -> FallbackCause {
    match e {
        FeatureError::Unavailable(e) => FallbackCause {
            kind: "features_unavailable",
            message: format!("online store unavailable: {e}"),
        },
        e => FallbackCause {
            kind: "features_error",
            message: format!("feature read failed: {e}"),
        },
    }
}

/// What a routed model run gave: the version that ran, its output (row-major, `columns` per
/// row), the variant that answered when it was not the assigned one, and the input rows when
/// they were kept for shadows.
pub(crate) struct Routed {
    pub(crate) version: u64,
    pub(crate) values: Vec<f32>,
    pub(crate) columns: usize,
    pub(crate) variant: Option<String>,
    pub(crate) x: Option<Vec<f32>>,
}

/// Why a model run sends a call to the fallback.
pub(crate) fn model_cause(model: &str, e: ModelError) -> FallbackCause {
    FallbackCause {
        kind: "model_error",
        message: format!("model {model:?}: {e}"),
    }
}

/// Why a call fell back, for the answer and for the metrics' `reason` label.
pub(crate) struct FallbackCause {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl Engine {
    pub fn new(store: Arc<dyn OnlineStore>, models: Arc<ModelRepository>, pipelines: PipelineSet) -> Engine {
        let meters = pipelines
            .pipelines
            .values()
            .map(|p| (p.name.clone(), Meters::new(&p.name, p.kind)))
            .collect();
        let catalogs = pipelines
            .pipelines
            .values()
            .filter(|p| p.recs.is_some() || p.pricing.is_some())
            .map(|p| (p.name.clone(), arc_swap::ArcSwapOption::empty()))
            .collect();
        Engine {
            meters,
            catalogs,
            store,
            models,
            pipelines,
            selector: Arc::new(Configured),
            experiments: None,
            meta: MetaCache::default(),
            trees_disagree: Default::default(),
            native: Default::default(),
        }
    }

    /// Whether a fraud pipeline's rows on `version` of `model` are scored by the model's
    /// trees walked in Rust now (after they agreed with ONNX Runtime; see `native.rs`).
    pub fn scores_with_trees(&self, model: &str, version: u64) -> bool {
        self.native.trusted(model, version)
    }

    /// Routes model choices through `selector` instead of the pipelines' configured versions.
    pub fn with_selector(mut self, selector: Arc<dyn ModelSelector>) -> Engine {
        self.selector = selector;
        self
    }

    /// Routes the rows of pipelines under an experiment to their variants' model versions.
    pub fn with_experiments(mut self, experiments: Arc<Experiments>) -> Engine {
        self.experiments = Some(experiments);
        self
    }

    pub fn experiments(&self) -> Option<&Arc<Experiments>> {
        self.experiments.as_ref()
    }

    pub fn pipelines(&self) -> &PipelineSet {
        &self.pipelines
    }

    pub fn models(&self) -> &Arc<ModelRepository> {
        &self.models
    }

    /// Reads the metadata of every loaded version of the pipelines' models now, so that no
    /// call reads a file.
    pub fn preload(&self) {
        for p in self.pipelines.pipelines.values() {
            if let Ok(model) = self.models.get(&p.model.name) {
                for v in model.versions.keys() {
                    self.meta.get(self.models.root(), &p.model.name, *v);
                }
            }
        }
    }

    /// Runs pipeline `name` on `input`'s rows. `deadline` is the caller's (it can only shorten
    /// the pipeline's budget); `now` is the time features' freshness and TTLs are judged at.
    pub async fn score(
        &self,
        name: &str,
        mut input: CallInput,
        deadline: Option<Instant>,
        now: Micros,
    ) -> Result<Answer, PipelineError> {
        let started = Instant::now();
        let pipeline = self.pipelines.get(name)?.clone();
        let Some(fb) = pipeline.fallback.as_ref() else {
            return Err(wrong_kind(&pipeline, Kind::Fraud));
        };
        let rows = check(&pipeline, &mut input)?;
        let clock = CallClock::new(&pipeline, deadline, started);
        let progress = Progress::default();
        let routes = self.routes(&pipeline, &input, rows);
        let work = self.run(&pipeline, &input, &routes, now, &progress);
        let outcome = match tokio::time::timeout_at(clock.until.into(), work).await {
            Ok(Ok(Ok(ran))) => {
                if let Some(x) = &self.experiments
                    && !ran.x.is_empty()
                    && let Some(first) = routes.iter().find_map(|r| r.assignment.as_ref())
                {
                    let served: Vec<f64> = ran.answers.iter().map(|a| a.score).collect();
                    let rows = ShadowRows {
                        model: &pipeline.model,
                        x: &ran.x,
                        width: ran.width,
                        served: &served,
                        units: routes.iter().map(|r| r.unit.clone()).collect(),
                        request_ids: input.request_ids.clone(),
                    };
                    let threshold = pipeline.fraud.as_ref().map(|f| f.review_at);
                    x.offer_shadows(first, rows, || Compare::Scores { threshold });
                }
                Ok(ran.answers)
            }
            Ok(Ok(Err(cause))) => Err(cause),
            Ok(Err(e)) => return Err(e),
            Err(_) => Err(clock.deadline_cause(
                &pipeline,
                &progress,
                ["the online store", "the model", "post-processing"],
            )),
        };
        let rows_out = match outcome {
            Ok(rows_out) => rows_out,
            Err(cause) => {
                self.note_fallback(&pipeline, &cause, rows as u64);
                let mut rows_out = fallback_rows(&pipeline, fb, &input, rows, &cause.message);
                for (answer, route) in rows_out.iter_mut().zip(&routes) {
                    answer.variant = route.variant().map_or(String::new(), |v| v.to_string());
                }
                rows_out
            }
        };
        let latency = clock.latency(&progress);
        if let Some(x) = &self.experiments {
            x.log_exposures(&routes, &rows_out, &input, latency.total_us);
        }
        if let Some(m) = self.meters.get(&pipeline.name) {
            m.record(&rows_out, &latency);
        }
        Ok(Answer {
            rows: rows_out,
            latency,
        })
    }

    /// Logs and counts (`ferrite_pipeline_fallbacks_total` by reason) a fallback answer.
    pub(crate) fn note_fallback(&self, pipeline: &Pipeline, cause: &FallbackCause, rows: u64) {
        tracing::warn!(pipeline = %pipeline.name, reason = %cause.message, "fallback answer");
        metrics::counter!("ferrite_pipeline_fallbacks_total", "pipeline" => pipeline.name.clone(), "reason" => cause.kind)
            .increment(rows);
    }

    /// The model path: features, model, decisions and reasons. The outer `Result` is the
    /// caller's mistake; the inner one says why the fallback must answer.
    async fn run(
        &self,
        pipeline: &Pipeline,
        input: &CallInput,
        routes: &[Route],
        now: Micros,
        progress: &Progress,
    ) -> Result<Result<Ran, FallbackCause>, PipelineError> {
        let rows = routes.len();
        let t = Instant::now();
        let read = self.read_features(pipeline, input, rows, now).await;
        progress
            .features_us
            .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        let vectors = match read {
            Ok(v) => v,
            Err(FeatureError::Invalid(m)) => return Err(PipelineError::invalid(None, "request", m)),
            Err(e) => return Ok(Err(store_cause(e))),
        };

        progress.stage.store(STAGE_MODEL, Ordering::Relaxed);
        let t = Instant::now();
        // Rows go to the model version of their variant; a canary's rows that fail are
        // answered by its stable variant (`retry`), never by an error.
        let mut groups: BTreeMap<(ModelChoice, String), Vec<usize>> = BTreeMap::new();
        for (row, r) in routes.iter().enumerate() {
            let variant = r.variant().map_or(String::new(), |v| v.to_string());
            groups.entry((r.choice.clone(), variant)).or_default().push(row);
        }
        let mut scores = vec![0.0; rows];
        let mut ran: Vec<Ran1> = Vec::with_capacity(rows);
        let mut retry: BTreeMap<(ModelChoice, String), Vec<usize>> = BTreeMap::new();
        for ((choice, variant), members) in &groups {
            let started = Instant::now();
            let result = self.run_group(pipeline, choice, &vectors, members).await;
            let took = started.elapsed();
            let (version, out, meta) = match result {
                Ok(r) => r,
                Err(cause) => {
                    for &row in members {
                        self.record(&routes[row], false, took);
                        match stable_of(pipeline, &routes[row]) {
                            Some(to) => retry.entry(to).or_default().push(row),
                            None => return Ok(Err(cause)),
                        }
                    }
                    continue;
                }
            };
            for (&row, s) in members.iter().zip(out) {
                self.record(&routes[row], s.is_finite(), took);
                if s.is_finite() {
                    scores[row] = s;
                    ran.push((row, choice.name.clone(), version, meta.clone(), variant.clone()));
                } else if let Some(to) = stable_of(pipeline, &routes[row]) {
                    retry.entry(to).or_default().push(row);
                } else {
                    return Ok(Err(not_finite(choice, version)));
                }
            }
        }
        for ((choice, variant), members) in &retry {
            let started = Instant::now();
            let (version, out, meta) = match self.run_group(pipeline, choice, &vectors, members).await {
                Ok(r) => r,
                Err(cause) => return Ok(Err(cause)),
            };
            for (&row, s) in members.iter().zip(out) {
                if !s.is_finite() {
                    return Ok(Err(not_finite(choice, version)));
                }
                if let (Some(x), Some(a)) = (&self.experiments, &routes[row].assignment) {
                    x.canaries.record(&a.experiment, variant, true, started.elapsed());
                }
                scores[row] = s;
                ran.push((row, choice.name.clone(), version, meta.clone(), variant.clone()));
            }
        }
        progress
            .inference_us
            .store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        progress.stage.store(STAGE_POST, Ordering::Relaxed);

        ran.sort_by_key(|r| r.0);
        let mut answers = Vec::with_capacity(rows);
        for (row, model_name, version, meta, variant) in ran {
            let score = scores[row];
            let decision = pipeline.decide(score);
            let reasons = match (&pipeline.fraud, &meta) {
                (Some(f), Some(meta))
                    if f.top_reasons > 0
                        && meta.baseline.len() == vectors.width
                        && (f.explain == crate::config::Explain::All || decision != Decision::Approve) =>
                {
                    let t = Instant::now();
                    let r = self
                        .explain(
                            pipeline,
                            &model_name,
                            version,
                            vectors.row(row),
                            score,
                            meta,
                            f.top_reasons,
                        )
                        .await;
                    progress
                        .inference_us
                        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    r
                }
                _ => Vec::new(),
            };
            answers.push(RowAnswer {
                score,
                decision,
                reasons,
                model_name,
                model_version: version.to_string(),
                variant,
                fallback: None,
                cold_start: vectors.cold_start(row),
                feature_age_us: vectors.oldest[row].map_or(0, |ts| now.saturating_sub(ts).max(0) as u64),
            });
        }
        let shadows = routes
            .iter()
            .any(|r| r.assignment.as_ref().is_some_and(|a| !a.shadows.is_empty()));
        let x = if shadows {
            (0..rows).flat_map(|r| vectors.row(r).iter().copied()).collect()
        } else {
            Vec::new()
        };
        Ok(Ok(Ran {
            answers,
            x,
            width: vectors.width,
        }))
    }

    /// Where each row goes: its experiment variant's model version, or the selector's choice.
    fn routes(&self, pipeline: &Pipeline, input: &CallInput, rows: usize) -> Vec<Route> {
        if let Some(x) = &self.experiments {
            return x.routes(pipeline, input, rows);
        }
        (0..rows)
            .map(|row| Route {
                choice: self.selector.choose(pipeline, row),
                assignment: None,
                unit: String::new(),
            })
            .collect()
    }

    /// Counts how a row went on its variant (for a canary's judgement).
    pub(crate) fn record(&self, route: &Route, ok: bool, latency: Duration) {
        if let Some(x) = &self.experiments {
            x.record(route, ok, latency);
        }
    }

    /// Runs the rows `members` of `vectors` on one model version; returns the version that ran,
    /// each row's score and the version's metadata.
    async fn run_group(
        &self,
        pipeline: &Pipeline,
        choice: &ModelChoice,
        vectors: &Vectors<'_>,
        members: &[usize],
    ) -> Result<(u64, Vec<f64>, Option<Arc<ModelMeta>>), FallbackCause> {
        let mut x = Vec::with_capacity(members.len() * vectors.width);
        for &row in members {
            x.extend_from_slice(vectors.row(row));
        }
        let (version, out) = self
            .infer(pipeline, &choice.name, &choice.version, x, members.len())
            .await
            .map_err(|e| FallbackCause {
                kind: "model_error",
                message: format!("model {:?} version {:?}: {e}", choice.name, choice.version),
            })?;
        let meta = self.meta.get(self.models.root(), &choice.name, version);
        if let Some(m) = &meta
            && m.features != pipeline.input.feature_names
        {
            tracing::error!(pipeline = %pipeline.name, model = %choice.name, version, "model trained on other features");
            return Err(FallbackCause {
                kind: "model_mismatch",
                message: format!(
                    "model {:?} version {version} was trained on other features than feature service {:?}",
                    choice.name, pipeline.input.name
                ),
            });
        }
        Ok((version, out, meta))
    }

    /// The model input rows of `input`: one online-store read for all of them.
    async fn read_features<'p>(
        &self,
        pipeline: &'p Pipeline,
        input: &CallInput,
        rows: usize,
        now: Micros,
    ) -> Result<Vectors<'p>, FeatureError> {
        let mut vectors = Vectors::new(&pipeline.input, rows);
        read_planned(
            &pipeline.input.plan,
            self.store.as_ref(),
            &input.entities,
            &input.fields,
            now,
            &mut vectors,
        )
        .await?;
        vectors.finish();
        Ok(vectors)
    }

    /// The feature vectors pipeline `name` gives the model for `input`'s rows, without running
    /// it (what parity checks compare with training sets).
    pub async fn feature_rows(
        &self,
        name: &str,
        mut input: CallInput,
        now: Micros,
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        let pipeline = self.pipelines.get(name)?.clone();
        let rows = check(&pipeline, &mut input)?;
        let vectors = self
            .read_features(&pipeline, &input, rows, now)
            .await
            .map_err(|e| PipelineError::invalid(None, "request", e.to_string()))?;
        Ok((0..rows).map(|r| vectors.row(r).to_vec()).collect())
    }

    /// Runs `rows` feature rows on the model; returns the version that ran and each row's
    /// score.
    async fn infer(
        &self,
        pipeline: &Pipeline,
        model: &str,
        version: &str,
        x: Vec<f32>,
        rows: usize,
    ) -> Result<(u64, Vec<f64>), ModelError> {
        use crate::native::Plan;
        let m = &pipeline.model;
        let loaded = match pipeline.fraud.as_ref().is_some_and(|f| f.native_trees) {
            true => self
                .models
                .get(model)
                .ok()
                .and_then(|l| l.version(version).ok().cloned()),
            false => None,
        };
        let plan = loaded
            .as_ref()
            .map_or(Plan::Model, |v| self.native.plan(model, v, &m.input, &m.output));
        if let (Plan::Trees(trees), Some(v)) = (&plan, &loaded)
            && let Some(scores) = crate::native::scores(trees, v, &x, rows)
        {
            return Ok((v.version, scores));
        }
        let checked = matches!(plan, Plan::Check(_)).then(|| x.clone());
        let (version, out, columns) = self
            .infer_matrix(model, version, &m.input, &m.output, x, rows)
            .await?;
        let at = m.output_index;
        if at >= columns {
            return Err(ModelError::Inference(format!(
                "output {:?} has {columns} columns; the pipeline reads column {at}",
                m.output
            )));
        }
        let scores: Vec<f64> = (0..rows).map(|r| f64::from(out[r * columns + at])).collect();
        if let (Plan::Check(trees), Some(x)) = (&plan, checked) {
            self.native
                .check(&pipeline.name, model, version, trees, &x, &scores);
        }
        Ok((version, scores))
    }

    /// Runs `rows` rows of `x` (row-major) through `model` as input `input`; returns the version
    /// that ran, output `output` as f32 row-major, and its columns per row ([`infer_matrix`]).
    pub(crate) async fn infer_matrix(
        &self,
        model: &str,
        version: &str,
        input: &str,
        output: &str,
        x: Vec<f32>,
        rows: usize,
    ) -> Result<(u64, Vec<f32>, usize), ModelError> {
        infer_matrix(&self.models, model, version, input, output, x, rows).await
    }

    /// Runs `rows` rows of `x` on `model` (a one-unit call's model: the ranker, the demand
    /// model) at the version `route`'s variant picks, or the configured one. A canary whose
    /// run fails (an error, a value that is not a number) is judged on it and the stable
    /// variant runs instead: then the stable variant's name comes back with the outputs.
    /// `x` comes back too when it is needed again (shadows).
    pub(crate) async fn infer_routed(
        &self,
        pipeline: &Pipeline,
        model: &ModelSection,
        route: Option<&Route>,
        x: Vec<f32>,
        rows: usize,
    ) -> Result<Routed, ModelError> {
        let assignment = route.and_then(|r| r.assignment.as_ref());
        let keep = assignment.is_some_and(|a| a.fallback.is_some() || !a.shadows.is_empty());
        let kept = keep.then(|| x.clone());
        let version = route.map_or(model.version.as_str(), |r| r.choice.version.as_str());
        let t = Instant::now();
        let first = self
            .infer_matrix(&model.name, version, &model.input, &model.output, x, rows)
            .await;
        let ok =
            matches!(&first, Ok((_, v, c)) if model.output_index < *c && v.iter().all(|v| v.is_finite()));
        if let Some(r) = route {
            self.record(r, ok, t.elapsed());
        }
        let (version, values, columns, variant) = match (ok, route.and_then(|r| stable_of(pipeline, r))) {
            (false, Some((stable, name))) => {
                let t = Instant::now();
                let x = kept.clone().unwrap_or_default();
                let (v, values, columns) = self
                    .infer_matrix(&model.name, &stable.version, &model.input, &model.output, x, rows)
                    .await?;
                if let (Some(x), Some(a)) = (&self.experiments, assignment) {
                    x.canaries.record(&a.experiment, &name, true, t.elapsed());
                }
                (v, values, columns, Some(name))
            }
            _ => {
                let (v, values, columns) = first?;
                (v, values, columns, None)
            }
        };
        Ok(Routed {
            version,
            values,
            columns,
            variant,
            x: kept,
        })
    }

    /// Leave one out: each feature set to its training mean in turn; the features whose
    /// change moved the score most, largest first. The variants' scores come from the model's
    /// own trees walked here when it is a tree ensemble whose score for `row` equals the
    /// served `score` (only trees that test a changed feature are walked again), else from
    /// one model run of every variant.
    #[allow(clippy::too_many_arguments)]
    async fn explain(
        &self,
        pipeline: &Pipeline,
        model: &str,
        version: u64,
        row: &[f32],
        score: f64,
        meta: &ModelMeta,
        top: usize,
    ) -> Vec<Reason> {
        let mut changes: Vec<(usize, f32)> = Vec::with_capacity(row.len());
        for (f, mean) in meta.baseline.iter().enumerate() {
            let base = mean.map_or(f32::NAN, |m| m as f32);
            // A feature already at its mean (or both missing) moved nothing.
            if row[f] == base || (row[f].is_nan() && base.is_nan()) {
                continue;
            }
            changes.push((f, base));
        }
        if changes.is_empty() {
            return Vec::new();
        }
        let others = match self.native_variants(pipeline, model, version, row, score, &changes) {
            Some(others) => others,
            None => {
                let width = row.len();
                let mut x = Vec::with_capacity(width * changes.len());
                for &(f, base) in &changes {
                    let at = x.len();
                    x.extend_from_slice(row);
                    x[at + f] = base;
                }
                match self
                    .infer(pipeline, model, &version.to_string(), x, changes.len())
                    .await
                {
                    Ok((_, s)) => s,
                    Err(e) => {
                        tracing::warn!(pipeline = %pipeline.name, error = %e, "reasons not computed");
                        return Vec::new();
                    }
                }
            }
        };
        let mut reasons: Vec<Reason> = changes
            .into_iter()
            .zip(others)
            .map(|((f, _), other)| Reason {
                feature: pipeline.input.feature_names[f].clone(),
                value: f64::from(row[f]),
                contribution: score - other,
            })
            .filter(|r| r.contribution != 0.0)
            .collect();
        reasons.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
        reasons.truncate(top);
        reasons
    }

    /// The scores of `row`'s variants (`changes`, one feature each) from the model version's
    /// tree ensemble, when it has one and it gives the served `score` for `row` (the check
    /// that the pipeline reads the output the trees compute: the positive class's
    /// probability, or a regressor's value). A version found to disagree is logged once and
    /// explained by model runs from then on.
    fn native_variants(
        &self,
        pipeline: &Pipeline,
        model: &str,
        version: u64,
        row: &[f32],
        score: f64,
        changes: &[(usize, f32)],
    ) -> Option<Vec<f64>> {
        let loaded = self.models.get(model).ok()?;
        let trees = loaded
            .version(&version.to_string())
            .ok()?
            .backend
            .tree_ensemble()?
            .clone();
        let key = (model.to_string(), version);
        let off = || self.trees_disagree.lock().unwrap_or_else(|e| e.into_inner());
        if off().contains(&key) {
            return None;
        }
        let disagree = || off().insert(key.clone());
        match trees.predict_changed(row, changes) {
            Ok((own, others)) if (own - score).abs() <= TREES_AGREE => Some(others),
            Ok((own, _)) => {
                if disagree() {
                    tracing::warn!(
                        pipeline = %pipeline.name, model, version,
                        "the model's trees give {own} where the model served {score}: reasons come from model runs"
                    );
                }
                None
            }
            Err(e) => {
                if disagree() {
                    tracing::warn!(pipeline = %pipeline.name, model, version, error = %e, "reasons come from model runs");
                }
                None
            }
        }
    }
}

/// Runs `rows` rows of `x` (row-major) through `model` of `models` as input `input`; returns
/// the version that ran, output `output` as f32 row-major, and its columns per row; an
/// output of another shape or a non-float type is an error.
pub(crate) async fn infer_matrix(
    models: &ModelRepository,
    model: &str,
    version: &str,
    input: &str,
    output: &str,
    x: Vec<f32>,
    rows: usize,
) -> Result<(u64, Vec<f32>, usize), ModelError> {
    let width = x.len().checked_div(rows).unwrap_or(0);
    let tensor = Tensor::new(input.to_string(), vec![rows, width], TensorData::Fp32(x))?;
    let (version, outputs) = models.infer(model, version, vec![tensor]).await?;
    let out = outputs
        .into_iter()
        .find(|t| t.name == output)
        .ok_or_else(|| ModelError::Inference(format!("the model gave no output {output:?}")))?;
    let columns: usize = if out.shape.len() >= 2 {
        out.shape[1..].iter().product()
    } else {
        1
    };
    if out.data.len() != rows * columns {
        return Err(ModelError::Inference(format!(
            "output {:?} has shape {:?} for {rows} rows",
            out.name, out.shape
        )));
    }
    let values = match out.data {
        TensorData::Fp32(v) => v,
        TensorData::Fp64(v) => v.into_iter().map(|x| x as f32).collect(),
        d => {
            return Err(ModelError::Inference(format!(
                "output {:?} is {}; a score must be FP32 or FP64",
                out.name,
                d.dtype()
            )));
        }
    };
    Ok((version, values, columns))
}

/// The error for a call to a pipeline of another kind than the RPC serves.
pub(crate) fn wrong_kind(pipeline: &Pipeline, expected: Kind) -> PipelineError {
    let rpc = match pipeline.kind {
        Kind::Fraud => "ScoreFraud or Score",
        Kind::Recommendations => "Recommend",
        Kind::Pricing => "Price",
    };
    PipelineError::invalid(
        None,
        "pipeline",
        format!(
            "{:?} is a {} pipeline; this call needs a {} pipeline (call {rpc} for it)",
            pipeline.name,
            pipeline.kind.name(),
            expected.name()
        ),
    )
}

/// The fallback's answer for every row: its rule-based score and decision.
/// A row that ran: its index, the model and version, the version's metadata, the variant.
type Ran1 = (usize, String, u64, Option<Arc<ModelMeta>>, String);

/// What the model path produced: the answers and, when a shadow variant will run on them, the
/// model inputs (`width` values per row).
struct Ran {
    answers: Vec<RowAnswer>,
    x: Vec<f32>,
    width: usize,
}

/// Where a row goes when its variant (a canary) fails: the canary's stable variant.
pub(crate) fn stable_of(pipeline: &Pipeline, route: &Route) -> Option<(ModelChoice, String)> {
    let stable = route.assignment.as_ref()?.fallback.as_ref()?;
    let choice = ModelChoice {
        name: pipeline.experiment_model().name.clone(),
        version: stable.model_version.to_string(),
    };
    Some((choice, stable.name.to_string()))
}

fn not_finite(choice: &ModelChoice, version: u64) -> FallbackCause {
    FallbackCause {
        kind: "model_error",
        message: format!(
            "model {:?} version {version} gave a score that is not a finite number",
            choice.name
        ),
    }
}

fn fallback_rows(
    pipeline: &Pipeline,
    fb: &crate::pipeline::Fallback,
    input: &CallInput,
    rows: usize,
    reason: &str,
) -> Vec<RowAnswer> {
    // Fallbacks read request fields only (checked when the pipeline loads); anything else
    // would read as missing.
    let inputs: Vec<Option<&Vec<Value>>> = fb
        .expr
        .inputs()
        .iter()
        .map(|i| match i {
            ferrite_features::expr::Input::Request(name) => input.fields.get(name),
            ferrite_features::expr::Input::Feature { .. } => None,
        })
        .collect();
    (0..rows)
        .map(|row| {
            let args: Vec<&Value> = inputs
                .iter()
                .map(|c| c.and_then(|c| c.get(row)).unwrap_or(&Value::Null))
                .collect();
            let score = fb
                .expr
                .eval(&args)
                .ok()
                .and_then(|v| v.as_f64())
                .filter(|s| s.is_finite())
                .unwrap_or(fb.default_score)
                .clamp(0.0, 1.0);
            RowAnswer {
                score,
                decision: fb.decision,
                reasons: Vec::new(),
                model_name: pipeline.model.name.clone(),
                model_version: String::new(),
                variant: String::new(),
                fallback: Some(reason.to_string()),
                cold_start: false,
                feature_age_us: 0,
            }
        })
        .collect()
}

/// A pipeline's metric handles, registered once when the engine starts rather than looked up
/// by their labels on every call.
pub(crate) struct Meters {
    /// `ferrite_pipeline_seconds` by stage: features, inference, postprocess, total.
    stages: [metrics::Histogram; 4],
    /// `ferrite_pipeline_rows_total` by outcome (model, fallback) and decision: approve,
    /// review and decline for fraud; one series, `decision=""`, for pipelines without
    /// decisions (recommendations, pricing).
    rows: [Vec<metrics::Counter>; 2],
}

const DECISIONS: [Decision; 3] = [Decision::Approve, Decision::Review, Decision::Decline];

impl Meters {
    fn new(pipeline: &str, kind: Kind) -> Meters {
        let stage = |stage: &'static str| metrics::histogram!("ferrite_pipeline_seconds", "pipeline" => pipeline.to_string(), "stage" => stage);
        let decisions: Vec<&'static str> = match kind {
            Kind::Fraud => DECISIONS.iter().map(|d| d.as_str()).collect(),
            Kind::Recommendations | Kind::Pricing => vec![""],
        };
        let rows = |outcome: &'static str| {
            decisions
                .iter()
                .map(|&d| {
                    metrics::counter!(
                        "ferrite_pipeline_rows_total",
                        "pipeline" => pipeline.to_string(),
                        "outcome" => outcome,
                        "decision" => d
                    )
                })
                .collect()
        };
        Meters {
            stages: [
                stage("features"),
                stage("inference"),
                stage("postprocess"),
                stage("total"),
            ],
            rows: [rows("model"), rows("fallback")],
        }
    }

    /// A call of a pipeline without decisions (recommendations, pricing): its stages' times
    /// and whether the model or the fallback answered.
    pub(crate) fn record_call(&self, fallback: bool, latency: &Latency) {
        self.record_stages(latency);
        if let Some(c) = self.rows[usize::from(fallback)].first() {
            c.increment(1);
        }
    }

    fn record_stages(&self, latency: &Latency) {
        let times = [
            latency.features_us,
            latency.inference_us,
            latency.postprocess_us,
            latency.total_us,
        ];
        for (h, us) in self.stages.iter().zip(times) {
            h.record(us as f64 / 1e6);
        }
    }

    /// Per call: its stages' times; per row: its decision and whether the model or the
    /// fallback answered.
    fn record(&self, rows: &[RowAnswer], latency: &Latency) {
        self.record_stages(latency);
        for r in rows {
            let outcome = usize::from(r.fallback.is_some());
            let decision = DECISIONS.iter().position(|d| *d == r.decision).unwrap_or(0);
            if let Some(c) = self.rows[outcome].get(decision) {
                c.increment(1);
            }
        }
    }
}
