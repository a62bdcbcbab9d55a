//! A call's rows, checked against the pipeline before anything is read: every entity key and
//! request field present once per row, of its type, within its rules.

use std::collections::HashMap;

use ferrite_features::{DType, KeyType, Value};

use crate::PipelineError;
use crate::pipeline::Pipeline;

/// The rows of one call, by column: join-key name -> one id per row, request field -> one
/// value per row.
#[derive(Debug, Clone, Default)]
pub struct CallInput {
    pub entities: HashMap<String, Vec<Value>>,
    pub fields: HashMap<String, Vec<Value>>,
    /// The caller's id of each row (e.g. a transaction id), for the exposure log and for
    /// experiments keyed on `request_id` or `transaction_id`; may be empty.
    pub request_ids: Vec<String>,
    /// Under an experiment: the variant every row runs instead of its assigned one (QA).
    pub force_variant: Option<String>,
}

impl CallInput {
    /// Appends one row given as (name, value) pairs; a row that leaves out a column that
    /// earlier rows have is caught by `check`.
    pub fn push_row(
        &mut self,
        entities: impl IntoIterator<Item = (String, Value)>,
        fields: impl IntoIterator<Item = (String, Value)>,
    ) {
        for (k, v) in entities {
            self.entities.entry(k).or_default().push(v);
        }
        for (k, v) in fields {
            self.fields.entry(k).or_default().push(v);
        }
    }
}

/// Checks `input` against `pipeline`, converting ids given as decimal strings to the key's
/// type and integers given for float fields to floats. Returns the number of rows.
pub fn check(pipeline: &Pipeline, input: &mut CallInput) -> Result<usize, PipelineError> {
    let single = |rows: usize, row: usize| (rows > 1).then_some(row);
    let rows = input
        .entities
        .values()
        .chain(input.fields.values())
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    if rows == 0 {
        return Err(PipelineError::invalid(
            None,
            "rows",
            "expected at least one row, got none",
        ));
    }
    if rows > pipeline.max_batch {
        return Err(PipelineError::invalid(
            None,
            "rows",
            format!(
                "{rows} rows in one call; pipeline {:?} takes at most {} (max_batch)",
                pipeline.name, pipeline.max_batch
            ),
        ));
    }
    for name in input.entities.keys() {
        if !pipeline.input.entity_keys.iter().any(|(k, _)| k == name) {
            return Err(PipelineError::invalid(
                None,
                name.clone(),
                format!(
                    "not an entity key of pipeline {:?}; expected {:?}",
                    pipeline.name,
                    pipeline
                        .input
                        .entity_keys
                        .iter()
                        .map(|(k, _)| k)
                        .collect::<Vec<_>>()
                ),
            ));
        }
    }
    for name in input.fields.keys() {
        if !pipeline.input.request_fields.contains_key(name) {
            return Err(PipelineError::invalid(
                None,
                name.clone(),
                format!(
                    "not a request field of pipeline {:?}; expected {:?}",
                    pipeline.name,
                    pipeline.input.request_fields.keys().collect::<Vec<_>>()
                ),
            ));
        }
    }
    for (key, key_type) in &pipeline.input.entity_keys {
        let values = column(&mut input.entities, key, rows, key_type.name())?;
        for (row, v) in values.iter_mut().enumerate() {
            *v = entity_id(std::mem::take(v), *key_type)
                .map_err(|m| PipelineError::invalid(single(rows, row), key.clone(), m))?;
        }
    }
    for (field, dtype) in &pipeline.input.request_fields {
        let rule = pipeline.field_rules.get(field);
        let values = column(&mut input.fields, field, rows, dtype.name())?;
        for (row, v) in values.iter_mut().enumerate() {
            let at = single(rows, row);
            *v =
                typed(std::mem::take(v), *dtype).map_err(|m| PipelineError::invalid(at, field.clone(), m))?;
            if let Some(rule) = rule {
                rule.check(v, 0)
                    .map_err(|m| PipelineError::invalid(at, field.clone(), m))?;
            }
        }
    }
    Ok(rows)
}

fn column<'a>(
    columns: &'a mut HashMap<String, Vec<Value>>,
    name: &str,
    rows: usize,
    expected: &str,
) -> Result<&'a mut Vec<Value>, PipelineError> {
    match columns.get_mut(name) {
        None => Err(PipelineError::invalid(
            None,
            name,
            format!("missing; expected {expected}"),
        )),
        Some(values) if values.len() != rows => Err(PipelineError::invalid(
            None,
            name,
            format!("{} values for {rows} rows; every row needs one", values.len()),
        )),
        Some(values) => Ok(values),
    }
}

/// An id given as an integer or a decimal string, as the key's type.
pub(crate) fn entity_id(v: Value, key_type: KeyType) -> Result<Value, String> {
    match (v, key_type) {
        (Value::Int(i), KeyType::Int) => Ok(Value::Int(i)),
        (Value::Str(s), KeyType::Int) => s
            .trim()
            .parse::<i64>()
            .map(Value::Int)
            .map_err(|_| format!("expected an integer id or its decimal string, got {s:?}")),
        (Value::Str(s), KeyType::String) if !s.is_empty() => Ok(Value::Str(s)),
        (Value::Int(i), KeyType::String) => Ok(Value::Str(i.to_string())),
        (Value::Null, _) | (Value::Str(_), _) => Err("missing; expected an id".into()),
        (v, t) => Err(format!("expected a {} id, got {v}", t.name())),
    }
}

fn typed(v: Value, dtype: DType) -> Result<Value, String> {
    match (v, dtype) {
        (Value::Float(f), DType::Float) if !f.is_finite() => {
            Err(format!("expected a finite number, got {f}"))
        }
        (Value::Int(i), DType::Float) => Ok(Value::Float(i as f64)),
        (Value::Null, d) => Err(format!("missing; expected {d}")),
        (v, d) if v.dtype() == Some(d) => Ok(v),
        (v, d) => Err(format!(
            "expected {d}, got {} {v}",
            v.dtype().map(|t| t.name()).unwrap_or("null")
        )),
    }
}
