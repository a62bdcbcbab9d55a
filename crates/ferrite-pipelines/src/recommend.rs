//! Recommendations: the user's vector → the user tower's embedding → the nearest items of the
//! catalogue's index (filtered per query) → their vectors from the online store, re-checked
//! (on sale, in stock) → the ranker on user × item rows → at most `max_per_category` per
//! category → the top k. A cold-start user gets the popular in-stock items, flagged; an outage
//! or a deadline gets the same from the in-memory catalogue, flagged as a fallback.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use ferrite_features::serving::{assemble, fetch, read_planned};
use ferrite_features::{KeyType, Micros, Value};

use crate::PipelineError;
use crate::catalog::Catalog;
use crate::config::Kind;
use crate::engine::{
    CallClock, Engine, FallbackCause, Latency, Progress, Routed, STAGE_MODEL, model_cause, store_cause,
    wrong_kind,
};
use crate::experiment::{Compare, Route, Served, ShadowRows, unit_string};
use crate::input::{CallInput, check, entity_id};
use crate::pipeline::{Pipeline, Recs};
use crate::vector::Vectors;

/// One Recommend call.
#[derive(Debug, Clone, Default)]
pub struct RecommendCall {
    /// The user's id (an int or its decimal string).
    pub user: Value,
    /// Items wanted; 0: the pipeline's `top_k`.
    pub top_k: usize,
    /// Items never to answer (already in the basket, just bought…).
    pub exclude: Vec<Value>,
    /// Only items of this category.
    pub category: Option<String>,
    /// Request fields the user's feature service reads, if any.
    pub fields: HashMap<String, Value>,
    /// Under an experiment on the pipeline: the variant to run instead of the user's (QA).
    pub force_variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecommendedItem {
    pub id: Value,
    /// The ranker's score (a fallback: the item's popularity).
    pub score: f64,
    /// The two towers' inner product (0 for a fallback).
    pub retrieval_score: f32,
    pub category: Option<Arc<str>>,
}

#[derive(Debug, Clone)]
pub struct Recommendation {
    pub items: Vec<RecommendedItem>,
    /// The ranker, and the version that ranked (empty for popular items).
    pub model_name: String,
    pub model_version: String,
    /// The experiment variant the user is in; empty outside experiments.
    pub variant: String,
    pub fallback: Option<String>,
    pub cold_start: bool,
    pub feature_age_us: u64,
    /// Candidates retrieved, and how the index search ran.
    pub retrieved: usize,
    pub retrieval_plan: &'static str,
    pub latency: Latency,
}

/// What the model path found, before the answer is assembled.
struct Ranked {
    items: Vec<RecommendedItem>,
    version: String,
    /// The variant whose ranker answered (stable's when a canary failed).
    variant: Option<String>,
    cold_start: bool,
    feature_age_us: u64,
    retrieved: usize,
    plan: &'static str,
}

/// The checked request: item positions to leave out, the category, the size.
struct Wanted {
    exclude: HashSet<usize>,
    category: Option<String>,
    top_k: usize,
}

impl Wanted {
    fn keeps(&self, catalog: &Catalog, p: usize) -> bool {
        !self.exclude.contains(&p)
            && self
                .category
                .as_deref()
                .is_none_or(|c| catalog.categories[p].as_deref() == Some(c))
    }
}

impl Engine {
    /// Runs recommendations pipeline `name` for `call`, inside the smaller of its budget and
    /// the caller's deadline.
    pub async fn recommend(
        &self,
        name: &str,
        call: RecommendCall,
        deadline: Option<Instant>,
        now: Micros,
    ) -> Result<Recommendation, PipelineError> {
        let started = Instant::now();
        let pipeline = self.pipelines.get(name)?.clone();
        let Some(recs) = pipeline.recs.as_ref() else {
            return Err(wrong_kind(&pipeline, Kind::Recommendations));
        };
        let section = &recs.section;
        let top_k = match call.top_k {
            0 => section.top_k,
            k if k > section.max_top_k => {
                return Err(PipelineError::invalid(
                    None,
                    "top_k",
                    format!(
                        "{k} items asked for; pipeline {:?} answers at most {} (max_top_k)",
                        pipeline.name, section.max_top_k
                    ),
                ));
            }
            k => k,
        };
        let user_key = pipeline.input.entity_keys[0].0.clone();
        let mut input = CallInput::default();
        input.push_row([(user_key.clone(), call.user)], call.fields);
        input.force_variant = call.force_variant.filter(|v| !v.is_empty());
        check(&pipeline, &mut input)?;
        let route = self
            .experiments
            .as_ref()
            .and_then(|x| x.route_one(&pipeline, &input));
        let exclude_ids = item_ids(&call.exclude, recs.item_key.1)?;
        let Some(catalog) = self.catalog(&pipeline.name) else {
            return Err(PipelineError::Unavailable(format!(
                "pipeline {:?}: the item catalogue is not built yet (the online store had no items, or the item tower is not loaded); see the server log",
                pipeline.name
            )));
        };
        let wanted = Wanted {
            exclude: exclude_ids.iter().filter_map(|id| catalog.position(id)).collect(),
            category: call.category.filter(|c| !c.is_empty()),
            top_k,
        };

        let clock = CallClock::new(&pipeline, deadline, started);
        let progress = Progress::default();
        let work = self.rank(
            &pipeline,
            recs,
            &catalog,
            &input,
            &wanted,
            now,
            &progress,
            route.as_ref(),
        );
        let outcome = match tokio::time::timeout_at(clock.until.into(), work).await {
            Ok(r) => r,
            Err(_) => Err(clock.deadline_cause(
                &pipeline,
                &progress,
                ["the online store", "the models", "post-processing"],
            )),
        };
        let assigned = || {
            route
                .as_ref()
                .and_then(|r| r.variant())
                .map_or(String::new(), |v| v.to_string())
        };
        let answer = match outcome {
            Ok(ranked) => Recommendation {
                items: ranked.items,
                model_name: section.ranker.name.clone(),
                model_version: ranked.version,
                variant: ranked.variant.unwrap_or_else(assigned),
                fallback: None,
                cold_start: ranked.cold_start,
                feature_age_us: ranked.feature_age_us,
                retrieved: ranked.retrieved,
                retrieval_plan: ranked.plan,
                latency: Latency::default(),
            },
            Err(cause) => {
                self.note_fallback(&pipeline, &cause, 1);
                Recommendation {
                    items: popular(recs, &catalog, &wanted),
                    model_name: section.ranker.name.clone(),
                    model_version: String::new(),
                    variant: assigned(),
                    fallback: Some(cause.message),
                    cold_start: false,
                    feature_age_us: 0,
                    retrieved: 0,
                    retrieval_plan: "",
                    latency: Latency::default(),
                }
            }
        };
        let latency = clock.latency(&progress);
        if let Some(m) = self.meters.get(&pipeline.name) {
            m.record_call(answer.fallback.is_some(), &latency);
        }
        if let (Some(x), Some(route)) = (&self.experiments, &route) {
            x.log_exposure(
                route,
                Served {
                    request_id: String::new(),
                    variant: answer.variant.clone(),
                    model: answer.model_name.clone(),
                    model_version: answer.model_version.clone(),
                    score: answer.items.first().map(|i| i.score),
                    decision: None,
                    latency_us: latency.total_us,
                    fallback: answer.fallback.is_some(),
                },
            );
        }
        Ok(Recommendation { latency, ..answer })
    }

    /// The model path. An error is why the fallback answers.
    #[allow(clippy::too_many_arguments)]
    async fn rank(
        &self,
        pipeline: &Pipeline,
        recs: &Recs,
        catalog: &Catalog,
        input: &CallInput,
        wanted: &Wanted,
        now: Micros,
        progress: &Progress,
        route: Option<&Route>,
    ) -> Result<Ranked, FallbackCause> {
        use std::sync::atomic::Ordering::Relaxed;
        let section = &recs.section;
        let t = Instant::now();
        let mut user = Vectors::new(&pipeline.input, 1);
        // The user's vector, and with `exclude_purchased` what they bought, in one read.
        let plan = recs.user_plan.as_deref().unwrap_or(&pipeline.input.plan);
        let mut fetched = fetch(plan, self.store.as_ref(), &input.entities, now)
            .await
            .map_err(store_cause)?;
        let mut sink = UserSink {
            width: pipeline.input.refs.len(),
            vector: &mut user,
            bought: None,
        };
        assemble(plan, &mut fetched, None, &input.fields, &mut sink).map_err(|e| FallbackCause {
            kind: "features_error",
            message: format!("request-time features: {e}"),
        })?;
        let bought_ids = sink.bought.take();
        user.finish();
        progress
            .features_us
            .store(t.elapsed().as_micros() as u64, Relaxed);
        // A user no view has a row for: the popular items, flagged.
        if !fetched.found(0) {
            return Ok(Ranked {
                items: popular(recs, catalog, wanted),
                version: String::new(),
                variant: None,
                cold_start: true,
                feature_age_us: 0,
                retrieved: 0,
                plan: "",
            });
        }
        let feature_age_us = fetched
            .oldest(0)
            .map_or(0, |ts| now.saturating_sub(ts).max(0) as u64);
        // What the user already bought, when the pipeline excludes it.
        let bought: HashSet<usize> = bought_ids
            .as_deref()
            .map(|ids| {
                ids.split(',')
                    .filter_map(|id| id.trim().parse::<i64>().ok())
                    .filter_map(|id| catalog.position(&Value::Int(id)))
                    .collect()
            })
            .unwrap_or_default();

        progress.stage.store(STAGE_MODEL, Relaxed);
        let t = Instant::now();
        let model = &pipeline.model;
        let (_, embedding, dim) = self
            .infer_matrix(
                &model.name,
                &model.version,
                &model.input,
                &model.output,
                user.row(0).to_vec(),
                1,
            )
            .await
            .map_err(|e| model_cause(&model.name, e))?;
        progress
            .inference_us
            .fetch_add(t.elapsed().as_micros() as u64, Relaxed);
        let Some(index) = catalog.index.as_ref() else {
            return Ok(Ranked {
                items: Vec::new(),
                version: String::new(),
                variant: None,
                cold_start: false,
                feature_age_us,
                retrieved: 0,
                plan: "",
            });
        };
        if dim != index.dim() {
            return Err(FallbackCause {
                kind: "model_mismatch",
                message: format!(
                    "user tower {:?} gives {dim} values; the item index holds {} (item tower {:?} version {})",
                    model.name,
                    index.dim(),
                    section.item_tower.name,
                    catalog.tower_version
                ),
            });
        }
        let keep = |p: usize| catalog.available[p] && wanted.keeps(catalog, p) && !bought.contains(&p);
        let (hits, plan) = index
            .search(&embedding, section.candidates, Some(&keep))
            .map_err(|e| FallbackCause {
                kind: "index_error",
                message: format!("item index: {e}"),
            })?;
        metrics::counter!("ferrite_pipeline_retrievals_total", "pipeline" => pipeline.name.clone(), "plan" => plan.as_str())
            .increment(1);
        if hits.is_empty() {
            return Ok(Ranked {
                items: Vec::new(),
                version: String::new(),
                variant: None,
                cold_start: false,
                feature_age_us,
                retrieved: 0,
                plan: plan.as_str(),
            });
        }

        // The candidates' availability, live: one read of two stored features; what went off
        // sale or out of stock since the catalogue was built is dropped here. The ranker reads
        // the rest of each item's vector from the catalogue (as of its last rebuild).
        let t = Instant::now();
        let positions: Vec<usize> = hits.iter().map(|h| h.id as usize).collect();
        let ids: Vec<Value> = positions.iter().map(|&p| catalog.ids[p].clone()).collect();
        let entities = HashMap::from([(recs.item_key.0.clone(), ids)]);
        let mut availability = Availability::new(positions.len());
        read_planned(
            &recs.live_plan,
            self.store.as_ref(),
            &entities,
            &HashMap::new(),
            now,
            &mut availability,
        )
        .await
        .map_err(store_cause)?;
        progress
            .features_us
            .fetch_add(t.elapsed().as_micros() as u64, Relaxed);
        let live: Vec<usize> = (0..positions.len())
            .filter(|&r| availability.available(r))
            .collect();
        if live.is_empty() {
            return Ok(Ranked {
                items: Vec::new(),
                version: String::new(),
                variant: None,
                cold_start: false,
                feature_age_us,
                retrieved: hits.len(),
                plan: plan.as_str(),
            });
        }

        let t = Instant::now();
        let user_row = user.row(0);
        let width = user_row.len() + catalog.item_width + 1;
        let mut x = Vec::with_capacity(live.len() * width);
        for &r in &live {
            x.extend_from_slice(user_row);
            x.extend_from_slice(catalog.item_vector(positions[r]));
            x.push(hits[r].score);
        }
        let ranker = &section.ranker;
        let n = live.len();
        let assignment = route.and_then(|r| r.assignment.as_ref());
        let Routed {
            version,
            values: scores,
            columns,
            variant,
            x: x_again,
        } = self
            .infer_routed(pipeline, ranker, route, x, n)
            .await
            .map_err(|e| model_cause(&ranker.name, e))?;
        if ranker.output_index >= columns {
            return Err(FallbackCause {
                kind: "model_error",
                message: format!(
                    "ranker {:?}: output {:?} has {columns} columns; the pipeline reads column {}",
                    ranker.name, ranker.output, ranker.output_index
                ),
            });
        }
        progress
            .inference_us
            .fetch_add(t.elapsed().as_micros() as u64, Relaxed);
        let mut ranked: Vec<RecommendedItem> = live
            .iter()
            .enumerate()
            .map(|(i, &r)| RecommendedItem {
                id: catalog.ids[positions[r]].clone(),
                score: f64::from(scores[i * columns + ranker.output_index]),
                retrieval_score: hits[r].score,
                category: catalog.categories[positions[r]].clone(),
            })
            .collect();
        let candidates = assignment
            .filter(|a| !a.shadows.is_empty())
            .map(|_| ranked.clone());
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        let items = diversify(ranked, section.max_per_category, wanted.top_k);
        if let (Some(x), Some(a), Some(candidates), Some(x_rows)) =
            (&self.experiments, assignment, candidates, x_again.as_deref())
        {
            let served: Vec<f64> = candidates.iter().map(|c| c.score).collect();
            let unit = route.map_or(String::new(), |r| r.unit.clone());
            let rows = ShadowRows {
                model: ranker,
                x: x_rows,
                width,
                served: &served,
                units: vec![unit; n],
                request_ids: Vec::new(),
            };
            let listed: Vec<String> = items.iter().map(|i| unit_string(&i.id)).collect();
            x.offer_shadows(a, rows, || Compare::TopK {
                served: listed.clone(),
                candidates: candidates.clone(),
                per_category: section.max_per_category,
                k: wanted.top_k,
            });
        }
        Ok(Ranked {
            items,
            variant,
            version: version.to_string(),
            cold_start: false,
            feature_age_us,
            retrieved: hits.len(),
            plan: plan.as_str(),
        })
    }
}

impl Engine {
    /// The item vectors recommendations pipeline `name` reads for `ids` (what the index and
    /// the ranker see), for parity checks.
    pub async fn item_rows(
        &self,
        name: &str,
        ids: Vec<Value>,
        now: Micros,
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        let pipeline = self.pipelines.get(name)?.clone();
        let Some(recs) = pipeline.recs.as_ref() else {
            return Err(wrong_kind(&pipeline, Kind::Recommendations));
        };
        let ids = item_ids(&ids, recs.item_key.1)?;
        let n = ids.len();
        let entities = HashMap::from([(recs.item_key.0.clone(), ids)]);
        let mut items = Vectors::new(&recs.items, n);
        read_planned(
            &recs.items.plan,
            self.store.as_ref(),
            &entities,
            &HashMap::new(),
            now,
            &mut items,
        )
        .await
        .map_err(|e| PipelineError::invalid(None, "item_id", e.to_string()))?;
        Ok((0..n).map(|r| items.row(r).to_vec()).collect())
    }
}

/// The user's read: the vector's columns go to the vector, the one after them (the bought
/// items, with `exclude_purchased`) is kept aside.
struct UserSink<'v, 'p> {
    width: usize,
    vector: &'v mut Vectors<'p>,
    bought: Option<String>,
}

impl ferrite_features::serving::AnswerSink for UserSink<'_, '_> {
    fn push(&mut self, row: usize, feature: usize, value: ferrite_features::serving::FeatureValue) {
        if feature < self.width {
            self.vector.push(row, feature, value);
        } else if let (ferrite_features::serving::Status::Present, Value::Str(s)) =
            (value.status, value.value)
        {
            self.bought = Some(s);
        }
    }
}

/// Per candidate: its stored in-stock and on-sale values, read live.
struct Availability {
    /// In stock, on sale.
    values: Vec<[f32; 2]>,
}

impl Availability {
    fn new(rows: usize) -> Self {
        Availability {
            values: vec![[f32::NAN; 2]; rows],
        }
    }

    /// In stock (> 0) and on sale (non-zero); an item with no stored row is neither.
    fn available(&self, row: usize) -> bool {
        let [stock, active] = self.values[row];
        stock > 0.0 && active != 0.0 && !active.is_nan()
    }
}

impl ferrite_features::serving::AnswerSink for Availability {
    fn push(&mut self, row: usize, feature: usize, value: ferrite_features::serving::FeatureValue) {
        if value.status == ferrite_features::serving::Status::Present {
            self.values[row][feature] = crate::vector::to_f32(&value.value);
        }
    }
}

/// Items in order, at most `per_category` of one category (0: no limit), at most `k`.
pub(crate) fn diversify(items: Vec<RecommendedItem>, per_category: usize, k: usize) -> Vec<RecommendedItem> {
    let mut seen: HashMap<Option<Arc<str>>, usize> = HashMap::new();
    let mut out = Vec::with_capacity(k);
    for item in items {
        if out.len() == k {
            break;
        }
        let n = seen.entry(item.category.clone()).or_default();
        if per_category == 0 || *n < per_category {
            *n += 1;
            out.push(item);
        }
    }
    out
}

/// The popular items the catalogue knows to be on sale and in stock, as the request filters
/// them: the cold-start and fallback answer.
fn popular(recs: &Recs, catalog: &Catalog, wanted: &Wanted) -> Vec<RecommendedItem> {
    let items = catalog
        .by_popularity
        .iter()
        .filter(|&&p| catalog.available[p] && wanted.keeps(catalog, p))
        .map(|&p| RecommendedItem {
            id: catalog.ids[p].clone(),
            score: f64::from(catalog.popularity[p]),
            retrieval_score: 0.0,
            category: catalog.categories[p].clone(),
        })
        .collect();
    diversify(items, recs.section.max_per_category, wanted.top_k)
}

/// Item ids given by the caller, as the item key's type.
fn item_ids(ids: &[Value], key_type: KeyType) -> Result<Vec<Value>, PipelineError> {
    ids.iter()
        .enumerate()
        .map(|(i, v)| {
            entity_id(v.clone(), key_type)
                .map_err(|m| PipelineError::invalid(None, format!("exclude_item_ids[{i}]"), m))
        })
        .collect()
}
