//! The request path: online feature reads (with request-time features) and push writes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::FeatureError;
use crate::definitions::{FeatureRef, FeatureView, Registry, RequestView};
use crate::online::{OnlineStore, RowKey, StoredRow, WriteOutcome, WriteRow, check_answers};
use crate::value::{DType, KeyType, KeyValue, Micros, Value, encode_entity_key, format_micros, now_micros};

/// Bounds on what one call may ask of the feature store; the server sets them from its
/// config (`Registry::with_limits`), every read and push is checked against them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entity rows one read may ask for (`features.max_entities_per_read`).
    pub max_entities: usize,
    /// Entity rows × features one read may answer (`features.max_values_per_read`).
    pub max_values: usize,
    /// How far ahead of the server's clock a pushed event time may be
    /// (`features.max_clock_skew_s`). A row from the future would hold its entity's stored
    /// row until that time: every real update in between would be older and not written.
    pub max_clock_skew: Micros,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entities: 10_000,
            max_values: 1_000_000,
            max_clock_skew: 300 * crate::value::MICROS_PER_SECOND,
        }
    }
}

/// What a caller knows about each value it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Present,
    NotFound,
    Expired,
    Invalid,
}

/// One value of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureValue {
    pub value: Value,
    pub status: Status,
    /// The stored row's event time (none for request-time features or missing rows).
    pub event_ts: Option<Micros>,
}

/// The answer: one vector per entity row, one value per feature name.
#[derive(Debug, Clone)]
pub struct OnlineFeatures {
    pub names: Vec<String>,
    pub rows: Vec<Vec<FeatureValue>>,
}

/// What to read, resolved once per request.
struct Plan {
    views: Vec<Arc<FeatureView>>,
}

impl Plan {
    fn view_slot(&mut self, view: &Arc<FeatureView>) -> usize {
        match self.views.iter().position(|v| v.name == view.name) {
            Some(i) => i,
            None => {
                self.views.push(view.clone());
                self.views.len() - 1
            }
        }
    }
}

/// The number of rows in a column map; all columns must agree.
fn row_count(what: &str, columns: &HashMap<String, Vec<Value>>) -> Result<Option<usize>, FeatureError> {
    let mut n = None;
    for (name, values) in columns {
        match n {
            None => n = Some(values.len()),
            Some(m) if m != values.len() => {
                return Err(FeatureError::Invalid(format!(
                    "{what} {name:?} has {} values but others have {m}; every list needs one value per entity row",
                    values.len()
                )));
            }
            _ => {}
        }
    }
    Ok(n)
}

/// Where an answer goes, one value at a time: every entity row's values in the order of the
/// feature refs, rows in request order. A caller that builds its own representation (the
/// server: protobuf messages, row- or feature-major) takes each value as it is produced
/// instead of from a copy of the whole answer.
pub trait AnswerSink {
    /// The value of feature `feature` (an index into the refs) for entity row `row`.
    fn push(&mut self, row: usize, feature: usize, value: FeatureValue);
}

/// Collects an answer as `OnlineFeatures::rows`.
struct Rows {
    width: usize,
    rows: Vec<Vec<FeatureValue>>,
}

impl AnswerSink for Rows {
    fn push(&mut self, _row: usize, feature: usize, value: FeatureValue) {
        if feature == 0 {
            self.rows.push(Vec::with_capacity(self.width));
        }
        if let Some(row) = self.rows.last_mut() {
            row.push(value);
        }
    }
}

/// Reads `refs` for every entity row. `entities` maps join-key names to one value per row;
/// `request` maps request fields (for request-time features) the same way.
pub async fn get_online_features(
    registry: &Registry,
    store: &dyn OnlineStore,
    refs: &[FeatureRef],
    entities: &HashMap<String, Vec<Value>>,
    request: &HashMap<String, Vec<Value>>,
    now: Micros,
) -> Result<OnlineFeatures, FeatureError> {
    let mut rows = Rows {
        width: refs.len(),
        rows: Vec::new(),
    };
    read_online_features(registry, store, refs, entities, request, now, &mut rows).await?;
    Ok(OnlineFeatures {
        names: refs.iter().map(FeatureRef::name).collect(),
        rows: rows.rows,
    })
}

/// `get_online_features`, each value handed to `sink` as it is produced. On an error the sink
/// may hold part of the answer.
pub async fn read_online_features(
    registry: &Registry,
    store: &dyn OnlineStore,
    refs: &[FeatureRef],
    entities: &HashMap<String, Vec<Value>>,
    request: &HashMap<String, Vec<Value>>,
    now: Micros,
    sink: &mut (impl AnswerSink + Send),
) -> Result<(), FeatureError> {
    let plan = ReadPlan::new(registry, refs)?;
    read_planned(&plan, store, entities, request, now, sink).await
}

#[derive(Debug)]
enum Out {
    Stored {
        slot: usize,
        index: usize,
    },
    Request {
        view: Arc<RequestView>,
        feature: usize,
        inputs: Vec<Input>,
    },
}

#[derive(Debug)]
enum Input {
    Field(String, DType),
    Feature { slot: usize, index: usize },
}

/// What reading a list of feature refs takes, resolved once: the stored views to read, where
/// each answered value comes from, and which stored values are read for the last time (and
/// can be moved rather than copied). A caller that reads the same refs on every call (a
/// scoring pipeline) keeps one instead of resolving names per call.
#[derive(Debug)]
pub struct ReadPlan {
    views: Vec<Arc<FeatureView>>,
    outs: Vec<Out>,
    /// Request fields the request-time features read, with the first feature that reads each.
    fields: Vec<(String, DType, String)>,
    last_use: Vec<bool>,
    limits: Limits,
}

impl ReadPlan {
    pub fn new(registry: &Registry, refs: &[FeatureRef]) -> Result<ReadPlan, FeatureError> {
        if refs.is_empty() {
            return Err(FeatureError::Invalid("no features requested".into()));
        }
        // Which stored views are needed: those requested and those request features read.
        let mut plan = Plan { views: Vec::new() };
        let mut outs = Vec::with_capacity(refs.len());
        let mut fields: Vec<(String, DType, String)> = Vec::new();
        for r in refs {
            match r {
                FeatureRef::Stored { view, index } => {
                    let slot = plan.view_slot(view);
                    outs.push(Out::Stored { slot, index: *index });
                }
                FeatureRef::Request { view, index } => {
                    let f = &view.features[*index];
                    let mut inputs = Vec::new();
                    for input in f.expr.inputs() {
                        inputs.push(match input {
                            crate::expr::Input::Request(name) => {
                                let dtype = view.request_fields[name];
                                if !fields.iter().any(|(n, _, _)| n == name) {
                                    fields.push((name.clone(), dtype, r.name()));
                                }
                                Input::Field(name.clone(), dtype)
                            }
                            crate::expr::Input::Feature { view: v, feature } => {
                                let fv = registry.view(v).map_err(FeatureError::NotFound)?;
                                let index = fv.feature_index(feature).ok_or_else(|| {
                                    FeatureError::NotFound(format!(
                                        "feature view {v:?} has no feature {feature:?}"
                                    ))
                                })?;
                                let slot = plan.view_slot(fv);
                                Input::Feature { slot, index }
                            }
                        });
                    }
                    outs.push(Out::Request {
                        view: view.clone(),
                        feature: *index,
                        inputs,
                    });
                }
            }
        }
        // A stored value read for the last time in a row can be moved into the answer instead
        // of copied, when the row is not shared (rows decoded for this call are not; rows held
        // by a cache are).
        let last_use: Vec<bool> = outs
            .iter()
            .enumerate()
            .map(|(k, out)| match out {
                Out::Stored { slot, index } => !outs[k + 1..].iter().any(|later| match later {
                    Out::Stored { slot: s, index: i } => (s, i) == (slot, index),
                    Out::Request { inputs, .. } => inputs.iter().any(
                        |input| matches!(input, Input::Feature { slot: s, index: i } if (s, i) == (slot, index)),
                    ),
                }),
                Out::Request { .. } => false,
            })
            .collect();
        Ok(ReadPlan {
            views: plan.views,
            outs,
            fields,
            last_use,
            limits: registry.limits,
        })
    }
}

/// Reads what `plan` resolved for every entity row. `entities` maps join-key names to one
/// value per row; `request` maps request fields (for request-time features) the same way.
pub async fn read_planned(
    plan: &ReadPlan,
    store: &dyn OnlineStore,
    entities: &HashMap<String, Vec<Value>>,
    request: &HashMap<String, Vec<Value>>,
    now: Micros,
    sink: &mut (impl AnswerSink + Send),
) -> Result<(), FeatureError> {
    let n = row_count("entity key", entities)?.unwrap_or(0);
    if let Some(m) = row_count("request field", request)?
        && m != n
    {
        return Err(FeatureError::Invalid(format!(
            "request fields have {m} values per field but there are {n} entity rows"
        )));
    }
    check_fields(plan, request)?;
    let mut fetched = fetch(plan, store, entities, now).await?;
    assemble(plan, &mut fetched, None, request, sink)
}

fn check_fields(plan: &ReadPlan, request: &HashMap<String, Vec<Value>>) -> Result<(), FeatureError> {
    for (name, dtype, feature) in &plan.fields {
        if !request.contains_key(name) {
            return Err(FeatureError::Invalid(format!(
                "request feature {feature} needs the request field {name:?} ({dtype})"
            )));
        }
    }
    Ok(())
}

/// The stored rows a plan reads, one per (view, entity row), fetched in one store read;
/// [`assemble`] turns them into answers.
pub struct Fetched {
    stored: Vec<Option<crate::online::ReadRow>>,
    states: Vec<Status>,
    /// Entity rows.
    n: usize,
}

impl Fetched {
    /// Entity rows fetched.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Whether any view has a stored row (even expired) for entity row `row`: false for an
    /// entity the store has never heard of (a cold start).
    pub fn found(&self, row: usize) -> bool {
        let views = self.states.len().checked_div(self.n).unwrap_or(0);
        (0..views).any(|v| self.states[v * self.n + row] != Status::NotFound)
    }

    /// The oldest event time among the present stored rows of entity row `row`.
    pub fn oldest(&self, row: usize) -> Option<Micros> {
        let views = self.states.len().checked_div(self.n).unwrap_or(0);
        (0..views)
            .map(|v| v * self.n + row)
            .filter(|&cell| self.states[cell] == Status::Present)
            .filter_map(|cell| self.stored[cell].as_deref().map(|r| r.event_ts))
            .min()
    }

    /// The stored value that answer column `feature` of `plan` takes for entity row `row`:
    /// `None` when the column is a request-time feature or the value is not present.
    pub fn stored_value(&self, plan: &ReadPlan, feature: usize, row: usize) -> Option<&Value> {
        match plan.outs.get(feature)? {
            Out::Stored { slot, index } => {
                let cell = slot * self.n + row;
                match (&self.stored[cell], self.states[cell]) {
                    (Some(r), Status::Present) => r.values.get(*index),
                    _ => None,
                }
            }
            Out::Request { .. } => None,
        }
    }
}

/// Refuses a read of `n` entity rows that is larger than the plan's limits allow.
fn check_limits(plan: &ReadPlan, n: usize) -> Result<(), FeatureError> {
    let limits = &plan.limits;
    if n > limits.max_entities {
        return Err(FeatureError::LimitExceeded(format!(
            "{n} entity rows in one read; at most {} are allowed (features.max_entities_per_read)",
            limits.max_entities
        )));
    }
    let values = n.saturating_mul(plan.outs.len());
    if values > limits.max_values {
        return Err(FeatureError::LimitExceeded(format!(
            "{n} entity rows × {} features = {values} values in one read; at most {} are allowed (features.max_values_per_read)",
            plan.outs.len(),
            limits.max_values
        )));
    }
    Ok(())
}

/// Fetches the stored rows `plan` needs for the entity rows of `entities` (join-key name ->
/// one value per row) in one store read.
pub async fn fetch(
    plan: &ReadPlan,
    store: &dyn OnlineStore,
    entities: &HashMap<String, Vec<Value>>,
    now: Micros,
) -> Result<Fetched, FeatureError> {
    let n = row_count("entity key", entities)?.unwrap_or(0);
    check_limits(plan, n)?;

    // One key per (view, entity row); one read for all of them. Views with the same join keys
    // (the usual case) share the entity strings.
    let mut keys: Vec<RowKey> = Vec::with_capacity(plan.views.len() * n);
    let mut entity_keys: Vec<(&Vec<String>, &Vec<KeyType>, usize)> = Vec::new();
    for view in &plan.views {
        if !view.online {
            return Err(FeatureError::Invalid(format!(
                "feature view {:?} is offline only (online = false): use it in training sets",
                view.name
            )));
        }
        let mut columns = Vec::with_capacity(view.join_keys.len());
        for (k, kt) in view.join_keys.iter().zip(&view.key_types) {
            let values = entities.get(k).ok_or_else(|| {
                FeatureError::Invalid(format!(
                    "feature view {:?} needs the join key {k:?} ({}); the request has {:?}",
                    view.name,
                    kt.name(),
                    entities.keys().collect::<Vec<_>>()
                ))
            })?;
            columns.push((k, *kt, values));
        }
        let name: Arc<str> = Arc::from(view.name.as_str());
        // Entity rows were already encoded for an earlier view with the same keys: share them.
        if let Some(&(_, _, first)) = entity_keys
            .iter()
            .find(|(join_keys, types, _)| **join_keys == view.join_keys && **types == view.key_types)
        {
            for row in 0..n {
                let entity = keys[first + row].entity.clone();
                keys.push(RowKey {
                    view: name.clone(),
                    entity,
                });
            }
            continue;
        }
        entity_keys.push((&view.join_keys, &view.key_types, keys.len()));
        let mut key_row = Vec::with_capacity(columns.len());
        let mut entity = String::with_capacity(24);
        for row in 0..n {
            key_row.clear();
            for (k, kt, values) in &columns {
                key_row.push(
                    KeyValue::from_value(&values[row], *kt).map_err(|e| {
                        FeatureError::Invalid(format!("join key {k:?}, entity row {row}: {e}"))
                    })?,
                );
            }
            entity.clear();
            encode_entity_key(&mut entity, &view.join_keys, &key_row);
            keys.push(RowKey {
                view: name.clone(),
                entity: Arc::from(entity.as_str()),
            });
        }
    }
    let stored = timed(store.kind(), "read", keys.len(), store.read(&keys)).await?;
    check_answers(store.kind(), "read", keys.len(), stored.len())?;

    // The state of each (view, row).
    let states: Vec<Status> = (0..plan.views.len() * n)
        .map(|i| {
            let view = &plan.views[i / n];
            match stored[i].as_deref() {
                None => Status::NotFound,
                Some(r) if r.fingerprint != view.fingerprint || r.values.len() != view.features.len() => {
                    Status::Invalid
                }
                Some(r) if view.is_expired(r.event_ts, now) => Status::Expired,
                Some(_) => Status::Present,
            }
        })
        .collect();
    Ok(Fetched { stored, states, n })
}

/// Answers every output row from `fetched`: output row `i` reads the stored rows of entity row
/// `rows[i]` (`None`: output row `i` is entity row `i`) and request field values `request[..][i]`.
/// One entity row may feed many output rows (a price evaluated at many candidate prices).
pub fn assemble(
    plan: &ReadPlan,
    fetched: &mut Fetched,
    rows: Option<&[usize]>,
    request: &HashMap<String, Vec<Value>>,
    sink: &mut impl AnswerSink,
) -> Result<(), FeatureError> {
    let out_rows = rows.map_or(fetched.n, <[usize]>::len);
    if let Some(m) = row_count("request field", request)?
        && m != out_rows
    {
        return Err(FeatureError::Invalid(format!(
            "request fields have {m} values per field but there are {out_rows} rows"
        )));
    }
    if let Some(bad) = rows.and_then(|r| r.iter().find(|&&e| e >= fetched.n)) {
        return Err(FeatureError::Invalid(format!(
            "row {bad} is not one of the {} entity rows fetched",
            fetched.n
        )));
    }
    check_fields(plan, request)?;
    let outs = &plan.outs;
    // Values are moved out of rows read for this call alone when each entity row feeds one
    // output row; shared entity rows are copied.
    let moving = rows.is_none();
    let n = fetched.n;
    let Fetched { stored, states, .. } = fetched;
    let missing = FeatureValue {
        value: Value::Null,
        status: Status::NotFound,
        event_ts: None,
    };
    // Rows index several columns (stored rows, request fields) at once.
    #[allow(clippy::needless_range_loop)]
    for out_row in 0..out_rows {
        let row = rows.map_or(out_row, |r| r[out_row]);
        for (k, out) in outs.iter().enumerate() {
            let value = match out {
                Out::Stored { slot, index } => {
                    let cell = slot * n + row;
                    let status = states[cell];
                    let event_ts = stored[cell].as_deref().map(|r| r.event_ts);
                    match (&mut stored[cell], status) {
                        (Some(r), Status::Present) => FeatureValue {
                            value: match r.values_mut() {
                                Some(values) if moving && plan.last_use[k] => {
                                    std::mem::take(&mut values[*index])
                                }
                                _ => r.values[*index].clone(),
                            },
                            status,
                            event_ts,
                        },
                        _ => FeatureValue {
                            status,
                            event_ts,
                            ..missing.clone()
                        },
                    }
                }
                Out::Request {
                    view,
                    feature,
                    inputs,
                } => {
                    let f = &view.features[*feature];
                    let mut input_values: Vec<&Value> = Vec::with_capacity(inputs.len());
                    let mut bad_field = None;
                    for input in inputs {
                        input_values.push(match input {
                            Input::Field(name, dtype) => {
                                let v = &request[name][out_row];
                                if !v.is_null()
                                    && v.dtype() != Some(*dtype)
                                    && !(v.dtype() == Some(DType::Int) && *dtype == DType::Float)
                                {
                                    bad_field = Some(format!(
                                        "request field {name:?}, row {out_row}: expected {dtype}, got {}",
                                        v.dtype().map(|d| d.name()).unwrap_or("null")
                                    ));
                                }
                                v
                            }
                            Input::Feature { slot, index } => {
                                match (&stored[slot * n + row], states[slot * n + row]) {
                                    (Some(r), Status::Present) => &r.values[*index],
                                    _ => &Value::Null,
                                }
                            }
                        });
                    }
                    if let Some(msg) = bad_field {
                        return Err(FeatureError::Invalid(msg));
                    }
                    match f.expr.eval(&input_values) {
                        Ok(v) => match v.coerce(f.dtype) {
                            Ok(value) => FeatureValue {
                                value,
                                status: Status::Present,
                                event_ts: None,
                            },
                            Err(_) => FeatureValue {
                                status: Status::Invalid,
                                ..missing.clone()
                            },
                        },
                        Err(_) => FeatureValue {
                            status: Status::Invalid,
                            ..missing.clone()
                        },
                    }
                }
            };
            sink.push(out_row, k, value);
        }
    }
    Ok(())
}

/// Runs one online-store call, recording its duration, its row count and its failures
/// (`ferrite_online_store_seconds`, `ferrite_online_store_rows`,
/// `ferrite_online_store_failures_total`, by store and operation).
async fn timed<T>(
    store: &'static str,
    op: &'static str,
    rows: usize,
    call: impl std::future::Future<Output = Result<T, FeatureError>>,
) -> Result<T, FeatureError> {
    let started = std::time::Instant::now();
    let result = call.await;
    let elapsed = started.elapsed().as_secs_f64();
    // The handles are looked up once per thread and (store, op), not on every call.
    type Handles = (
        &'static str,
        &'static str,
        metrics::Histogram,
        metrics::Histogram,
        metrics::Counter,
    );
    thread_local! {
        static HANDLES: std::cell::RefCell<Vec<Handles>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    HANDLES.with_borrow_mut(|handles| {
        let at = match handles.iter().position(|h| h.0 == store && h.1 == op) {
            Some(at) => at,
            None => {
                let labels = [("store", store), ("op", op)];
                handles.push((
                    store,
                    op,
                    metrics::histogram!("ferrite_online_store_seconds", &labels),
                    metrics::histogram!("ferrite_online_store_rows", &labels),
                    metrics::counter!("ferrite_online_store_failures_total", &labels),
                ));
                handles.len() - 1
            }
        };
        let (_, _, seconds, rows_histogram, failures) = &handles[at];
        seconds.record(elapsed);
        rows_histogram.record(rows as f64);
        if result.is_err() {
            failures.increment(1);
        }
    });
    result
}

/// One pushed row: join keys and feature values by name, and its event time.
#[derive(Debug, Clone)]
pub struct PushRow {
    pub fields: HashMap<String, Value>,
    pub event_ts: Micros,
}

/// What a push did. Every row is either written or rejected with its reason.
#[derive(Debug, Clone, Default)]
pub struct PushReport {
    pub written: u64,
    /// (row index, reason) of rows not written to the online store, by index: a broken
    /// data-quality rule, an event time past the view's TTL, or a newer row already stored
    /// for the entity (an older row never replaces a newer one).
    pub rejected: Vec<(usize, String)>,
}

/// A pushed row checked against the view: its key, values and the rule it breaks, if any.
pub struct CheckedRow {
    pub index: usize,
    pub keys: Vec<KeyValue>,
    pub row: StoredRow,
    pub rule_error: Option<String>,
}

/// Checks pushed rows against the view. Structural errors (unknown field, wrong type,
/// missing key, a missing feature, an event time further ahead of `now` than the view's
/// `max_clock_skew`) fail the whole push so that nothing is half-written; data-quality rule
/// violations and rows already past the TTL are reported per row.
///
/// A row must give every feature of the view (null to clear one): it replaces the stored
/// row, so a feature left out would silently become null.
pub fn check_push(
    view: &FeatureView,
    rows: &[PushRow],
    now: Micros,
) -> Result<Vec<CheckedRow>, FeatureError> {
    let mut out = Vec::with_capacity(rows.len());
    for (index, r) in rows.iter().enumerate() {
        let bad =
            |m: String| FeatureError::Invalid(format!("row {index} of the push to {:?}: {m}", view.name));
        for name in r.fields.keys() {
            if !view.join_keys.contains(name) && view.feature_index(name).is_none() {
                return Err(bad(format!(
                    "unknown field {name:?}; the view has join keys {:?} and features {:?}",
                    view.join_keys,
                    view.features.iter().map(|f| &f.name).collect::<Vec<_>>()
                )));
            }
        }
        let mut keys = Vec::with_capacity(view.join_keys.len());
        for (k, kt) in view.join_keys.iter().zip(&view.key_types) {
            let v = r
                .fields
                .get(k)
                .ok_or_else(|| bad(format!("missing join key {k:?}")))?;
            keys.push(KeyValue::from_value(v, *kt).map_err(|e| bad(format!("join key {k:?}: {e}")))?);
        }
        if r.event_ts > now.saturating_add(view.max_clock_skew) {
            return Err(bad(format!(
                "event_timestamp {} is {} ahead of the server's clock ({}); at most {} ahead is accepted (features.max_clock_skew_s)",
                format_micros(r.event_ts),
                format_span(r.event_ts.saturating_sub(now)),
                format_micros(now),
                format_span(view.max_clock_skew)
            )));
        }
        let mut values = Vec::with_capacity(view.features.len());
        let mut missing = Vec::new();
        let mut rule_error = None;
        for f in &view.features {
            let Some(v) = r.fields.get(&f.name).cloned() else {
                missing.push(f.name.as_str());
                continue;
            };
            let v = v.coerce(f.dtype).map_err(|v| {
                bad(format!(
                    "feature {:?} is {} but got {}",
                    f.name,
                    f.dtype,
                    v.dtype().map(|d| d.name()).unwrap_or("null")
                ))
            })?;
            if rule_error.is_none()
                && let Err(e) = f.rules.check(&v, now - r.event_ts)
            {
                rule_error = Some(format!("{}: {e}", f.name));
            }
            values.push(v);
        }
        if !missing.is_empty() {
            return Err(bad(format!(
                "missing features {missing:?}; a pushed row replaces the stored row, so it must give every feature of the view (null to clear one)"
            )));
        }
        if rule_error.is_none() && view.is_expired(r.event_ts, now) {
            rule_error = Some(format!(
                "event_timestamp {} is older than the view's TTL allows at {}: the row has already expired",
                format_micros(r.event_ts),
                format_micros(now)
            ));
        }
        out.push(CheckedRow {
            index,
            keys,
            row: StoredRow {
                event_ts: r.event_ts,
                created_ts: now,
                fingerprint: view.fingerprint,
                values,
            },
            rule_error,
        });
    }
    Ok(out)
}

/// Writes checked rows that pass the rules to the online store.
pub async fn push_online(
    store: &dyn OnlineStore,
    view: &FeatureView,
    rows: Vec<CheckedRow>,
) -> Result<PushReport, FeatureError> {
    let mut report = PushReport::default();
    let mut writes = Vec::with_capacity(rows.len());
    let mut indexes = Vec::with_capacity(rows.len());
    let name: Arc<str> = Arc::from(view.name.as_str());
    for r in rows {
        if let Some(e) = r.rule_error {
            report.rejected.push((r.index, e));
            continue;
        }
        let mut entity = String::new();
        encode_entity_key(&mut entity, &view.join_keys, &r.keys);
        indexes.push(r.index);
        writes.push(WriteRow {
            key: RowKey {
                view: name.clone(),
                entity: Arc::from(entity),
            },
            expire_at: (view.ttl > 0).then(|| r.row.event_ts.saturating_add(view.ttl)),
            row: r.row,
        });
    }
    let n = writes.len();
    let entities: Vec<Arc<str>> = writes.iter().map(|w| w.key.entity.clone()).collect();
    let outcomes = timed(store.kind(), "write", n, store.write(writes)).await?;
    check_answers(store.kind(), "write", n, outcomes.len())?;
    for ((index, entity), outcome) in indexes.into_iter().zip(entities).zip(outcomes) {
        match outcome {
            WriteOutcome::Written => report.written += 1,
            WriteOutcome::Superseded => report.rejected.push((
                index,
                format!(
                    "not written to the online store: it holds a newer row for {entity} (a later event time, or the same event time written later)"
                ),
            )),
            WriteOutcome::Expired => report.rejected.push((
                index,
                "not written to the online store: the row had already expired (event time + TTL is past)".into(),
            )),
        }
    }
    report.rejected.sort_by_key(|(index, _)| *index);
    Ok(report)
}

/// A span of time for messages: "5m", "365days 6h".
fn format_span(micros: Micros) -> String {
    let secs = u64::try_from(micros / crate::value::MICROS_PER_SECOND).unwrap_or(0);
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// Appends checked rows that pass the rules to the source's `push_dir` as a new Parquet
/// file, typed like the source, so training sets see them. Returns the file written.
pub fn push_offline(
    view: &FeatureView,
    rows: &[CheckedRow],
) -> Result<Option<std::path::PathBuf>, FeatureError> {
    use polars::prelude::*;
    let source = &view.source;
    let dir = source.push_dir.as_ref().ok_or_else(|| {
        FeatureError::Invalid(format!(
            "feature view {:?}: its source {:?} has no push_dir, so pushed rows cannot go to the offline store",
            view.name, source.name
        ))
    })?;
    let rows: Vec<&CheckedRow> = rows.iter().filter(|r| r.rule_error.is_none()).collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let err = |e: PolarsError| crate::frame::frame_error(&dir.display().to_string(), e);
    let schema = crate::offline::ParquetSource::new(source.path.clone()).schema()?;
    let mut columns: Vec<Column> = Vec::new();
    for (i, (k, kt)) in view.join_keys.iter().zip(&view.key_types).enumerate() {
        let values: Vec<Value> = rows
            .iter()
            .map(|r| match &r.keys[i] {
                KeyValue::Int(v) => Value::Int(*v),
                KeyValue::Str(s) => Value::Str(s.clone()),
            })
            .collect();
        let dtype = match kt {
            crate::value::KeyType::Int => DType::Int,
            crate::value::KeyType::String => DType::String,
        };
        columns.push(crate::frame::values_column(k, dtype, &values).map_err(err)?);
    }
    let ts_type = DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC));
    let ts: Vec<i64> = rows.iter().map(|r| r.row.event_ts).collect();
    columns.push(
        Column::new(source.timestamp_field.as_str().into(), ts)
            .cast(&ts_type)
            .map_err(err)?,
    );
    if let Some(c) = &source.created_timestamp_field {
        let created: Vec<i64> = rows.iter().map(|r| r.row.created_ts).collect();
        columns.push(
            Column::new(c.as_str().into(), created)
                .cast(&ts_type)
                .map_err(err)?,
        );
    }
    for (fi, f) in view.features.iter().enumerate() {
        let values: Vec<Value> = rows.iter().map(|r| r.row.values[fi].clone()).collect();
        columns.push(crate::frame::values_column(&f.column, f.dtype, &values).map_err(err)?);
    }
    // Match the source's types exactly (e.g. Int32 ids, nanosecond times) so one scan reads both.
    for c in columns.iter_mut() {
        if let Some(t) = schema.get(c.name())
            && t != c.dtype()
        {
            *c = c.cast(t).map_err(err)?;
        }
    }
    let mut df = DataFrame::new_infer_height(columns).map_err(err)?;
    std::fs::create_dir_all(dir).map_err(|e| FeatureError::Offline {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    // Unique per process (time, process id, a counter), and created with `create_new` and
    // linked into place without replacing anything, so concurrent pushes, from this process
    // or another sharing the directory, never overwrite each other's files.
    static PUSHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = PUSHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("push-{}-{}-{seq}.parquet", now_micros(), std::process::id());
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let offline = |path: &std::path::Path, e: std::io::Error| FeatureError::Offline {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| offline(&tmp, e))?;
    let written = ParquetWriter::new(file)
        .finish(&mut df)
        .map_err(err)
        // Readers glob *.parquet: the file appears whole or not at all. A hard link fails
        // rather than replace a file of the same name.
        .and_then(|_| std::fs::hard_link(&tmp, &path).map_err(|e| offline(&path, e)));
    let removed = std::fs::remove_file(&tmp);
    written?;
    removed.map_err(|e| offline(&tmp, e))?;
    Ok(Some(path))
}
