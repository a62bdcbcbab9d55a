//! Polars really reads and writes Parquet: a round trip through a file.

use ferrite_features::{FeatureError, ParquetSource};
use polars::prelude::*;

fn write(df: &mut DataFrame, path: &std::path::Path) {
    let file = std::fs::File::create(path).unwrap();
    ParquetWriter::new(file).finish(df).unwrap();
}

#[test]
fn parquet_round_trip_keeps_values_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.parquet");
    let mut df = df!(
        "user_id" => [1i64, 2, 3],
        "avg_amount_30d" => [12.5f64, 80.0, 3.25],
        "country" => ["DE", "FR", "DE"],
    )
    .unwrap();
    write(&mut df, &path);

    let source = ParquetSource::new(&path);
    let schema = source.schema().unwrap();
    assert_eq!(schema.get("user_id"), Some(&DataType::Int64));
    assert_eq!(schema.get("avg_amount_30d"), Some(&DataType::Float64));

    let back = source
        .scan_columns(&["user_id", "avg_amount_30d"])
        .unwrap()
        .filter(col("user_id").gt(lit(1)))
        .collect()
        .unwrap();
    assert_eq!(back.height(), 2);
    let amounts = back.column("avg_amount_30d").unwrap().f64().unwrap().clone();
    let amounts: Vec<Option<f64>> = (0..amounts.len()).map(|i| amounts.get(i)).collect();
    assert_eq!(amounts, vec![Some(80.0), Some(3.25)]);
}

#[test]
fn a_missing_column_is_named_with_the_columns_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.parquet");
    write(
        &mut df!("item_id" => [1i64], "price" => [9.99f64]).unwrap(),
        &path,
    );
    let err = ParquetSource::new(&path)
        .scan_columns(&["item_id", "category"])
        .err()
        .expect("category is missing");
    match &err {
        FeatureError::MissingColumn {
            column, available, ..
        } => {
            assert_eq!(column, "category");
            assert_eq!(available, &["item_id", "price"]);
        }
        other => panic!("expected MissingColumn, got {other}"),
    }
    assert!(err.to_string().contains("items.parquet"));
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = ParquetSource::new("/nonexistent/x.parquet").schema().unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.parquet"), "{err}");
}
