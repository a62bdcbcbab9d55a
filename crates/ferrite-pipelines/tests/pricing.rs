//! The pricing pipeline end to end on the repository's own definitions, sample data and
//! demand model: vectors equal the training set's rows and demand equals NumPy's; prices never
//! break their bounds (every catalogue item through the engine, and random bounds through the
//! grid); an outage answers the current price, flagged; bad input names the field.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferrite_features::Value;
use ferrite_features::training::training_set;
use ferrite_pipelines::config::{Ending, PricingSection};
use ferrite_pipelines::price::{grid, range};
use ferrite_pipelines::{Bound, CallInput, Engine, PipelineError, PriceCall};
use ferrite_test_support::repo_root;
use proptest::prelude::*;
use serde::Deserialize;

/// `tests/data/pricing_parity.json`, written by scripts/train_pricing_model.py.
#[derive(Debug, Deserialize)]
struct Parity {
    cut_time_us: i64,
    features: Vec<String>,
    rows: Vec<Row>,
}

#[derive(Debug, Deserialize)]
struct Row {
    item_id: i64,
    price: f64,
    vector: Vec<f64>,
    units: f64,
}

fn parity() -> Parity {
    let path = repo_root().join("crates/ferrite-pipelines/tests/data/pricing_parity.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

async fn setup(cut: i64) -> Engine {
    let registry = registry();
    let store = embedded_store().await;
    fill(&registry, store.as_ref(), cut).await;
    let engine = relaxed_engine(registry, store, models_loaded(&["pricing_demand"]), 60_000);
    let items = engine.refresh_catalog("pricing", cut).await.unwrap();
    assert!(items > 100, "{items} items priced");
    engine
}

fn call(item: i64) -> PriceCall {
    PriceCall {
        item: Value::Int(item),
        ..PriceCall::default()
    }
}

fn cents(x: f64) -> i64 {
    (x * 100.0).round() as i64
}

// Polars' scans need the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_equal_training_rows_and_demand_equals_numpy() {
    let parity = parity();
    let registry = registry();
    let engine = setup(parity.cut_time_us).await;
    let pricing = engine.pipelines().get("pricing").unwrap().clone();
    assert_eq!(pricing.input.feature_names, parity.features);
    let entities = ferrite_features::ParquetSource::new(
        repo_root().join("crates/ferrite-pipelines/tests/data/pricing_parity_entities.parquet"),
    )
    .scan()
    .unwrap();
    let set = training_set(&registry, &pricing.input.refs, entities, "event_timestamp").unwrap();
    let mut input = CallInput::default();
    for r in &parity.rows {
        input.push_row(
            [("item_id".to_string(), Value::Int(r.item_id))],
            [("price".to_string(), Value::Float(r.price))],
        );
    }
    let online = engine
        .feature_rows("pricing", input, parity.cut_time_us)
        .await
        .unwrap();
    for (i, (r, got)) in parity.rows.iter().zip(&online).enumerate() {
        for (f, name) in pricing.input.feature_names.iter().enumerate() {
            let column = set
                .column(name)
                .unwrap()
                .cast(&polars::prelude::DataType::Float64)
                .unwrap();
            let offline = column.f64().unwrap().get(i).unwrap() as f32;
            assert_eq!(
                got[f], offline,
                "item {} at {} feature {name}",
                r.item_id, r.price
            );
            assert_eq!(
                got[f], r.vector[f] as f32,
                "item {} feature {name}: vs the fixture",
                r.item_id
            );
        }
    }
    let input = ferrite_models::Tensor::new(
        "features",
        vec![online.len(), parity.features.len()],
        ferrite_models::TensorData::Fp32(online.concat()),
    )
    .unwrap();
    let (_, out) = engine
        .models()
        .infer("pricing_demand", "1", vec![input])
        .await
        .unwrap();
    let ferrite_models::TensorData::Fp32(units) = &out[0].data else {
        panic!()
    };
    for (r, got) in parity.rows.iter().zip(units) {
        assert!(
            (f64::from(*got) - r.units).abs() <= 1e-5 * r.units.max(1.0),
            "item {} at {}: {got} vs {}",
            r.item_id,
            r.price,
            r.units
        );
    }
}

/// The checks every answered price passes, given the pipeline's bounds.
fn check_bounds(s: &PricingSection, price: f64, cost: f64, current: f64, bound: Bound) {
    let p = cents(price);
    assert!(p > 0, "price {price}");
    let floor = cost * (1.0 + s.min_margin);
    assert!(price >= floor, "price {price} below the floor {floor}");
    let (down, up) = (current * (1.0 - s.max_change), current * (1.0 + s.max_change));
    // Whole cents allowed today (the daily limits forgive float noise, the floor does not).
    let lo = ((floor * 100.0).ceil() as i64)
        .max((down * 100.0 - 1e-6).ceil() as i64)
        .max(1);
    let hi = (up * 100.0 + 1e-6).floor() as i64;
    if lo <= hi {
        assert!(
            price >= down - 1e-9 && price <= up + 1e-9,
            "price {price} outside [{down}, {up}]"
        );
    } else {
        // No whole-cent price lies between the floor and today's rise limit: the floor wins,
        // and says so.
        assert_eq!(
            bound,
            Bound::CostFloor,
            "price {price}, floor {floor}, limits [{down}, {up}]"
        );
    }
    // The first ending rule with a price inside the bounds is the one used.
    for e in &s.endings {
        let (step, at) = (cents(e.step), cents(e.at));
        let fits = (lo..=hi).any(|c| (c - at).rem_euclid(step) == 0);
        if fits || lo > hi {
            assert_eq!(
                (p - at).rem_euclid(step),
                0,
                "price {price} does not end as {e:?}"
            );
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalogue_item_gets_a_price_inside_its_bounds() {
    let parity = parity();
    let engine = setup(parity.cut_time_us).await;
    let section = engine
        .pipelines()
        .get("pricing")
        .unwrap()
        .pricing
        .as_ref()
        .unwrap()
        .section
        .clone();
    let catalog = engine.catalog("pricing").unwrap();
    let mut bounds_seen = std::collections::HashSet::new();
    for id in &catalog.ids {
        let a = engine
            .price(
                "pricing",
                PriceCall {
                    item: id.clone(),
                    ..PriceCall::default()
                },
                None,
                parity.cut_time_us,
            )
            .await
            .unwrap();
        assert_eq!(a.fallback, None, "item {id}");
        assert!(
            a.candidates > 1 || matches!(a.bound, Bound::CostFloor | Bound::Ending),
            "item {id}: {a:?}"
        );
        check_bounds(&section, a.price, a.cost, a.current_price, a.bound);
        assert!(a.expected_units.is_finite() && a.expected_units >= 0.0);
        assert!((a.expected_revenue - a.price * a.expected_units).abs() < 1e-9);
        assert!((a.expected_margin - (a.price - a.cost) * a.expected_units).abs() < 1e-9);
        bounds_seen.insert(a.bound);
    }
    // The demand model decides inside the bounds for some items and runs into them for others.
    assert!(
        bounds_seen.contains(&Bound::None) || bounds_seen.len() > 1,
        "{bounds_seen:?}"
    );
}

fn section(min_margin: f64, max_change: f64, endings: Vec<Ending>) -> PricingSection {
    let mut s: PricingSection =
        toml::from_str(&format!("min_margin = {min_margin}\nmax_change = {max_change}")).unwrap();
    s.endings = endings;
    s
}

/// Found by the property test: the floor (3.3930) lies below today's rise limit (3.3932) but
/// no whole cent lies between them, so the floor wins, rounded up to 3.40.
#[test]
fn a_floor_and_a_limit_less_than_a_cent_apart_let_the_floor_win() {
    let s = section(0.4857075324738659, 0.17819464909044685, vec![]);
    let r = range(2.2837681360250173, 2.88, &s);
    assert!(r.conflict);
    let g = grid(&r, 2, &s.endings);
    assert_eq!(g, vec![340]);
    check_bounds(&s, 3.40, 2.2837681360250173, 2.88, Bound::CostFloor);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random items (cost, current price) and bounds: every candidate of the grid — so every
    /// price the pipeline can choose — is > 0, at or above the cost floor, within the daily
    /// change limit when the floor allows it, and ends as configured.
    #[test]
    fn grid_prices_never_break_their_bounds(
        cost in 0.01f64..500.0,
        markup in 0.3f64..4.0,
        min_margin in 0.0f64..0.5,
        max_change in 0.01f64..0.5,
        n in 2usize..80,
        ending in 0usize..3,
    ) {
        let current = (cost * markup * 100.0).round().max(1.0) / 100.0;
        let endings = match ending {
            0 => vec![],
            1 => vec![Ending { step: 1.0, at: 0.99 }],
            _ => vec![Ending { step: 1.0, at: 0.99 }, Ending { step: 0.1, at: 0.09 }],
        };
        let s = section(min_margin, max_change, endings);
        let r = range(cost, current, &s);
        let g = grid(&r, n, &s.endings);
        prop_assert!(!g.is_empty());
        prop_assert!(g.len() <= n);
        for &c in &g {
            let bound = if r.conflict { Bound::CostFloor } else { Bound::None };
            check_bounds(&s, c as f64 / 100.0, cost, current, bound);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field() {
    let parity = parity();
    let engine = setup(parity.cut_time_us).await;
    let cut = parity.cut_time_us;
    let item = parity.rows[0].item_id;
    let e = engine
        .price(
            "pricing",
            PriceCall {
                fields: [("price".to_string(), Value::Float(9.99))].into(),
                ..call(item)
            },
            None,
            cut,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("price:"), "{e}");
    let e = engine
        .price(
            "pricing",
            PriceCall {
                item: Value::Str("lamp".into()),
                ..PriceCall::default()
            },
            None,
            cut,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("item_id") && e.contains("lamp"), "{e}");
    let e = engine
        .price("pricing", call(3_999_999_999), None, cut)
        .await
        .unwrap_err();
    assert!(matches!(e, PipelineError::Invalid { .. }), "{e:?}");
    assert!(
        e.to_string().contains("item_id") && e.to_string().contains("no item"),
        "{e}"
    );
    let e = engine
        .price("recommendations", call(item), None, cut)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("recommendations pipeline") && e.contains("Recommend"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_the_current_price_flagged_within_the_budget() {
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
    let engine = relaxed_engine(
        registry.clone(),
        store.clone(),
        models_loaded(&["pricing_demand"]),
        2_000,
    );
    engine.refresh_catalog("pricing", cut).await.unwrap();
    let budget = engine.pipelines().get("pricing").unwrap().budget;
    let item = parity.rows[0].item_id;
    let ask = || async {
        let deadline = Instant::now() + budget;
        tokio::time::timeout_at(deadline.into(), engine.price("pricing", call(item), None, cut))
            .await
            .expect("every call answers within the pipeline's budget")
            .unwrap()
    };
    let mut model_answer = None;
    for _ in 0..50 {
        let a = ask().await;
        if a.fallback.is_none() {
            model_answer = Some(a);
            break;
        }
    }
    let model_answer = model_answer.expect("no model answer before the outage");
    redis.stop();
    for _ in 0..5 {
        let a = ask().await;
        let reason = a.fallback.as_deref().expect("a fallback during the outage");
        assert!(reason.contains("online store"), "{reason}");
        assert_eq!(a.bound, Bound::Current);
        assert_eq!(
            a.price, model_answer.current_price,
            "the current price from the catalogue"
        );
    }
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
