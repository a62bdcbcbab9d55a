//! Experiments as an experimenter and a checkout service see them: fraud rows routed to model
//! versions by GrowthBook's bucketing of the user, forced variants, splits changed without a
//! restart, a failing canary rolled back by itself while callers see no error (and still
//! rolled back after a restart, and on a second replica sharing the Redis), shadow variants
//! that never change an answer, and the exposure log written on shutdown.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{scrape, scratch_dir, start_with, test_config};
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::experiment_service_client::ExperimentServiceClient;
use ferrite_proto::ferrite::v1::scoring_service_client::ScoringServiceClient;
use ferrite_server::Config;
use ferrite_test_support::{RedisServer, repo_root};
use tonic::Code;
use tonic::transport::Channel;

/// `fraud_txn_gbdt` with version 1 (the shipped model), 2 (the same bytes: a canary equal to
/// its baseline) and 3 (a model that gives NaN when amount_eur > 900,000).
fn models_dir() -> PathBuf {
    let dir = scratch_dir("exp-models");
    let src = repo_root().join("models/fraud_txn_gbdt");
    let dst = dir.join("fraud_txn_gbdt");
    for v in ["1", "2"] {
        std::fs::create_dir_all(dst.join(v)).unwrap();
        for f in ["model.onnx", "features.json"] {
            std::fs::copy(src.join("1").join(f), dst.join(v).join(f)).unwrap();
        }
    }
    std::fs::create_dir_all(dst.join("3")).unwrap();
    std::fs::copy(
        repo_root().join("crates/ferrite-server/tests/data/fraud_canary_nan.onnx"),
        dst.join("3/model.onnx"),
    )
    .unwrap();
    std::fs::copy(src.join("config.toml"), dst.join("config.toml")).unwrap();
    dir
}

/// The shipped fraud pipeline alone, with a budget a debug build keeps on a busy machine.
fn pipelines_dir() -> PathBuf {
    let dir = scratch_dir("exp-pipelines");
    ferrite_test_support::copy_pipeline(&dir, "fraud", 10_000);
    dir
}

struct Setup {
    config: Config,
    exposures: PathBuf,
}

fn setup(experiment: &str) -> Setup {
    let experiments = scratch_dir("exp-defs");
    std::fs::write(experiments.join("experiment.toml"), experiment).unwrap();
    let exposures = scratch_dir("exp-exposures");
    let mut config = test_config();
    config.models.repository = models_dir();
    config.pipelines.directory = pipelines_dir();
    config.experiments.directory = experiments;
    config.experiments.state_dir = scratch_dir("exp-state");
    config.experiments.exposures_dir = exposures.clone();
    config.experiments.sync_interval_ms = 50;
    Setup { config, exposures }
}

fn transaction(user: i64, amount: f64) -> pb::ScoreFraudRequest {
    pb::ScoreFraudRequest {
        transaction_id: format!("t-{user}-{amount}"),
        amount,
        ..common::transaction(user)
    }
}

const AB: &str = r#"
name = "fraud-ab"
target = "fraud"
unit = "user_id"
[[variants]]
name = "a"
model_version = 1
weight = 0.5
[[variants]]
name = "b"
model_version = 2
weight = 0.5
"#;

async fn experiment(channel: &Channel, name: &str) -> pb::Experiment {
    let all = ExperimentServiceClient::new(channel.clone())
        .list_experiments(pb::ListExperimentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .experiments;
    all.into_iter().find(|e| e.name == name).expect("listed")
}

#[tokio::test]
async fn rows_go_to_their_assigned_variant_and_splits_change_without_a_restart() {
    let s = setup(AB);
    let (server, channel) = start_with(s.config).await;
    let mut scoring = ScoringServiceClient::new(channel.clone());
    let mut experiments = ExperimentServiceClient::new(channel.clone());

    let mut seen = std::collections::BTreeMap::new();
    for user in 1_000_000..1_000_120 {
        let answer = scoring
            .score_fraud(transaction(user, 42.5))
            .await
            .unwrap()
            .into_inner();
        let meta = answer.meta.unwrap();
        assert!(!meta.fallback, "{}", meta.fallback_reason);
        let assigned = experiments
            .get_assignment(pb::GetAssignmentRequest {
                experiment: "fraud-ab".into(),
                unit_id: user.to_string(),
                force_variant: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(meta.variant, assigned.variant, "user {user}");
        assert_eq!(meta.model_version, assigned.model_version, "user {user}");
        assert!(!assigned.forced && assigned.in_coverage);
        *seen.entry(meta.variant).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "both variants serve: {seen:?}");

    // A forced variant (QA) wins over the hash, and the answer says which ran.
    let mut t = transaction(1_000_001, 42.5);
    t.force_variant = "b".into();
    let meta = scoring.score_fraud(t).await.unwrap().into_inner().meta.unwrap();
    assert_eq!((meta.variant.as_str(), meta.model_version.as_str()), ("b", "2"));
    let bad = experiments
        .get_assignment(pb::GetAssignmentRequest {
            experiment: "fraud-ab".into(),
            unit_id: "1".into(),
            force_variant: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("force_variant"), "{}", bad.message());

    // 50/50 -> 100/0 through the admin RPC: every user goes to `a` from the next call on.
    let updated = experiments
        .update_experiment(pb::UpdateExperimentRequest {
            experiment: "fraud-ab".into(),
            weights: [("a".to_string(), 1.0), ("b".to_string(), 0.0)].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .experiment
        .unwrap();
    assert_eq!(updated.variants[0].current_weight, 1.0);
    assert_all_served_by(&channel, 1_000_000..1_000_030, "a").await;
    // A split that leaves an arm out changes nothing.
    let partial = experiments
        .update_experiment(pb::UpdateExperimentRequest {
            experiment: "fraud-ab".into(),
            weights: [("a".to_string(), 0.7)].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(partial.code(), Code::InvalidArgument);
    assert_eq!(
        experiment(&channel, "fraud-ab").await.variants[0].current_weight,
        1.0
    );

    // Every answered row is in the exposure log once the server has stopped.
    server.shutdown().await.unwrap();
    let files = parquet_files(&s.exposures);
    assert!(!files.is_empty(), "no exposure file in {}", s.exposures.display());
}

/// Every user of `users` gets a model answer from `variant`.
async fn assert_all_served_by(channel: &Channel, users: std::ops::Range<i64>, variant: &str) {
    let mut scoring = ScoringServiceClient::new(channel.clone());
    for user in users {
        let meta = scoring
            .score_fraud(transaction(user, 42.5))
            .await
            .unwrap()
            .into_inner()
            .meta
            .unwrap();
        assert!(!meta.fallback, "{}", meta.fallback_reason);
        assert_eq!(meta.variant, variant, "user {user}");
    }
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet") && p.metadata().unwrap().len() > 0)
        .collect()
}

/// Stable v1 and a canary v3 that fails on large amounts, half the users each so that a test
/// sees enough canary calls.
fn canary(min_requests: u64) -> String {
    format!(
        r#"
name = "fraud-canary"
target = "fraud"
unit = "user_id"
[[variants]]
name = "stable"
model_version = 1
weight = 0.5
[[variants]]
name = "canary"
model_version = 3
weight = 0.5
[canary]
variant = "canary"
stable = "stable"
min_requests = {min_requests}
max_error_rate = 0.005
alpha = 0.01
"#
    )
}

/// Calls fraud with 3 % of amounts above the canary's failure line until `channel`'s server
/// says the canary is rolled back (at most `calls` calls). Every answer must be a model answer.
async fn drive_until_rolled_back(channel: &Channel, calls: i64) -> bool {
    let mut scoring = ScoringServiceClient::new(channel.clone());
    for i in 0..calls {
        let amount = if i % 33 == 0 { 950_000.0 } else { 42.5 };
        let answer = scoring
            .score_fraud(transaction(1_000_000 + i, amount))
            .await
            .expect("a failing canary never fails a caller")
            .into_inner();
        let meta = answer.meta.unwrap();
        assert!(!meta.fallback, "{}", meta.fallback_reason);
        assert!(answer.score.is_finite());
        if amount > 900_000.0 {
            assert_eq!(
                meta.variant, "stable",
                "a failed canary row is answered by stable"
            );
        }
        if i % 50 == 49 && experiment(channel, "fraud-canary").await.state == "rolled_back" {
            return true;
        }
    }
    experiment(channel, "fraud-canary").await.state == "rolled_back"
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_and_stays_rolled_back_after_a_restart() {
    let s = setup(&canary(100));
    let state_dir = s.config.experiments.state_dir.clone();
    let config = s.config.clone();
    let (server, channel) = start_with(s.config).await;
    assert!(
        drive_until_rolled_back(&channel, 6_000).await,
        "the canary was not rolled back"
    );
    let e = experiment(&channel, "fraud-canary").await;
    let c = e.canary.unwrap();
    assert_eq!(c.share, 0.0);
    assert!(c.canary_errors > 0);
    assert_eq!(c.history.last().unwrap().status, "rolled_back");
    // Rolled back: every user is served by stable.
    assert_all_served_by(&channel, 2_000_000..2_000_040, "stable").await;
    let metrics = scrape(&server).await;
    assert!(metrics.contains("ferrite_pipeline_rows_total"), "metrics served");
    server.shutdown().await.unwrap();

    let mut again = config;
    again.experiments.state_dir = state_dir;
    again.features.embedded_path = scratch_dir("exp-online");
    again.server.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let (server, channel) = start_with(again).await;
    assert_eq!(experiment(&channel, "fraud-canary").await.state, "rolled_back");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_replicas_on_one_redis_agree_on_a_rollback() {
    let redis = RedisServer::start();
    let s = setup(&canary(100));
    let mut config = s.config;
    config.features.online_store = ferrite_server::config::OnlineStoreKind::Redis;
    config.features.redis_url = redis.url();
    // A loaded test machine must not turn these calls into fallbacks (the 50 ms default is
    // for serving, not for a debug build sharing two cores).
    config.features.redis_response_timeout_ms = std::num::NonZeroU64::new(5_000).unwrap();
    let (a, channel_a) = start_with(config.clone()).await;
    let (b, channel_b) = start_with(config).await;
    assert_eq!(experiment(&channel_b, "fraud-canary").await.state, "running");
    assert!(
        drive_until_rolled_back(&channel_a, 6_000).await,
        "replica A did not roll back"
    );
    // B never saw a failing call; it adopts A's verdict from Redis.
    let until = Instant::now() + Duration::from_secs(20);
    while experiment(&channel_b, "fraud-canary").await.state != "rolled_back" {
        assert!(Instant::now() < until, "replica B did not adopt the rollback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_canary = experiment(&channel_b, "fraud-canary").await.canary.unwrap();
    assert_eq!(b_canary.canary_errors, 0, "B judged nothing itself");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_shadow_variant_is_run_and_recorded_without_changing_any_answer() {
    let with_shadow = r#"
name = "fraud-shadow"
target = "fraud"
unit = "user_id"
[[variants]]
name = "served"
model_version = 1
weight = 1.0
[[variants]]
name = "candidate"
model_version = 3
kind = "shadow"
[[variants]]
name = "twin"
model_version = 2
kind = "shadow"
"#;
    let s = setup(with_shadow);
    let mut plain = s.config.clone();
    plain.experiments.directory = scratch_dir("exp-none");
    plain.features.embedded_path = scratch_dir("exp-online");
    let (server, channel) = start_with(s.config).await;
    let (bare, bare_channel) = start_with(plain).await;
    let strip = |mut r: pb::ScoreFraudResponse| {
        let meta = r.meta.as_mut().unwrap();
        meta.server_latency_us = 0;
        meta.variant.clear();
        prost::Message::encode_to_vec(&r)
    };
    for user in 1_000_000..1_000_040 {
        let t = transaction(user, if user % 10 == 0 { 950_000.0 } else { 42.5 });
        let shadowed = ScoringServiceClient::new(channel.clone())
            .score_fraud(t.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(shadowed.meta.as_ref().unwrap().variant, "served");
        let alone = ScoringServiceClient::new(bare_channel.clone())
            .score_fraud(t)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(strip(shadowed), strip(alone), "user {user}");
    }
    // The shadows ran on a copy of the rows, after the answers (the calls of each 50 ms as one
    // batch): every row is counted, and the twin of the served model (version 2, the same
    // bytes) gave each row exactly its served score.
    let until = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let metrics = scrape(&server).await;
        let rows = |variant: &str| {
            sample(
                &metrics,
                "ferrite_shadow_rows_total",
                &format!("variant=\"{variant}\""),
            )
        };
        if rows("candidate") == Some(40.0) && rows("twin") == Some(40.0) {
            break metrics;
        }
        assert!(
            Instant::now() < until,
            "not every shadow row recorded:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let twin = "variant=\"twin\"";
    assert_eq!(
        sample(&metrics, "ferrite_shadow_score_diff_count", twin),
        Some(40.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "ferrite_shadow_score_diff_sum", twin),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "ferrite_shadow_decision_flips_total", twin),
        None,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "ferrite_shadow_errors_total", "variant="),
        None,
        "{metrics}"
    );
    server.shutdown().await.unwrap();
    bare.shutdown().await.unwrap();
}

/// The recommendations and pricing models, with `recs_ranker` version 2 (every weight NaN: a
/// ranker whose every score is not a number) and `pricing_demand` version 2 (the same bytes
/// as 1).
fn recs_pricing_models() -> PathBuf {
    let dir = scratch_dir("exp-recs-models");
    let copy_version = |model: &str, from: &str, to: &str| {
        let src = repo_root().join("models").join(model);
        let dst = dir.join(model);
        std::fs::create_dir_all(dst.join(to)).unwrap();
        // Every version loaded (the shipped files load the latest only).
        let config = std::fs::read_to_string(src.join("config.toml")).unwrap();
        std::fs::write(
            dst.join("config.toml"),
            format!("version_policy = \"all\"\n{config}"),
        )
        .unwrap();
        for f in ["model.safetensors", "features.json"] {
            std::fs::copy(src.join(from).join(f), dst.join(to).join(f)).unwrap();
        }
    };
    for model in [
        "recs_user_tower",
        "recs_item_tower",
        "recs_ranker",
        "pricing_demand",
    ] {
        copy_version(model, "1", "1");
    }
    copy_version("pricing_demand", "1", "2");
    copy_version("recs_ranker", "1", "2");
    poison_safetensors(&dir.join("recs_ranker/2/model.safetensors"));
    dir
}

/// Sets every FP32 value of a safetensors file to NaN, leaving its header as it is.
fn poison_safetensors(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut poisoned = 0;
    for (name, t) in &header {
        if name == "__metadata__" || t["dtype"] != "F32" {
            continue;
        }
        let (a, b) = (
            t["data_offsets"][0].as_u64().unwrap() as usize,
            t["data_offsets"][1].as_u64().unwrap() as usize,
        );
        for chunk in bytes[8 + n + a..8 + n + b].chunks_exact_mut(4) {
            chunk.copy_from_slice(&f32::NAN.to_le_bytes());
        }
        poisoned += 1;
    }
    assert!(poisoned > 0, "no FP32 tensor in {}", path.display());
    std::fs::write(path, bytes).unwrap();
}

/// A canary ranker (always NaN) with a shadow ranker beside the arms, and a 50/50 split of
/// items between two demand-model versions.
const RECS_CANARY: &str = r#"
name = "recs-canary"
target = "recommendations"
unit = "user_id"
[[variants]]
name = "stable"
model_version = 1
weight = 0.5
[[variants]]
name = "canary"
model_version = 2
weight = 0.5
[[variants]]
name = "shadow"
model_version = 1
kind = "shadow"
[canary]
variant = "canary"
stable = "stable"
min_requests = 20
max_error_rate = 0.005
alpha = 0.01
"#;

const PRICE_AB: &str = r#"
name = "price-ab"
target = "pricing"
unit = "item_id"
[[variants]]
name = "a"
model_version = 1
weight = 0.5
[[variants]]
name = "b"
model_version = 2
weight = 0.5
"#;

/// The value of the first sample of `name` whose labels contain `label` in Prometheus text.
fn sample(metrics: &str, name: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommendations_and_prices_route_through_experiments() {
    let experiments = scratch_dir("exp-defs");
    std::fs::write(experiments.join("recs.toml"), RECS_CANARY).unwrap();
    std::fs::write(experiments.join("price.toml"), PRICE_AB).unwrap();
    let pipelines = scratch_dir("exp-pipelines");
    ferrite_test_support::copy_pipelines(&pipelines, 60_000, |l| Some(l.to_string()));
    let mut config = test_config();
    config.models.repository = recs_pricing_models();
    config.pipelines.directory = pipelines;
    config.experiments.directory = experiments;
    config.experiments.state_dir = scratch_dir("exp-state");
    config.experiments.exposures_dir = scratch_dir("exp-exposures");
    common::materialize_sample(&config).await;
    let (server, channel) = start_with(config).await;
    let mut scoring = ScoringServiceClient::new(channel.clone());
    let mut admin = ExperimentServiceClient::new(channel.clone());

    // The experiment routes between the ranker's versions.
    let listed = experiment(&channel, "recs-canary").await;
    assert!(
        listed.variants.iter().all(|v| v.model_name == "recs_ranker"),
        "{listed:?}"
    );

    // Users on the canary get the stable ranker's answer (its NaN scores are never served),
    // until the canary is rolled back by itself.
    let mut on_canary = 0;
    let mut rolled_back = false;
    for user in 1_000_000..1_000_400 {
        let r = pb::RecommendRequest {
            user: Some(pb::recommend_request::User::UserIdInt(user)),
            ..Default::default()
        };
        let answer = scoring.recommend(r).await.expect("never an error").into_inner();
        let meta = answer.meta.unwrap();
        assert!(!meta.fallback, "user {user}: {}", meta.fallback_reason);
        if meta.cold_start {
            continue;
        }
        assert_eq!(
            (meta.variant.as_str(), meta.model_version.as_str()),
            ("stable", "1"),
            "user {user}"
        );
        assert!(answer.items.iter().all(|i| i.score.is_finite()));
        let assigned = admin
            .get_assignment(pb::GetAssignmentRequest {
                experiment: "recs-canary".into(),
                unit_id: user.to_string(),
                force_variant: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        on_canary += usize::from(assigned.variant == "canary");
        if user % 20 == 19 && experiment(&channel, "recs-canary").await.state == "rolled_back" {
            rolled_back = true;
            break;
        }
    }
    assert!(on_canary > 0, "no user was on the canary before the rollback");
    assert!(rolled_back, "the NaN ranker was not rolled back");
    let c = experiment(&channel, "recs-canary").await.canary.unwrap();
    assert!(c.canary_errors >= 20 && c.share == 0.0, "{c:?}");

    // The shadow ranker (the same version as stable) reranks each call's candidates to the
    // same list: its overlap@k is 1 on every call.
    let until = Instant::now() + Duration::from_secs(30);
    let (sum, count) = loop {
        let metrics = scrape(&server).await;
        let label = "experiment=\"recs-canary\"";
        let sum = sample(&metrics, "ferrite_shadow_overlap_at_k_sum", label);
        let count = sample(&metrics, "ferrite_shadow_overlap_at_k_count", label);
        if let (Some(s), Some(c)) = (sum, count)
            && c >= 10.0
        {
            break (s, c);
        }
        assert!(Instant::now() < until, "no shadow overlap recorded:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        (sum - count).abs() < 1e-9,
        "overlap@k sum {sum} over {count} calls"
    );

    // Prices: each item runs its variant's demand model, as GetAssignment says; a forced
    // variant wins.
    let mut seen = std::collections::BTreeSet::new();
    for item in 3_000_000..3_000_040 {
        let r = pb::PriceRequest {
            item: Some(pb::price_request::Item::ItemIdInt(item)),
            ..Default::default()
        };
        let Ok(answer) = scoring.price(r).await else {
            continue;
        };
        let meta = answer.into_inner().meta.unwrap();
        assert!(!meta.fallback, "item {item}: {}", meta.fallback_reason);
        let assigned = admin
            .get_assignment(pb::GetAssignmentRequest {
                experiment: "price-ab".into(),
                unit_id: item.to_string(),
                force_variant: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (meta.variant.as_str(), meta.model_version.as_str()),
            (assigned.variant.as_str(), assigned.model_version.as_str()),
            "item {item}"
        );
        seen.insert(meta.variant);
    }
    assert_eq!(seen.len(), 2, "both demand-model versions priced: {seen:?}");
    let forced = pb::PriceRequest {
        item: Some(pb::price_request::Item::ItemIdInt(3_000_022)),
        force_variant: "b".into(),
        ..Default::default()
    };
    let meta = scoring.price(forced).await.unwrap().into_inner().meta.unwrap();
    assert_eq!((meta.variant.as_str(), meta.model_version.as_str()), ("b", "2"));
    server.shutdown().await.unwrap();
}
