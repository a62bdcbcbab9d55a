//! Fixtures for the exposure-log and report tests: records, outcome files, seeded units.
#![allow(dead_code)]

use std::path::Path;

use ferrite_experiments::exposure::{ExposureLog, ExposureLogConfig, ExposureRecord};
use ferrite_experiments::report::{UnitOutcome, Units};
use polars::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// 2026-11-01T00:00:00Z in µs.
pub const BASE: i64 = 1_793_491_200_000_000;
pub const HOUR: i64 = 3_600_000_000;

pub fn record(experiment: &str, variant: &str, unit: &str, time: i64) -> ExposureRecord {
    ExposureRecord {
        time,
        experiment: experiment.into(),
        variant: variant.into(),
        unit_id: unit.into(),
        request_id: format!("req-{unit}-{time}"),
        model: "fraud".into(),
        model_version: if variant == "control" {
            "1".into()
        } else {
            "2".into()
        },
        score: (time % 3 != 0).then(|| (time % 1000) as f64 / 1000.0),
        decision: (time % 2 == 0).then(|| "approve".to_string()),
        latency_us: 100 + time % 50,
        fallback: time % 5 == 0,
        forced: time % 7 == 0,
    }
}

/// Writes `records` through a real exposure log into `dir`.
pub fn log_all(dir: &Path, records: impl IntoIterator<Item = ExposureRecord>) {
    let log = ExposureLog::start(ExposureLogConfig {
        dir: dir.to_path_buf(),
        ..ExposureLogConfig::default()
    })
    .unwrap();
    for r in records {
        log.log(r);
    }
    log.shutdown().unwrap();
    assert_eq!(log.dropped(), 0);
}

/// One outcome row.
pub struct Outcome {
    pub unit_id: String,
    pub time: Option<i64>,
    pub converted: bool,
    pub revenue: f64,
    pub chargeback: bool,
}

/// Writes outcomes as Parquet: `time` as a UTC datetime when `with_time`, `converted` as
/// 0/1 integers when `converted_as_int`, and a `chargeback` column when `with_chargeback`.
pub fn write_outcomes(
    path: &Path,
    rows: &[Outcome],
    with_time: bool,
    converted_as_int: bool,
    with_chargeback: bool,
) {
    let mut columns = vec![Column::new(
        "unit_id".into(),
        rows.iter().map(|r| r.unit_id.as_str()).collect::<Vec<_>>(),
    )];
    if with_time {
        columns.push(
            Column::new("time".into(), rows.iter().map(|r| r.time).collect::<Vec<_>>())
                .cast(&DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)))
                .unwrap(),
        );
    }
    columns.push(if converted_as_int {
        Column::new(
            "converted".into(),
            rows.iter().map(|r| r.converted as i32).collect::<Vec<_>>(),
        )
    } else {
        Column::new(
            "converted".into(),
            rows.iter().map(|r| r.converted).collect::<Vec<_>>(),
        )
    });
    columns.push(Column::new(
        "revenue".into(),
        rows.iter().map(|r| r.revenue).collect::<Vec<_>>(),
    ));
    if with_chargeback {
        columns.push(Column::new(
            "chargeback".into(),
            rows.iter().map(|r| r.chargeback).collect::<Vec<_>>(),
        ));
    }
    let mut df = DataFrame::new_infer_height(columns).unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

/// A seeded experiment: each unit lands in a variant with the given shares, converts with
/// its variant's rate and, when it converts, spends an exponential amount with mean 50.
/// First exposures are spread evenly over `hours` hours from [`BASE`].
pub fn synthetic(seed: u64, n: usize, shares: &[(&str, f64, f64)], hours: i64) -> Units {
    let mut rng = StdRng::seed_from_u64(seed);
    let total: f64 = shares.iter().map(|s| s.1).sum();
    let units = (0..n)
        .map(|i| {
            let mut draw = rng.random::<f64>() * total;
            let (variant, _, rate) = *shares
                .iter()
                .find(|s| {
                    draw -= s.1;
                    draw < 0.0
                })
                .unwrap_or(shares.last().unwrap());
            let converted = rng.random::<f64>() < rate;
            let revenue = if converted {
                -50.0 * (1.0 - rng.random::<f64>()).ln()
            } else {
                0.0
            };
            UnitOutcome {
                unit_id: format!("u{i:07}"),
                variant: variant.to_string(),
                first_exposure: BASE + (i as i64 * hours * HOUR) / n as i64,
                converted: if converted { 1.0 } else { 0.0 },
                revenue,
                chargeback: None,
            }
        })
        .collect();
    Units {
        experiment: "synthetic".into(),
        exposures: n as u64,
        contaminated: 0,
        units,
    }
}

/// Writes `units` as an exposure log (one exposure each, through [`ExposureLog`]) and an
/// outcomes file, for the end-to-end path.
pub fn write_units(units: &Units, exposures: &Path, outcomes: &Path) {
    log_all(
        exposures,
        units
            .units
            .iter()
            .map(|u| record(&units.experiment, &u.variant, &u.unit_id, u.first_exposure)),
    );
    let rows: Vec<Outcome> = units
        .units
        .iter()
        .filter(|u| u.converted > 0.0)
        .map(|u| Outcome {
            unit_id: u.unit_id.clone(),
            time: Some(u.first_exposure + 60_000_000),
            converted: true,
            revenue: u.revenue,
            chargeback: false,
        })
        .collect();
    write_outcomes(outcomes, &rows, true, false, false);
}
