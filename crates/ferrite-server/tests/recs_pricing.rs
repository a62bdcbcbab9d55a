//! Recommend and Price as a product page and a catalogue job see them: answers from the
//! repository's pipelines on the sample data, the request's filters honoured, bad input refused
//! with INVALID_ARGUMENT naming the field, the catalogues in /metrics, and neither pipeline
//! posing as a KServe model.

mod common;

use common::{scrape, scratch_dir, start_with, test_config};
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::scoring_service_client::ScoringServiceClient;
use ferrite_proto::inference::RepositoryIndexRequest;
use ferrite_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::Code;

/// A user with clicks in the sample data, and an item on sale at the materialization time.
const USER: i64 = 1_000_089;
const ITEM: i64 = 3_000_022;

/// The shipped pipelines with a generous budget (a debug build on a busy machine must not
/// turn these functional checks into fallbacks), and the sample data materialized.
async fn server() -> (ferrite_server::RunningServer, tonic::transport::Channel) {
    let pipelines = scratch_dir("pipelines");
    ferrite_test_support::copy_pipelines(&pipelines, 60_000, |l| Some(l.to_string()));
    let mut config = test_config();
    config.pipelines.directory = pipelines;
    common::materialize_sample(&config).await;
    start_with(config).await
}

fn recommend(user: i64) -> pb::RecommendRequest {
    pb::RecommendRequest {
        user: Some(pb::recommend_request::User::UserIdInt(user)),
        ..Default::default()
    }
}

fn price(item: i64) -> pb::PriceRequest {
    pb::PriceRequest {
        item: Some(pb::price_request::Item::ItemIdInt(item)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_and_price_answer_from_the_models_and_honour_the_request() {
    let (server, channel) = server().await;
    let mut client = ScoringServiceClient::new(channel.clone());

    let mut r = recommend(USER);
    r.include_latency = true;
    let answer = client.recommend(r).await.unwrap().into_inner();
    let meta = answer.meta.unwrap();
    assert!(!meta.fallback, "{}", meta.fallback_reason);
    assert!(!meta.cold_start);
    assert_eq!(
        (meta.model_name.as_str(), meta.model_version.as_str()),
        ("recs_ranker", "1")
    );
    assert_eq!(answer.items.len(), 20);
    assert!(answer.retrieved >= 20, "{}", answer.retrieved);
    assert!(!answer.retrieval_plan.is_empty());
    assert!(answer.items.windows(2).all(|w| w[0].score >= w[1].score));
    let latency = meta.latency.expect("asked for");
    assert!(latency.total_us >= latency.features_us + latency.inference_us);

    // The basket and the exclusions never come back; a category filter keeps that category.
    let first: Vec<String> = answer.items.iter().map(|i| i.item_id.clone()).collect();
    let mut r = recommend(USER);
    r.exclude_item_ids = first[..2].to_vec();
    r.context = Some(pb::RecommendContext {
        page: "basket".into(),
        category: String::new(),
        basket_item_ids: first[2..4].to_vec(),
    });
    let again = client.recommend(r).await.unwrap().into_inner();
    assert!(again.items.iter().all(|i| !first[..4].contains(&i.item_id)));
    let mut r = recommend(USER);
    r.top_k = 3;
    r.context = Some(pb::RecommendContext {
        category: "electronics".into(),
        ..Default::default()
    });
    let only = client.recommend(r).await.unwrap().into_inner();
    assert_eq!(only.items.len(), 3);
    assert!(only.items.iter().all(|i| i.category == "electronics"));

    // An unknown user gets popular items, flagged as a cold start (not a fallback).
    let cold = client
        .recommend(recommend(1_999_999_999))
        .await
        .unwrap()
        .into_inner();
    let meta = cold.meta.unwrap();
    assert!(meta.cold_start && !meta.fallback);
    assert_eq!(cold.items.len(), 20);

    // A price inside its bounds, from the demand model over the candidate grid.
    let mut p = price(ITEM);
    p.include_latency = true;
    let priced = client.price(p).await.unwrap().into_inner();
    let meta = priced.meta.clone().unwrap();
    assert!(!meta.fallback, "{}", meta.fallback_reason);
    assert_eq!(meta.model_name, "pricing_demand");
    assert_eq!(priced.currency, "EUR");
    assert!(
        priced.price > 0.0 && priced.price >= priced.floor_price,
        "{priced:?}"
    );
    assert!(
        priced.price <= priced.current_price * 1.1 + 1e-9
            && priced.price >= priced.current_price * 0.9 - 1e-9
    );
    assert!(priced.candidates > 1);
    assert!(
        [
            "none",
            "cost_floor",
            "max_decrease",
            "max_increase",
            "price_ending"
        ]
        .contains(&priced.bound.as_str())
    );
    assert!((priced.expected_revenue - priced.price * priced.expected_units).abs() < 1e-6);
    // The id as a decimal string is the same item.
    let mut p = price(ITEM);
    p.item = Some(pb::price_request::Item::ItemId(ITEM.to_string()));
    assert_eq!(client.price(p).await.unwrap().into_inner().price, priced.price);

    // Each call is counted; each catalogue's size is exported.
    let metrics = scrape(&server).await;
    for needle in [
        "ferrite_pipeline_rows_total{pipeline=\"recommendations\",outcome=\"model\"",
        "ferrite_pipeline_rows_total{pipeline=\"pricing\",outcome=\"model\"",
        "ferrite_pipeline_catalog_items{pipeline=\"recommendations\"}",
        "ferrite_pipeline_catalog_items{pipeline=\"pricing\"}",
        "ferrite_pipeline_retrievals_total{pipeline=\"recommendations\"",
    ] {
        assert!(metrics.contains(needle), "{needle} not in /metrics");
    }
    // Decisions are fraud's: no approve/review/decline series for lists and prices.
    assert!(
        !metrics.contains("pipeline=\"recommendations\",outcome=\"model\",decision=\"approve\""),
        "{metrics}"
    );

    // Lists and bounded prices are not KServe rows: neither pipeline poses as a model.
    let index = GrpcInferenceServiceClient::new(channel)
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = index.models.iter().map(|m| m.name.as_str()).collect();
    assert!(names.contains(&"fraud"), "{names:?}");
    assert!(
        !names.contains(&"recommendations") && !names.contains(&"pricing"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field() {
    let (_server, channel) = server().await;
    let mut client = ScoringServiceClient::new(channel);
    let refused = |e: tonic::Status, needles: &[&str]| {
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        for n in needles {
            assert!(e.message().contains(n), "{:?} lacks {n:?}", e.message());
        }
    };

    let mut r = recommend(USER);
    r.top_k = 5_000;
    refused(client.recommend(r).await.unwrap_err(), &["top_k", "100"]);
    refused(
        client
            .recommend(pb::RecommendRequest::default())
            .await
            .unwrap_err(),
        &["user_id", "missing"],
    );
    let mut r = recommend(USER);
    r.user = Some(pb::recommend_request::User::UserId("alice".into()));
    refused(client.recommend(r).await.unwrap_err(), &["user_id", "alice"]);
    let mut r = recommend(USER);
    r.context = Some(pb::RecommendContext {
        basket_item_ids: vec!["3000001".into(), "lamp".into()],
        ..Default::default()
    });
    refused(
        client.recommend(r).await.unwrap_err(),
        &["context.basket_item_ids[1]", "lamp"],
    );
    let mut r = recommend(USER);
    r.pipeline = "fraud".into();
    refused(
        client.recommend(r).await.unwrap_err(),
        &["pipeline", "fraud pipeline"],
    );

    refused(
        client.price(pb::PriceRequest::default()).await.unwrap_err(),
        &["item_id", "missing"],
    );
    refused(
        client.price(price(3_999_999_999)).await.unwrap_err(),
        &["item_id", "no item"],
    );
    let mut p = price(ITEM);
    p.context.insert(
        "price".into(),
        pb::Value {
            kind: Some(pb::value::Kind::FloatValue(9.99)),
        },
    );
    refused(
        client.price(p).await.unwrap_err(),
        &["context.price", "the pipeline's to choose"],
    );
    let mut p = price(ITEM);
    p.pipeline = "recommendations".into();
    refused(client.price(p).await.unwrap_err(), &["pipeline", "Recommend"]);
}
