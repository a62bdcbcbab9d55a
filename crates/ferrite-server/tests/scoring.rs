//! ScoringService as a checkout service sees it: fraud decisions for single transactions and
//! batches, the generic Score, the declared pipelines, fallbacks counted in /metrics, and bad
//! input refused with INVALID_ARGUMENT naming the field.

mod common;

use common::{scrape, start, transaction};
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::scoring_service_client::ScoringServiceClient;
use ferrite_proto::inference::RepositoryModelUnloadRequest;
use ferrite_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::score_fraud_request::{Merchant, User};
use tonic::Code;

#[tokio::test]
async fn score_fraud_answers_a_decision_with_its_model_and_latency() {
    let (server, channel) = start().await;
    let mut client = ScoringServiceClient::new(channel);

    let mut t = transaction(1_000_042);
    t.include_latency = true;
    let answer = client.score_fraud(t).await.unwrap().into_inner();
    assert_eq!(answer.transaction_id, "t-1000042");
    assert!((0.0..=1.0).contains(&answer.score), "{answer:?}");
    assert_ne!(answer.decision, pb::FraudDecision::Unspecified as i32);
    let meta = answer.meta.unwrap();
    assert_eq!(meta.model_name, "fraud_txn_gbdt");
    assert_eq!(meta.model_version, "1");
    assert!(!meta.fallback, "{}", meta.fallback_reason);
    // The test server's embedded store is empty: every entity is new.
    assert!(meta.cold_start);
    let latency = meta.latency.expect("asked for");
    assert!(latency.total_us >= latency.features_us + latency.inference_us);
    assert_eq!(latency.total_us, meta.server_latency_us);

    // Without asking, no breakdown; the id as a decimal string is the same user.
    let mut t = transaction(1_000_042);
    t.user = Some(User::UserId("1000042".into()));
    let again = client.score_fraud(t).await.unwrap().into_inner();
    assert_eq!(again.score, answer.score);
    assert!(again.meta.unwrap().latency.is_none());

    // The batch form answers each transaction, in order, as the single form does.
    let batch = client
        .score_fraud_batch(pb::ScoreFraudBatchRequest {
            transactions: vec![transaction(1_000_042), transaction(1_000_043)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 2);
    assert_eq!(batch.results[0].transaction_id, "t-1000042");
    assert_eq!(batch.results[1].transaction_id, "t-1000043");
    assert_eq!(batch.results[0].score, answer.score);

    // The generic Score runs the same pipeline by name.
    let value = |kind| pb::Value { kind: Some(kind) };
    use pb::value::Kind;
    let generic = client
        .score(pb::ScoreRequest {
            pipeline: "fraud".into(),
            entities: [
                ("user_id".to_string(), value(Kind::IntValue(1_000_042))),
                (
                    "merchant_id".to_string(),
                    value(Kind::StringValue("2000007".into())),
                ),
            ]
            .into(),
            fields: [
                ("amount".to_string(), value(Kind::FloatValue(42.5))),
                ("currency".to_string(), value(Kind::StringValue("EUR".into()))),
                ("device_type".to_string(), value(Kind::StringValue("ios".into()))),
                (
                    "event_timestamp".to_string(),
                    value(Kind::IntValue(1_790_000_000_000_000)),
                ),
            ]
            .into(),
            include_latency: false,
            force_variant: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(generic.score, answer.score);
    assert!(["approve", "review", "decline"].contains(&generic.decision.as_str()));

    let listed = client
        .list_pipelines(pb::ListPipelinesRequest {})
        .await
        .unwrap()
        .into_inner();
    let fraud = listed.pipelines.iter().find(|p| p.name == "fraud").unwrap();
    assert_eq!(fraud.kind, "fraud");
    assert!(fraud.features.len() >= 100);
    assert_eq!(
        fraud.request_fields.get("amount").map(String::as_str),
        Some("float")
    );
    assert!(fraud.entity_keys.contains(&"user_id".to_string()));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unloaded_model_gets_the_fallback_and_it_is_counted() {
    let (server, channel) = start().await;
    GrpcInferenceServiceClient::new(channel.clone())
        .repository_model_unload(RepositoryModelUnloadRequest {
            model_name: "fraud_txn_gbdt".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut client = ScoringServiceClient::new(channel);
    let mut t = transaction(1_000_042);
    t.amount = 6_000.0;
    let answer = client.score_fraud(t).await.unwrap().into_inner();
    let meta = answer.meta.unwrap();
    assert!(
        meta.fallback && meta.fallback_reason.contains("fraud_txn_gbdt"),
        "{meta:?}"
    );
    assert_eq!(answer.decision, pb::FraudDecision::Review as i32);
    // The rule-based score: a large amount scores higher than the base rate.
    assert!(answer.score > 0.3, "{}", answer.score);
    let text = scrape(&server).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("ferrite_pipeline_fallbacks_total")
                && l.contains("pipeline=\"fraud\"")
                && l.contains("reason=\"model_error\"")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("ferrite_pipeline_rows_total")
            && l.contains("outcome=\"fallback\"")
            && l.contains("decision=\"review\"")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ferrite_pipeline_seconds_count") && l.contains("stage=\"total\"")),
        "{text}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let (server, channel) = start().await;
    let mut client = ScoringServiceClient::new(channel);
    let refused = |status: tonic::Status, needles: &[&str]| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        for n in needles {
            assert!(status.message().contains(n), "{:?} lacks {n:?}", status.message());
        }
    };

    let mut t = transaction(1);
    t.pipeline = "nope".into();
    refused(
        client.score_fraud(t).await.unwrap_err(),
        &["pipeline", "nope", "fraud"],
    );
    let mut t = transaction(1);
    t.amount = f64::NAN;
    refused(client.score_fraud(t).await.unwrap_err(), &["amount", "finite"]);
    let mut t = transaction(1);
    t.currency.clear();
    refused(client.score_fraud(t).await.unwrap_err(), &["currency", "missing"]);
    let mut t = transaction(1);
    t.user = None;
    refused(client.score_fraud(t).await.unwrap_err(), &["user_id", "missing"]);
    let mut t = transaction(1);
    t.merchant = Some(Merchant::MerchantId("shop-7".into()));
    refused(
        client.score_fraud(t).await.unwrap_err(),
        &["merchant_id", "integer"],
    );
    let mut t = transaction(1);
    t.context.insert(
        "amount".into(),
        pb::Value {
            kind: Some(pb::value::Kind::FloatValue(1.0)),
        },
    );
    refused(client.score_fraud(t).await.unwrap_err(), &["context", "amount"]);

    let batch = |transactions| pb::ScoreFraudBatchRequest { transactions };
    refused(
        client.score_fraud_batch(batch(vec![])).await.unwrap_err(),
        &["transactions", "at least one"],
    );
    let mut bad = transaction(2);
    bad.device_type = "fax".into();
    refused(
        client
            .score_fraud_batch(batch(vec![transaction(1), bad]))
            .await
            .unwrap_err(),
        &["transactions[1].device_type", "ios"],
    );
    refused(
        client
            .score_fraud_batch(batch((0..257).map(transaction).collect()))
            .await
            .unwrap_err(),
        &["257", "at most 256"],
    );
    let mut other = transaction(2);
    other.pipeline = "fraud".into();
    refused(
        client
            .score_fraud_batch(batch(vec![transaction(1), other]))
            .await
            .unwrap_err(),
        &["transactions[1].pipeline"],
    );
    let err = client
        .score(pb::ScoreRequest {
            pipeline: "fraud".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    refused(err, &["rows", "at least one"]);
    server.shutdown().await.unwrap();
}
