//! Point-in-time correct training sets: hand-worked cases, and random data against a
//! naive reference (property test).

mod common;

use common::*;
use ferrite_features::Registry;
use ferrite_features::training::{training_set, write_training_set};
use polars::prelude::*;
use proptest::prelude::*;

const SEC: i64 = 1_000_000;

fn labels(rows: &[(i64, i64, &str)]) -> DataFrame {
    DataFrame::new_infer_height(vec![
        Column::new("user_id".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
        ts_column("event_timestamp", rows.iter().map(|r| r.1).collect()),
        Column::new("label".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
    ])
    .unwrap()
}

fn with_ttl(root: &std::path::Path, ttl: &str) {
    let text = DEFINITIONS.replace("ttl = \"1h\"", &format!("ttl = \"{ttl}\""));
    std::fs::write(root.join("defs.toml"), text).unwrap();
}

fn floats(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    df.column(name)
        .unwrap()
        .cast(&DataType::Float64)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .collect()
}

#[test]
fn hand_worked_point_in_time_cases() {
    let feature_rows = vec![
        row(1, 10 * SEC, 1, 1.0, 1, "DE"),
        row(1, 10 * SEC, 2, 2.0, 1, "DE"), // same event time, later created: wins
        row(1, 20 * SEC, 0, 3.0, 1, "DE"),
        row(1, 30 * SEC, 0, -1.0, 1, "DE"), // breaks min = 0: never used
        row(3, 50 * SEC, 0, 9.0, 1, "FR"),
    ];
    let (_dir, root) = repo(&feature_rows);
    with_ttl(&root, "15s");
    let reg = Registry::load(&root, None).unwrap();
    let refs = reg.service_refs("svc").unwrap();
    // Unsorted, with a duplicate row and an entity with no features at all.
    let input = labels(&[
        (1, 19 * SEC, "a"),
        (1, 5 * SEC, "b"),
        (1, 10 * SEC, "c"),
        (2, 20 * SEC, "d"),
        (1, 35 * SEC, "e"),
        (1, 36 * SEC, "f"),
        (1, 32 * SEC, "g"),
        (1, 19 * SEC, "a"),
        (3, 49 * SEC, "h"),
    ]);
    let mut with_amount = input.clone();
    with_amount
        .with_column(Column::new("amount".into(), vec![4.0f64; 9]))
        .unwrap();
    let out = training_set(&reg, &refs, with_amount.lazy(), "event_timestamp").unwrap();
    assert_eq!(out.height(), 9);
    let names: Vec<String> = out.get_column_names().iter().map(|c| c.to_string()).collect();
    assert_eq!(
        names,
        [
            "user_id",
            "event_timestamp",
            "label",
            "amount",
            "amount_avg",
            "txn_count",
            "country",
            "ratio"
        ]
    );
    let labels: Vec<Option<&str>> = out.column("label").unwrap().str().unwrap().iter().collect();
    assert_eq!(
        labels,
        ["a", "b", "c", "d", "e", "f", "g", "a", "h"].map(Some).to_vec(),
        "input order kept"
    );
    assert_eq!(
        floats(&out, "amount_avg"),
        vec![
            Some(2.0),
            None,
            Some(2.0),
            None,
            Some(3.0),
            None,
            Some(3.0),
            Some(2.0),
            None
        ],
        "t=19 -> the tie winner at 10; t=5 -> nothing yet; t=10 -> inclusive; t=35 -> 20 is exactly the TTL old; \
         t=36 -> too old; t=32 -> the rule-breaking row at 30 is skipped; t=49 -> the row at 50 is in the future"
    );
    assert_eq!(
        floats(&out, "ratio")[0],
        Some(2.0),
        "request features use the same expression as serving"
    );
    assert_eq!(floats(&out, "ratio")[1], None);
}

#[test]
fn a_set_written_in_slices_is_the_set_built_whole() {
    let feature_rows = vec![
        row(1, 10 * SEC, 1, 1.0, 1, "DE"),
        row(1, 20 * SEC, 0, 3.0, 2, "DE"),
        row(3, 50 * SEC, 0, 9.0, 1, "FR"),
    ];
    let (dir, root) = repo(&feature_rows);
    let reg = Registry::load(&root, None).unwrap();
    let refs = reg.service_refs("svc").unwrap();
    let mut input = labels(&[
        (1, 19 * SEC, "a"),
        (2, 20 * SEC, "b"),
        (3, 55 * SEC, "c"),
        (1, 25 * SEC, "d"),
        (3, 40 * SEC, "e"),
        (1, 5 * SEC, "f"),
        (1, 21 * SEC, "g"),
    ]);
    input
        .with_column(Column::new(
            "amount".into(),
            (0..7).map(f64::from).collect::<Vec<_>>(),
        ))
        .unwrap();
    let entities = dir.path().join("entities.parquet");
    ParquetWriter::new(std::fs::File::create(&entities).unwrap())
        .finish(&mut input.clone())
        .unwrap();
    let whole = training_set(&reg, &refs, input.clone().lazy(), "event_timestamp").unwrap();
    assert!(
        whole.column("amount_avg").unwrap().null_count() > 0,
        "some rows find nothing"
    );
    for slice_rows in [1, 2, 3, 6, 7, 100] {
        let out = dir.path().join(format!("train-{slice_rows}.parquet"));
        let report = write_training_set(&reg, &refs, &entities, "event_timestamp", &out, slice_rows).unwrap();
        assert_eq!(report.rows, 7);
        let read = ParquetReader::new(std::fs::File::open(&out).unwrap())
            .finish()
            .unwrap();
        assert!(
            read.equals_missing(&whole),
            "slices of {slice_rows}: {read} against {whole}"
        );
        assert_eq!(
            report.columns,
            whole
                .get_column_names()
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
        );
    }

    // A request feature whose input column is missing fails before anything is written.
    let mut no_amount = input.drop("amount").unwrap();
    ParquetWriter::new(std::fs::File::create(&entities).unwrap())
        .finish(&mut no_amount)
        .unwrap();
    let out = dir.path().join("refused.parquet");
    let err = write_training_set(&reg, &refs, &entities, "event_timestamp", &out, 2).unwrap_err();
    assert!(err.to_string().contains("amount"), "{err}");
    assert!(!out.exists(), "no file for a refused set");
}

#[test]
fn entity_rows_that_do_not_fit_are_refused() {
    let (_dir, root) = repo(&[row(1, 10 * SEC, 0, 1.0, 1, "DE")]);
    let reg = Registry::load(&root, None).unwrap();
    let refs = reg.resolve_refs(&["stats:*".into()]).unwrap();
    let err = training_set(&reg, &refs, labels(&[(1, 0, "a")]).lazy(), "ts").unwrap_err();
    assert!(err.to_string().contains("no timestamp column \"ts\""), "{err}");
    let wrong_key = labels(&[(1, 0, "a")])
        .lazy()
        .with_column(col("user_id").cast(DataType::String));
    let err = training_set(&reg, &refs, wrong_key, "event_timestamp").unwrap_err();
    assert!(err.to_string().contains("joins on a int key"), "{err}");
    let clash = labels(&[(1, 0, "a")])
        .lazy()
        .with_column(lit(1.0).alias("amount_avg"));
    let err = training_set(&reg, &refs, clash, "event_timestamp").unwrap_err();
    assert!(
        err.to_string()
            .contains("would overwrite the entity column \"amount_avg\""),
        "{err}"
    );
}

/// The definition of the answer, one entity row at a time.
fn naive(features: &[StatRow], user: i64, t: i64, ttl: i64) -> Option<f64> {
    features
        .iter()
        .filter(|f| f.user_id == user && f.ts <= t && (ttl == 0 || f.ts >= t - ttl))
        .filter(|f| f.amount_avg.is_none_or(|a| a >= 0.0) && f.txn_count.is_some())
        .max_by_key(|f| (f.ts, f.created))
        .and_then(|f| f.amount_avg)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn matches_a_naive_reference_on_random_data(
        features in prop::collection::vec((0i64..6, 0i64..60, 0i64..4, -5i64..50, prop::bool::weighted(0.1)), 1..60),
        entities in prop::collection::vec((0i64..7, 0i64..70), 1..40),
        ttl in prop_oneof![Just(0i64), 1i64..40],
    ) {
        // Distinct created times per (user, event time) so the tie-break is defined.
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<StatRow> = features
            .iter()
            .filter(|(u, t, c, _, _)| seen.insert((*u, *t, *c)))
            .map(|&(u, t, c, v, null_count)| {
                let mut r = row(u, t * SEC, c * SEC, v as f64, 1, "DE");
                if null_count {
                    r.txn_count = None;
                }
                r
            })
            .collect();
        let (_dir, root) = repo(&rows);
        with_ttl(&root, if ttl == 0 { "0".to_string() } else { format!("{ttl}s") }.as_str());
        let reg = Registry::load(&root, None).unwrap();
        let refs = reg.resolve_refs(&["stats:amount_avg".into()]).unwrap();
        let mut input: Vec<(i64, i64, &str)> = entities.iter().map(|&(u, t)| (u, t * SEC, "x")).collect();
        // Once as drawn, once in time order (the join skips its sorts for sorted input).
        for pass in 0..2 {
            if pass == 1 {
                input.sort_by_key(|r| r.1);
            }
            let out = training_set(&reg, &refs, labels(&input).lazy(), "event_timestamp").unwrap();
            prop_assert_eq!(out.height(), input.len());
            let users: Vec<Option<i64>> = out.column("user_id").unwrap().i64().unwrap().iter().collect();
            let got = floats(&out, "amount_avg");
            for (i, &(u, t, _)) in input.iter().enumerate() {
                prop_assert_eq!(users[i], Some(u));
                prop_assert_eq!(got[i], naive(&rows, u, t, ttl * SEC), "row {} (user {}, t {})", i, u, t / SEC);
            }
        }
    }
}
