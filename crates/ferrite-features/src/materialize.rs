//! Materialization: the latest valid row per entity in a time window, from the offline
//! store into the online store.

use std::time::{Duration, Instant};

use polars::prelude::*;

use crate::FeatureError;
use crate::definitions::{FeatureView, Registry, check_view};
use crate::frame::{
    column_values, frame_error, key_dtype, key_values, micros_values, ts_micros, violates_any,
    violation_reason,
};
use crate::online::{OnlineStore, RowKey, StoredRow, WriteRow};
use crate::value::{Micros, Value, encode_entity_key, format_micros};

/// Rows handed to the online store per write.
const WRITE_CHUNK: usize = 10_000;

/// What one materialization of one view did.
#[derive(Debug, Clone)]
pub struct MaterializeReport {
    pub view: String,
    pub start: Micros,
    pub end: Micros,
    /// Offline rows with an event time in the window.
    pub rows: u64,
    /// Rows that broke a data-quality rule and were not written.
    pub rejected: u64,
    /// Up to five rejected rows, described.
    pub examples: Vec<String>,
    /// Entities whose latest valid row was sent to the store.
    pub entities: u64,
    /// Rows the store took (older than what it holds are skipped; already expired are dropped).
    pub written: u64,
    pub elapsed: Duration,
}

impl MaterializeReport {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for MaterializeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} rows in [{}, {}), {} rejected, {} entities, {} written in {:.2} s ({:.0} rows/s)",
            self.view,
            self.rows,
            format_micros(self.start),
            format_micros(self.end),
            self.rejected,
            self.entities,
            self.written,
            self.elapsed.as_secs_f64(),
            self.rows_per_second()
        )?;
        for e in &self.examples {
            write!(f, "\n  rejected: {e}")?;
        }
        Ok(())
    }
}

const TS: &str = "__ts";
const CREATED: &str = "__created";

/// The view's rows as a lazy frame: join keys (as the key type), `__ts` and `__created`
/// in µs, and one column per feature named after it.
pub(crate) fn view_frame(view: &FeatureView) -> Result<LazyFrame, FeatureError> {
    let problems = check_view(view);
    if let Some(p) = problems.first() {
        return Err(FeatureError::Offline {
            path: view.source.path.clone(),
            message: p.message.clone(),
        });
    }
    let source = &view.source;
    let mut cols: Vec<Expr> = Vec::new();
    for (k, kt) in view.join_keys.iter().zip(&view.key_types) {
        cols.push(col(k.as_str()).cast(key_dtype(*kt)));
    }
    cols.push(ts_micros(&source.timestamp_field).alias(TS));
    cols.push(match &source.created_timestamp_field {
        Some(c) => ts_micros(c).alias(CREATED),
        None => lit(0i64).alias(CREATED),
    });
    for f in &view.features {
        cols.push(col(f.column.as_str()).alias(f.name.as_str()));
    }
    Ok(source.parquet().scan()?.select(cols))
}

/// Materializes one view's window `[start, end)` into `store`.
pub async fn materialize_view(
    store: &dyn OnlineStore,
    view: &FeatureView,
    start: Micros,
    end: Micros,
    progress: bool,
) -> Result<MaterializeReport, FeatureError> {
    let started = Instant::now();
    let owned = view.clone();
    let (rows, rejected, examples, latest) =
        tokio::task::spawn_blocking(move || select_latest(&owned, start, end))
            .await
            .map_err(|e| FeatureError::Offline {
                path: view.source.path.clone(),
                message: format!("query task failed: {e}"),
            })??;
    let err = |e: PolarsError| frame_error(&view.source.path.display().to_string(), e);
    let entities = latest.height() as u64;

    let bar = if progress {
        let bar = indicatif::ProgressBar::new(entities);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:40}] {pos}/{len} entities ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(view.name.clone());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut written = 0;
    for offset in (0..latest.height()).step_by(WRITE_CHUNK) {
        let chunk = latest.slice(offset as i64, WRITE_CHUNK);
        let batch = rows_of(view, &chunk).map_err(err)?;
        let n = batch.len() as u64;
        written += store.write(batch).await?;
        bar.inc(n);
    }
    bar.finish_and_clear();
    Ok(MaterializeReport {
        view: view.name.clone(),
        start,
        end,
        rows,
        rejected,
        examples,
        entities,
        written,
        elapsed: started.elapsed(),
    })
}

type Selected = (u64, u64, Vec<String>, DataFrame);

/// The Polars part of materialization (blocking): counts, rejected examples, and the
/// latest valid row per entity in the window.
fn select_latest(view: &FeatureView, start: Micros, end: Micros) -> Result<Selected, FeatureError> {
    let err = |e: PolarsError| frame_error(&view.source.path.display().to_string(), e);
    let window = view_frame(view)?.filter(col(TS).gt_eq(lit(start)).and(col(TS).lt(lit(end))));
    let broken = violates_any(view, col(TS), Some(end));

    // Pass 1: how many rows the window holds and how many break a rule.
    let counts = window
        .clone()
        .select([
            len().cast(DataType::Int64).alias("rows"),
            match &broken {
                Some(b) => b.clone().sum().cast(DataType::Int64),
                None => lit(0i64),
            }
            .alias("rejected"),
        ])
        .collect()
        .map_err(err)?;
    let first = |name: &str| -> Result<u64, FeatureError> {
        let c = counts.column(name).map_err(err)?;
        Ok(c.i64().map_err(err)?.get(0).unwrap_or(0).max(0) as u64)
    };
    let (rows, rejected) = (first("rows")?, first("rejected")?);
    let mut examples = Vec::new();
    if rejected > 0
        && let (Some(b), Some(r)) = (&broken, violation_reason(view, col(TS), Some(end)))
    {
        let mut cols: Vec<Expr> = view.join_keys.iter().map(|k| col(k.as_str())).collect();
        cols.push(col(TS));
        cols.push(r.alias("__reason"));
        let bad = window
            .clone()
            .filter(b.clone())
            .select(cols)
            .limit(5)
            .collect()
            .map_err(err)?;
        let reasons = bad.column("__reason").map_err(err)?.str().map_err(err)?.clone();
        let tss = micros_values(bad.column(TS).map_err(err)?).map_err(err)?;
        for (i, ts) in tss.iter().enumerate() {
            let keys: Vec<String> = view
                .join_keys
                .iter()
                .map(|k| {
                    format!(
                        "{k}={}",
                        bad.column(k)
                            .map(|c| c.get(i).map(|v| v.to_string()))
                            .ok()
                            .and_then(|v| v.ok())
                            .unwrap_or_default()
                    )
                })
                .collect();
            examples.push(format!(
                "{} at {}: {}",
                keys.join(","),
                ts.map(format_micros).unwrap_or_default(),
                reasons.get(i).unwrap_or("")
            ));
        }
    }

    // Pass 2: the latest valid row per entity (ties: the later created time).
    let valid = match broken {
        Some(b) => window.filter(b.not()),
        None => window,
    };
    let keys: Vec<Expr> = view.join_keys.iter().map(|k| col(k.as_str())).collect();
    let latest = valid
        .sort(
            [TS, CREATED],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .unique_stable_generic(Some(keys), UniqueKeepStrategy::Last)
        .collect()
        .map_err(err)?;
    Ok((rows, rejected, examples, latest))
}

/// Turns a frame from `view_frame` into rows to write.
fn rows_of(view: &FeatureView, df: &DataFrame) -> PolarsResult<Vec<WriteRow>> {
    let n = df.height();
    let mut keys = Vec::with_capacity(view.join_keys.len());
    for (k, kt) in view.join_keys.iter().zip(&view.key_types) {
        keys.push(key_values(df.column(k)?, *kt)?);
    }
    let ts = micros_values(df.column(TS)?)?;
    let created = micros_values(df.column(CREATED)?)?;
    let mut columns = Vec::with_capacity(view.features.len());
    for f in &view.features {
        columns.push(column_values(df.column(&f.name)?, f.dtype)?.into_iter());
    }
    let mut out = Vec::with_capacity(n);
    let mut key_row = Vec::with_capacity(keys.len());
    let name: std::sync::Arc<str> = std::sync::Arc::from(view.name.as_str());
    for i in 0..n {
        key_row.clear();
        let values: Vec<Value> = columns
            .iter_mut()
            .map(|c| c.next().unwrap_or(Value::Null))
            .collect();
        // Rows with a null key or time cannot be served.
        let Some(event_ts) = ts[i] else { continue };
        if keys.iter().any(|k| k[i].is_none()) {
            continue;
        }
        key_row.extend(keys.iter().filter_map(|k| k[i].clone()));
        let mut entity = String::new();
        encode_entity_key(&mut entity, &view.join_keys, &key_row);
        out.push(WriteRow {
            key: RowKey {
                view: name.clone(),
                entity: entity.into(),
            },
            row: StoredRow {
                event_ts,
                created_ts: created[i].unwrap_or(0),
                fingerprint: view.fingerprint,
                values,
            },
            expire_at: (view.ttl > 0).then(|| event_ts.saturating_add(view.ttl)),
        });
    }
    Ok(out)
}

/// Materializes `[start, end)` for the named views (all online views when empty) and
/// moves each view's watermark to `end`.
pub async fn materialize(
    registry: &Registry,
    store: &dyn OnlineStore,
    views: &[String],
    start: Micros,
    end: Micros,
    progress: bool,
) -> Result<Vec<MaterializeReport>, FeatureError> {
    let mut reports = Vec::new();
    for view in selected_views(registry, views)? {
        let report = materialize_view(store, view, start, end, progress).await?;
        store.set_watermark(&view.name, end).await?;
        reports.push(report);
    }
    Ok(reports)
}

/// Materializes each view from its watermark (or, the first time, from `end` − TTL, or
/// from the beginning when the view has no TTL) up to `end`.
pub async fn materialize_incremental(
    registry: &Registry,
    store: &dyn OnlineStore,
    views: &[String],
    end: Micros,
    progress: bool,
) -> Result<Vec<MaterializeReport>, FeatureError> {
    let mut reports = Vec::new();
    for view in selected_views(registry, views)? {
        let start = match store.watermark(&view.name).await? {
            Some(w) => w,
            None if view.ttl > 0 => end.saturating_sub(view.ttl),
            None => i64::MIN,
        };
        if start >= end {
            continue;
        }
        let report = materialize_view(store, view, start, end, progress).await?;
        store.set_watermark(&view.name, end).await?;
        reports.push(report);
    }
    Ok(reports)
}

fn selected_views<'a>(
    registry: &'a Registry,
    names: &[String],
) -> Result<Vec<&'a FeatureView>, FeatureError> {
    if names.is_empty() {
        return Ok(registry
            .views
            .values()
            .filter(|v| v.online)
            .map(|v| v.as_ref())
            .collect());
    }
    names
        .iter()
        .map(|n| {
            registry
                .view(n)
                .map(|v| v.as_ref())
                .map_err(FeatureError::NotFound)
        })
        .collect()
}
