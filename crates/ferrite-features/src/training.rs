//! Point-in-time correct training sets (Feast's semantics): for each entity row at time t
//! and each feature view, the latest valid feature row with event time in [t − TTL, t]
//! (no lower bound without a TTL), ties broken by the later created time. Every input row
//! appears exactly once, in input order, with all its own columns.

use std::collections::{BTreeSet, HashSet};

use polars::prelude::*;

use crate::FeatureError;
use crate::definitions::{FeatureRef, FeatureView, Registry, key_type_matches};
use crate::frame::{column_values, frame_error, key_dtype, ts_micros, values_column, violates_any};
use crate::materialize::view_frame;
use crate::value::Value;

const ROW: &str = "__ferrite_row";
const LABEL_TS: &str = "__ferrite_label_ts";

fn key_col(k: &str) -> String {
    format!("__ferrite_key_{k}")
}

/// Builds the training set for `refs` over the entity rows in `entities`, whose event
/// time is in `timestamp_column`.
pub fn training_set(
    registry: &Registry,
    refs: &[FeatureRef],
    entities: LazyFrame,
    timestamp_column: &str,
) -> Result<DataFrame, FeatureError> {
    let err = |e: PolarsError| frame_error("training set", e);
    let mut entities = entities;
    let schema = entities.collect_schema().map_err(err)?;
    let invalid = |m: String| FeatureError::Invalid(m);
    match schema.get(timestamp_column) {
        None => {
            return Err(invalid(format!(
                "the entity rows have no timestamp column {timestamp_column:?}; they have {:?}",
                schema.iter_names().collect::<Vec<_>>()
            )));
        }
        Some(DataType::Datetime(_, _) | DataType::Date) => {}
        Some(t) => {
            return Err(invalid(format!(
                "timestamp column {timestamp_column:?} is {t}, not a Datetime or Date"
            )));
        }
    }
    let own: HashSet<String> = schema.iter_names().map(|n| n.to_string()).collect();
    for r in refs {
        if own.contains(r.feature_name()) {
            return Err(invalid(format!(
                "feature {} would overwrite the entity column {:?}",
                r.name(),
                r.feature_name()
            )));
        }
    }

    // Views in first-use order, with the features wanted from each.
    let mut views: Vec<(std::sync::Arc<FeatureView>, Vec<usize>)> = Vec::new();
    let mut need = |view: &std::sync::Arc<FeatureView>, index: usize| match views
        .iter_mut()
        .find(|(v, _)| v.name == view.name)
    {
        Some((_, idx)) if !idx.contains(&index) => idx.push(index),
        Some(_) => {}
        None => views.push((view.clone(), vec![index])),
    };
    for r in refs {
        match r {
            FeatureRef::Stored { view, index } => need(view, *index),
            FeatureRef::Request { view, index } => {
                for input in view.features[*index].expr.inputs() {
                    if let crate::expr::Input::Feature { view: v, feature } = input {
                        let fv = registry.view(v).map_err(FeatureError::NotFound)?;
                        let i = fv.feature_index(feature).ok_or_else(|| {
                            FeatureError::NotFound(format!("feature view {v:?} has no feature {feature:?}"))
                        })?;
                        need(fv, i);
                    }
                }
            }
        }
    }

    let mut keys = BTreeSet::new();
    for (view, _) in &views {
        for (k, kt) in view.join_keys.iter().zip(&view.key_types) {
            match schema.get(k) {
                None => {
                    return Err(invalid(format!(
                        "feature view {:?} needs the join key column {k:?} in the entity rows",
                        view.name
                    )));
                }
                Some(t) if !key_type_matches(*kt, t) => {
                    return Err(invalid(format!(
                        "entity column {k:?} is {t} but feature view {:?} joins on a {} key",
                        view.name,
                        kt.name()
                    )));
                }
                Some(_) => {
                    keys.insert((k.clone(), *kt));
                }
            }
        }
    }

    let mut helper: Vec<Expr> = vec![
        ts_micros(timestamp_column)
            .fill_null(lit(i64::MIN))
            .alias(LABEL_TS),
    ];
    helper.extend(
        keys.iter()
            .map(|(k, kt)| col(k.as_str()).cast(key_dtype(*kt)).alias(key_col(k))),
    );
    // The as-of join needs the entity rows in time order. Label tables usually come sorted
    // (as the sample transactions do): then neither the sort nor the sort back is needed.
    let left = entities
        .with_row_index(ROW, None)
        .with_columns(helper)
        .collect()
        .map_err(err)?;
    let in_time_order = {
        let ts = left.column(LABEL_TS).map_err(err)?.i64().map_err(err)?;
        let mut prev = i64::MIN;
        ts.iter().all(|t| {
            let t = t.unwrap_or(i64::MIN);
            let ok = t >= prev;
            prev = t;
            ok
        })
    };
    let mut frame = if in_time_order {
        left.lazy()
    } else {
        left.lazy().sort(
            [LABEL_TS],
            SortMultipleOptions::default().with_maintain_order(true),
        )
    };

    // Stored features under internal names, so a feature named like a column of another
    // view cannot collide; renamed at the end.
    let internal = |vi: usize, fi: usize| format!("__ferrite_f{vi}_{fi}");
    for (vi, (view, wanted)) in views.iter().enumerate() {
        let ts = format!("__ferrite_ts{vi}");
        let valid = match violates_any(view, col("__ts"), None) {
            Some(b) => view_frame(view)?.filter(b.not()),
            None => view_frame(view)?,
        };
        let mut cols: Vec<Expr> = view
            .join_keys
            .iter()
            .map(|k| col(k.as_str()).alias(key_col(k)))
            .collect();
        cols.push(col("__ts").alias(ts.as_str()));
        cols.push(col("__created"));
        for fi in wanted {
            cols.push(col(view.features[*fi].name.as_str()).alias(internal(vi, *fi)));
        }
        let right = valid
            .select(cols)
            .sort(
                [ts.as_str(), "__created"],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .drop(cols_selector(["__created"]));
        // Sorted by (event time, created time): for equal event times the backward as-of
        // join takes the last row, i.e. the latest created one (Polars picks the greatest
        // right index whose time is <= the label time).
        let by: Vec<PlSmallStr> = view
            .join_keys
            .iter()
            .map(|k| PlSmallStr::from(key_col(k)))
            .collect();
        let options = AsOfOptions {
            strategy: AsofStrategy::Backward,
            tolerance: (view.ttl > 0).then(|| Scalar::new(DataType::Int64, AnyValue::Int64(view.ttl))),
            tolerance_str: None,
            left_by: Some(by.clone()),
            right_by: Some(by),
            allow_eq: true,
            check_sortedness: false,
        };
        frame = frame
            .join_builder()
            .with(right)
            .left_on([col(LABEL_TS)])
            .right_on([col(ts.as_str())])
            .how(JoinType::AsOf(Box::new(options)))
            .finish()
            .drop(cols_selector([ts]));
    }
    let mut drop: Vec<String> = vec![LABEL_TS.to_string()];
    drop.extend(keys.iter().map(|(k, _)| key_col(k)));
    if !in_time_order {
        frame = frame.sort([ROW], SortMultipleOptions::default());
    }
    let mut df = frame.drop(cols_selector(drop)).collect().map_err(err)?;

    // Request-time features, row by row with the same evaluator as the online path.
    let mut request_cols = Vec::new();
    for r in refs {
        if let FeatureRef::Request { view, index } = r {
            let f = &view.features[*index];
            let mut inputs: Vec<Vec<Value>> = Vec::new();
            for input in f.expr.inputs() {
                inputs.push(match input {
                    crate::expr::Input::Request(name) => {
                        let dtype = view.request_fields[name];
                        let c = df.column(name).map_err(|_| {
                            invalid(format!(
                                "request feature {} needs the entity column {name:?} ({dtype})",
                                r.name()
                            ))
                        })?;
                        column_values(c, dtype).map_err(err)?
                    }
                    crate::expr::Input::Feature { view: v, feature } => {
                        let vi = views.iter().position(|(x, _)| x.name == *v).unwrap_or(0);
                        let (fv, _) = &views[vi];
                        let fi = fv.feature_index(feature).unwrap_or(0);
                        column_values(df.column(&internal(vi, fi)).map_err(err)?, fv.features[fi].dtype)
                            .map_err(err)?
                    }
                });
            }
            let mut out = Vec::with_capacity(df.height());
            let mut args: Vec<&Value> = Vec::with_capacity(inputs.len());
            for row in 0..df.height() {
                args.clear();
                args.extend(inputs.iter().map(|c| &c[row]));
                out.push(
                    f.expr
                        .eval(&args)
                        .ok()
                        .and_then(|v| v.coerce(f.dtype).ok())
                        .unwrap_or(Value::Null),
                );
            }
            request_cols.push(values_column(&f.name, f.dtype, &out).map_err(err)?);
        }
    }

    // Final columns: the entity rows' own, then the features in the order asked.
    let mut select: Vec<Expr> = schema.iter_names().map(|n| col(n.clone())).collect();
    let mut request_iter = request_cols.into_iter();
    let mut extra = Vec::new();
    for r in refs {
        match r {
            FeatureRef::Stored { view, index } => {
                let vi = views.iter().position(|(v, _)| v.name == view.name).unwrap_or(0);
                select.push(col(internal(vi, *index)).alias(view.features[*index].name.as_str()));
            }
            FeatureRef::Request { view, index } => {
                if let Some(c) = request_iter.next() {
                    extra.push(c);
                    select.push(col(view.features[*index].name.as_str()));
                }
            }
        }
    }
    if !extra.is_empty() {
        df.hstack_mut(&extra).map_err(err)?;
    }
    df.lazy().select(select).collect().map_err(err)
}

fn cols_selector<I: IntoIterator<Item = S>, S: Into<PlSmallStr>>(names: I) -> Selector {
    cols(names.into_iter().map(Into::into).collect::<Vec<PlSmallStr>>())
}

/// What `training_set_file` did.
#[derive(Debug, Clone)]
pub struct TrainingReport {
    /// Time to build the set in memory (read, join), before writing it.
    pub built: std::time::Duration,
    pub rows: usize,
    pub columns: Vec<String>,
    pub elapsed: std::time::Duration,
}

impl TrainingReport {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Reads entity rows from a Parquet file, builds the training set and writes it to `out`.
pub fn training_set_file(
    registry: &Registry,
    refs: &[FeatureRef],
    entities: &std::path::Path,
    timestamp_column: &str,
    out: &std::path::Path,
) -> Result<TrainingReport, FeatureError> {
    let started = std::time::Instant::now();
    let scan = crate::offline::ParquetSource::new(entities).scan()?;
    let mut df = training_set(registry, refs, scan, timestamp_column)?;
    let built = started.elapsed();
    let file = std::fs::File::create(out).map_err(|e| FeatureError::Offline {
        path: out.to_path_buf(),
        message: e.to_string(),
    })?;
    // Snappy: several times faster to write than the default zstd, read by every engine.
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Snappy)
        .finish(&mut df)
        .map_err(|e| FeatureError::Offline {
            path: out.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(TrainingReport {
        built,
        rows: df.height(),
        columns: df.get_column_names().iter().map(|c| c.to_string()).collect(),
        elapsed: started.elapsed(),
    })
}
