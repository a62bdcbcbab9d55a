//! Glue between Polars frames and feature values: timestamps, typed columns, and the
//! data-quality rules as Polars expressions.

use polars::prelude::*;

use crate::FeatureError;
use crate::definitions::{FeatureView, Rules};
use crate::value::{DType, KeyType, KeyValue, Micros, Value};

/// A Datetime or Date column as microseconds since the epoch (Int64).
pub fn ts_micros(name: &str) -> Expr {
    col(name).dt().timestamp(TimeUnit::Microseconds)
}

pub fn frame_error(what: &str, e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Offline {
        path: what.into(),
        message: e.to_string(),
    }
}

/// The Polars type a join key is compared as.
pub fn key_dtype(kt: KeyType) -> DataType {
    match kt {
        KeyType::Int => DataType::Int64,
        KeyType::String => DataType::String,
    }
}

/// Reads a column as feature values of `dtype`.
pub fn column_values(c: &Column, dtype: DType) -> PolarsResult<Vec<Value>> {
    Ok(match dtype {
        DType::Int => {
            let c = c.cast(&DataType::Int64)?;
            c.i64()?
                .iter()
                .map(|v| v.map_or(Value::Null, Value::Int))
                .collect()
        }
        DType::Float => {
            let c = c.cast(&DataType::Float64)?;
            c.f64()?
                .iter()
                .map(|v| v.map_or(Value::Null, Value::Float))
                .collect()
        }
        DType::String => c
            .str()?
            .iter()
            .map(|v| v.map_or(Value::Null, |s| Value::Str(s.to_string())))
            .collect(),
        DType::Bool => c
            .bool()?
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Bool))
            .collect(),
        DType::FloatVector => {
            let c = c.cast(&DataType::List(Box::new(DataType::Float32)))?;
            let list = c.list()?;
            let mut out = Vec::with_capacity(list.len());
            for i in 0..list.len() {
                out.push(match list.get_as_series(i) {
                    None => Value::Null,
                    Some(s) => Value::FloatVec(s.f32()?.iter().map(|x| x.unwrap_or(f32::NAN)).collect()),
                });
            }
            out
        }
    })
}

/// Reads a join-key column; `None` for null keys.
pub fn key_values(c: &Column, kt: KeyType) -> PolarsResult<Vec<Option<KeyValue>>> {
    Ok(match kt {
        KeyType::Int => {
            let c = c.cast(&DataType::Int64)?;
            c.i64()?.iter().map(|v| v.map(KeyValue::Int)).collect()
        }
        KeyType::String => c
            .str()?
            .iter()
            .map(|v| v.map(|s| KeyValue::Str(s.to_string())))
            .collect(),
    })
}

pub fn micros_values(c: &Column) -> PolarsResult<Vec<Option<Micros>>> {
    let c = c.cast(&DataType::Int64)?;
    Ok(c.i64()?.iter().collect())
}

/// Builds a column of feature values (nulls where the value is `Null`).
pub fn values_column(name: &str, dtype: DType, values: &[Value]) -> PolarsResult<Column> {
    let name = PlSmallStr::from(name);
    Ok(match dtype {
        DType::Int => Column::new(
            name,
            values
                .iter()
                .map(|v| v.as_f64().map(|_| int_of(v)))
                .collect::<Vec<_>>(),
        ),
        DType::Float => Column::new(name, values.iter().map(Value::as_f64).collect::<Vec<_>>()),
        DType::String => Column::new(
            name,
            values
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        DType::Bool => Column::new(
            name,
            values
                .iter()
                .map(|v| match v {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        DType::FloatVector => {
            let series: Vec<Option<Series>> = values
                .iter()
                .map(|v| match v {
                    Value::FloatVec(xs) => Some(Series::new(PlSmallStr::EMPTY, xs.as_slice())),
                    _ => None,
                })
                .collect();
            let mut s = Series::new(name.clone(), series);
            if s.dtype() != &DataType::List(Box::new(DataType::Float32)) {
                s = s.cast(&DataType::List(Box::new(DataType::Float32)))?;
            }
            s.into()
        }
    })
}

fn int_of(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::Float(f) => *f as i64,
        _ => 0,
    }
}

fn rule_checks(feature: &str, column: Expr, dtype: DType, rules: &Rules) -> Vec<(Expr, String)> {
    let mut out = Vec::new();
    if rules.not_null {
        out.push((column.clone().is_null(), format!("{feature}: is null")));
    }
    // NaN and ±inf are never stored, as on push (`Rules::check`).
    if dtype == DType::Float {
        out.push((
            column.clone().is_finite().not().fill_null(lit(false)),
            format!("{feature}: not a finite number (NaN or inf)"),
        ));
    }
    if dtype == DType::FloatVector {
        // A sum is NaN or ±inf when an element is (and, far beyond any embedding's values,
        // when it overflows f32).
        out.push((
            column
                .clone()
                .list()
                .sum()
                .is_finite()
                .not()
                .fill_null(lit(false)),
            format!("{feature}: an element is not a finite number (NaN or inf)"),
        ));
    }
    if let Some(min) = rules.min {
        out.push((
            column.clone().lt(lit(min)).fill_null(lit(false)),
            format!("{feature}: below the minimum {min}"),
        ));
    }
    if let Some(max) = rules.max {
        out.push((
            column.clone().gt(lit(max)).fill_null(lit(false)),
            format!("{feature}: above the maximum {max}"),
        ));
    }
    if let Some(allowed) = &rules.allowed {
        let series = match dtype {
            DType::Int => Series::new("allowed".into(), allowed.iter().map(int_of).collect::<Vec<_>>()),
            DType::Bool => Series::new(
                "allowed".into(),
                allowed
                    .iter()
                    .map(|v| matches!(v, Value::Bool(true)))
                    .collect::<Vec<_>>(),
            ),
            _ => Series::new(
                "allowed".into(),
                allowed
                    .iter()
                    .map(|v| match v {
                        Value::Str(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>(),
            ),
        };
        let listed: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
        out.push((
            column
                .is_in(lit(series).implode(false), false)
                .not()
                .fill_null(lit(false)),
            format!("{feature}: not one of [{}]", listed.join(", ")),
        ));
    }
    out
}

fn all_checks(view: &FeatureView, ts: &Expr, reference: Option<Micros>) -> Vec<(Expr, String)> {
    let mut checks = Vec::new();
    for f in &view.features {
        checks.extend(rule_checks(&f.name, col(f.name.as_str()), f.dtype, &f.rules));
        if let (Some(limit), Some(now)) = (f.rules.max_staleness, reference) {
            checks.push((
                ts.clone().lt(lit(now - limit)).fill_null(lit(false)),
                format!("{}: older than the maximum staleness", f.name),
            ));
        }
    }
    checks
}

/// True for rows that break any rule (cheap: no message per row); `None` without rules.
pub fn violates_any(view: &FeatureView, ts: Expr, reference: Option<Micros>) -> Option<Expr> {
    all_checks(view, &ts, reference)
        .into_iter()
        .map(|(cond, _)| cond)
        .reduce(|a, b| a.or(b))
}

/// An expression giving, per row, the first rule the row breaks (a string), or null.
/// `ts` is the row's event time in µs and `reference` the ingestion time for staleness;
/// without a reference, staleness is not checked (training sets).
pub fn violation_reason(view: &FeatureView, ts: Expr, reference: Option<Micros>) -> Option<Expr> {
    let checks = all_checks(view, &ts, reference);
    if checks.is_empty() {
        return None;
    }
    // The first broken rule wins: nest from the last check outwards.
    let mut reason = lit(NULL).cast(DataType::String);
    for (cond, msg) in checks.into_iter().rev() {
        reason = when(cond).then(lit(msg)).otherwise(reason);
    }
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken(df: DataFrame, feature: &str, dtype: DType, rules: &Rules) -> Vec<bool> {
        let cond = rule_checks(feature, col(feature), dtype, rules)
            .into_iter()
            .map(|(c, _)| c)
            .reduce(|a, b| a.or(b))
            .unwrap();
        let out = df.lazy().select([cond.alias("broken")]).collect().unwrap();
        out.column("broken")
            .unwrap()
            .bool()
            .unwrap()
            .iter()
            .map(|b| b.unwrap_or(false))
            .collect()
    }

    #[test]
    fn non_finite_floats_and_vector_elements_break_the_rules() {
        let x = [
            Some(1.0),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            Some(f64::NAN),
            Some(0.0),
            None,
        ];
        let df = DataFrame::new_infer_height(vec![Column::new("x".into(), x)]).unwrap();
        let min0 = Rules {
            min: Some(0.0),
            ..Rules::default()
        };
        assert_eq!(
            broken(df.clone(), "x", DType::Float, &min0),
            [false, true, true, true, false, false]
        );
        assert_eq!(
            broken(df, "x", DType::Float, &Rules::default()),
            [false, true, true, true, false, false]
        );
        let vectors = [
            vec![Value::FloatVec(vec![0.5, -1.0])],
            vec![Value::FloatVec(vec![1.0, f32::NAN])],
            vec![Value::FloatVec(vec![f32::INFINITY])],
            vec![Value::FloatVec(vec![])],
            vec![Value::Null],
        ];
        let values: Vec<Value> = vectors.into_iter().flatten().collect();
        let df = DataFrame::new_infer_height(vec![values_column("v", DType::FloatVector, &values).unwrap()])
            .unwrap();
        assert_eq!(
            broken(df, "v", DType::FloatVector, &Rules::default()),
            [false, true, true, false, false]
        );
    }
}
