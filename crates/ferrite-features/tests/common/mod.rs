//! Small feature repositories written for a test: definitions and Parquet data in a
//! temporary directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use polars::prelude::*;

pub const MINUTE: i64 = 60_000_000;

/// One row of the `stats` source.
#[derive(Clone, Debug)]
pub struct StatRow {
    pub user_id: i64,
    pub ts: i64,
    pub created: i64,
    pub amount_avg: Option<f64>,
    pub txn_count: Option<i64>,
    pub country: Option<&'static str>,
}

pub fn row(
    user_id: i64,
    ts: i64,
    created: i64,
    amount_avg: f64,
    txn_count: i64,
    country: &'static str,
) -> StatRow {
    StatRow {
        user_id,
        ts,
        created,
        amount_avg: Some(amount_avg),
        txn_count: Some(txn_count),
        country: Some(country),
    }
}

pub const DEFINITIONS: &str = r#"
[[entity]]
name = "user"
join_keys = ["user_id"]
key_type = "int"

[[source]]
name = "stats_source"
path = "stats.parquet"
created_timestamp_field = "created_timestamp"
push_dir = "pushed"

[[feature_view]]
name = "stats"
entities = ["user"]
source = "stats_source"
ttl = "1h"
features = [
  { name = "amount_avg", dtype = "float", min = 0.0 },
  { name = "txn_count", dtype = "int", not_null = true },
  { name = "country", dtype = "string", allowed = ["DE", "FR"] },
]

[[request_view]]
name = "req"
request_fields = { amount = "float" }
features = [
  { name = "ratio", dtype = "float", expression = "amount / stats.amount_avg" },
]

[[feature_service]]
name = "svc"
features = ["stats:*", "req:ratio"]
"#;

pub fn write_parquet(path: &Path, df: &mut DataFrame) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    ParquetWriter::new(file).finish(df).unwrap();
}

pub fn ts_column(name: &str, micros: Vec<i64>) -> Column {
    Column::new(name.into(), micros)
        .cast(&DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)))
        .unwrap()
}

pub fn stats_frame(rows: &[StatRow]) -> DataFrame {
    DataFrame::new_infer_height(vec![
        Column::new(
            "user_id".into(),
            rows.iter().map(|r| r.user_id).collect::<Vec<_>>(),
        ),
        ts_column("event_timestamp", rows.iter().map(|r| r.ts).collect()),
        ts_column("created_timestamp", rows.iter().map(|r| r.created).collect()),
        Column::new(
            "amount_avg".into(),
            rows.iter().map(|r| r.amount_avg).collect::<Vec<_>>(),
        ),
        Column::new(
            "txn_count".into(),
            rows.iter().map(|r| r.txn_count).collect::<Vec<_>>(),
        ),
        Column::new(
            "country".into(),
            rows.iter().map(|r| r.country).collect::<Vec<_>>(),
        ),
    ])
    .unwrap()
}

/// A repository with `DEFINITIONS` and `rows` as `data/stats.parquet`.
pub fn repo(rows: &[StatRow]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("features");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("defs.toml"), DEFINITIONS).unwrap();
    write_stats(&root, rows);
    (dir, root)
}

pub fn write_stats(root: &Path, rows: &[StatRow]) {
    write_parquet(&root.join("data/stats.parquet"), &mut stats_frame(rows));
}
