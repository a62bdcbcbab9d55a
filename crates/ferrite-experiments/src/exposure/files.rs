//! The exposure files: names, the Parquet schema, writing one whole and reading it back.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::{ExposureError, ExposureRecord, io_error};

/// `exposures-<start, UTC, to the microsecond>-<seq>.parquet`; names sort by start then seq.
pub fn file_name(started_micros: i64, seq: u64) -> String {
    format!("exposures-{}-{seq:06}.parquet", utc_stamp(started_micros))
}

/// Part `k` of segment `seq`: `exposures-<start>-<seq>-part<k>.parquet`.
pub fn part_name(started_micros: i64, seq: u64, k: u64) -> String {
    format!(
        "exposures-{}-{seq:06}-part{k:06}.parquet",
        utc_stamp(started_micros)
    )
}

/// The whole file a part belongs to, when `name` is a part's.
fn whole_of(name: &str) -> Option<String> {
    let (stem, _) = name.strip_suffix(".parquet")?.rsplit_once("-part")?;
    Some(format!("{stem}.parquet"))
}

pub(super) fn write_file(dir: &Path, name: &str, rows: &[ExposureRecord]) -> Result<(), ExposureError> {
    let mut df = to_frame(rows).map_err(|e| io_error(&dir.join(name), e))?;
    write_frame(dir, name, &mut df)
}

/// Writes the rows of `parts` (exposure files, in order) as one file `name`, a part at a time
/// (each part a row group): memory holds one part, not the segment.
pub(super) fn merge_parts(dir: &Path, name: &str, parts: &[PathBuf]) -> Result<(), ExposureError> {
    let read = |part: &PathBuf| -> Result<DataFrame, ExposureError> {
        let input = std::fs::File::open(part).map_err(|e| io_error(part, e))?;
        ParquetReader::new(input).finish().map_err(|e| io_error(part, e))
    };
    let Some((first, rest)) = parts.split_first() else {
        return Ok(());
    };
    let first = read(first)?;
    write_atomically(dir, name, |file, tmp| {
        let failed = |e: PolarsError| io_error(tmp, e);
        let mut writer = parquet_writer(file).batched(first.schema()).map_err(failed)?;
        writer.write_batch(&first).map_err(failed)?;
        for part in rest {
            writer.write_batch(&read(part)?).map_err(failed)?;
        }
        writer.finish().map(|_| ()).map_err(failed)
    })
}

fn write_frame(dir: &Path, name: &str, df: &mut DataFrame) -> Result<(), ExposureError> {
    write_atomically(dir, name, |file, tmp| {
        parquet_writer(file)
            .finish(df)
            .map(|_| ())
            .map_err(|e| io_error(tmp, e))
    })
}

// Serial: a part holds about a second's rows; encoding its columns in Polars' thread pool
// took the same instructions (callgrind, BENCHMARKS.md §8) and woke two more threads.
fn parquet_writer(file: std::fs::File) -> ParquetWriter<std::fs::File> {
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Snappy)
        .set_parallel(false)
}

/// Runs `write` on a hidden temporary file in `dir` (given its path, for errors) and renames
/// it to `name` when it succeeds (removes it when not), so that readers only ever see whole
/// files.
fn write_atomically(
    dir: &Path,
    name: &str,
    write: impl FnOnce(std::fs::File, &Path) -> Result<(), ExposureError>,
) -> Result<(), ExposureError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let file = std::fs::File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    if let Err(e) = write(file, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))
}

/// The exposure log's Parquet schema as a frame.
pub fn to_frame(rows: &[ExposureRecord]) -> PolarsResult<DataFrame> {
    let s = |f: fn(&ExposureRecord) -> &str| rows.iter().map(f).collect::<Vec<_>>();
    let time = Column::new("time".into(), rows.iter().map(|r| r.time).collect::<Vec<_>>())
        .cast(&DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)))?;
    DataFrame::new_infer_height(vec![
        time,
        Column::new("experiment".into(), s(|r| &r.experiment)),
        Column::new("variant".into(), s(|r| &r.variant)),
        Column::new("unit_id".into(), s(|r| &r.unit_id)),
        Column::new("request_id".into(), s(|r| &r.request_id)),
        Column::new("model".into(), s(|r| &r.model)),
        Column::new("model_version".into(), s(|r| &r.model_version)),
        Column::new("score".into(), rows.iter().map(|r| r.score).collect::<Vec<_>>()),
        Column::new(
            "decision".into(),
            rows.iter().map(|r| r.decision.as_deref()).collect::<Vec<_>>(),
        ),
        Column::new(
            "latency_us".into(),
            rows.iter().map(|r| r.latency_us).collect::<Vec<_>>(),
        ),
        Column::new(
            "fallback".into(),
            rows.iter().map(|r| r.fallback).collect::<Vec<_>>(),
        ),
        Column::new("forced".into(), rows.iter().map(|r| r.forced).collect::<Vec<_>>()),
    ])
}

/// The exposure files in `dir`, in name order (temporary files are skipped, and so are the
/// parts of a segment whose whole file is there).
pub fn exposure_files(dir: &Path) -> Result<Vec<PathBuf>, ExposureError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("exposures-") && name.ends_with(".parquet") {
            files.push(path);
        }
    }
    // A part whose segment's whole file exists holds rows that file holds too.
    files.retain(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        whole_of(name).is_none_or(|whole| !dir.join(whole).exists())
    });
    files.sort();
    Ok(files)
}

/// Reads exposure files back as records (for tests and tools; the report reads with Polars).
pub fn read_records(path: &Path) -> Result<Vec<ExposureRecord>, ExposureError> {
    let err = |e: PolarsError| io_error(path, e);
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let df = ParquetReader::new(file).finish().map_err(err)?;
    let strs = |name: &str| -> PolarsResult<Vec<Option<String>>> {
        Ok(df
            .column(name)?
            .str()?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    };
    let time: Vec<Option<i64>> = df
        .column("time")
        .and_then(|c| c.cast(&DataType::Int64))
        .map_err(err)?
        .i64()
        .map_err(err)?
        .iter()
        .collect();
    let (experiment, variant, unit_id) = (
        strs("experiment").map_err(err)?,
        strs("variant").map_err(err)?,
        strs("unit_id").map_err(err)?,
    );
    let (request_id, model, model_version) = (
        strs("request_id").map_err(err)?,
        strs("model").map_err(err)?,
        strs("model_version").map_err(err)?,
    );
    let decision = strs("decision").map_err(err)?;
    let score: Vec<Option<f64>> = df
        .column("score")
        .map_err(err)?
        .f64()
        .map_err(err)?
        .iter()
        .collect();
    let latency: Vec<Option<i64>> = df
        .column("latency_us")
        .map_err(err)?
        .i64()
        .map_err(err)?
        .iter()
        .collect();
    let flag = |name: &str| -> PolarsResult<Vec<bool>> {
        Ok(df
            .column(name)?
            .bool()?
            .iter()
            .map(|v| v.unwrap_or(false))
            .collect())
    };
    let (fallback, forced) = (flag("fallback").map_err(err)?, flag("forced").map_err(err)?);
    Ok((0..df.height())
        .map(|i| ExposureRecord {
            time: time[i].unwrap_or_default(),
            experiment: experiment[i].clone().unwrap_or_default(),
            variant: variant[i].clone().unwrap_or_default(),
            unit_id: unit_id[i].clone().unwrap_or_default(),
            request_id: request_id[i].clone().unwrap_or_default(),
            model: model[i].clone().unwrap_or_default(),
            model_version: model_version[i].clone().unwrap_or_default(),
            score: score[i],
            decision: decision[i].clone(),
            latency_us: latency[i].unwrap_or_default(),
            fallback: fallback[i],
            forced: forced[i],
        })
        .collect())
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `20261201T233637.123456Z` for a time in µs since the epoch (UTC, proleptic Gregorian).
pub fn utc_stamp(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{frac:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's civil-from-days method).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000.000000Z");
        // 2026-12-01T23:36:37.5Z
        assert_eq!(utc_stamp(1_796_168_197_500_000), "20261201T233637.500000Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
