//! Dynamic prices: the item's stored features (cost, current price…) → a grid of candidate
//! prices inside the business bounds (floor = cost × (1 + min margin), at most `max_change`
//! from the current price in a day, the configured endings, never ≤ 0) → the demand model on
//! every candidate in one batched run → the candidate with the best expected revenue (or
//! margin). An outage or a deadline answers the current price from the catalogue, flagged.

use std::collections::HashMap;
use std::time::Instant;

use ferrite_features::serving::{assemble, fetch};
use ferrite_features::{Micros, Value};

use crate::PipelineError;
use crate::catalog::Catalog;
use crate::config::{Ending, Kind, Objective, PricingSection};
use crate::engine::{
    CallClock, Engine, FallbackCause, Latency, Progress, Routed, STAGE_MODEL, model_cause, store_cause,
    wrong_kind,
};
use crate::experiment::{Compare, Route, Served, ShadowRows};
use crate::input::{CallInput, check};
use crate::pipeline::{Pipeline, Pricing};
use crate::vector::Vectors;

/// The model path's answer for an item the store has never heard of: the caller's mistake.
const UNKNOWN_ITEM: &str = "unknown_item";

/// One Price call.
#[derive(Debug, Clone, Default)]
pub struct PriceCall {
    /// The item's id (an int or its decimal string).
    pub item: Value,
    /// Other request fields of the feature service (never the candidate price itself).
    pub fields: HashMap<String, Value>,
    /// Under an experiment on the pipeline: the variant to run instead of the unit's (QA).
    pub force_variant: Option<String>,
}

/// What decided the price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// The demand model's best candidate lies inside the bounds.
    None,
    /// The cost floor (cost × (1 + min_margin)).
    CostFloor,
    /// The most the price may fall in a day.
    MaxDecrease,
    /// The most the price may rise in a day.
    MaxIncrease,
    /// Only one price with the configured ending lies inside the bounds.
    Ending,
    /// A fallback: the current price.
    Current,
}

impl Bound {
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::None => "none",
            Bound::CostFloor => "cost_floor",
            Bound::MaxDecrease => "max_decrease",
            Bound::MaxIncrease => "max_increase",
            Bound::Ending => "price_ending",
            Bound::Current => "current_price",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PriceAnswer {
    pub price: f64,
    pub current_price: f64,
    /// NaN when unknown (a fallback without the store).
    pub cost: f64,
    pub floor: f64,
    /// Expected units a day at `price`, and revenue and margin (NaN for a fallback).
    pub expected_units: f64,
    pub expected_revenue: f64,
    pub expected_margin: f64,
    pub bound: Bound,
    /// Candidate prices evaluated.
    pub candidates: usize,
    pub model_name: String,
    pub model_version: String,
    /// The experiment variant the call ran; empty outside experiments.
    pub variant: String,
    pub fallback: Option<String>,
    pub feature_age_us: u64,
    pub latency: Latency,
}

/// The range a price may take today, in cents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub floor: f64,
    /// Lowest and highest allowed prices, in whole cents.
    pub lo: i64,
    pub hi: i64,
    /// The lowest price comes from the floor (not the daily decrease limit).
    pub floor_binds: bool,
    /// The floor lies above the most the price may rise today: the floor wins.
    pub conflict: bool,
}

/// The bounds for an item of unit cost `cost` priced `current` now.
pub fn range(cost: f64, current: f64, section: &PricingSection) -> Range {
    let floor = cost * (1.0 + section.min_margin);
    let down = current * (1.0 - section.max_change);
    let up = current * (1.0 + section.max_change);
    // Whole cents inside the bounds; a price is never below one cent. The floor is strict; the
    // daily limits forgive float noise (2.50 × 0.98 is 2.4500000000000002, and 2.45 is allowed).
    const NOISE: f64 = 1e-6;
    let floor_c = (floor * 100.0).ceil().max(1.0) as i64;
    let down_c = (down * 100.0 - NOISE).ceil().max(1.0) as i64;
    let up_c = (up * 100.0 + NOISE).floor() as i64;
    let lo = floor_c.max(down_c);
    Range {
        floor,
        lo,
        hi: up_c,
        floor_binds: floor_c >= down_c,
        conflict: lo > up_c,
    }
}

/// At most `n` candidate prices in cents within `r`, evenly spread, all with the first ending
/// rule that has a price in the range (whole cents when none has). When the range is empty
/// (the floor is above the daily rise limit), the one candidate is the lowest price at or
/// above the floor with an ending.
pub fn grid(r: &Range, n: usize, endings: &[Ending]) -> Vec<i64> {
    let rules: Vec<(i64, i64)> = endings
        .iter()
        .map(|e| ((e.step * 100.0).round() as i64, (e.at * 100.0).round() as i64))
        .filter(|(step, _)| *step > 0)
        .chain([(1, 0)])
        .collect();
    let first_at_or_above = |x: i64, (step, at): (i64, i64)| {
        at + (x - at).div_euclid(step) * step + if (x - at).rem_euclid(step) == 0 { 0 } else { step }
    };
    if r.conflict {
        let (step, at) = rules[0];
        return vec![first_at_or_above(r.lo, (step, at)).max(1)];
    }
    for (step, at) in rules {
        let first = first_at_or_above(r.lo, (step, at));
        if first > r.hi {
            continue;
        }
        let count = (r.hi - first) / step + 1;
        let picks = (n as i64).min(count).max(1);
        let mut out: Vec<i64> = (0..picks)
            .map(|i| {
                let k = if picks == 1 {
                    0
                } else {
                    i * (count - 1) / (picks - 1)
                };
                first + k * step
            })
            .collect();
        out.dedup();
        return out;
    }
    Vec::new()
}

impl Engine {
    /// Runs pricing pipeline `name` for `call`, inside the smaller of its budget and the
    /// caller's deadline.
    pub async fn price(
        &self,
        name: &str,
        call: PriceCall,
        deadline: Option<Instant>,
        now: Micros,
    ) -> Result<PriceAnswer, PipelineError> {
        let started = Instant::now();
        let pipeline = self.pipelines.get(name)?.clone();
        let Some(pricing) = pipeline.pricing.as_ref() else {
            return Err(wrong_kind(&pipeline, Kind::Pricing));
        };
        let field = &pricing.section.price_field;
        if call.fields.contains_key(field) {
            return Err(PipelineError::invalid(
                None,
                field.clone(),
                "the candidate prices are the pipeline's to choose; leave this field out",
            ));
        }
        let mut input = CallInput::default();
        let mut fields = call.fields;
        // A placeholder for the check; the candidates replace it.
        fields.insert(field.clone(), Value::Float(1.0));
        input.push_row([(pricing.item_key.0.clone(), call.item)], fields);
        input.force_variant = call.force_variant.filter(|v| !v.is_empty());
        check(&pipeline, &mut input)?;
        let route = self
            .experiments
            .as_ref()
            .and_then(|x| x.route_one(&pipeline, &input));
        let catalog = self.catalog(&pipeline.name);

        let clock = CallClock::new(&pipeline, deadline, started);
        let progress = Progress::default();
        let work = self.choose_price(&pipeline, pricing, &input, now, &progress, route.as_ref());
        let outcome = match tokio::time::timeout_at(clock.until.into(), work).await {
            Ok(r) => r,
            Err(_) => Err(clock.deadline_cause(
                &pipeline,
                &progress,
                ["the online store", "the demand model", "post-processing"],
            )),
        };
        let answer = match outcome {
            Ok(a) => a,
            Err(cause) if cause.kind == UNKNOWN_ITEM => {
                return Err(PipelineError::invalid(
                    None,
                    pricing.item_key.0.clone(),
                    cause.message,
                ));
            }
            Err(cause) => {
                let item = &input.entities[&pricing.item_key.0][0];
                let current = catalog
                    .as_deref()
                    .and_then(|c: &Catalog| c.position(item).map(|p| c.current_price[p]));
                let Some(current) = current else {
                    return Err(PipelineError::Unavailable(format!(
                        "item {item}: no price could be computed ({}) and the catalogue has no current price for it",
                        cause.message
                    )));
                };
                self.note_fallback(&pipeline, &cause, 1);
                PriceAnswer {
                    price: current,
                    current_price: current,
                    cost: f64::NAN,
                    floor: f64::NAN,
                    expected_units: f64::NAN,
                    expected_revenue: f64::NAN,
                    expected_margin: f64::NAN,
                    bound: Bound::Current,
                    candidates: 0,
                    model_name: pipeline.model.name.clone(),
                    model_version: String::new(),
                    variant: route
                        .as_ref()
                        .and_then(|r| r.variant())
                        .map_or(String::new(), |v| v.to_string()),
                    fallback: Some(cause.message),
                    feature_age_us: 0,
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
                    score: Some(answer.price),
                    decision: Some(answer.bound.as_str().to_string()),
                    latency_us: latency.total_us,
                    fallback: answer.fallback.is_some(),
                },
            );
        }
        Ok(PriceAnswer { latency, ..answer })
    }

    /// The model path. An error is why the fallback answers.
    async fn choose_price(
        &self,
        pipeline: &Pipeline,
        pricing: &Pricing,
        input: &CallInput,
        now: Micros,
        progress: &Progress,
        route: Option<&Route>,
    ) -> Result<PriceAnswer, FallbackCause> {
        use std::sync::atomic::Ordering::Relaxed;
        let section = &pricing.section;
        let t = Instant::now();
        let plan = &pipeline.input.plan;
        let mut fetched = fetch(plan, self.store.as_ref(), &input.entities, now)
            .await
            .map_err(store_cause)?;
        if !fetched.found(0) {
            return Err(FallbackCause {
                kind: UNKNOWN_ITEM,
                message: "no item with this id in the online store (no view has a row for it)".to_string(),
            });
        }
        let stored = |at: usize| {
            fetched
                .stored_value(plan, at, 0)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite())
        };
        let (Some(cost), Some(current)) = (stored(pricing.cost), stored(pricing.current_price)) else {
            return Err(FallbackCause {
                kind: "features_missing",
                message: format!(
                    "the online store has no {} and {} for this item",
                    section.cost, section.current_price
                ),
            });
        };
        if current <= 0.0 || cost < 0.0 {
            return Err(FallbackCause {
                kind: "features_invalid",
                message: format!(
                    "stored {} = {current} and {} = {cost}",
                    section.current_price, section.cost
                ),
            });
        }
        let r = range(cost, current, section);
        let cents = grid(&r, section.candidates, &section.endings);
        let prices: Vec<f64> = cents.iter().map(|&c| c as f64 / 100.0).collect();
        let n = prices.len();
        let mut request = input.fields.clone();
        for (name, values) in request.iter_mut() {
            *values = if *name == section.price_field {
                prices.iter().map(|&p| Value::Float(p)).collect()
            } else {
                vec![values[0].clone(); n]
            };
        }
        let mut vectors = Vectors::new(&pipeline.input, n);
        assemble(plan, &mut fetched, Some(&vec![0; n]), &request, &mut vectors).map_err(|e| {
            FallbackCause {
                kind: "features_error",
                message: format!("request-time features: {e}"),
            }
        })?;
        vectors.finish();
        progress
            .features_us
            .store(t.elapsed().as_micros() as u64, Relaxed);

        progress.stage.store(STAGE_MODEL, Relaxed);
        let t = Instant::now();
        let model = &pipeline.model;
        let Routed {
            version,
            values: units,
            columns,
            variant,
            x,
        } = self
            .infer_routed(pipeline, model, route, vectors.data.clone(), n)
            .await
            .map_err(|e| model_cause(&model.name, e))?;
        progress
            .inference_us
            .store(t.elapsed().as_micros() as u64, Relaxed);
        if model.output_index >= columns {
            return Err(FallbackCause {
                kind: "model_error",
                message: format!(
                    "demand model {:?}: output {:?} has {columns} columns; the pipeline reads column {}",
                    model.name, model.output, model.output_index
                ),
            });
        }
        let units: Vec<f64> = (0..n)
            .map(|i| f64::from(units[i * columns + model.output_index]))
            .collect();
        // Shadow demand models: the same candidates, their expected units compared.
        if let (Some(xp), Some(r), Some(x)) = (&self.experiments, route, x.as_deref())
            && let Some(a) = r.assignment.as_ref().filter(|a| !a.shadows.is_empty())
        {
            let rows = ShadowRows {
                model,
                x,
                width: vectors.width,
                served: &units,
                units: vec![r.unit.clone(); n],
                request_ids: Vec::new(),
            };
            xp.offer_shadows(a, rows, || Compare::Scores { threshold: None });
        }
        let value = |i: usize| {
            let u = if units[i].is_finite() {
                units[i].max(0.0)
            } else {
                0.0
            };
            match section.objective {
                Objective::Revenue => prices[i] * u,
                Objective::Margin => (prices[i] - cost) * u,
            }
        };
        // The best expected value; ties go to the price nearest the current one.
        let best = (0..n)
            .max_by(|&a, &b| {
                value(a).total_cmp(&value(b)).then(
                    (prices[b] - current)
                        .abs()
                        .total_cmp(&(prices[a] - current).abs()),
                )
            })
            .unwrap_or(0);
        let bound = if r.conflict {
            Bound::CostFloor
        } else if n == 1 {
            Bound::Ending
        } else if n > 1 && best == 0 {
            if r.floor_binds {
                Bound::CostFloor
            } else {
                Bound::MaxDecrease
            }
        } else if n > 1 && best == n - 1 {
            Bound::MaxIncrease
        } else {
            Bound::None
        };
        let u = units[best];
        Ok(PriceAnswer {
            price: prices[best],
            current_price: current,
            cost,
            floor: r.floor,
            expected_units: u,
            expected_revenue: prices[best] * u,
            expected_margin: (prices[best] - cost) * u,
            bound,
            candidates: n,
            model_name: model.name.clone(),
            model_version: version.to_string(),
            variant: variant
                .or_else(|| route.and_then(|r| r.variant()).map(|v| v.to_string()))
                .unwrap_or_default(),
            fallback: None,
            feature_age_us: vectors.oldest[0].map_or(0, |ts| now.saturating_sub(ts).max(0) as u64),
            latency: Latency::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(min_margin: f64, max_change: f64, endings: Vec<Ending>) -> PricingSection {
        toml::from_str::<PricingSection>(&format!("min_margin = {min_margin}\nmax_change = {max_change}"))
            .map(|s| PricingSection { endings, ..s })
            .unwrap()
    }

    #[test]
    fn the_grid_keeps_the_bounds_and_the_ending() {
        let s = section(0.1, 0.1, vec![Ending { step: 1.0, at: 0.99 }]);
        let r = range(8.0, 19.99, &s);
        assert_eq!((r.lo, r.hi), (1800, 2198));
        assert!(!r.floor_binds && !r.conflict);
        let g = grid(&r, 50, &s.endings);
        assert_eq!(
            g,
            vec![1899, 1999, 2099, 2199]
                .into_iter()
                .filter(|&c| c <= 2198)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_narrow_range_falls_back_to_the_next_ending_then_cents() {
        let endings = vec![Ending { step: 1.0, at: 0.99 }, Ending { step: 0.1, at: 0.09 }];
        let s = section(0.0, 0.02, endings.clone());
        let r = range(1.0, 2.50, &s);
        assert_eq!((r.lo, r.hi), (245, 255));
        assert_eq!(grid(&r, 50, &endings), vec![249]);
        let r = Range {
            floor: 0.0,
            lo: 250,
            hi: 251,
            floor_binds: false,
            conflict: false,
        };
        assert_eq!(grid(&r, 50, &endings), vec![250, 251]);
    }

    #[test]
    fn the_floor_wins_over_the_daily_limit() {
        let s = section(0.2, 0.05, vec![Ending { step: 1.0, at: 0.99 }]);
        let r = range(10.0, 10.0, &s);
        assert!(r.conflict && r.floor_binds);
        assert_eq!(grid(&r, 50, &s.endings), vec![1299]);
    }
}
