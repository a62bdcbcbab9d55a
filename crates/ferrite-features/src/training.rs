//! Point-in-time correct training sets (Feast's semantics): for each entity row at time t
//! and each feature view, the latest valid feature row with event time in [t − TTL, t]
//! (no lower bound without a TTL), ties broken by the later created time. Every input row
//! appears exactly once, in input order, with all its own columns.
//!
//! Polars reads the Parquet files; the join itself is done here, per view: the entity rows
//! and the view's valid rows are grouped by key (counting sort), each key's feature rows
//! sorted by (event time, created time), one binary search per entity row. The wanted
//! feature columns are then gathered by those rows a slice of entity rows at a time, and a
//! file is written slice by slice, so the answer is never whole in memory. Neither side's
//! wide frame is sorted or copied.

use std::collections::{BTreeSet, HashSet};

use polars::prelude::*;
use polars_arrow::array::Array;
use polars_arrow::bitmap::{Bitmap, MutableBitmap};

use crate::FeatureError;
use crate::definitions::{FeatureRef, FeatureView, Registry, key_type_matches};
use crate::frame::{column_values, frame_error, key_dtype, ts_micros, values_column, violates_any};
use crate::materialize::view_frame;
use crate::value::Value;

const LABEL_TS: &str = "__ferrite_label_ts";
const VALID: &str = "__ferrite_valid";

/// A stored feature's column while the set is built (view `vi`, feature `fi`), so that a
/// feature named like a column of another view cannot collide; renamed at the end.
fn internal(vi: usize, fi: usize) -> String {
    format!("__ferrite_f{vi}_{fi}")
}

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
    let joined = join(registry, refs, entities, timestamp_column)?;
    joined.assemble(0, joined.height())
}

/// A training set joined but not yet assembled: the entity rows, and per feature view the
/// wanted feature columns and, for each entity row, which of their rows it gets. Any run of
/// entity rows can then be assembled on its own, so a large set is written slice by slice.
struct Joined<'a> {
    refs: &'a [FeatureRef],
    /// The entity rows' own columns, in input order.
    own: Vec<PlSmallStr>,
    /// The entity rows (own columns only).
    left: DataFrame,
    /// Views in first-use order, with the features wanted from each.
    views: Vec<(std::sync::Arc<FeatureView>, Vec<usize>)>,
    joined: Vec<JoinedView>,
}

struct JoinedView {
    /// The view's wanted feature columns (`internal` names), one row per feature row.
    features: DataFrame,
    /// Per entity row, its feature row; null where `found` is unset.
    index: Vec<IdxSize>,
    found: Bitmap,
}

fn join<'a>(
    registry: &Registry,
    refs: &'a [FeatureRef],
    entities: LazyFrame,
    timestamp_column: &str,
) -> Result<Joined<'a>, FeatureError> {
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
    let df = entities.with_columns(helper).collect().map_err(err)?;

    // Each view in two steps here: (1) read the view's needed columns once, with a validity
    // flag from its data-quality rules; (2) find for each entity row the index of its
    // feature row (`point_in_time`). Then (3), as each slice of the set is assembled, the
    // wanted feature columns are gathered by those indices. Nothing sorts or copies the wide
    // frame.
    let label_ts = i64_values(df.column(LABEL_TS).map_err(err)?, i64::MIN).map_err(err)?;
    let mut clock = std::time::Instant::now();
    let mut lap = |what: &str, view: &str| {
        tracing::debug!(
            view,
            seconds = clock.elapsed().as_secs_f64(),
            "training set: {what}"
        );
        clock = std::time::Instant::now();
    };
    // The entity rows grouped by key, once per set of join keys.
    let mut grouped: Vec<(Vec<String>, EntityRows)> = Vec::new();
    let mut joined = Vec::with_capacity(views.len());
    for (vi, (view, wanted)) in views.iter().enumerate() {
        let valid = violates_any(view, col("__ts"), None)
            .map(|b| b.not())
            .unwrap_or(lit(true));
        let mut cols: Vec<Expr> = view
            .join_keys
            .iter()
            .map(|k| col(k.as_str()).alias(key_col(k)))
            .collect();
        cols.push(col("__ts"));
        cols.push(col("__created"));
        cols.push(valid.alias(VALID));
        for fi in wanted {
            cols.push(col(view.features[*fi].name.as_str()).alias(internal(vi, *fi)));
        }
        let rows = view_frame(view)?.select(cols).collect().map_err(err)?;
        lap("read", &view.name);
        let view_keys: Vec<String> = view.join_keys.iter().map(|k| key_col(k)).collect();
        let at = match grouped.iter().position(|(k, _)| *k == view_keys) {
            Some(at) => at,
            None => {
                let keys = KeyRows::of(&df, &view_keys).map_err(err)?;
                grouped.push((view_keys.clone(), EntityRows::new(keys, &label_ts)));
                grouped.len() - 1
            }
        };
        let right_keys = KeyRows::of(&rows, &view_keys).map_err(err)?;
        let (found, mask) = grouped[at]
            .1
            .point_in_time(&right_keys, &rows, view.ttl)
            .map_err(err)?;
        lap("join", &view.name);
        let features: Vec<PlSmallStr> = wanted.iter().map(|fi| internal(vi, *fi).into()).collect();
        // One chunk per column, so that each slice's gather does not join chunks again. The
        // view's other columns go first, so each column's chunks are freed as soon as it is
        // joined into one: the copy costs one column of memory, not the view's width.
        let mut features = rows.select(features).map_err(err)?;
        drop((rows, right_keys));
        features.rechunk_mut();
        joined.push(JoinedView {
            features,
            index: found,
            found: mask,
        });
    }
    let mut drop: Vec<String> = vec![LABEL_TS.to_string()];
    drop.extend(keys.iter().map(|(k, _)| key_col(k)));
    Ok(Joined {
        refs,
        own: schema.iter_names().cloned().collect(),
        left: df.drop_many(drop),
        views,
        joined,
    })
}

impl Joined<'_> {
    fn height(&self) -> usize {
        self.left.height()
    }

    /// The training set's rows `offset..offset + len`.
    fn assemble(&self, offset: usize, len: usize) -> Result<DataFrame, FeatureError> {
        let err = |e: PolarsError| frame_error("training set", e);
        let invalid = |m: String| FeatureError::Invalid(m);
        let (refs, views) = (self.refs, &self.views);
        let mut df = self.left.slice(offset as i64, len);
        for v in &self.joined {
            let index = v.index[offset..offset + len].to_vec();
            let gathered = gather(&v.features, index, v.found.clone().sliced(offset, len)).map_err(err)?;
            df.hstack_mut(&gathered).map_err(err)?;
        }

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
        let mut select: Vec<Expr> = self.own.iter().map(|n| col(n.clone())).collect();
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
}

/// Join key values per row: one integer key as is, any other keys as one string.
enum KeyRows {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
}

impl KeyRows {
    /// The keys `names` of `frame`'s rows (already cast to their key types); `None` where a
    /// key is null.
    fn of(frame: &DataFrame, names: &[String]) -> PolarsResult<KeyRows> {
        if let [name] = names
            && let c = frame.column(name)?
            && c.dtype() == &DataType::Int64
        {
            return Ok(KeyRows::Int(c.i64()?.iter().collect()));
        }
        // Each part length-prefixed, so no two different key tuples give the same string.
        let parts: Vec<Column> = names
            .iter()
            .map(|n| frame.column(n)?.cast(&DataType::String))
            .collect::<PolarsResult<_>>()?;
        let parts: Vec<&StringChunked> = parts.iter().map(|c| c.str()).collect::<PolarsResult<_>>()?;
        let rows = (0..frame.height())
            .map(|i| {
                let mut key = String::new();
                for p in &parts {
                    let v = p.get(i)?;
                    key.push_str(&v.len().to_string());
                    key.push(':');
                    key.push_str(v);
                }
                Some(key)
            })
            .collect();
        Ok(KeyRows::Text(rows))
    }
}

/// The entity rows grouped by key (counting sort): ids of the distinct keys, and per id a
/// run of (event time, entity row).
struct EntityRows {
    ids: KeyIds,
    start: Vec<usize>,
    rows: Vec<(i64, IdxSize)>,
    len: usize,
}

enum KeyIds {
    /// Integer keys in a range not much wider than the number of rows: a table.
    Dense {
        min: i64,
        ids: Vec<u32>,
        len: usize,
    },
    Int(PlHashMap<i64, u32>),
    Text(PlHashMap<String, u32>),
}

impl KeyIds {
    fn len(&self) -> usize {
        match self {
            KeyIds::Dense { len, .. } => *len,
            KeyIds::Int(m) => m.len(),
            KeyIds::Text(m) => m.len(),
        }
    }
}

/// Dense ids through a table indexed by `key − min`, when the keys' range allows one.
fn dense_table(keys: &[Option<i64>]) -> Option<(KeyIds, Vec<u32>)> {
    let (min, max) = keys
        .iter()
        .flatten()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &k| (lo.min(k), hi.max(k)));
    let width = usize::try_from(max.checked_sub(min)?).ok()?.checked_add(1)?;
    if width > (1 << 20).max(2 * keys.len()) {
        return None;
    }
    let mut ids = vec![NO_GROUP; width];
    let mut len = 0u32;
    let group = keys
        .iter()
        .map(|k| match k {
            Some(k) => {
                let slot = &mut ids[(k - min) as usize];
                if *slot == NO_GROUP {
                    *slot = len;
                    len += 1;
                }
                *slot
            }
            None => NO_GROUP,
        })
        .collect();
    Some((
        KeyIds::Dense {
            min,
            ids,
            len: len as usize,
        },
        group,
    ))
}

const NO_GROUP: u32 = u32::MAX;

fn dense_ids<K: std::hash::Hash + Eq + Clone>(keys: &[Option<K>]) -> (PlHashMap<K, u32>, Vec<u32>) {
    let mut ids: PlHashMap<K, u32> = PlHashMap::default();
    let group = keys
        .iter()
        .map(|k| match k {
            Some(k) => {
                let next = ids.len() as u32;
                *ids.entry(k.clone()).or_insert(next)
            }
            None => NO_GROUP,
        })
        .collect();
    (ids, group)
}

fn lookup<K: std::hash::Hash + Eq>(ids: &PlHashMap<K, u32>, keys: &[Option<K>]) -> Vec<u32> {
    keys.iter()
        .map(|k| k.as_ref().and_then(|k| ids.get(k)).copied().unwrap_or(NO_GROUP))
        .collect()
}

/// The rows that have a group id (`NO_GROUP` left out) laid out group after group, in row
/// order within a group (a counting sort): group `g` is `start[g]..start[g + 1]`, and each
/// row is represented by `entry(row)`.
fn counting_sort<T: Copy + Default>(
    group: &[u32],
    groups: usize,
    entry: impl Fn(usize) -> T,
) -> (Vec<usize>, Vec<T>) {
    let mut start = vec![0usize; groups + 1];
    for &g in group {
        if g != NO_GROUP {
            start[g as usize + 1] += 1;
        }
    }
    for g in 0..groups {
        start[g + 1] += start[g];
    }
    let mut next = start.clone();
    let mut out = vec![T::default(); start[groups]];
    for (row, &g) in group.iter().enumerate() {
        if g != NO_GROUP {
            out[next[g as usize]] = entry(row);
            next[g as usize] += 1;
        }
    }
    (start, out)
}

impl EntityRows {
    fn new(keys: KeyRows, ts: &[i64]) -> EntityRows {
        let (ids, group) = match &keys {
            KeyRows::Int(k) => dense_table(k).unwrap_or_else(|| {
                let (ids, g) = dense_ids(k);
                (KeyIds::Int(ids), g)
            }),
            KeyRows::Text(k) => {
                let (ids, g) = dense_ids(k);
                (KeyIds::Text(ids), g)
            }
        };
        let (start, rows) = counting_sort(&group, ids.len(), |l| (ts[l], l as IdxSize));
        EntityRows {
            ids,
            start,
            rows,
            len: ts.len(),
        }
    }

    /// For each entity row, the index in `right` of its feature row and whether there is
    /// one: among the valid rows with the same keys and event time in `[t − ttl, t]` (no
    /// lower bound when `ttl` is 0), the one with the greatest (event time, created time),
    /// the later file row on a full tie. `right` has `__ts`, `__created` and the validity
    /// flag; a null event time never matches.
    fn point_in_time(
        &self,
        keys: &KeyRows,
        right: &DataFrame,
        ttl: i64,
    ) -> PolarsResult<(Vec<IdxSize>, Bitmap)> {
        use rayon::prelude::*;

        let mut group = match (&self.ids, keys) {
            (KeyIds::Dense { min, ids, .. }, KeyRows::Int(k)) => k
                .iter()
                .map(|k| {
                    k.and_then(|k| usize::try_from(k.checked_sub(*min)?).ok())
                        .and_then(|i| ids.get(i).copied())
                        .unwrap_or(NO_GROUP)
                })
                .collect(),
            (KeyIds::Int(ids), KeyRows::Int(k)) => lookup(ids, k),
            (KeyIds::Text(ids), KeyRows::Text(k)) => lookup(ids, k),
            _ => polars_bail!(SchemaMismatch: "join keys of different types"),
        };
        let groups = self.start.len() - 1;
        let ts = i64_values(right.column("__ts")?, i64::MIN)?;
        let created = i64_values(right.column("__created")?, i64::MIN)?;
        let valid = right.column(VALID)?.bool()?;
        for ((g, t), v) in group.iter_mut().zip(&ts).zip(valid.iter()) {
            if *t == i64::MIN || v != Some(true) {
                *g = NO_GROUP;
            }
        }
        // The usable feature rows grouped the same way, each run sorted by (time, created,
        // row); the file is usually in time order already.
        let (start, mut sorted) = counting_sort(&group, groups, |r| (ts[r], created[r], r as IdxSize));
        split_runs(&mut sorted, &start)
            .into_par_iter()
            .for_each(|run| run.sort_unstable());

        // Per key, a binary search per entity row in that key's feature rows, which are
        // read from memory once for all of them.
        const NONE: IdxSize = IdxSize::MAX;
        let mut found = vec![NONE; self.rows.len()];
        split_runs(&mut found, &self.start)
            .into_par_iter()
            .enumerate()
            .for_each(|(g, out)| {
                let features = &sorted[start[g]..start[g + 1]];
                let entities = &self.rows[self.start[g]..self.start[g + 1]];
                for ((t, _), o) in entities.iter().zip(out.iter_mut()) {
                    let after = features.partition_point(|c| c.0 <= *t);
                    if let Some(&(at, _, row)) = after.checked_sub(1).map(|a| &features[a])
                        && (ttl == 0 || t.saturating_sub(at) <= ttl)
                    {
                        *o = row;
                    }
                }
            });
        let mut index = vec![0 as IdxSize; self.len];
        let mut mask = MutableBitmap::from_len_zeroed(self.len);
        for ((_, l), row) in self.rows.iter().zip(found) {
            if row != NONE {
                index[*l as usize] = row;
                mask.set(*l as usize, true);
            }
        }
        Ok((index, mask.freeze()))
    }
}

/// `v` cut into the consecutive runs `start[g]..start[g + 1]`.
fn split_runs<'a, T>(mut v: &'a mut [T], start: &[usize]) -> Vec<&'a mut [T]> {
    let mut runs = Vec::with_capacity(start.len().saturating_sub(1));
    for w in start.windows(2) {
        let (run, rest) = v.split_at_mut(w[1] - w[0]);
        runs.push(run);
        v = rest;
    }
    runs
}

/// An Int64 column's values, `null` for its nulls.
fn i64_values(c: &Column, null: i64) -> PolarsResult<Vec<i64>> {
    let mut out = Vec::with_capacity(c.len());
    for arr in c.i64()?.downcast_iter() {
        if arr.null_count() == 0 {
            out.extend_from_slice(arr.values());
        } else {
            out.extend(arr.iter().map(|v| v.copied().unwrap_or(null)));
        }
    }
    Ok(out)
}

/// `frame`'s rows at `index`, null where `found` is unset. Columns without nulls of the
/// common feature types take the plain gather and get `found` as their validity; the
/// others a gather by nullable indices.
fn gather(frame: &DataFrame, index: Vec<IdxSize>, found: Bitmap) -> PolarsResult<Vec<Column>> {
    use rayon::prelude::*;

    let len = index.len();
    if frame.height() == 0 {
        return Ok(frame
            .columns()
            .iter()
            .map(|c| Column::full_null(c.name().clone(), len, c.dtype()))
            .collect());
    }
    let validity = (found.unset_bits() > 0).then_some(found);
    let plain = IdxCa::from_vec(PlSmallStr::from_static("row"), index);
    let nullable = plain.clone().with_validity(validity.clone());
    frame
        .columns()
        .par_iter()
        .map(|c| {
            let c = c.rechunk();
            if c.has_nulls() {
                return c.take(&nullable);
            }
            let s = c.take(&plain)?.take_materialized_series();
            Ok(match s.dtype() {
                DataType::Int64 => s.i64()?.clone().with_validity(validity.clone()).into_column(),
                DataType::Float64 => s.f64()?.clone().with_validity(validity.clone()).into_column(),
                DataType::Boolean => s.bool()?.clone().with_validity(validity.clone()).into_column(),
                DataType::String => s.str()?.clone().with_validity(validity.clone()).into_column(),
                _ => c.take(&nullable)?,
            })
        })
        .collect()
}

/// What `training_set_file` did.
#[derive(Debug, Clone)]
pub struct TrainingReport {
    /// Time spent building the set (read, join, and assembling each slice), writing aside.
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

/// Entity rows assembled and written at a time: one Parquet row group (Polars' default
/// size), about 80 MB for 38 columns.
pub const SLICE_ROWS: usize = 512 * 512;

/// Reads entity rows from a Parquet file, builds the training set and writes it to `out`,
/// `SLICE_ROWS` entity rows at a time.
pub fn training_set_file(
    registry: &Registry,
    refs: &[FeatureRef],
    entities: &std::path::Path,
    timestamp_column: &str,
    out: &std::path::Path,
) -> Result<TrainingReport, FeatureError> {
    write_training_set(registry, refs, entities, timestamp_column, out, SLICE_ROWS)
}

/// `training_set_file` with slices of `slice_rows` entity rows (at least 1).
pub fn write_training_set(
    registry: &Registry,
    refs: &[FeatureRef],
    entities: &std::path::Path,
    timestamp_column: &str,
    out: &std::path::Path,
    slice_rows: usize,
) -> Result<TrainingReport, FeatureError> {
    let started = std::time::Instant::now();
    let scan = crate::offline::ParquetSource::new(entities).scan()?;
    let joined = join(registry, refs, scan, timestamp_column)?;
    let (height, step) = (joined.height(), slice_rows.max(1));
    // The first slice before the file: a request feature without its input column fails
    // here, and leaves no file behind.
    let mut slice = joined.assemble(0, step.min(height))?;
    let mut built = started.elapsed();
    let columns: Vec<String> = slice.get_column_names().iter().map(|c| c.to_string()).collect();
    let offline = |e: String| FeatureError::Offline {
        path: out.to_path_buf(),
        message: e,
    };
    let file = std::fs::File::create(out).map_err(|e| offline(e.to_string()))?;
    let written = (|| {
        // Snappy: several times faster to write than the default zstd, read by every engine.
        let mut writer = ParquetWriter::new(file)
            .with_compression(ParquetCompression::Snappy)
            .batched(slice.schema())
            .map_err(|e| offline(e.to_string()))?;
        let mut offset = 0;
        loop {
            // The writer wants the columns' chunks aligned; gathered columns are one chunk.
            slice.align_chunks_par();
            writer.write_batch(&slice).map_err(|e| offline(e.to_string()))?;
            offset += slice.height();
            if offset >= height {
                break;
            }
            let at = std::time::Instant::now();
            slice = joined.assemble(offset, step.min(height - offset))?;
            built += at.elapsed();
        }
        writer.finish().map_err(|e| offline(e.to_string()))?;
        Ok(())
    })();
    if let Err(e) = written {
        // Half a file would read as a smaller training set.
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    tracing::debug!(
        slices = height.div_ceil(step).max(1),
        built_seconds = built.as_secs_f64(),
        seconds = started.elapsed().as_secs_f64(),
        "training set: assembled and written"
    );
    Ok(TrainingReport {
        built,
        rows: height,
        columns,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Feature rows (key, time, created, valid) as the frame `point_in_time` reads.
    fn right_frame(rows: &[(Option<i64>, i64, i64, bool)]) -> DataFrame {
        DataFrame::new_infer_height(vec![
            Column::new("__ts".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
            Column::new("__created".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
            Column::new(VALID.into(), rows.iter().map(|r| r.3).collect::<Vec<_>>()),
        ])
        .unwrap()
    }

    fn naive(right: &[(Option<i64>, i64, i64, bool)], key: Option<i64>, t: i64, ttl: i64) -> Option<IdxSize> {
        let key = key?;
        right
            .iter()
            .enumerate()
            .filter(|(_, r)| r.0 == Some(key) && r.3 && r.1 <= t && (ttl == 0 || r.1 >= t - ttl))
            .max_by_key(|(i, r)| (r.1, r.2, *i))
            .map(|(i, _)| i as IdxSize)
    }

    fn run(
        left: KeyRows,
        right: KeyRows,
        left_ts: &[i64],
        frame: &DataFrame,
        ttl: i64,
    ) -> (Vec<Option<IdxSize>>, bool) {
        let rows = EntityRows::new(left, left_ts);
        let dense = matches!(rows.ids, KeyIds::Dense { .. });
        let (index, found) = rows.point_in_time(&right, frame, ttl).unwrap();
        let got = index
            .iter()
            .zip(found.iter())
            .map(|(i, f)| f.then_some(*i))
            .collect();
        (got, dense)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// The three key paths (range table, hash map, text) find the same rows as a naive
        /// scan, including null keys, invalid rows, full ties and keys missing on one side.
        #[test]
        fn key_paths_agree_with_a_naive_scan(
            right in prop::collection::vec((prop::option::weighted(0.9, 0i64..5), 0i64..20, 0i64..3, prop::bool::weighted(0.8)), 0..40),
            left in prop::collection::vec((prop::option::weighted(0.9, 0i64..6), 0i64..25), 0..30),
            ttl in prop_oneof![Just(0i64), 1i64..10],
        ) {
            let frame = right_frame(&right);
            let left_ts: Vec<i64> = left.iter().map(|l| l.1).collect();
            let want: Vec<Option<IdxSize>> = left.iter().map(|l| naive(&right, l.0, l.1, ttl)).collect();
            let ints = |keys: Vec<Option<i64>>, scale: i64| KeyRows::Int(keys.iter().map(|k| k.map(|k| k * scale)).collect());
            let texts = |keys: Vec<Option<i64>>| KeyRows::Text(keys.iter().map(|k| k.map(|k| format!("1:{k}"))).collect());
            let lk: Vec<Option<i64>> = left.iter().map(|l| l.0).collect();
            let rk: Vec<Option<i64>> = right.iter().map(|r| r.0).collect();

            let (got, dense) = run(ints(lk.clone(), 1), ints(rk.clone(), 1), &left_ts, &frame, ttl);
            prop_assert!(dense || lk.iter().all(Option::is_none));
            prop_assert_eq!(&got, &want);
            let (got, dense) = run(ints(lk.clone(), 1 << 40), ints(rk.clone(), 1 << 40), &left_ts, &frame, ttl);
            prop_assert!(!dense || lk.iter().flatten().all(|k| *k == lk.iter().flatten().next().copied().unwrap_or(0)));
            prop_assert_eq!(&got, &want);
            let (got, _) = run(texts(lk), texts(rk), &left_ts, &frame, ttl);
            prop_assert_eq!(&got, &want);
        }
    }
}
