//! `ferrite.v1.FeatureService`: online feature reads and push writes.

use std::collections::HashMap;
use std::sync::Arc;

use ferrite_features::serving::{self, AnswerSink, PushRow, Status as ValueStatus};
use ferrite_features::{DType, FeatureError, FeatureRef, OnlineStore, Registry, Value};
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::feature_service_server::FeatureService;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::status::ApiError;

/// What the feature service serves from.
pub struct FeatureState {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn OnlineStore>,
    /// The store's health as the background check last saw it.
    pub health: Arc<crate::store_health::StoreHealth>,
}

pub struct Features {
    state: Arc<AppState>,
}

impl Features {
    pub fn new(state: Arc<AppState>) -> Self {
        Features { state }
    }
}

/// Entity rows and rows pushed per call are capped so one call cannot exhaust memory.
const MAX_ROWS: usize = 100_000;

pub(crate) fn value_from_pb(v: &pb::Value) -> Value {
    use pb::value::Kind;
    match &v.kind {
        None => Value::Null,
        Some(Kind::FloatValue(f)) => Value::Float(*f),
        Some(Kind::IntValue(i)) => Value::Int(*i),
        Some(Kind::StringValue(s)) => Value::Str(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::FloatVectorValue(fv)) => Value::FloatVec(fv.values.clone()),
    }
}

fn value_to_pb(v: Value) -> pb::Value {
    use pb::value::Kind;
    pb::Value {
        kind: match v {
            Value::Null => None,
            Value::Float(f) => Some(Kind::FloatValue(f)),
            Value::Int(i) => Some(Kind::IntValue(i)),
            Value::Str(s) => Some(Kind::StringValue(s)),
            Value::Bool(b) => Some(Kind::BoolValue(b)),
            Value::FloatVec(values) => Some(Kind::FloatVectorValue(pb::FloatVector { values })),
        },
    }
}

fn status_to_pb(s: ValueStatus) -> i32 {
    (match s {
        ValueStatus::Present => pb::FeatureStatus::Present,
        ValueStatus::NotFound => pb::FeatureStatus::NotFound,
        ValueStatus::Expired => pb::FeatureStatus::Expired,
        ValueStatus::Invalid => pb::FeatureStatus::Invalid,
    }) as i32
}

/// The answer as one `FeatureVector` per entity row, built as the values come.
struct RowMajor {
    width: usize,
    rows: Vec<pb::FeatureVector>,
}

impl AnswerSink for RowMajor {
    fn push(&mut self, _row: usize, feature: usize, f: serving::FeatureValue) {
        if feature == 0 {
            self.rows.push(pb::FeatureVector {
                values: Vec::with_capacity(self.width),
                statuses: Vec::with_capacity(self.width),
                event_timestamps_us: Vec::with_capacity(self.width),
            });
        }
        if let Some(v) = self.rows.last_mut() {
            v.statuses.push(status_to_pb(f.status));
            v.event_timestamps_us.push(f.event_ts.unwrap_or(0));
            v.values.push(value_to_pb(f.value));
        }
    }
}

/// The answer feature-major: one packed column per feature of `dtypes`, `rows` entries each.
struct Columns {
    dtypes: Vec<DType>,
    rows: usize,
    columns: Vec<pb::FeatureColumn>,
}

impl Columns {
    fn new(dtypes: Vec<DType>, rows: usize) -> Self {
        let columns = dtypes
            .iter()
            .map(|d| {
                let mut c = pb::FeatureColumn {
                    statuses: Vec::with_capacity(rows),
                    event_timestamps_us: Vec::with_capacity(rows),
                    ..Default::default()
                };
                match d {
                    DType::Float => c.float_values.reserve(rows),
                    DType::Int => c.int_values.reserve(rows),
                    DType::String => c.string_values.reserve(rows),
                    DType::Bool => c.bool_values.reserve(rows),
                    DType::FloatVector => c.float_vector_values.reserve(rows),
                }
                c
            })
            .collect();
        Columns {
            dtypes,
            rows,
            columns,
        }
    }
}

impl AnswerSink for Columns {
    fn push(&mut self, row: usize, feature: usize, f: serving::FeatureValue) {
        let (Some(c), Some(dtype)) = (self.columns.get_mut(feature), self.dtypes.get(feature)) else {
            return;
        };
        c.statuses.push(status_to_pb(f.status));
        c.event_timestamps_us.push(f.event_ts.unwrap_or(0));
        let missing = matches!(f.value, Value::Null) || f.status != ValueStatus::Present;
        if missing {
            if c.nulls.is_empty() {
                c.nulls = vec![false; self.rows];
            }
            if let Some(null) = c.nulls.get_mut(row) {
                *null = true;
            }
        }
        let value = if missing { Value::Null } else { f.value };
        match dtype {
            DType::Float => c.float_values.push(match value {
                Value::Float(x) => x,
                Value::Int(i) => i as f64,
                _ => 0.0,
            }),
            DType::Int => c.int_values.push(match value {
                Value::Int(i) => i,
                _ => 0,
            }),
            DType::String => c.string_values.push(match value {
                Value::Str(s) => s,
                _ => String::new(),
            }),
            DType::Bool => c.bool_values.push(matches!(value, Value::Bool(true))),
            DType::FloatVector => c.float_vector_values.push(pb::FloatVector {
                values: match value {
                    Value::FloatVec(v) => v,
                    _ => Vec::new(),
                },
            }),
        }
    }
}

fn micros(ts: &prost_types::Timestamp) -> Result<i64, Status> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(Status::invalid_argument(format!(
            "timestamp nanos {} out of range",
            ts.nanos
        )));
    }
    ts.seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(ts.nanos as i64 / 1000))
        .ok_or_else(|| Status::invalid_argument(format!("timestamp {}s out of range", ts.seconds)))
}

fn columns(map: HashMap<String, pb::ValueList>) -> HashMap<String, Vec<Value>> {
    map.into_iter()
        .map(|(k, list)| (k, list.values.iter().map(value_from_pb).collect()))
        .collect()
}

#[tonic::async_trait]
impl FeatureService for Features {
    async fn get_online_features(
        &self,
        request: Request<pb::GetOnlineFeaturesRequest>,
    ) -> Result<Response<pb::GetOnlineFeaturesResponse>, Status> {
        self.read(request.into_inner()).await
    }

    async fn push_features(
        &self,
        request: Request<pb::PushFeaturesRequest>,
    ) -> Result<Response<pb::PushFeaturesResponse>, Status> {
        self.push(request.into_inner()).await
    }
}

impl Features {
    async fn read(
        &self,
        req: pb::GetOnlineFeaturesRequest,
    ) -> Result<Response<pb::GetOnlineFeaturesResponse>, Status> {
        let fs = &self.state.features;
        let refs = match req.selection {
            Some(pb::get_online_features_request::Selection::Features(list)) => fs
                .registry
                .resolve_refs(&list.features)
                .map_err(FeatureError::NotFound),
            Some(pb::get_online_features_request::Selection::FeatureService(name)) => {
                fs.registry.service_refs(&name).map_err(FeatureError::NotFound)
            }
            None => Err(FeatureError::Invalid(
                "set either `features` or `feature_service`".into(),
            )),
        }
        .map_err(ApiError::from)?;
        if req.entities.is_empty() {
            return Err(Status::invalid_argument(
                "no entities: `entities` maps join keys to one value per row",
            ));
        }
        if req.entities.values().any(|l| l.values.len() > MAX_ROWS) {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_ROWS} entity rows per call"
            )));
        }
        let entities = columns(req.entities);
        let context = columns(req.request_context);
        let rows = entities.values().next().map_or(0, Vec::len);
        let feature_names = refs.iter().map(FeatureRef::name).collect();
        let now = ferrite_features::value::now_micros();
        let (registry, store) = (&fs.registry, fs.store.as_ref());
        if req.columnar {
            let mut answer = Columns::new(refs.iter().map(FeatureRef::dtype).collect(), rows);
            serving::read_online_features(registry, store, &refs, &entities, &context, now, &mut answer)
                .await
                .map_err(ApiError::from)?;
            return Ok(Response::new(pb::GetOnlineFeaturesResponse {
                feature_names,
                results: Vec::new(),
                columns: answer.columns,
            }));
        }
        let mut answer = RowMajor {
            width: refs.len(),
            rows: Vec::with_capacity(rows),
        };
        serving::read_online_features(registry, store, &refs, &entities, &context, now, &mut answer)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetOnlineFeaturesResponse {
            feature_names,
            results: answer.rows,
            columns: Vec::new(),
        }))
    }

    async fn push(&self, req: pb::PushFeaturesRequest) -> Result<Response<pb::PushFeaturesResponse>, Status> {
        let fs = &self.state.features;
        let view = fs
            .registry
            .view(&req.feature_view)
            .map_err(|e| ApiError::from(FeatureError::NotFound(e)))?
            .clone();
        if req.rows.is_empty() {
            return Err(Status::invalid_argument("no rows to push"));
        }
        if req.rows.len() > MAX_ROWS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_ROWS} rows per push"
            )));
        }
        let mut rows = Vec::with_capacity(req.rows.len());
        for (i, r) in req.rows.into_iter().enumerate() {
            let ts = r
                .event_timestamp
                .as_ref()
                .ok_or_else(|| Status::invalid_argument(format!("row {i}: event_timestamp is required")))?;
            rows.push(PushRow {
                fields: r
                    .fields
                    .iter()
                    .map(|(k, v)| (k.clone(), value_from_pb(v)))
                    .collect(),
                event_ts: micros(ts)?,
            });
        }
        let checked = serving::check_push(&view, &rows, ferrite_features::value::now_micros())
            .map_err(ApiError::from)?;
        if req.to_offline_store {
            // Offline first: if that fails nothing reached the online store either.
            let v = view.clone();
            let written =
                tokio::task::spawn_blocking(move || serving::push_offline(&v, &checked).map(|_| checked))
                    .await
                    .map_err(|e| Status::internal(format!("offline push task failed: {e}")))?;
            let checked = written.map_err(ApiError::from)?;
            return finish_push(fs, &view, checked).await;
        }
        finish_push(fs, &view, checked).await
    }
}

async fn finish_push(
    fs: &FeatureState,
    view: &ferrite_features::FeatureView,
    checked: Vec<serving::CheckedRow>,
) -> Result<Response<pb::PushFeaturesResponse>, Status> {
    let report = serving::push_online(fs.store.as_ref(), view, checked)
        .await
        .map_err(ApiError::from)?;
    Ok(Response::new(pb::PushFeaturesResponse {
        written: report.written,
        rejected: report.rejected.len() as u64,
        errors: report
            .rejected
            .into_iter()
            .map(|(row, message)| pb::RowError {
                row: row as u32,
                message,
            })
            .collect(),
    }))
}
