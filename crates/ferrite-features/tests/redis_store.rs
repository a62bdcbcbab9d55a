//! Redis really answers: a round trip on a real redis-server started for the test.

use ferrite_features::OnlineStore;
use ferrite_features::online::RedisStore;
use ferrite_test_support::RedisServer;

#[tokio::test]
async fn round_trip_on_a_real_server() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    store.health().await.unwrap();
    assert_eq!(store.kind(), "redis");

    let mut conn = store.connection().expect("a single server");
    let _: () = redis::cmd("HSET")
        .arg("smoke")
        .arg("f")
        .arg("1.5")
        .query_async(&mut conn)
        .await
        .unwrap();
    let got: Option<String> = redis::cmd("HGET")
        .arg("smoke")
        .arg("f")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("1.5"));
}

#[tokio::test]
async fn a_server_that_is_gone_is_unavailable() {
    let server = RedisServer::start();
    let url = server.url();
    drop(server);
    let err = RedisStore::connect(&url)
        .await
        .err()
        .expect("no server listens there now");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

mod common;

use std::collections::HashMap;

use common::*;
use ferrite_features::materialize::{materialize, watermark_key};
use ferrite_features::online::{RowKey, StoredRow, WriteOutcome, WriteRow};
use ferrite_features::serving::{Status, get_online_features};
use ferrite_features::value::now_micros;
use ferrite_features::{Registry, Value};
use ferrite_test_support::RedisCluster;

fn rows_for(now: i64, users: i64) -> Vec<StatRow> {
    let t = now - 10 * MINUTE;
    let mut rows = vec![
        row(1, t - 30 * MINUTE, t, 10.0, 1, "DE"),
        row(1, t, t, 20.0, 2, "DE"),
        row(2, t, t + 2, 6.0, 4, "FR"),
        row(2, t, t + 1, 5.0, 3, "FR"),
        row(3, t, t, -1.0, 2, "DE"),
        row(4, now - 120 * MINUTE, t, 1.0, 1, "DE"),
    ];
    rows.extend((100..100 + users).map(|u| row(u, t, t, u as f64, 1, "FR")));
    rows
}

/// The same contract on one Redis and on a cluster: materialize, read, TTL, newer-wins.
async fn store_contract(store: &dyn OnlineStore, now: i64) {
    let (_dir, root) = repo(&rows_for(now, 200));
    let reg = Registry::load(&root, None).unwrap();
    let reports = materialize(&reg, store, &[], now - 24 * 60 * MINUTE, now, false)
        .await
        .unwrap();
    let r = &reports[0];
    // 206 rows, user 3's only row breaks a rule; user 4's row is already expired and is dropped.
    assert_eq!(
        (r.rows, r.rejected, r.entities, r.written),
        (206, 1, 203, 202),
        "{r}"
    );
    assert_eq!(
        store
            .watermark(&watermark_key(reg.view("stats").unwrap()))
            .await
            .unwrap(),
        Some(now)
    );

    let refs = reg.service_refs("svc").unwrap();
    let ids: Vec<i64> = [1, 2, 3, 4].into_iter().chain(100..300).collect();
    let entities = HashMap::from([(
        "user_id".to_string(),
        ids.iter().map(|i| Value::Int(*i)).collect(),
    )]);
    let request = HashMap::from([("amount".to_string(), vec![Value::Float(12.0); ids.len()])]);
    let got = get_online_features(&reg, store, &refs, &entities, &request, now_micros())
        .await
        .unwrap();
    assert_eq!(got.rows.len(), ids.len());
    assert_eq!(got.rows[0][0].value, Value::Float(20.0));
    assert_eq!(got.rows[1][0].value, Value::Float(6.0), "later created time wins");
    assert_eq!(
        got.rows[2][0].status,
        Status::NotFound,
        "rule-breaking row not written"
    );
    assert_eq!(
        got.rows[3][0].status,
        Status::NotFound,
        "expired row dropped by Redis"
    );
    for (i, u) in (100..300).enumerate() {
        assert_eq!(got.rows[4 + i][0].value, Value::Float(u as f64));
        assert_eq!(got.rows[4 + i][3].value, Value::Float(12.0 / u as f64));
    }

    // A value asked for twice, and one that a request feature reads after it was answered,
    // come back whole every time (stored values are moved into the answer only at their last
    // use in a row).
    let refs = reg
        .resolve_refs(&[
            "stats:country".into(),
            "stats:amount_avg".into(),
            "stats:country".into(),
            "req:ratio".into(),
            "stats:amount_avg".into(),
        ])
        .unwrap();
    let got = get_online_features(&reg, store, &refs, &entities, &request, now_micros())
        .await
        .unwrap();
    let values = |row: usize| got.rows[row].iter().map(|f| f.value.clone()).collect::<Vec<_>>();
    let de = Value::Str("DE".into());
    assert_eq!(
        values(0),
        [
            de.clone(),
            Value::Float(20.0),
            de,
            Value::Float(0.6),
            Value::Float(20.0)
        ]
    );
    for (i, u) in (100..300).enumerate() {
        let fr = Value::Str("FR".into());
        let avg = Value::Float(u as f64);
        let ratio = Value::Float(12.0 / u as f64);
        assert_eq!(
            values(4 + i),
            [fr.clone(), avg.clone(), fr, ratio, avg],
            "user {u}"
        );
    }

    // An older row never replaces a newer one; an equal or newer one does.
    let key = RowKey {
        view: "stats".into(),
        entity: "user_id=1".into(),
    };
    let view = reg.view("stats").unwrap();
    let write = |event_ts: i64, v: f64| WriteRow {
        key: key.clone(),
        row: StoredRow {
            event_ts,
            created_ts: event_ts,
            fingerprint: view.fingerprint,
            values: vec![Value::Float(v), Value::Int(1), Value::Null],
        },
        expire_at: Some(event_ts + view.ttl),
    };
    assert_eq!(
        store.write(vec![write(now - 20 * MINUTE, 1.0)]).await.unwrap(),
        [WriteOutcome::Superseded]
    );
    assert_eq!(
        store.write(vec![write(now - MINUTE, 2.0)]).await.unwrap(),
        [WriteOutcome::Written]
    );
    let back = store.read(std::slice::from_ref(&key)).await.unwrap();
    assert_eq!(back[0].as_ref().unwrap().values[0], Value::Float(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_the_documented_layout_and_expiry() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let now = now_micros();
    store_contract(&store, now).await;

    let mut conn = store.connection().unwrap();
    let raw: Vec<u8> = redis::cmd("GET")
        .arg("ferrite:v1:{user_id=2}:stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw.len() > 48);
    let row = ferrite_features::online::decode_row(&raw).unwrap();
    assert_eq!(row.values[0], Value::Float(6.0));
    let pttl: i64 = redis::cmd("PTTL")
        .arg("ferrite:v1:{user_id=2}:stats")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Expires one hour (the TTL) after the event time, 10 minutes ago.
    assert!((49 * 60_000..=50 * 60_000).contains(&pttl), "PTTL {pttl}");
    // The watermark is kept per view layout (the same definitions give the same layout).
    let (_dir, root) = repo(&rows_for(now, 1));
    let reg = Registry::load(&root, None).unwrap();
    let wm: String = redis::cmd("GET")
        .arg(format!(
            "ferrite:v1:watermark:{}",
            watermark_key(reg.view("stats").unwrap())
        ))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(wm, now.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_spreads_entities_over_the_nodes() {
    let cluster = RedisCluster::start();
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    assert_eq!(store.kind(), "redis_cluster");
    store.health().await.unwrap();
    store_contract(&store, now_micros()).await;
    let counts = cluster.key_counts();
    assert_eq!(
        counts.iter().sum::<u64>(),
        203,
        "202 rows + the watermark: {counts:?}"
    );
    assert!(
        counts.iter().all(|c| *c > 20),
        "every node holds a share: {counts:?}"
    );
}

/// What a frozen server (SIGSTOP: connections stay open, nothing answers) does to calls:
/// each fails with a store error once the configured response timeout passes. The guard
/// around each call only keeps the test from hanging; it is far longer than the timeout
/// configured here, and shorter than the 5 s the client used to wait.
mod frozen {
    use std::time::Duration;

    use ferrite_features::online::{RedisTimeouts, RowKey, StoreConfig, StoredRow, WriteRow};
    use ferrite_features::{FeatureError, OnlineStore};
    use ferrite_test_support::{RedisCluster, RedisServer};

    const GUARD: Duration = Duration::from_secs(4);

    fn timeouts() -> RedisTimeouts {
        RedisTimeouts {
            connect: Duration::from_millis(200),
            response: Duration::from_millis(100),
            write: Duration::from_millis(300),
        }
    }

    fn keys() -> Vec<RowKey> {
        (0..30)
            .map(|u| RowKey {
                view: "stats".into(),
                entity: format!("user_id={u}").into(),
            })
            .collect()
    }

    async fn read_fails(store: &dyn OnlineStore) {
        let result = tokio::time::timeout(GUARD, store.read(&keys()))
            .await
            .expect("the read must fail by the response timeout, not hang");
        let err = result.expect_err("nothing answers");
        assert!(matches!(err, FeatureError::Unavailable(_)), "{err:?}");
        let rows = keys()
            .into_iter()
            .map(|key| WriteRow {
                key,
                row: StoredRow {
                    event_ts: 1,
                    created_ts: 1,
                    fingerprint: 1,
                    values: Vec::new(),
                },
                expire_at: None,
            })
            .collect();
        let result = tokio::time::timeout(GUARD, store.write(rows))
            .await
            .expect("the write must fail by the write timeout, not hang");
        let err = result.expect_err("nothing answers");
        assert!(matches!(err, FeatureError::Unavailable(_)), "{err:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_from_a_frozen_server_fails_with_a_store_error() {
        let server = RedisServer::start();
        let config = StoreConfig::Redis {
            url: server.url(),
            timeouts: timeouts(),
        };
        let store = ferrite_features::online::open(&config).await.unwrap();
        store.read(&keys()).await.unwrap();
        server.pause();
        read_fails(store.as_ref()).await;
        // Connecting to it fails too, by the connect timeout.
        let connect = tokio::time::timeout(GUARD, ferrite_features::online::open(&config))
            .await
            .expect("connecting must fail by the connect timeout, not hang");
        assert!(connect.is_err(), "a frozen server cannot be connected to");
        server.resume();
        store.read(&keys()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_from_a_cluster_with_a_frozen_node_fails_with_a_store_error() {
        let cluster = RedisCluster::start();
        let config = StoreConfig::RedisCluster {
            urls: cluster.urls(),
            timeouts: timeouts(),
        };
        let store = ferrite_features::online::open(&config).await.unwrap();
        store.read(&keys()).await.unwrap();
        cluster.nodes[1].pause();
        read_fails(store.as_ref()).await;
        cluster.nodes[1].resume();
    }
}
