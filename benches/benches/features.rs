//! The feature store's request path in-process: what GetOnlineFeatures costs before gRPC.
//!
//!     cargo bench -p ferrite-benches --bench features
//!
//! Reads 30 user features (`user_stats:*`, `user_profile:*`) of the sample data from the
//! embedded store for 1 and 100 users; plus the row codec and a request-time expression.

use std::collections::HashMap;
use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ferrite_features::online::{EmbeddedStore, StoredRow, decode_row, encode_row};
use ferrite_features::serving::get_online_features;
use ferrite_features::value::now_micros;
use ferrite_features::{Registry, Value};

fn features(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../features");
    let reg = Registry::load(&root, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    rt.block_on(async {
        ferrite_features::materialize::materialize(&reg, &store, &[], 0, now_micros(), false)
            .await
            .unwrap()
    });
    let refs = reg
        .resolve_refs(&["user_stats:*".into(), "user_profile:*".into()])
        .unwrap();
    assert_eq!(refs.len(), 30);
    let mut group = c.benchmark_group("online_features_embedded_30");
    for n in [1i64, 100] {
        let entities = HashMap::from([(
            "user_id".to_string(),
            (0..n).map(|i| Value::Int(1_000_001 + i)).collect::<Vec<_>>(),
        )]);
        let none = HashMap::new();
        group.bench_with_input(BenchmarkId::from_parameter(n), &entities, |b, entities| {
            b.iter(|| {
                rt.block_on(get_online_features(
                    &reg,
                    &store,
                    &refs,
                    entities,
                    &none,
                    now_micros(),
                ))
                .unwrap()
            })
        });
    }
    group.finish();

    let row = StoredRow {
        event_ts: now_micros(),
        created_ts: now_micros(),
        fingerprint: 7,
        values: (0..24)
            .map(|i| {
                if i % 3 == 0 {
                    Value::Int(i)
                } else {
                    Value::Float(i as f64 * 0.5)
                }
            })
            .collect(),
    };
    let bytes = encode_row(&row);
    c.bench_function("row_encode_24", |b| b.iter(|| encode_row(&row)));
    c.bench_function("row_decode_24", |b| b.iter(|| decode_row(&bytes).unwrap()));

    let ratio = &reg.request_views["txn_features"].features[0].expr;
    let (amount, avg) = (Value::Float(120.0), Value::Float(40.0));
    c.bench_function("expression_ratio", |b| {
        b.iter(|| ratio.eval(&[&amount, &avg]).unwrap())
    });
}

criterion_group!(benches, features);
criterion_main!(benches);
