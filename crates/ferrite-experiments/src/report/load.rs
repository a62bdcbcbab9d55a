//! Reading the exposures and outcomes with Polars, down to one row per unit.

use std::path::Path;

use polars::prelude::*;

use super::{ReportError, UnitOutcome, Units};

/// Joins the exposures with the outcomes in Polars: one row per unit at its first exposure,
/// with its outcomes at or after that exposure (all of them when the outcomes have no `time`).
pub fn load_units(
    exposures_dir: &Path,
    outcomes: &Path,
    experiment: Option<&str>,
) -> Result<Units, ReportError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |e: PolarsError| ReportError::Read {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    let files = crate::exposure::exposure_files(exposures_dir).map_err(|e| ReportError::Read {
        path: exposures_dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let no_exposures = || ReportError::NoExposures {
        dir: exposures_dir.to_path_buf(),
        experiment: experiment.map(str::to_string),
    };
    if files.is_empty() {
        return Err(no_exposures());
    }
    let paths = files
        .iter()
        .map(|p| PlRefPath::try_from_path(p).map_err(read(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let exposures = LazyFrame::scan_parquet_files(paths.into_iter().collect(), ScanArgsParquet::default())
        .map_err(read(exposures_dir))?
        .select([
            col("time").dt().timestamp(TimeUnit::Microseconds).alias("time"),
            col("experiment"),
            col("variant"),
            col("unit_id"),
        ]);
    let experiment = match experiment {
        Some(e) => e.to_string(),
        None => only_experiment(exposures.clone(), exposures_dir)?,
    };
    let exposures = exposures.filter(col("experiment").eq(lit(experiment.clone())));
    let first = exposures.group_by([col("unit_id")]).agg([
        col("variant")
            .sort_by([col("time")], SortMultipleOptions::default())
            .first()
            .alias("variant"),
        col("time").min().alias("first_exposure"),
        col("variant").n_unique().alias("variants"),
        len().alias("rows"),
    ]);
    let outcomes_frame = outcome_columns(outcomes)?;
    let has_chargeback = outcomes_frame.1;
    let outcome_in_window = if outcomes_frame.2 {
        col("outcome_time")
            .is_null()
            .or(col("outcome_time").gt_eq(col("first_exposure")))
    } else {
        lit(true)
    };
    let counted = |name: &str| {
        when(outcome_in_window.clone())
            .then(col(name))
            .otherwise(lit(0.0))
            .fill_null(lit(0.0))
    };
    let mut aggs = vec![
        col("variant").first(),
        col("first_exposure").first(),
        col("variants").first(),
        col("rows").first(),
        counted("converted").max().alias("converted"),
        counted("revenue").sum().alias("revenue"),
    ];
    if has_chargeback {
        aggs.push(counted("chargeback").max().alias("chargeback"));
    }
    let joined = first
        .left_join(outcomes_frame.0, col("unit_id"), col("unit_id"))
        .group_by([col("unit_id")])
        .agg(aggs)
        .sort(["first_exposure", "unit_id"], SortMultipleOptions::default())
        .collect()
        .map_err(read(outcomes))?;
    if joined.height() == 0 {
        return Err(ReportError::NoExposures {
            dir: exposures_dir.to_path_buf(),
            experiment: Some(experiment),
        });
    }
    frame_units(&joined, experiment, has_chargeback).map_err(read(outcomes))
}

fn only_experiment(exposures: LazyFrame, dir: &Path) -> Result<String, ReportError> {
    let names = exposures
        .select([col("experiment").unique()])
        .collect()
        .map_err(|e| ReportError::Read {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut names: Vec<String> = names
        .column("experiment")
        .and_then(|c| Ok(c.str()?.iter().flatten().map(str::to_string).collect()))
        .map_err(|e| ReportError::Read {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
    names.sort();
    match names.len() {
        0 => Err(ReportError::NoExposures {
            dir: dir.to_path_buf(),
            experiment: None,
        }),
        1 => Ok(names.remove(0)),
        _ => Err(ReportError::SeveralExperiments {
            found: names.join(", "),
        }),
    }
}

/// The outcomes as `unit_id`, `converted` and `revenue` (Float64), `chargeback` (Float64,
/// when present) and `outcome_time` (µs, when present); with whether each optional one is.
fn outcome_columns(path: &Path) -> Result<(LazyFrame, bool, bool), ReportError> {
    let read = |e: PolarsError| ReportError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let pl_path = PlRefPath::try_from_path(path).map_err(read)?;
    let mut scan = LazyFrame::scan_parquet(pl_path, ScanArgsParquet::default()).map_err(read)?;
    let schema = scan.collect_schema().map_err(read)?;
    let column =
        |column: &'static str, expected: &'static str, ok: fn(&DataType) -> bool| match schema.get(column) {
            None => Err(ReportError::MissingColumn {
                path: path.to_path_buf(),
                column,
                expected,
            }),
            Some(t) if !ok(t) => Err(ReportError::ColumnType {
                path: path.to_path_buf(),
                column,
                found: t.to_string(),
                expected,
            }),
            Some(_) => Ok(()),
        };
    let flag = |t: &DataType| t.is_bool() || t.is_integer();
    column("unit_id", "a string column of unit ids", |t| t.is_string())?;
    column("converted", "a boolean or 0/1 column", flag)?;
    column("revenue", "a numeric column", |t| t.is_primitive_numeric())?;
    let mut select = vec![
        col("unit_id"),
        col("converted").cast(DataType::Float64),
        col("revenue").cast(DataType::Float64),
    ];
    let has_chargeback = schema.contains("chargeback");
    if has_chargeback {
        column("chargeback", "a boolean or 0/1 column", flag)?;
        select.push(col("chargeback").cast(DataType::Float64));
    }
    let has_time = schema.contains("time");
    if has_time {
        column("time", "a datetime, or integer µs since the epoch", |t| {
            matches!(t, DataType::Datetime(..)) || t.is_integer()
        })?;
        let time = match schema.get("time") {
            Some(DataType::Datetime(..)) => col("time").dt().timestamp(TimeUnit::Microseconds),
            _ => col("time").cast(DataType::Int64),
        };
        select.push(time.alias("outcome_time"));
    }
    Ok((scan.select(select), has_chargeback, has_time))
}

fn frame_units(df: &DataFrame, experiment: String, has_chargeback: bool) -> PolarsResult<Units> {
    let f64s = |name: &str| -> PolarsResult<Vec<f64>> {
        Ok(df
            .column(name)?
            .cast(&DataType::Float64)?
            .f64()?
            .iter()
            .map(|v| v.unwrap_or(0.0))
            .collect())
    };
    let i64s = |name: &str| -> PolarsResult<Vec<i64>> {
        Ok(df
            .column(name)?
            .cast(&DataType::Int64)?
            .i64()?
            .iter()
            .map(|v| v.unwrap_or(0))
            .collect())
    };
    let strs = |name: &str| -> PolarsResult<Vec<String>> {
        Ok(df
            .column(name)?
            .str()?
            .iter()
            .map(|v| v.unwrap_or("").to_string())
            .collect())
    };
    let (unit_id, variant) = (strs("unit_id")?, strs("variant")?);
    let (first, variants, rows) = (i64s("first_exposure")?, i64s("variants")?, i64s("rows")?);
    let (converted, revenue) = (f64s("converted")?, f64s("revenue")?);
    let chargeback = if has_chargeback {
        Some(f64s("chargeback")?)
    } else {
        None
    };
    let mut units = Units {
        experiment,
        exposures: rows.iter().map(|&r| r as u64).sum(),
        contaminated: 0,
        units: Vec::with_capacity(df.height()),
    };
    for i in 0..df.height() {
        if variants[i] > 1 {
            units.contaminated += 1;
            continue;
        }
        units.units.push(UnitOutcome {
            unit_id: unit_id[i].clone(),
            variant: variant[i].clone(),
            first_exposure: first[i],
            converted: if converted[i] > 0.0 { 1.0 } else { 0.0 },
            revenue: revenue[i],
            chargeback: chargeback.as_ref().map(|c| if c[i] > 0.0 { 1.0 } else { 0.0 }),
        });
    }
    Ok(units)
}
