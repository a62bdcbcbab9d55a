//! `ferrite.v1.ScoringService`: the typed faces of the scoring pipelines (ScoreFraud and its
//! batch form) and the generic `Score`. Translates wire messages to a pipeline call's rows
//! and the answer back; everything else is `ferrite-pipelines`.

use std::sync::Arc;
use std::time::Instant;

use ferrite_features::Value;
use ferrite_features::value::now_micros;
use ferrite_pipelines::{
    Answer, CallInput, Decision, Engine, Latency, Pipeline, PipelineError, PriceCall, RecommendCall,
    RowAnswer,
};
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::scoring_service_server::ScoringService;
use tonic::{Request, Response, Status};

use super::call_deadline;
use super::features::value_from_pb;
use crate::AppState;
use crate::status::ApiError;

pub struct Scoring {
    state: Arc<AppState>,
}

impl Scoring {
    pub fn new(state: Arc<AppState>) -> Self {
        Scoring { state }
    }

    fn engine(&self) -> &Engine {
        &self.state.pipelines
    }
}

/// The pipelines ScoreFraud, Recommend and Price run when the request names none.
const DEFAULT_FRAUD_PIPELINE: &str = "fraud";
const DEFAULT_RECOMMENDATIONS_PIPELINE: &str = "recommendations";
const DEFAULT_PRICING_PIPELINE: &str = "pricing";
/// The sample data's prices are in EUR.
const PRICE_CURRENCY: &str = "EUR";

// Only the columns the pipeline reads are passed (a pipeline that needs no device type
// ignores it), named as transactions.parquet names them.
/// The pipeline fields a ScoreFraud request sets itself (the columns of transactions.parquet),
/// in the order `fraud_row` gives their values.
const TRANSACTION_FIELDS: [&str; 4] = ["amount", "currency", "device_type", "event_timestamp"];

/// A row's columns by name.
type Columns = Vec<(String, Value)>;

/// One transaction as a pipeline row's entity ids and request fields; an error names a
/// `context` entry that repeats a field of the request.
fn fraud_row(pipeline: &Pipeline, t: pb::ScoreFraudRequest, now: i64) -> Result<(Columns, Columns), String> {
    use pb::score_fraud_request::{Merchant, User};
    let mut entities = Vec::with_capacity(2);
    let wants_key = |k: &str| pipeline.input.entity_keys.iter().any(|(n, _)| n == k);
    if wants_key("user_id") {
        match t.user {
            Some(User::UserId(s)) => entities.push(("user_id".to_string(), Value::Str(s))),
            Some(User::UserIdInt(i)) => entities.push(("user_id".to_string(), Value::Int(i))),
            None => {}
        }
    }
    if wants_key("merchant_id") {
        match t.merchant {
            Some(Merchant::MerchantId(s)) => entities.push(("merchant_id".to_string(), Value::Str(s))),
            Some(Merchant::MerchantIdInt(i)) => entities.push(("merchant_id".to_string(), Value::Int(i))),
            None => {}
        }
    }
    let non_empty = |s: String| if s.is_empty() { Value::Null } else { Value::Str(s) };
    let event_time = if t.event_time_us == 0 {
        now
    } else {
        t.event_time_us
    };
    let values = [
        Value::Float(t.amount),
        non_empty(t.currency),
        non_empty(t.device_type),
        Value::Int(event_time),
    ];
    let mut fields: Vec<(String, Value)> = TRANSACTION_FIELDS
        .into_iter()
        .zip(values)
        .filter(|(k, _)| pipeline.input.request_fields.contains_key(*k))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for (k, v) in t.context {
        if TRANSACTION_FIELDS.contains(&k.as_str()) {
            return Err(k);
        }
        fields.push((k, value_from_pb(&v)));
    }
    Ok((entities, fields))
}

/// The ScoreFraud name of a pipeline field, as the caller wrote it.
fn fraud_field(field: &str) -> &str {
    match field {
        "event_timestamp" => "event_time_us",
        other => other,
    }
}

/// Names a refused field as the caller's message has it (`transactions[3].amount`).
fn renamed(
    e: PipelineError,
    prefix: impl Fn(Option<usize>) -> String,
    rename: fn(&str) -> &str,
) -> PipelineError {
    match e {
        PipelineError::Invalid { row, field, message } => PipelineError::Invalid {
            row: None,
            field: format!("{}{}", prefix(row), rename(&field)),
            message,
        },
        e => e,
    }
}

fn decision_pb(d: Decision) -> i32 {
    (match d {
        Decision::Approve => pb::FraudDecision::Approve,
        Decision::Review => pb::FraudDecision::Review,
        Decision::Decline => pb::FraudDecision::Decline,
    }) as i32
}

fn meta(row: &RowAnswer, answer: &Answer, include_latency: bool) -> pb::ResponseMeta {
    Meta {
        model_name: &row.model_name,
        model_version: &row.model_version,
        variant: &row.variant,
        fallback: row.fallback.as_deref(),
        feature_age_us: row.feature_age_us,
        cold_start: row.cold_start,
        latency: &answer.latency,
    }
    .to_pb(include_latency)
}

/// What every pipeline answer reports about itself.
struct Meta<'a> {
    model_name: &'a str,
    model_version: &'a str,
    variant: &'a str,
    fallback: Option<&'a str>,
    feature_age_us: u64,
    cold_start: bool,
    latency: &'a Latency,
}

impl Meta<'_> {
    fn to_pb(&self, include_latency: bool) -> pb::ResponseMeta {
        pb::ResponseMeta {
            model_name: self.model_name.to_string(),
            model_version: self.model_version.to_string(),
            variant: self.variant.to_string(),
            fallback: self.fallback.is_some(),
            fallback_reason: self.fallback.unwrap_or_default().to_string(),
            server_latency_us: self.latency.total_us,
            feature_age_us: self.feature_age_us,
            cold_start: self.cold_start,
            latency: include_latency.then_some(pb::LatencyBreakdown {
                features_us: self.latency.features_us,
                inference_us: self.latency.inference_us,
                postprocess_us: self.latency.postprocess_us,
                total_us: self.latency.total_us,
            }),
        }
    }
}

/// The pipeline a request names, or `default`.
fn pipeline_or(name: String, default: &str) -> String {
    if name.is_empty() {
        default.to_string()
    } else {
        name
    }
}

/// An id as the caller sent it: a decimal string or an integer.
fn id_value(s: Option<String>, i: Option<i64>) -> Value {
    match (s, i) {
        (Some(s), _) => Value::Str(s),
        (None, Some(i)) => Value::Int(i),
        (None, None) => Value::Null,
    }
}

/// An item id as the answer gives it.
fn id_string(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

fn reasons_pb(row: &RowAnswer) -> Vec<pb::Reason> {
    row.reasons
        .iter()
        .map(|r| pb::Reason {
            feature: r.feature.clone(),
            value: r.value,
            contribution: r.contribution,
        })
        .collect()
}

impl Scoring {
    /// Scores transactions as one pipeline call; errors name fields with `prefix(row)`.
    async fn score_transactions(
        &self,
        pipeline_name: &str,
        transactions: Vec<pb::ScoreFraudRequest>,
        deadline: Option<Instant>,
        prefix: impl Fn(Option<usize>) -> String,
    ) -> Result<(Answer, Vec<String>), Status> {
        let pipeline = self
            .engine()
            .pipelines()
            .get(pipeline_name)
            .map_err(ApiError::from)?
            .clone();
        let now = now_micros();
        let mut input = CallInput::default();
        let mut ids = Vec::with_capacity(transactions.len());
        for (i, t) in transactions.into_iter().enumerate() {
            ids.push(t.transaction_id.clone());
            input.request_ids.push(t.transaction_id.clone());
            if !t.force_variant.is_empty() {
                input.force_variant = Some(t.force_variant.clone());
            }
            let (entities, fields) = fraud_row(&pipeline, t, now).map_err(|k| {
                Status::invalid_argument(format!(
                    "{}context: {k:?} is a field of the request itself; set it there, not in context",
                    prefix(Some(i))
                ))
            })?;
            input.push_row(entities, fields);
        }
        let rows = ids.len();
        let answer = self
            .engine()
            .score(pipeline_name, input, deadline, now)
            .await
            .map_err(|e| {
                // A single row's error carries no row number; name it as row 0 of the batch.
                let e = match e {
                    PipelineError::Invalid {
                        row: None,
                        field,
                        message,
                    } if rows == 1 && field != "rows" => PipelineError::Invalid {
                        row: Some(0),
                        field,
                        message,
                    },
                    e => e,
                };
                ApiError::from(renamed(e, &prefix, fraud_field))
            })?;
        Ok((answer, ids))
    }
}

#[tonic::async_trait]
impl ScoringService for Scoring {
    async fn score_fraud(
        &self,
        request: Request<pb::ScoreFraudRequest>,
    ) -> Result<Response<pb::ScoreFraudResponse>, Status> {
        let deadline = call_deadline(&request);
        let t = request.into_inner();
        let name = if t.pipeline.is_empty() {
            DEFAULT_FRAUD_PIPELINE.to_string()
        } else {
            t.pipeline.clone()
        };
        let include_latency = t.include_latency;
        let (answer, mut ids) = self
            .score_transactions(&name, vec![t], deadline, |_| String::new())
            .await?;
        let row = &answer.rows[0];
        Ok(Response::new(pb::ScoreFraudResponse {
            score: row.score,
            meta: Some(meta(row, &answer, include_latency)),
            decision: decision_pb(row.decision),
            reasons: reasons_pb(row),
            transaction_id: ids.swap_remove(0),
        }))
    }

    async fn score_fraud_batch(
        &self,
        request: Request<pb::ScoreFraudBatchRequest>,
    ) -> Result<Response<pb::ScoreFraudBatchResponse>, Status> {
        let deadline = call_deadline(&request);
        let transactions = request.into_inner().transactions;
        let Some(first) = transactions.first() else {
            return Err(Status::invalid_argument(
                "transactions: expected at least one transaction, got none",
            ));
        };
        let name = if first.pipeline.is_empty() {
            DEFAULT_FRAUD_PIPELINE.to_string()
        } else {
            first.pipeline.clone()
        };
        if let Some(i) = transactions.iter().position(|t| t.pipeline != first.pipeline) {
            return Err(Status::invalid_argument(format!(
                "transactions[{i}].pipeline: {:?}; every transaction of a batch goes to one pipeline ({:?})",
                transactions[i].pipeline, first.pipeline
            )));
        }
        let include: Vec<bool> = transactions.iter().map(|t| t.include_latency).collect();
        let (answer, ids) = self
            .score_transactions(&name, transactions, deadline, |row| match row {
                Some(i) => format!("transactions[{i}]."),
                None => "transactions.".to_string(),
            })
            .await?;
        let results = answer
            .rows
            .iter()
            .zip(ids)
            .zip(include)
            .map(|((row, id), include_latency)| pb::ScoreFraudResponse {
                score: row.score,
                meta: Some(meta(row, &answer, include_latency)),
                decision: decision_pb(row.decision),
                reasons: reasons_pb(row),
                transaction_id: id,
            })
            .collect();
        Ok(Response::new(pb::ScoreFraudBatchResponse { results }))
    }

    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        use pb::recommend_request::User;
        let deadline = call_deadline(&request);
        let r = request.into_inner();
        let name = pipeline_or(r.pipeline, DEFAULT_RECOMMENDATIONS_PIPELINE);
        let (user_s, user_i) = match r.user {
            Some(User::UserId(s)) => (Some(s), None),
            Some(User::UserIdInt(i)) => (None, Some(i)),
            None => (None, None),
        };
        let context = r.context.unwrap_or_default();
        let mut exclude: Vec<Value> = r.exclude_item_ids.into_iter().map(Value::Str).collect();
        let excluded = exclude.len();
        exclude.extend(context.basket_item_ids.into_iter().map(Value::Str));
        let call = RecommendCall {
            user: id_value(user_s, user_i),
            top_k: r.top_k as usize,
            exclude,
            category: Some(context.category).filter(|c| !c.is_empty()),
            fields: Default::default(),
            force_variant: Some(r.force_variant.clone()),
        };
        let answer = self
            .engine()
            .recommend(&name, call, deadline, now_micros())
            .await
            .map_err(|e| {
                // Name the field as the request has it.
                ApiError::from(match e {
                    PipelineError::Invalid { row, field, message } => PipelineError::Invalid {
                        row,
                        field: match field.strip_prefix("exclude_item_ids[") {
                            Some(rest) => {
                                let i: usize = rest.trim_end_matches(']').parse().unwrap_or(0);
                                if i < excluded {
                                    field
                                } else {
                                    format!("context.basket_item_ids[{}]", i - excluded)
                                }
                            }
                            None => field,
                        },
                        message,
                    },
                    e => e,
                })
            })?;
        Ok(Response::new(pb::RecommendResponse {
            items: answer
                .items
                .iter()
                .map(|i| pb::ScoredItem {
                    item_id: id_string(&i.id),
                    score: i.score,
                    retrieval_score: i.retrieval_score,
                    category: i.category.as_deref().unwrap_or_default().to_string(),
                })
                .collect(),
            meta: Some(
                Meta {
                    model_name: &answer.model_name,
                    model_version: &answer.model_version,
                    variant: &answer.variant,
                    fallback: answer.fallback.as_deref(),
                    feature_age_us: answer.feature_age_us,
                    cold_start: answer.cold_start,
                    latency: &answer.latency,
                }
                .to_pb(r.include_latency),
            ),
            retrieved: answer.retrieved as u32,
            retrieval_plan: answer.retrieval_plan.to_string(),
        }))
    }

    async fn price(&self, request: Request<pb::PriceRequest>) -> Result<Response<pb::PriceResponse>, Status> {
        use pb::price_request::Item;
        let deadline = call_deadline(&request);
        let r = request.into_inner();
        let name = pipeline_or(r.pipeline, DEFAULT_PRICING_PIPELINE);
        let (item_s, item_i) = match r.item {
            Some(Item::ItemId(s)) => (Some(s), None),
            Some(Item::ItemIdInt(i)) => (None, Some(i)),
            None => (None, None),
        };
        let call = PriceCall {
            item: id_value(item_s, item_i),
            fields: r
                .context
                .iter()
                .map(|(k, v)| (k.clone(), value_from_pb(v)))
                .collect(),
            force_variant: Some(r.force_variant.clone()),
        };
        let answer = self
            .engine()
            .price(&name, call, deadline, now_micros())
            .await
            .map_err(|e| {
                ApiError::from(match e {
                    // A field of the pipeline other than the item arrives through `context`.
                    PipelineError::Invalid { row, field, message } if r.context.contains_key(&field) => {
                        PipelineError::Invalid {
                            row,
                            field: format!("context.{field}"),
                            message,
                        }
                    }
                    e => e,
                })
            })?;
        Ok(Response::new(pb::PriceResponse {
            price: answer.price,
            currency: PRICE_CURRENCY.to_string(),
            meta: Some(
                Meta {
                    model_name: &answer.model_name,
                    model_version: &answer.model_version,
                    variant: &answer.variant,
                    fallback: answer.fallback.as_deref(),
                    feature_age_us: answer.feature_age_us,
                    cold_start: false,
                    latency: &answer.latency,
                }
                .to_pb(r.include_latency),
            ),
            current_price: answer.current_price,
            floor_price: answer.floor,
            expected_units: answer.expected_units,
            expected_revenue: answer.expected_revenue,
            expected_margin: answer.expected_margin,
            bound: answer.bound.as_str().to_string(),
            candidates: answer.candidates as u32,
        }))
    }

    async fn score(&self, request: Request<pb::ScoreRequest>) -> Result<Response<pb::ScoreResponse>, Status> {
        let deadline = call_deadline(&request);
        let r = request.into_inner();
        let mut input = CallInput::default();
        input.push_row(
            r.entities.into_iter().map(|(k, v)| (k, value_from_pb(&v))),
            r.fields.into_iter().map(|(k, v)| (k, value_from_pb(&v))),
        );
        input.force_variant = (!r.force_variant.is_empty()).then_some(r.force_variant);
        let answer = self
            .engine()
            .score(&r.pipeline, input, deadline, now_micros())
            .await
            .map_err(ApiError::from)?;
        let row = &answer.rows[0];
        Ok(Response::new(pb::ScoreResponse {
            score: row.score,
            decision: row.decision.as_str().to_string(),
            reasons: reasons_pb(row),
            meta: Some(meta(row, &answer, r.include_latency)),
        }))
    }

    async fn list_pipelines(
        &self,
        _request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        let pipelines = self
            .engine()
            .pipelines()
            .pipelines
            .values()
            .map(|p| pb::PipelineInfo {
                name: p.name.clone(),
                kind: p.kind.name().to_string(),
                feature_service: p.input.name.clone(),
                entity_keys: p.input.entity_keys.iter().map(|(k, _)| k.clone()).collect(),
                request_fields: p
                    .input
                    .request_fields
                    .iter()
                    .map(|(k, t)| (k.clone(), t.name().to_string()))
                    .collect(),
                model_name: p.model.name.clone(),
                model_version: p.model.version.clone(),
                budget_ms: p.budget.as_millis() as u64,
                features: p.input.feature_names.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListPipelinesResponse { pipelines }))
    }
}
