//! Materialization into the embedded store and online reads: latest valid row per entity,
//! ties by created time, data-quality rules, TTL, watermarks, durability, push.

mod common;

use std::collections::HashMap;

use common::*;
use ferrite_features::materialize::{materialize, materialize_incremental, watermark_key};
use ferrite_features::online::{EmbeddedStore, OnlineStore};
use ferrite_features::serving::{
    PushRow, Status, check_push, get_online_features, push_offline, push_online,
};
use ferrite_features::value::now_micros;
use ferrite_features::{Registry, Value};

fn users(ids: &[i64]) -> HashMap<String, Vec<Value>> {
    HashMap::from([(
        "user_id".to_string(),
        ids.iter().map(|i| Value::Int(*i)).collect(),
    )])
}

/// Rows around `t` (10 minutes ago): see each comment for what must win.
fn fixture(now: i64) -> Vec<StatRow> {
    let t = now - 10 * MINUTE;
    let mut bad_null = row(5, t, t, 1.0, 1, "DE");
    bad_null.txn_count = None;
    vec![
        row(1, t - 30 * MINUTE, t, 10.0, 1, "DE"),
        row(1, t, t, 20.0, 2, "DE"), // user 1: the later event wins
        row(2, t, t + 2, 6.0, 4, "FR"),
        row(2, t, t + 1, 5.0, 3, "FR"), // user 2: same event time, the later created wins (6.0)
        row(3, t - 20 * MINUTE, t, 7.0, 1, "DE"),
        row(3, t, t, -1.0, 2, "DE"), // breaks min = 0: user 3 keeps 7.0
        row(4, now - 120 * MINUTE, t, 1.0, 1, "DE"), // older than the 1 h TTL
        bad_null,                    // user 5: txn_count null breaks not_null
        row(6, t, t, 1.0, 1, "XX"),  // user 6: country not allowed
        row(1, now - 2 * MINUTE, now, 99.0, 9, "FR"), // after the first window's end
    ]
}

async fn read(
    reg: &Registry,
    store: &dyn OnlineStore,
    ids: &[i64],
    amount: f64,
) -> Vec<Vec<ferrite_features::serving::FeatureValue>> {
    let refs = reg.service_refs("svc").unwrap();
    let request = HashMap::from([("amount".to_string(), vec![Value::Float(amount); ids.len()])]);
    get_online_features(reg, store, &refs, &users(ids), &request, now_micros())
        .await
        .unwrap()
        .rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialize_serves_the_latest_valid_row_and_survives_a_restart() {
    let now = now_micros();
    let (dir, root) = repo(&fixture(now));
    let reg = Registry::load(&root, None).unwrap();
    assert!(reg.check_sources().is_empty(), "{:?}", reg.check_sources());
    let store_dir = dir.path().join("online");
    let store = EmbeddedStore::open(&store_dir).unwrap();

    let end = now - 5 * MINUTE;
    let reports = materialize(&reg, &store, &[], now - 24 * 60 * MINUTE, end, false)
        .await
        .unwrap();
    let r = &reports[0];
    assert_eq!((r.rows, r.rejected, r.entities, r.written), (9, 3, 4, 4), "{r}");
    assert_eq!(r.examples.len(), 3);
    assert!(
        r.examples
            .iter()
            .any(|e| e.contains("user_id=5") && e.contains("txn_count: is null")),
        "{:?}",
        r.examples
    );
    assert!(
        r.examples
            .iter()
            .any(|e| e.contains("user_id=6") && e.contains("not one of")),
        "{:?}",
        r.examples
    );
    assert_eq!(
        store
            .watermark(&watermark_key(reg.view("stats").unwrap()))
            .await
            .unwrap(),
        Some(end)
    );

    let check = |rows: &Vec<Vec<ferrite_features::serving::FeatureValue>>| {
        let (u1, u2, u3, u4, u5, u99) = (&rows[0], &rows[1], &rows[2], &rows[3], &rows[4], &rows[5]);
        assert_eq!(u1[0].value, Value::Float(20.0));
        assert_eq!(u1[1].value, Value::Int(2));
        assert_eq!(u1[2].value, Value::Str("DE".into()));
        assert_eq!(u1[0].event_ts, Some(now - 10 * MINUTE));
        assert_eq!(u1[3].value, Value::Float(2.0), "ratio = 40 / 20");
        assert_eq!(u2[0].value, Value::Float(6.0));
        assert_eq!(u3[0].value, Value::Float(7.0));
        assert_eq!(u4[0].status, Status::Expired);
        assert_eq!(u4[0].value, Value::Null);
        assert_eq!(u4[3].value, Value::Null, "an expired input makes the ratio null");
        for missing in [u5, u99] {
            assert!(
                missing[..3]
                    .iter()
                    .all(|v| v.status == Status::NotFound && v.value == Value::Null)
            );
        }
        assert!(u1.iter().chain(u2).all(|v| v.status == Status::Present));
    };
    let rows = read(&reg, &store, &[1, 2, 3, 4, 5, 99], 40.0).await;
    check(&rows);

    // Running the same window again changes nothing.
    let again = materialize(&reg, &store, &[], now - 24 * 60 * MINUTE, end, false)
        .await
        .unwrap();
    assert_eq!(again[0].entities, 4);
    check(&read(&reg, &store, &[1, 2, 3, 4, 5, 99], 40.0).await);

    // Everything acknowledged is still there after a restart.
    drop(store);
    let store = EmbeddedStore::open(&store_dir).unwrap();
    assert_eq!(store.len(), 4);
    check(&read(&reg, &store, &[1, 2, 3, 4, 5, 99], 40.0).await);

    // Incremental: from the watermark to now picks up only the late row of user 1.
    let inc = materialize_incremental(&reg, &store, &[], now, false)
        .await
        .unwrap();
    assert_eq!(
        (inc[0].start, inc[0].end, inc[0].rows, inc[0].written),
        (end, now, 1, 1)
    );
    let rows = read(&reg, &store, &[1], 99.0).await;
    assert_eq!(rows[0][0].value, Value::Float(99.0));
    assert_eq!(rows[0][3].value, Value::Float(1.0));
    // Nothing new since: an incremental run up to the same end does nothing.
    assert!(
        materialize_incremental(&reg, &store, &[], now, false)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_whose_layout_changed_is_materialized_again_by_an_incremental_run() {
    let now = now_micros();
    let (dir, root) = repo(&fixture(now));
    let reg = Registry::load(&root, None).unwrap();
    let store = EmbeddedStore::open(&dir.path().join("online")).unwrap();
    let first = materialize_incremental(&reg, &store, &[], now, false)
        .await
        .unwrap();
    assert!(first[0].written > 0, "{}", first[0]);
    assert!(
        materialize_incremental(&reg, &store, &[], now, false)
            .await
            .unwrap()
            .is_empty()
    );

    // A feature dropped from the view: the stored rows no longer match its layout, so the
    // next incremental run writes them again instead of finding nothing new.
    let dropped = "  { name = \"country\", dtype = \"string\", allowed = [\"DE\", \"FR\"] },\n";
    assert!(DEFINITIONS.contains(dropped));
    std::fs::write(root.join("defs.toml"), DEFINITIONS.replace(dropped, "")).unwrap();
    let changed = Registry::load(&root, None).unwrap();
    let again = materialize_incremental(&changed, &store, &[], now, false)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    // (Without the country rule, more rows are valid than before.)
    assert!(
        again[0].written >= first[0].written,
        "{} after {}",
        again[0],
        first[0]
    );
    let rows = read(&changed, &store, &[1], 40.0).await;
    assert_eq!(
        rows[0][0].status,
        ferrite_features::serving::Status::Present,
        "{:?}",
        rows[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_window_never_overwrites_a_fresher_push() {
    let now = now_micros();
    let (dir, root) = repo(&fixture(now));
    let reg = Registry::load(&root, None).unwrap();
    let store = EmbeddedStore::open(&dir.path().join("online")).unwrap();
    let view = reg.view("stats").unwrap().clone();
    let pushed = PushRow {
        fields: HashMap::from([
            ("user_id".to_string(), Value::Int(2)),
            ("amount_avg".to_string(), Value::Int(50)),
            ("txn_count".to_string(), Value::Int(8)),
            ("country".to_string(), Value::Str("FR".into())),
        ]),
        event_ts: now - MINUTE,
    };
    let checked = check_push(&view, std::slice::from_ref(&pushed), now).unwrap();
    let report = push_online(&store, &view, checked).await.unwrap();
    assert_eq!((report.written, report.rejected.len()), (1, 0));
    materialize(&reg, &store, &[], now - 24 * 60 * MINUTE, now, false)
        .await
        .unwrap();
    let rows = read(&reg, &store, &[2], 100.0).await;
    assert_eq!(
        rows[0][0].value,
        Value::Float(50.0),
        "the int pushed for a float feature is stored as a float"
    );
    assert_eq!(rows[0][3].value, Value::Float(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushes_are_refused_whole_and_rule_breakers_reported() {
    let now = now_micros();
    let (dir, root) = repo(&fixture(now));
    let reg = Registry::load(&root, None).unwrap();
    let store = EmbeddedStore::open(&dir.path().join("online")).unwrap();
    let view = reg.view("stats").unwrap().clone();
    let push = |fields: Vec<(&str, Value)>| PushRow {
        fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        event_ts: now - MINUTE,
    };
    let good = push(vec![
        ("user_id", Value::Int(7)),
        ("txn_count", Value::Int(1)),
        ("amount_avg", Value::Float(3.0)),
        ("country", Value::Null),
    ]);
    for (bad, expected) in [
        (
            push(vec![
                ("user_id", Value::Int(7)),
                ("txn_count", Value::Int(1)),
                ("nope", Value::Int(1)),
            ]),
            "unknown field \"nope\"",
        ),
        (
            push(vec![
                ("user_id", Value::Str("7".into())),
                ("txn_count", Value::Int(1)),
            ]),
            "expected a int key, got string",
        ),
        (
            push(vec![("txn_count", Value::Int(1))]),
            "missing join key \"user_id\"",
        ),
        (
            push(vec![
                ("user_id", Value::Int(7)),
                ("txn_count", Value::Str("1".into())),
            ]),
            "feature \"txn_count\" is int but got string",
        ),
    ] {
        let err = check_push(&view, &[good.clone(), bad], now)
            .err()
            .expect("refused");
        assert!(err.to_string().contains(expected), "{err}");
        assert!(err.to_string().contains("row 1"), "{err}");
    }
    assert!(store.is_empty(), "nothing half-written");

    let breaks = push(vec![
        ("user_id", Value::Int(8)),
        ("txn_count", Value::Int(1)),
        ("amount_avg", Value::Float(-2.0)),
        ("country", Value::Null),
    ]);
    let checked = check_push(&view, &[good.clone(), breaks], now).unwrap();
    let file = push_offline(&view, &checked)
        .unwrap()
        .expect("a file for the good row");
    assert!(file.starts_with(root.join("data/pushed")), "{}", file.display());
    let report = push_online(&store, &view, checked).await.unwrap();
    assert_eq!(report.written, 1);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].0, 1);
    assert!(
        report.rejected[0].1.contains("below the minimum"),
        "{:?}",
        report.rejected
    );

    // The pushed row is now part of the offline source: materializing reads it too.
    let fresh = EmbeddedStore::open(&dir.path().join("online2")).unwrap();
    let reports = materialize(&reg, &fresh, &[], now - 24 * 60 * MINUTE, now, false)
        .await
        .unwrap();
    assert_eq!(reports[0].rows, 11, "ten fixture rows and the pushed one");
    let rows = read(&reg, &fresh, &[7], 6.0).await;
    assert_eq!(rows[0][0].value, Value::Float(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_column_fails_before_anything_is_written() {
    let now = now_micros();
    let (dir, root) = repo(&fixture(now));
    let mut df = stats_frame(&fixture(now)).drop("country").unwrap();
    write_parquet(&root.join("data/stats.parquet"), &mut df);
    let reg = Registry::load(&root, None).unwrap();
    let problems = reg.check_sources();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].message.contains("missing column \"country\""),
        "{}",
        problems[0]
    );
    assert!(problems[0].location.file.ends_with("defs.toml"));
    let store = EmbeddedStore::open(&dir.path().join("online")).unwrap();
    let err = materialize(&reg, &store, &[], 0, now, false).await.unwrap_err();
    assert!(err.to_string().contains("missing column \"country\""), "{err}");
    assert!(store.is_empty());
    assert_eq!(
        store
            .watermark(&watermark_key(reg.view("stats").unwrap()))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_fit_the_definitions_are_refused() {
    let now = now_micros();
    let (dir, root) = repo(&fixture(now));
    let reg = Registry::load(&root, None).unwrap();
    let store = EmbeddedStore::open(&dir.path().join("online")).unwrap();
    let refs = reg.service_refs("svc").unwrap();
    let amount = |n| HashMap::from([("amount".to_string(), vec![Value::Float(1.0); n])]);
    let err = get_online_features(
        &reg,
        &store,
        &refs,
        &HashMap::from([("user_id".into(), vec![Value::Str("x".into())])]),
        &amount(1),
        now,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("join key \"user_id\", entity row 0: expected a int key, got string"),
        "{err}"
    );
    let err = get_online_features(&reg, &store, &refs, &users(&[1]), &HashMap::new(), now)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("needs the request field \"amount\""),
        "{err}"
    );
    let err = get_online_features(&reg, &store, &refs, &users(&[1, 2]), &amount(1), now)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("2 entity rows"), "{err}");
    let err = get_online_features(
        &reg,
        &store,
        &refs,
        &HashMap::from([("item_id".into(), vec![Value::Int(1)])]),
        &amount(1),
        now,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("needs the join key \"user_id\""),
        "{err}"
    );
    assert!(
        reg.resolve_refs(&["stats:nope".into()])
            .unwrap_err()
            .contains("has no feature \"nope\"")
    );
    assert!(
        reg.resolve_refs(&["nope:x".into()])
            .unwrap_err()
            .contains("unknown feature view \"nope\"")
    );
    assert!(
        reg.service_refs("nope")
            .unwrap_err()
            .contains("unknown feature service")
    );
}

/// One read over views with different join keys that name the same numbers: each view is
/// read with its own entity keys (the read shares entity keys only between views whose join
/// keys are the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_of_different_entities_are_read_with_their_own_keys() {
    let now = now_micros();
    let root = ferrite_test_support::repo_root().join("features");
    let reg = Registry::load(&root, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("online")).unwrap();
    // The features a row does not name are pushed as explicit nulls.
    let push = |view: &str, fields: Vec<(&str, Value)>| {
        let view = reg.view(view).unwrap().clone();
        let mut fields: HashMap<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for f in &view.features {
            fields.entry(f.name.clone()).or_default();
        }
        let row = PushRow {
            fields,
            event_ts: now - MINUTE,
        };
        (view, row)
    };
    for id in [1, 2] {
        for (view, row) in [
            push(
                "merchant_stats",
                vec![
                    ("merchant_id", Value::Int(id)),
                    ("merchant_category", Value::Str("books".into())),
                    ("merchant_txn_count_7d", Value::Int(10 * id)),
                ],
            ),
            push(
                "item_features",
                vec![
                    ("item_id", Value::Int(id)),
                    ("category", Value::Str("books".into())),
                    ("stock_level", Value::Int(100 * id)),
                ],
            ),
        ] {
            let checked = check_push(&view, &[row], now).unwrap();
            push_online(&store, &view, checked).await.unwrap();
        }
    }
    let refs = reg
        .resolve_refs(&[
            "merchant_stats:merchant_txn_count_7d".to_string(),
            "item_features:stock_level".to_string(),
        ])
        .unwrap();
    let entities = HashMap::from([
        ("merchant_id".to_string(), vec![Value::Int(1), Value::Int(2)]),
        ("item_id".to_string(), vec![Value::Int(2), Value::Int(1)]),
    ]);
    let got = get_online_features(&reg, &store, &refs, &entities, &HashMap::new(), now)
        .await
        .unwrap();
    let values: Vec<Vec<(Value, Status)>> = got
        .rows
        .iter()
        .map(|r| r.iter().map(|f| (f.value.clone(), f.status)).collect())
        .collect();
    assert_eq!(
        values,
        [
            [
                (Value::Int(10), Status::Present),
                (Value::Int(200), Status::Present)
            ],
            [
                (Value::Int(20), Status::Present),
                (Value::Int(100), Status::Present)
            ],
        ]
    );
}

/// Many pushes at once (threads started together, so several share a microsecond) each get
/// their own offline file: none overwrites another, and every accepted row is read back.
#[test]
fn concurrent_offline_pushes_never_overwrite_each_other() {
    let now = now_micros();
    let (_dir, root) = repo(&[]);
    let reg = Registry::load(&root, None).unwrap();
    let view = reg.view("stats").unwrap().clone();
    const THREADS: i64 = 8;
    const PUSHES: i64 = 10;
    let start = std::sync::Barrier::new(THREADS as usize);
    let files: Vec<std::path::PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (view, start) = (&view, &start);
                s.spawn(move || {
                    start.wait();
                    (0..PUSHES)
                        .map(|p| {
                            let row = PushRow {
                                fields: HashMap::from([
                                    ("user_id".to_string(), Value::Int(t * 1000 + p)),
                                    ("amount_avg".to_string(), Value::Float(1.0)),
                                    ("txn_count".to_string(), Value::Int(1)),
                                    ("country".to_string(), Value::Null),
                                ]),
                                event_ts: now - MINUTE,
                            };
                            let checked = check_push(view, &[row], now).unwrap();
                            push_offline(view, &checked).unwrap().expect("a file")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let distinct: std::collections::HashSet<_> = files.iter().collect();
    assert_eq!(distinct.len(), (THREADS * PUSHES) as usize, "one file per push");
    let on_disk = std::fs::read_dir(root.join("data/pushed")).unwrap().count();
    assert_eq!(
        on_disk,
        (THREADS * PUSHES) as usize,
        "and no temporary files left behind"
    );
    let rows = view.source.parquet().scan().unwrap().collect().unwrap().height();
    assert_eq!(rows, (THREADS * PUSHES) as usize, "every pushed row is read back");
}
