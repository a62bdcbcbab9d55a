//! One contract, three stores: the same pushes and reads against the embedded store, one
//! Redis and a 3-node Redis Cluster give the same answers, the same per-row reports and the
//! same errors.

mod common;

use std::collections::HashMap;

use common::*;
use ferrite_features::online::{EmbeddedStore, OnlineStore, RedisStore};
use ferrite_features::serving::{
    Limits, PushReport, PushRow, Status, check_push, get_online_features, push_online,
};
use ferrite_features::value::now_micros;
use ferrite_features::{FeatureError, Registry, Value};
use ferrite_test_support::{RedisCluster, RedisServer};

const YEAR: i64 = 365 * 24 * 60 * MINUTE;

/// A view with a float vector, beside the common `stats` view.
const EMBEDDINGS: &str = r#"
[[source]]
name = "emb_source"
path = "emb.parquet"

[[feature_view]]
name = "emb"
entities = ["user"]
source = "emb_source"
ttl = "0"
features = [{ name = "vec", dtype = "float_vector" }]
"#;

fn registry() -> (tempfile::TempDir, Registry) {
    let (dir, root) = repo(&[]);
    std::fs::write(root.join("emb.toml"), EMBEDDINGS).unwrap();
    let reg = Registry::load(&root, None).unwrap();
    (dir, reg)
}

/// A full `stats` row for `user`.
fn stats(user: i64, event_ts: i64, amount_avg: Value) -> PushRow {
    PushRow {
        fields: HashMap::from([
            ("user_id".to_string(), Value::Int(user)),
            ("amount_avg".to_string(), amount_avg),
            ("txn_count".to_string(), Value::Int(1)),
            ("country".to_string(), Value::Str("DE".into())),
        ]),
        event_ts,
    }
}

async fn push(
    reg: &Registry,
    store: &dyn OnlineStore,
    view: &str,
    rows: &[PushRow],
    now: i64,
) -> Result<PushReport, FeatureError> {
    let view = reg.view(view).unwrap();
    let checked = check_push(view, rows, now)?;
    push_online(store, view, checked).await
}

/// `(value, status)` of `view:feature` for `user`.
async fn read(reg: &Registry, store: &dyn OnlineStore, feature: &str, user: i64) -> (Value, Status) {
    let refs = reg.resolve_refs(&[feature.to_string()]).unwrap();
    let entities = HashMap::from([("user_id".to_string(), vec![Value::Int(user)])]);
    let got = get_online_features(reg, store, &refs, &entities, &HashMap::new(), now_micros())
        .await
        .unwrap();
    let v = &got.rows[0][0];
    (v.value.clone(), v.status)
}

fn rejected(report: &PushReport) -> Vec<usize> {
    report.rejected.iter().map(|(i, _)| *i).collect()
}

/// Runs every situation against `store`.
async fn contract(store: &dyn OnlineStore) {
    future_event_times_are_refused_and_never_freeze_an_entity(store).await;
    an_older_row_is_reported_not_silently_dropped(store).await;
    a_row_that_leaves_out_features_is_refused(store).await;
    non_finite_values_are_rejected(store).await;
    rows_past_their_ttl_are_rejected(store).await;
    reads_larger_than_the_limits_are_refused(store).await;
}

async fn future_event_times_are_refused_and_never_freeze_an_entity(store: &dyn OnlineStore) {
    let (_dir, reg) = registry();
    let now = now_micros();
    for ahead in [YEAR, 253_402_300_799_000_000 - now] {
        let err = push(
            &reg,
            store,
            "stats",
            &[
                stats(1, now - MINUTE, Value::Float(1.0)),
                stats(1, now + ahead, Value::Float(2.0)),
            ],
            now,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, FeatureError::Invalid(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("row 1")
                && msg.contains("event_timestamp")
                && msg.contains("features.max_clock_skew_s"),
            "{msg}"
        );
    }
    assert_eq!(
        read(&reg, store, "stats:amount_avg", 1).await.1,
        Status::NotFound,
        "nothing written"
    );
    // A later push for the entity is written as usual.
    let report = push(
        &reg,
        store,
        "stats",
        &[stats(1, now - MINUTE, Value::Float(3.0))],
        now,
    )
    .await
    .unwrap();
    assert_eq!((report.written, report.rejected.len()), (1, 0));
    assert_eq!(
        read(&reg, store, "stats:amount_avg", 1).await.0,
        Value::Float(3.0)
    );
    // Within the allowed skew a clock that runs ahead is fine; the skew is configurable.
    let report = push(
        &reg,
        store,
        "stats",
        &[stats(1, now + MINUTE, Value::Float(4.0))],
        now,
    )
    .await
    .unwrap();
    assert_eq!(report.written, 1);
    let strict = reg.clone().with_limits(Limits {
        max_clock_skew: 10_000_000,
        ..Limits::default()
    });
    let err = push(
        &strict,
        store,
        "stats",
        &[stats(1, now + MINUTE, Value::Float(5.0))],
        now,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("at most 10s ahead"), "{err}");
}

async fn an_older_row_is_reported_not_silently_dropped(store: &dyn OnlineStore) {
    let (_dir, reg) = registry();
    let now = now_micros();
    let report = push(
        &reg,
        store,
        "stats",
        &[stats(2, now - MINUTE, Value::Float(1.0))],
        now,
    )
    .await
    .unwrap();
    assert_eq!((report.written, report.rejected.len()), (1, 0));
    // Row 0 is older than what is stored; row 2 is older than row 1 of the same push.
    let report = push(
        &reg,
        store,
        "stats",
        &[
            stats(2, now - 10 * MINUTE, Value::Float(2.0)),
            stats(3, now - 2 * MINUTE, Value::Float(3.0)),
            stats(3, now - 3 * MINUTE, Value::Float(4.0)),
        ],
        now,
    )
    .await
    .unwrap();
    assert_eq!(report.written, 1);
    assert_eq!(rejected(&report), [0, 2]);
    assert!(
        report.rejected[0].1.contains("holds a newer row for user_id=2"),
        "{:?}",
        report.rejected
    );
    assert_eq!(
        read(&reg, store, "stats:amount_avg", 2).await.0,
        Value::Float(1.0)
    );
    assert_eq!(
        read(&reg, store, "stats:amount_avg", 3).await.0,
        Value::Float(3.0)
    );
}

async fn a_row_that_leaves_out_features_is_refused(store: &dyn OnlineStore) {
    let (_dir, reg) = registry();
    let now = now_micros();
    push(
        &reg,
        store,
        "stats",
        &[stats(4, now - 2 * MINUTE, Value::Float(1.0))],
        now,
    )
    .await
    .unwrap();
    let mut partial = stats(4, now - MINUTE, Value::Float(2.0));
    partial.fields.remove("country");
    let err = push(&reg, store, "stats", &[partial.clone()], now)
        .await
        .unwrap_err();
    assert!(matches!(err, FeatureError::Invalid(_)), "{err:?}");
    assert!(
        err.to_string().contains("row 0") && err.to_string().contains("missing features [\"country\"]"),
        "{err}"
    );
    assert_eq!(
        read(&reg, store, "stats:country", 4).await.0,
        Value::Str("DE".into()),
        "unchanged"
    );
    // An explicit null clears the feature.
    partial.fields.insert("country".into(), Value::Null);
    let report = push(&reg, store, "stats", &[partial], now).await.unwrap();
    assert_eq!(report.written, 1);
    assert_eq!(
        read(&reg, store, "stats:country", 4).await,
        (Value::Null, Status::Present)
    );
}

async fn non_finite_values_are_rejected(store: &dyn OnlineStore) {
    let (_dir, reg) = registry();
    let now = now_micros();
    let t = now - MINUTE;
    let report = push(
        &reg,
        store,
        "stats",
        &[
            stats(5, t, Value::Float(f64::INFINITY)),
            stats(6, t, Value::Float(f64::NAN)),
            stats(7, t, Value::Float(f64::NEG_INFINITY)),
            stats(8, t, Value::Float(0.5)),
        ],
        now,
    )
    .await
    .unwrap();
    assert_eq!(report.written, 1);
    assert_eq!(rejected(&report), [0, 1, 2]);
    assert!(
        report.rejected[0]
            .1
            .contains("amount_avg: inf is not a finite number"),
        "{:?}",
        report.rejected
    );
    let vector = |user: i64, values: Vec<f32>| PushRow {
        fields: HashMap::from([
            ("user_id".to_string(), Value::Int(user)),
            ("vec".to_string(), Value::FloatVec(values)),
        ]),
        event_ts: t,
    };
    let report = push(
        &reg,
        store,
        "emb",
        &[
            vector(5, vec![1.0, f32::NAN]),
            vector(6, vec![f32::INFINITY]),
            vector(7, vec![0.0, 1.0, f32::NEG_INFINITY]),
            vector(8, vec![0.25, -1.0]),
        ],
        now,
    )
    .await
    .unwrap();
    assert_eq!(report.written, 1);
    assert_eq!(rejected(&report), [0, 1, 2]);
    assert!(
        report.rejected[0].1.contains("vec: element 1 is NaN"),
        "{:?}",
        report.rejected
    );
    for user in [5, 6, 7] {
        assert_eq!(read(&reg, store, "emb:vec", user).await.1, Status::NotFound);
    }
    assert_eq!(
        read(&reg, store, "emb:vec", 8).await.0,
        Value::FloatVec(vec![0.25, -1.0])
    );
}

async fn rows_past_their_ttl_are_rejected(store: &dyn OnlineStore) {
    let (_dir, reg) = registry();
    let now = now_micros();
    let report = push(
        &reg,
        store,
        "stats",
        &[
            stats(9, now - 2 * 60 * MINUTE, Value::Float(1.0)),
            stats(10, now - MINUTE, Value::Float(1.0)),
        ],
        now,
    )
    .await
    .unwrap();
    assert_eq!((report.written, rejected(&report)), (1, vec![0]));
    assert!(
        report.rejected[0].1.contains("already expired"),
        "{:?}",
        report.rejected
    );
    assert_eq!(read(&reg, store, "stats:amount_avg", 9).await.1, Status::NotFound);
}

async fn reads_larger_than_the_limits_are_refused(store: &dyn OnlineStore) {
    let (_dir, reg) = registry();
    let reg = reg.with_limits(Limits {
        max_entities: 3,
        max_values: 8,
        ..Limits::default()
    });
    let users = |n: i64| HashMap::from([("user_id".to_string(), (0..n).map(Value::Int).collect())]);
    let refs = reg.resolve_refs(&["stats:*".to_string()]).unwrap();
    let read = |n: i64, refs: Vec<_>| {
        let reg = &reg;
        async move { get_online_features(reg, store, &refs, &users(n), &HashMap::new(), now_micros()).await }
    };
    // 2 × 3 features = 6 values, and 3 × 1: within both limits.
    read(2, refs.clone()).await.unwrap();
    read(3, refs[..1].to_vec()).await.unwrap();
    let err = read(4, refs[..1].to_vec()).await.unwrap_err();
    assert!(matches!(err, FeatureError::LimitExceeded(_)), "{err:?}");
    assert!(
        err.to_string().contains("4 entity rows")
            && err.to_string().contains("features.max_entities_per_read"),
        "{err}"
    );
    let err = read(3, refs).await.unwrap_err();
    assert!(matches!(err, FeatureError::LimitExceeded(_)), "{err:?}");
    assert!(
        err.to_string().contains("9 values") && err.to_string().contains("features.max_values_per_read"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("online")).unwrap();
    contract(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_the_contract() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    contract(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_keeps_the_contract() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    contract(&store).await;
}

/// A store that breaks "one answer per key": it drops the last entry of every read and the
/// last outcome of every write.
struct ShortAnswers(EmbeddedStore);

#[async_trait::async_trait]
impl OnlineStore for ShortAnswers {
    fn kind(&self) -> &'static str {
        "short"
    }
    async fn health(&self) -> Result<(), FeatureError> {
        Ok(())
    }
    async fn read(
        &self,
        keys: &[ferrite_features::online::RowKey],
    ) -> Result<Vec<Option<ferrite_features::online::ReadRow>>, FeatureError> {
        let mut rows = self.0.read(keys).await?;
        rows.pop();
        Ok(rows)
    }
    async fn write(
        &self,
        rows: Vec<ferrite_features::online::WriteRow>,
    ) -> Result<Vec<ferrite_features::online::WriteOutcome>, FeatureError> {
        let mut outcomes = self.0.write(rows).await?;
        outcomes.pop();
        Ok(outcomes)
    }
    async fn watermark(&self, view: &str) -> Result<Option<i64>, FeatureError> {
        self.0.watermark(view).await
    }
    async fn set_watermark(&self, view: &str, ts: i64) -> Result<(), FeatureError> {
        self.0.set_watermark(view, ts).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_answering_the_wrong_number_of_rows_is_an_error_not_a_shifted_answer() {
    let (_dir, reg) = registry();
    let dir = tempfile::tempdir().unwrap();
    let store = ShortAnswers(EmbeddedStore::open(&dir.path().join("online")).unwrap());
    let now = now_micros();
    let err = push(
        &reg,
        &store,
        "stats",
        &[stats(1, now - MINUTE, Value::Float(1.0))],
        now,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FeatureError::Internal(_)), "{err:?}");
    assert!(
        err.to_string().contains("a write of 1 keys with 0 entries"),
        "{err}"
    );
    let refs = reg.resolve_refs(&["stats:amount_avg".to_string()]).unwrap();
    let entities = HashMap::from([("user_id".to_string(), vec![Value::Int(1), Value::Int(2)])]);
    let err = get_online_features(&reg, &store, &refs, &entities, &HashMap::new(), now)
        .await
        .unwrap_err();
    assert!(matches!(err, FeatureError::Internal(_)), "{err:?}");
    assert!(
        err.to_string().contains("a read of 2 keys with 1 entries"),
        "{err}"
    );
}
