//! The recommendations pipeline end to end on the repository's own definitions, sample data
//! and models: vectors equal the training set's rows, the towers and the ranker equal NumPy,
//! answers honour the filters, exclusions and the category limit, cold starts and outages get
//! the popular items, flagged.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use ferrite_features::Value;
use ferrite_features::training::training_set;
use ferrite_models::{Tensor, TensorData};
use ferrite_pipelines::{CallInput, Engine, PipelineError, RecommendCall};
use ferrite_test_support::repo_root;
use serde::Deserialize;

const MODELS: [&str; 3] = ["recs_user_tower", "recs_item_tower", "recs_ranker"];

/// `tests/data/recs_parity.json`, written by scripts/train_recs_models.py.
#[derive(Debug, Deserialize)]
struct Parity {
    cut_time_us: i64,
    user_features: Vec<String>,
    item_features: Vec<String>,
    cold_users: Vec<i64>,
    users: Vec<Entity>,
    items: Vec<Entity>,
    pairs: Vec<Pair>,
}

#[derive(Debug, Deserialize)]
struct Entity {
    #[serde(alias = "user_id", alias = "item_id")]
    id: i64,
    vector: Vec<f64>,
    embedding: Vec<f64>,
}

#[derive(Debug, Deserialize)]
struct Pair {
    vector: Vec<f32>,
    score: f64,
}

fn parity() -> Parity {
    let path = repo_root().join("crates/ferrite-pipelines/tests/data/recs_parity.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

async fn setup(cut: i64) -> Engine {
    let registry = registry();
    let store = embedded_store().await;
    fill(&registry, store.as_ref(), cut).await;
    let engine = relaxed_engine(registry, store, models_loaded(&MODELS), 60_000);
    let items = engine.refresh_catalog("recommendations", cut).await.unwrap();
    assert!(items > 100, "{items} items in the catalogue");
    engine
}

fn call(user: i64) -> RecommendCall {
    RecommendCall {
        user: Value::Int(user),
        ..RecommendCall::default()
    }
}

async fn run_model(engine: &Engine, model: &str, rows: Vec<Vec<f32>>) -> Vec<f32> {
    let width = rows[0].len();
    let input = Tensor::new(
        "features",
        vec![rows.len(), width],
        TensorData::Fp32(rows.concat()),
    )
    .unwrap();
    let (_, out) = engine.models().infer(model, "1", vec![input]).await.unwrap();
    match &out[0].data {
        TensorData::Fp32(v) => v.clone(),
        other => panic!("{other:?}"),
    }
}

fn close(a: &[f32], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (f64::from(*x) - y).abs() <= tol)
}

// Polars' scans need the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_equal_training_rows_and_models_equal_numpy() {
    let parity = parity();
    let registry = registry();
    let engine = setup(parity.cut_time_us).await;
    let recs = engine.pipelines().get("recommendations").unwrap().clone();
    let r = recs.recs.as_ref().unwrap();
    assert_eq!(recs.input.feature_names, parity.user_features);
    assert_eq!(r.items.feature_names, parity.item_features);

    // Users: the pipeline's vector, the training set's row and the fixture agree.
    let entities = ferrite_features::ParquetSource::new(
        repo_root().join("crates/ferrite-pipelines/tests/data/recs_parity_entities_users.parquet"),
    )
    .scan()
    .unwrap();
    let set = training_set(&registry, &recs.input.refs, entities, "event_timestamp").unwrap();
    let mut input = CallInput::default();
    for u in &parity.users {
        input.push_row([("user_id".to_string(), Value::Int(u.id))], []);
    }
    let online = engine
        .feature_rows("recommendations", input, parity.cut_time_us)
        .await
        .unwrap();
    for (i, (u, got)) in parity.users.iter().zip(&online).enumerate() {
        for (f, name) in recs.input.feature_names.iter().enumerate() {
            let offline = set.column(name).unwrap().f64().unwrap().get(i).unwrap() as f32;
            assert_eq!(
                got[f], offline,
                "user {} feature {name}: online vs training set",
                u.id
            );
            assert_eq!(
                got[f], u.vector[f] as f32,
                "user {} feature {name}: vs the fixture",
                u.id
            );
        }
    }
    let embeddings = run_model(&engine, "recs_user_tower", online.clone()).await;
    for (u, got) in parity.users.iter().zip(embeddings.chunks(32)) {
        assert!(
            close(got, &u.embedding, 1e-5),
            "user {} tower: {got:?} vs {:?}",
            u.id,
            u.embedding
        );
    }

    // Items: the catalogue's rows and embeddings are the training set's and NumPy's.
    let entities = ferrite_features::ParquetSource::new(
        repo_root().join("crates/ferrite-pipelines/tests/data/recs_parity_entities_items.parquet"),
    )
    .scan()
    .unwrap();
    let set = training_set(&registry, &r.items.refs, entities, "event_timestamp").unwrap();
    let ids: Vec<Value> = parity.items.iter().map(|i| Value::Int(i.id)).collect();
    let rows = engine
        .item_rows("recommendations", ids.clone(), parity.cut_time_us)
        .await
        .unwrap();
    let catalog = engine.catalog("recommendations").unwrap();
    let index = catalog.index.as_ref().unwrap();
    for (i, (item, got)) in parity.items.iter().zip(&rows).enumerate() {
        for (f, name) in r.items.feature_names.iter().enumerate() {
            let column = set
                .column(name)
                .unwrap()
                .cast(&polars::prelude::DataType::Float64)
                .unwrap();
            let offline = column.f64().unwrap().get(i).unwrap() as f32;
            assert_eq!(got[f], offline, "item {} feature {name}", item.id);
            assert_eq!(
                got[f], item.vector[f] as f32,
                "item {} feature {name}: vs the fixture",
                item.id
            );
        }
        let p = catalog
            .position(&Value::Int(item.id))
            .expect("the item is in the catalogue");
        assert!(
            close(index.vector(p), &item.embedding, 1e-5),
            "item {} embedding in the index",
            item.id
        );
    }

    // The ranker on the fixture's user ++ item ++ retrieval-score rows.
    let scores = run_model(
        &engine,
        "recs_ranker",
        parity.pairs.iter().map(|p| p.vector.clone()).collect(),
    )
    .await;
    for (p, got) in parity.pairs.iter().zip(scores) {
        assert!(
            (f64::from(got) - p.score).abs() < 1e-5,
            "ranker {got} vs {}",
            p.score
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_honour_filters_exclusions_and_the_category_limit() {
    let parity = parity();
    let engine = setup(parity.cut_time_us).await;
    let recs = engine.pipelines().get("recommendations").unwrap().clone();
    let section = &recs.recs.as_ref().unwrap().section;
    let cut = parity.cut_time_us;
    let user = parity
        .users
        .iter()
        .find(|u| u.vector.iter().any(|x| *x != 0.0))
        .unwrap()
        .id;

    let answer = engine
        .recommend("recommendations", call(user), None, cut)
        .await
        .unwrap();
    assert_eq!(answer.fallback, None);
    assert!(!answer.cold_start);
    assert_eq!(answer.items.len(), section.top_k);
    assert_eq!(answer.model_version, "1");
    assert!(answer.retrieved >= section.top_k && answer.retrieved <= section.candidates);
    assert!(
        answer.items.windows(2).all(|w| w[0].score >= w[1].score),
        "ranked by score"
    );
    let mut per_category: HashMap<String, usize> = HashMap::new();
    for item in &answer.items {
        *per_category
            .entry(item.category.as_deref().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        per_category.values().all(|&n| n <= section.max_per_category),
        "{per_category:?}"
    );
    // Every answered item is on sale and in stock in the online store.
    let ids: Vec<Value> = answer.items.iter().map(|i| i.id.clone()).collect();
    let r = recs.recs.as_ref().unwrap();
    for row in engine
        .item_rows("recommendations", ids.clone(), cut)
        .await
        .unwrap()
    {
        assert!(row[r.active] == 1.0 && row[r.in_stock] > 0.0, "{row:?}");
    }

    // Excluded items never come back; the others still do.
    let excluded: Vec<Value> = ids[..5].to_vec();
    let again = engine
        .recommend(
            "recommendations",
            RecommendCall {
                exclude: excluded.clone(),
                ..call(user)
            },
            None,
            cut,
        )
        .await
        .unwrap();
    assert_eq!(again.items.len(), section.top_k);
    assert!(again.items.iter().all(|i| !excluded.contains(&i.id)));
    assert!(again.items.iter().any(|i| ids[5..].contains(&i.id)));

    // A category filter keeps that category only; the limit per category then caps the answer.
    let only = engine
        .recommend(
            "recommendations",
            RecommendCall {
                category: Some("books".into()),
                top_k: 10,
                ..call(user)
            },
            None,
            cut,
        )
        .await
        .unwrap();
    assert!(!only.items.is_empty());
    assert!(only.items.len() <= section.max_per_category);
    assert!(only.items.iter().all(|i| i.category.as_deref() == Some("books")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_user_gets_popular_in_stock_items_flagged() {
    let parity = parity();
    let engine = setup(parity.cut_time_us).await;
    let answer = engine
        .recommend(
            "recommendations",
            call(parity.cold_users[0]),
            None,
            parity.cut_time_us,
        )
        .await
        .unwrap();
    assert!(answer.cold_start);
    assert_eq!(answer.fallback, None);
    assert_eq!(answer.items.len(), 20);
    assert!(
        answer.items.windows(2).all(|w| w[0].score >= w[1].score),
        "by popularity"
    );
    let catalog = engine.catalog("recommendations").unwrap();
    for item in &answer.items {
        let p = catalog.position(&item.id).unwrap();
        assert!(catalog.available[p]);
        assert_eq!(item.score, f64::from(catalog.popularity[p]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field() {
    let parity = parity();
    let engine = setup(parity.cut_time_us).await;
    let cut = parity.cut_time_us;
    let err = |e: PipelineError| e.to_string();
    let e = err(engine
        .recommend(
            "recommendations",
            RecommendCall {
                top_k: 1000,
                ..call(parity.users[0].id)
            },
            None,
            cut,
        )
        .await
        .unwrap_err());
    assert!(e.contains("top_k") && e.contains("100"), "{e}");
    let e = err(engine
        .recommend(
            "recommendations",
            RecommendCall {
                user: Value::Str("twelve".into()),
                ..RecommendCall::default()
            },
            None,
            cut,
        )
        .await
        .unwrap_err());
    assert!(e.contains("user_id") && e.contains("twelve"), "{e}");
    let e = err(engine
        .recommend(
            "recommendations",
            RecommendCall {
                exclude: vec![Value::Int(3_000_001), Value::Str("x1".into())],
                ..call(parity.users[0].id)
            },
            None,
            cut,
        )
        .await
        .unwrap_err());
    assert!(e.contains("exclude_item_ids[1]") && e.contains("x1"), "{e}");
    let e = err(engine.recommend("fraud", call(1), None, cut).await.unwrap_err());
    assert!(
        e.contains("pipeline") && e.contains("fraud pipeline") && e.contains("ScoreFraud"),
        "{e}"
    );
    assert!(matches!(
        engine.recommend("nope", call(1), None, cut).await,
        Err(PipelineError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_gets_popular_items_flagged_within_the_budget_and_recovers() {
    let parity = parity();
    let cut = parity.cut_time_us;
    let registry = registry();
    let mut redis = ferrite_test_support::RedisServer::start();
    let store = ferrite_features::online::open(&ferrite_features::StoreConfig::Redis {
        url: redis.url(),
        timeouts: Default::default(),
    })
    .await
    .unwrap();
    fill(&registry, store.as_ref(), cut).await;
    // A budget a debug build on a busy machine meets, far above the outage's fail-fast path.
    let engine = relaxed_engine(registry.clone(), store.clone(), models_loaded(&MODELS), 2_000);
    engine.refresh_catalog("recommendations", cut).await.unwrap();
    let budget = engine.pipelines().get("recommendations").unwrap().budget;
    let user = parity.users[3].id;
    let ask = || async {
        let deadline = Instant::now() + budget;
        tokio::time::timeout_at(
            deadline.into(),
            engine.recommend("recommendations", call(user), None, cut),
        )
        .await
        .expect("every call answers within the pipeline's budget")
        .unwrap()
    };
    // A model answer first (the first calls may spend their budget warming up: bounded).
    let mut answered = false;
    for _ in 0..50 {
        if ask().await.fallback.is_none() {
            answered = true;
            break;
        }
    }
    assert!(answered, "no model answer before the outage");
    redis.stop();
    for _ in 0..5 {
        let answer = ask().await;
        let reason = answer.fallback.as_deref().expect("a fallback during the outage");
        assert!(reason.contains("online store"), "{reason}");
        assert_eq!(answer.items.len(), 20, "popular items from the catalogue");
        assert!(answer.items.windows(2).all(|w| w[0].score >= w[1].score));
    }
    // A rebuild during the outage fails and keeps the catalogue it had.
    assert!(engine.refresh_catalog("recommendations", cut).await.is_err());
    assert!(engine.catalog("recommendations").is_some());
    redis.restart();
    fill(&registry, store.as_ref(), cut).await;
    let mut recovered = false;
    for _ in 0..100 {
        if ask().await.fallback.is_none() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "answers did not recover after Redis came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_the_user_bought_are_not_recommended_again() {
    let parity = parity();
    let cut = parity.cut_time_us;
    let registry = registry();
    let store = embedded_store().await;
    fill(&registry, store.as_ref(), cut).await;
    let models = models_loaded(&MODELS);
    let excluding = relaxed_engine(registry.clone(), store.clone(), models.clone(), 60_000);
    let section = &excluding
        .pipelines()
        .get("recommendations")
        .unwrap()
        .recs
        .as_ref()
        .unwrap()
        .section;
    let feature = section
        .exclude_purchased
        .clone()
        .expect("the shipped pipeline excludes bought items");
    let keeping = edited_engine(registry.clone(), store.clone(), models, 60_000, |l| {
        (!l.starts_with("exclude_purchased")).then(|| l.to_string())
    });
    for engine in [&excluding, &keeping] {
        engine.refresh_catalog("recommendations", cut).await.unwrap();
    }

    // Every user's bought items as the store has them at the cut.
    let users: Vec<Value> = (1_000_001..=1_002_000).map(Value::Int).collect();
    let refs = registry.resolve_refs(&[feature]).unwrap();
    let entities = HashMap::from([("user_id".to_string(), users.clone())]);
    let answer = ferrite_features::serving::get_online_features(
        &registry,
        store.as_ref(),
        &refs,
        &entities,
        &HashMap::new(),
        cut,
    )
    .await
    .unwrap();
    let buyers: Vec<(i64, Vec<Value>)> = users
        .iter()
        .zip(&answer.rows)
        .filter_map(|(u, row)| match (&row[0].value, u) {
            (Value::Str(ids), Value::Int(u)) if !ids.is_empty() => Some((
                *u,
                ids.split(',').map(|i| Value::Int(i.parse().unwrap())).collect(),
            )),
            _ => None,
        })
        .take(40)
        .collect();
    assert!(buyers.len() >= 20, "{} users with purchases", buyers.len());

    let mut would_have_come_back = 0;
    for (user, bought) in &buyers {
        let with = excluding
            .recommend(
                "recommendations",
                RecommendCall {
                    top_k: 100,
                    ..call(*user)
                },
                None,
                cut,
            )
            .await
            .unwrap();
        assert_eq!(with.fallback, None);
        assert!(
            with.items.iter().all(|i| !bought.contains(&i.id)),
            "user {user} was recommended an item bought in the window"
        );
        let without = keeping
            .recommend(
                "recommendations",
                RecommendCall {
                    top_k: 100,
                    ..call(*user)
                },
                None,
                cut,
            )
            .await
            .unwrap();
        would_have_come_back += without.items.iter().filter(|i| bought.contains(&i.id)).count();
    }
    // Without the exclusion some bought items do come back: the check above can fail.
    assert!(would_have_come_back > 0);
}
