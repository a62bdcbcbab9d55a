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
        let outcomes = store.write(batch).await?;
        crate::online::check_answers(store.kind(), "write", n as usize, outcomes.len())?;
        written += outcomes
            .iter()
            .filter(|o| **o == crate::online::WriteOutcome::Written)
            .count() as u64;
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

/// Source rows read at once. Each pass over the source reads it in slices of this many rows,
/// so memory holds one slice of the source's columns and the small columns of the whole
/// window, never the whole source (3.2 M rows x 27 columns is 0.7 GiB).
const SLICE_ROWS: usize = 1 << 19;

const ROW: &str = "__row";

/// The Polars part of materialization (blocking): counts, rejected examples, and the
/// latest valid row per entity in the window.
///
/// Pass 1 reads, slice by slice, what the choice needs: join keys, times, the source row
/// number and whether the row breaks a rule; the latest valid row per entity is chosen
/// on those small columns. Pass 2 reads the slices again and keeps only the chosen rows.
fn select_latest(view: &FeatureView, start: Micros, end: Micros) -> Result<Selected, FeatureError> {
    // The passes number the source's rows; files added or replaced in between (a push to
    // the offline store, a new partition) can move those numbers, and a moved row is seen
    // when pass 2 reads it. Then the selection runs again.
    for _ in 0..3 {
        if let Some(selected) = select_latest_in(view, start, end, SLICE_ROWS)? {
            return Ok(selected);
        }
        tracing::info!(view = %view.name, "the source changed while materializing; selecting again");
    }
    Err(FeatureError::Offline {
        path: view.source.path.clone(),
        message: "the source's files changed during each of 3 attempts to materialize it; run again".into(),
    })
}

/// `select_latest` reading `slice_rows` source rows at once; `None` when the source changed
/// between the passes.
fn select_latest_in(
    view: &FeatureView,
    start: Micros,
    end: Micros,
    slice_rows: usize,
) -> Result<Option<Selected>, FeatureError> {
    let err = |e: PolarsError| frame_error(&view.source.path.display().to_string(), e);
    let total = view_frame(view)?
        .select([len().cast(DataType::Int64).alias("n")])
        .collect()
        .map_err(err)?
        .column("n")
        .map_err(err)?
        .i64()
        .map_err(err)?
        .get(0)
        .unwrap_or(0)
        .max(0) as usize;
    let slice = |offset: usize| window_slice(view, start, end, offset, slice_rows);
    let broken = violates_any(view, col(TS), Some(end));
    let keys: Vec<Expr> = view.join_keys.iter().map(|k| col(k.as_str())).collect();

    // Pass 1.
    let mut small = keys.clone();
    small.extend([col(TS), col(CREATED), col(ROW)]);
    small.push(broken.clone().unwrap_or(lit(false)).alias("__broken"));
    let (mut rows, mut rejected) = (0u64, 0u64);
    let mut examples = Vec::new();
    let mut valid = Vec::new();
    for offset in (0..total).step_by(slice_rows) {
        let part = slice(offset)?.select(small.clone()).collect().map_err(err)?;
        let bad = part.column("__broken").map_err(err)?.bool().map_err(err)?.clone();
        let bad_here = bad.sum().unwrap_or(0) as u64;
        rows += part.height() as u64;
        rejected += bad_here;
        if bad_here > 0 && examples.len() < 5 {
            examples.extend(rejected_examples(view, slice(offset)?, end, 5 - examples.len())?);
        }
        valid.push(part.filter(&!&bad).map_err(err)?.lazy());
    }
    // The latest valid row per entity (ties: the later created time, then the later row),
    // by row number.
    let picked = match valid.len() {
        0 => None,
        _ => Some(
            concat(valid, UnionArgs::default())
                .map_err(err)?
                .sort(
                    [TS, CREATED, ROW],
                    SortMultipleOptions::default().with_maintain_order(true),
                )
                .unique_stable_generic(Some(keys), UniqueKeepStrategy::Last)
                .sort([ROW], SortMultipleOptions::default())
                .select([col(ROW), col(TS), col(CREATED)])
                .collect()
                .map_err(err)?,
        ),
    };
    let latest = match picked {
        None => view_frame(view)?.limit(0).collect().map_err(err)?,
        Some(picked) => match read_chosen(view, start, end, slice_rows, &picked)? {
            Some(latest) => latest,
            None => return Ok(None),
        },
    };
    Ok(Some((rows, rejected, examples, latest)))
}

/// The source's rows `offset..offset + slice_rows`, numbered from `offset` (column `__row`),
/// those in the window `[start, end)`.
fn window_slice(
    view: &FeatureView,
    start: Micros,
    end: Micros,
    offset: usize,
    slice_rows: usize,
) -> Result<LazyFrame, FeatureError> {
    Ok(view_frame(view)?
        .slice(offset as i64, slice_rows as IdxSize)
        .with_row_index(ROW, Some(offset as IdxSize))
        .filter(col(TS).gt_eq(lit(start)).and(col(TS).lt(lit(end)))))
}

/// Pass 2: only the slices that hold `picked` rows (row numbers, sorted, with their times),
/// and of them only those rows. `None` if what is read under those numbers is not what pass 1
/// saw there.
fn read_chosen(
    view: &FeatureView,
    start: Micros,
    end: Micros,
    slice_rows: usize,
    picked: &DataFrame,
) -> Result<Option<DataFrame>, FeatureError> {
    let err = |e: PolarsError| frame_error(&view.source.path.display().to_string(), e);
    let chosen: Vec<IdxSize> = picked
        .column(ROW)
        .map_err(err)?
        .idx()
        .map_err(err)?
        .into_no_null_iter()
        .collect();
    let mut parts = Vec::new();
    let mut next = 0;
    while next < chosen.len() {
        let offset = chosen[next] as usize / slice_rows * slice_rows;
        let here = chosen[next..].partition_point(|&r| (r as usize) < offset + slice_rows);
        let wanted = Series::new(ROW.into(), &chosen[next..next + here]);
        parts.push(
            window_slice(view, start, end, offset, slice_rows)?
                .filter(col(ROW).is_in(lit(wanted).implode(false), false))
                .collect()
                .map_err(err)?
                .lazy(),
        );
        next += here;
    }
    if parts.is_empty() {
        return Ok(Some(view_frame(view)?.limit(0).collect().map_err(err)?));
    }
    let read = concat(parts, UnionArgs::default())
        .map_err(err)?
        .collect()
        .map_err(err)?;
    let seen = read.select([ROW, TS, CREATED]).map_err(err)?;
    if !seen.equals_missing(picked) {
        return Ok(None);
    }
    Ok(Some(read.drop(ROW).map_err(err)?))
}

/// Up to `limit` rows of `window` that break a rule, described with the first rule each breaks.
fn rejected_examples(
    view: &FeatureView,
    window: LazyFrame,
    end: Micros,
    limit: usize,
) -> Result<Vec<String>, FeatureError> {
    let err = |e: PolarsError| frame_error(&view.source.path.display().to_string(), e);
    let (Some(b), Some(r)) = (
        violates_any(view, col(TS), Some(end)),
        violation_reason(view, col(TS), Some(end)),
    ) else {
        return Ok(Vec::new());
    };
    let mut cols: Vec<Expr> = view.join_keys.iter().map(|k| col(k.as_str())).collect();
    cols.push(col(TS));
    cols.push(r.alias("__reason"));
    let bad = window
        .filter(b)
        .select(cols)
        .limit(limit as IdxSize)
        .collect()
        .map_err(err)?;
    let reasons = bad.column("__reason").map_err(err)?.str().map_err(err)?.clone();
    let tss = micros_values(bad.column(TS).map_err(err)?).map_err(err)?;
    let mut examples = Vec::new();
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
    Ok(examples)
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
        store.set_watermark(&watermark_key(view), end).await?;
        reports.push(report);
    }
    Ok(reports)
}

/// The name a view's watermark is kept under: the view's name and its stored layout. Rows
/// written under another layout are unreadable to this one, so a changed view (a feature
/// added, removed or retyped) is materialized again from the start of its window instead of
/// from a watermark its stored rows no longer match.
pub fn watermark_key(view: &FeatureView) -> String {
    format!("{}@{:016x}", view.name, view.fingerprint)
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
        let start = match store.watermark(&watermark_key(view)).await? {
            Some(w) => w,
            None if view.ttl > 0 => end.saturating_sub(view.ttl),
            None => i64::MIN,
        };
        if start >= end {
            continue;
        }
        let report = materialize_view(store, view, start, end, progress).await?;
        store.set_watermark(&watermark_key(view), end).await?;
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

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_data;

#[cfg(test)]
mod tests {
    use super::test_data::*;
    use super::*;
    use crate::Registry;

    /// (user, amount_avg) of every chosen row, by user.
    fn chosen(
        view: &FeatureView,
        start: Micros,
        end: Micros,
        slice_rows: usize,
    ) -> (u64, u64, Vec<(i64, f64)>) {
        let (rows, rejected, _, latest) = select_latest_in(view, start, end, slice_rows).unwrap().unwrap();
        let users = latest.column("user_id").unwrap().i64().unwrap().clone();
        let amounts = latest.column("amount_avg").unwrap().f64().unwrap().clone();
        let mut out: Vec<(i64, f64)> = users
            .into_no_null_iter()
            .zip(amounts.into_no_null_iter())
            .collect();
        out.sort_by_key(|(u, _)| *u);
        (rows, rejected, out)
    }

    #[test]
    fn the_same_rows_are_chosen_whatever_the_slice_size() {
        let now = crate::value::now_micros();
        let t = now - 10 * MINUTE;
        let mut null_count = row(5, t, t, 1.0, 1, "DE");
        null_count.txn_count = None;
        // Each user's rows are spread over the file, so small slices split them.
        let rows = vec![
            row(1, t - 30 * MINUTE, t, 10.0, 1, "DE"),
            row(2, t, t + 1, 5.0, 3, "FR"),
            row(3, t - 20 * MINUTE, t, 7.0, 1, "DE"),
            row(4, now + MINUTE, now, 1.0, 1, "DE"), // after the window
            row(1, t, t, 20.0, 2, "DE"),             // user 1: the later event
            row(2, t, t + 2, 6.0, 4, "FR"),          // user 2: the later created ...
            row(3, t, t, -1.0, 2, "DE"),             // breaks min = 0: user 3 keeps 7.0
            null_count,                              // user 5: breaks not_null, nothing chosen
            row(2, t, t + 2, 6.5, 5, "FR"),          // ... and of equal ones, the later row
            row(6, t - 5 * MINUTE, t, 3.0, 1, "FR"),
        ];
        let (_dir, root) = repo(&rows);
        let registry = Registry::load(&root, None).unwrap();
        let view = registry.view("stats").unwrap();
        let expected = (9, 2, vec![(1, 20.0), (2, 6.5), (3, 7.0), (6, 3.0)]);
        for slice_rows in [1, 2, 3, 4, 7, SLICE_ROWS] {
            assert_eq!(
                chosen(view, now - 60 * MINUTE, now, slice_rows),
                expected,
                "{slice_rows} rows a slice"
            );
        }
        // Pass 2 checks that the numbered rows are still the ones pass 1 chose: here rows
        // 2, 4, 8 and 9 (users 3, 1, 2 and 6).
        let picked = |ts_of_row_8: i64| {
            DataFrame::new_infer_height(vec![
                Column::new(ROW.into(), [2 as IdxSize, 4, 8, 9]),
                Column::new(TS.into(), [t - 20 * MINUTE, t, ts_of_row_8, t - 5 * MINUTE]),
                Column::new(CREATED.into(), [t, t, t + 2, t]),
            ])
            .unwrap()
        };
        let start = now - 60 * MINUTE;
        let read = read_chosen(view, start, now, 3, &picked(t))
            .unwrap()
            .expect("the same rows");
        assert_eq!(read.height(), 4);
        assert!(
            read.column(ROW).is_err(),
            "row numbers are not part of the answer"
        );
        assert!(
            read_chosen(view, start, now, 3, &picked(t - 1))
                .unwrap()
                .is_none(),
            "a row that is not what pass 1 saw means the source changed"
        );

        // A window with no rows chooses none, with the view's columns.
        let (rows, rejected, examples, latest) = select_latest_in(view, 0, 1, 3).unwrap().unwrap();
        assert_eq!((rows, rejected, examples.len(), latest.height()), (0, 0, 0, 0));
        assert!(latest.column("amount_avg").is_ok());
    }
}
