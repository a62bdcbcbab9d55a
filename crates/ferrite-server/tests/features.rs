//! `ferrite.v1.FeatureService` over gRPC on loopback: reads of 1,000 entities, request-time
//! features, push (online and offline), and clear statuses for bad input.

mod common;

use std::collections::HashMap;

use common::*;
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::feature_service_client::FeatureServiceClient;
use ferrite_test_support::repo_root;
use tonic::Code;

fn ints(values: impl IntoIterator<Item = i64>) -> pb::ValueList {
    pb::ValueList {
        values: values
            .into_iter()
            .map(|i| pb::Value {
                kind: Some(pb::value::Kind::IntValue(i)),
            })
            .collect(),
    }
}

fn float(v: f64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::FloatValue(v)),
    }
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64 - 60,
        nanos: 0,
    }
}

/// A server on the shipped definitions, with a copy of the sample data (pushes write
/// there) and `user_profile` materialized into a fresh embedded store.
async fn feature_server() -> (
    ferrite_server::RunningServer,
    tonic::transport::Channel,
    std::path::PathBuf,
) {
    let data = scratch_dir("data");
    for entry in std::fs::read_dir(repo_root().join("features/data")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "parquet") {
            std::fs::copy(&path, data.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut config = test_config();
    config.features.data_dir = Some(data.clone());
    let registry = config.features.registry().unwrap();
    {
        let store = ferrite_features::online::open(&config.features.store_config())
            .await
            .unwrap();
        let views = vec!["user_profile".to_string()];
        let end = ferrite_features::value::now_micros();
        ferrite_features::materialize::materialize(&registry, store.as_ref(), &views, 0, end, false)
            .await
            .unwrap();
    }
    let (server, channel) = start_with(config).await;
    (server, channel, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_thousand_entities_and_serves_pushed_rows_with_request_features() {
    let (server, channel, data) = feature_server().await;
    let mut client = FeatureServiceClient::new(channel);

    // 1,000 users in one call (ids start at 1,000,001), plus one that does not exist.
    let ids: Vec<i64> = (1_000_001..1_001_001).chain([42]).collect();
    let answer = client
        .get_online_features(pb::GetOnlineFeaturesRequest {
            selection: Some(pb::get_online_features_request::Selection::Features(
                pb::FeatureList {
                    features: vec!["user_profile:*".into()],
                },
            )),
            entities: HashMap::from([("user_id".into(), ints(ids.clone()))]),
            request_context: HashMap::new(),
            columnar: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.feature_names[0], "user_profile:country");
    assert_eq!(answer.feature_names.len(), 6);
    assert_eq!(answer.results.len(), ids.len());
    let present = answer
        .results
        .iter()
        .filter(|r| r.statuses.iter().all(|s| *s == pb::FeatureStatus::Present as i32))
        .count();
    assert!(present > 950, "{present} of 1000 users have a profile");
    let first = &answer.results[0];
    assert!(matches!(first.values[0].kind, Some(pb::value::Kind::StringValue(ref c)) if c.len() == 2));
    assert!(first.event_timestamps_us[0] > 1_500_000_000_000_000);
    let missing = answer.results.last().unwrap();
    assert!(
        missing
            .statuses
            .iter()
            .all(|s| *s == pb::FeatureStatus::NotFound as i32)
    );
    assert!(missing.values.iter().all(|v| v.kind.is_none()));

    // Push fresh user_stats for one user (to the offline store too), then score-time read
    // through the fraud service with the transaction amount as request context.
    let mut fields: HashMap<String, pb::Value> = HashMap::from([
        (
            "user_id".into(),
            pb::Value {
                kind: Some(pb::value::Kind::IntValue(1_000_001)),
            },
        ),
        ("avg_amount_30d".into(), float(25.0)),
        ("max_amount_30d".into(), float(80.0)),
    ]);
    for f in ["txn_count_1h", "txn_count_24h", "txn_count_7d", "txn_count_30d"] {
        fields.insert(
            f.into(),
            pb::Value {
                kind: Some(pb::value::Kind::IntValue(3)),
            },
        );
    }
    // A pushed row gives every feature of the view; the others are cleared.
    let registry = ferrite_features::Registry::load(&repo_root().join("features"), None).unwrap();
    for f in &registry.views["user_stats"].features {
        fields.entry(f.name.clone()).or_insert(pb::Value { kind: None });
    }
    let mut bad_fields = fields.clone();
    bad_fields.insert(
        "user_id".into(),
        pb::Value {
            kind: Some(pb::value::Kind::IntValue(1_000_002)),
        },
    );
    bad_fields.insert("night_txn_ratio_30d".into(), float(1.5));
    let pushed = client
        .push_features(pb::PushFeaturesRequest {
            feature_view: "user_stats".into(),
            rows: vec![
                pb::FeatureRow {
                    fields: fields.clone(),
                    event_timestamp: Some(now()),
                },
                pb::FeatureRow {
                    fields: bad_fields,
                    event_timestamp: Some(now()),
                },
            ],
            to_offline_store: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((pushed.written, pushed.rejected), (1, 1));
    assert_eq!(pushed.errors[0].row, 1);
    assert!(
        pushed.errors[0].message.contains("night_txn_ratio_30d"),
        "{:?}",
        pushed.errors
    );
    let offline: Vec<_> = std::fs::read_dir(data.join("pushed/user_stats"))
        .unwrap()
        .collect();
    assert_eq!(offline.len(), 1, "one Parquet file with the accepted row");

    let scored = client
        .get_online_features(pb::GetOnlineFeaturesRequest {
            selection: Some(pb::get_online_features_request::Selection::FeatureService(
                "fraud_v1".into(),
            )),
            entities: HashMap::from([("user_id".into(), ints([1_000_001, 1_000_002]))]),
            request_context: HashMap::from([
                (
                    "amount".into(),
                    pb::ValueList {
                        values: vec![float(100.0), float(100.0)],
                    },
                ),
                ("hour_of_day".into(), ints([3, 14])),
            ]),
            columnar: false,
        })
        .await
        .unwrap()
        .into_inner();
    let col = |name: &str| scored.feature_names.iter().position(|n| n == name).unwrap();
    let ratio = &scored.results[0].values[col("txn_features:amount_vs_avg_30d")];
    assert_eq!(ratio.kind, Some(pb::value::Kind::FloatValue(4.0)));
    assert_eq!(
        scored.results[0].values[col("txn_features:is_night")].kind,
        Some(pb::value::Kind::BoolValue(true))
    );
    assert_eq!(
        scored.results[1].values[col("txn_features:is_night")].kind,
        Some(pb::value::Kind::BoolValue(false))
    );
    let stats = col("user_stats:avg_amount_30d");
    assert_eq!(
        scored.results[0].statuses[stats],
        pb::FeatureStatus::Present as i32
    );
    assert_eq!(
        scored.results[1].statuses[stats],
        pb::FeatureStatus::NotFound as i32,
        "the rejected row was not written"
    );

    // The online store's calls are measured: two reads (1,001 keys, then the service's),
    // one push write. Other tests in this process may add to the counts, never take away.
    let text = scrape(&server).await;
    let value = |metric: &str, op: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(metric)
                    && l.contains("store=\"embedded\"")
                    && l.contains(&format!("op=\"{op}\""))
            })
            .unwrap_or_else(|| panic!("no {metric} for {op} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("ferrite_online_store_seconds_count", "read") >= 2.0);
    assert!(value("ferrite_online_store_rows_sum", "read") >= 1_003.0);
    assert!(value("ferrite_online_store_seconds_count", "write") >= 1.0);
    assert!(value("ferrite_online_store_rows_sum", "write") >= 1.0);
    server.shutdown().await.unwrap();
}

/// The value of a feature-major column at `row`, as the row-major answer would give it.
fn column_value(c: &pb::FeatureColumn, row: usize) -> Option<pb::value::Kind> {
    use pb::value::Kind;
    if c.nulls.get(row).copied().unwrap_or(false) {
        return None;
    }
    if !c.float_values.is_empty() {
        Some(Kind::FloatValue(c.float_values[row]))
    } else if !c.int_values.is_empty() {
        Some(Kind::IntValue(c.int_values[row]))
    } else if !c.string_values.is_empty() {
        Some(Kind::StringValue(c.string_values[row].clone()))
    } else if !c.bool_values.is_empty() {
        Some(Kind::BoolValue(c.bool_values[row]))
    } else {
        Some(Kind::FloatVectorValue(c.float_vector_values[row].clone()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columnar_answers_hold_the_same_values_as_row_answers() {
    let (server, channel, _data) = feature_server().await;
    let mut client = FeatureServiceClient::new(channel);
    // Users with and without rows, every feature type, request-time features that are
    // null where their input is missing.
    let ids: Vec<i64> = (1_000_001..1_000_301).chain([42, 7]).collect();
    let n = ids.len();
    let request = |columnar| pb::GetOnlineFeaturesRequest {
        selection: Some(pb::get_online_features_request::Selection::FeatureService(
            "fraud_v1".into(),
        )),
        entities: HashMap::from([("user_id".into(), ints(ids.clone()))]),
        request_context: HashMap::from([
            (
                "amount".into(),
                pb::ValueList {
                    values: (0..n).map(|i| float(i as f64)).collect(),
                },
            ),
            ("hour_of_day".into(), ints((0..n as i64).map(|i| i % 24))),
        ]),
        columnar,
    };
    let rows = client
        .get_online_features(request(false))
        .await
        .unwrap()
        .into_inner();
    let cols = client
        .get_online_features(request(true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rows.feature_names, cols.feature_names);
    assert!(cols.results.is_empty() && rows.columns.is_empty());
    assert_eq!(cols.columns.len(), cols.feature_names.len());
    let mut kinds = std::collections::HashSet::new();
    let mut nulls = 0;
    for (j, c) in cols.columns.iter().enumerate() {
        assert_eq!(c.statuses.len(), n);
        assert_eq!(c.event_timestamps_us.len(), n);
        for (i, row) in rows.results.iter().enumerate() {
            let name = &cols.feature_names[j];
            assert_eq!(c.statuses[i], row.statuses[j], "{name} row {i}");
            assert_eq!(
                c.event_timestamps_us[i], row.event_timestamps_us[j],
                "{name} row {i}"
            );
            let want = row.values[j].kind.clone();
            assert_eq!(column_value(c, i), want, "{name} row {i}");
            if let Some(k) = &want {
                kinds.insert(std::mem::discriminant(k));
            } else {
                nulls += 1;
            }
        }
    }
    assert!(kinds.len() >= 3, "several value types compared");
    assert!(nulls > 0, "missing users give nulls in the columns");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses() {
    let (server, channel, _data) = feature_server().await;
    let mut client = FeatureServiceClient::new(channel);
    let get = |selection, entities: HashMap<String, pb::ValueList>| pb::GetOnlineFeaturesRequest {
        selection,
        entities,
        request_context: HashMap::new(),
        columnar: false,
    };
    let by_refs = |refs: &[&str]| {
        Some(pb::get_online_features_request::Selection::Features(
            pb::FeatureList {
                features: refs.iter().map(|s| s.to_string()).collect(),
            },
        ))
    };
    let users = HashMap::from([("user_id".to_string(), ints([1]))]);
    let cases = [
        (
            get(by_refs(&["user_profile:nope"]), users.clone()),
            Code::NotFound,
            "has no feature \"nope\"",
        ),
        (
            get(by_refs(&["ghost:x"]), users.clone()),
            Code::NotFound,
            "unknown feature view \"ghost\"",
        ),
        (
            get(
                Some(pb::get_online_features_request::Selection::FeatureService(
                    "ghost".into(),
                )),
                users.clone(),
            ),
            Code::NotFound,
            "unknown feature service",
        ),
        (get(None, users.clone()), Code::InvalidArgument, "feature_service"),
        (
            get(by_refs(&["user_profile:country"]), HashMap::new()),
            Code::InvalidArgument,
            "no entities",
        ),
        (
            get(
                by_refs(&["user_profile:country"]),
                HashMap::from([(
                    "user_id".to_string(),
                    pb::ValueList {
                        values: vec![pb::Value {
                            kind: Some(pb::value::Kind::StringValue("1".into())),
                        }],
                    },
                )]),
            ),
            Code::InvalidArgument,
            "expected a int key, got string",
        ),
        (
            get(
                by_refs(&["user_profile:country"]),
                HashMap::from([("item_id".to_string(), ints([1]))]),
            ),
            Code::InvalidArgument,
            "needs the join key \"user_id\"",
        ),
        (
            get(
                Some(pb::get_online_features_request::Selection::FeatureService(
                    "fraud_v1".into(),
                )),
                users.clone(),
            ),
            Code::InvalidArgument,
            "needs the request field",
        ),
        (
            get(
                by_refs(&["user_profile:country"]),
                HashMap::from([("user_id".to_string(), ints(0..10_001))]),
            ),
            Code::ResourceExhausted,
            "features.max_entities_per_read",
        ),
    ];
    for (request, code, message) in cases {
        let status = client.get_online_features(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(message),
            "{:?} lacks {message:?}",
            status.message()
        );
    }

    let push = |view: &str, fields: Vec<(&str, pb::Value)>, ts: Option<prost_types::Timestamp>| {
        pb::PushFeaturesRequest {
            feature_view: view.into(),
            rows: vec![pb::FeatureRow {
                fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                event_timestamp: ts,
            }],
            to_offline_store: false,
        }
    };
    let id = pb::Value {
        kind: Some(pb::value::Kind::IntValue(5)),
    };
    let registry = ferrite_features::Registry::load(&repo_root().join("features"), None).unwrap();
    let cases = [
        (
            push("ghost", vec![], Some(now())),
            Code::NotFound,
            "unknown feature view \"ghost\"",
        ),
        (
            push(
                "user_stats",
                vec![("user_id", id.clone()), ("bogus", float(1.0))],
                Some(now()),
            ),
            Code::InvalidArgument,
            "unknown field \"bogus\"",
        ),
        (
            push(
                "user_stats",
                vec![("user_id", id.clone()), ("txn_count_1h", float(1.5))],
                Some(now()),
            ),
            Code::InvalidArgument,
            "is int but got float",
        ),
        (
            push("user_stats", vec![("user_id", id.clone())], None),
            Code::InvalidArgument,
            "event_timestamp is required",
        ),
        (
            push("user_stats", vec![("user_id", id.clone())], Some(now())),
            Code::InvalidArgument,
            "missing features [\"txn_count_1h\"",
        ),
        (
            push(
                "user_stats",
                vec![("user_id", id.clone())],
                Some(prost_types::Timestamp {
                    seconds: now().seconds + 365 * 86_400,
                    nanos: 0,
                }),
            ),
            Code::InvalidArgument,
            "features.max_clock_skew_s",
        ),
        (
            pb::PushFeaturesRequest {
                feature_view: "user_profile".into(),
                rows: vec![pb::FeatureRow {
                    fields: registry.views["user_profile"]
                        .features
                        .iter()
                        .map(|f| (f.name.clone(), pb::Value { kind: None }))
                        .chain([("user_id".to_string(), id.clone())])
                        .collect(),
                    event_timestamp: Some(now()),
                }],
                to_offline_store: true,
            },
            Code::InvalidArgument,
            "has no push_dir",
        ),
    ];
    for (request, code, message) in cases {
        let status = client.push_features(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(message),
            "{:?} lacks {message:?}",
            status.message()
        );
    }
    // None of the refused pushes wrote anything.
    let read = client
        .get_online_features(get(
            by_refs(&["user_stats:txn_count_1h"]),
            HashMap::from([("user_id".to_string(), ints([5]))]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.results[0].statuses[0], pb::FeatureStatus::NotFound as i32);
    server.shutdown().await.unwrap();
}
