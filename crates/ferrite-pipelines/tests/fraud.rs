//! The fraud pipeline end to end on the repository's own definitions, sample data and model:
//! online vectors equal the training set's rows, scores equal Python onnxruntime's, and the
//! answers' decisions, reasons, cold starts and fallbacks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ferrite_features::training::training_set;
use ferrite_pipelines::{CallInput, Decision, PipelineError};
use ferrite_test_support::repo_root;
use polars::prelude::*;

fn same(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn expected_vector(v: &[Option<f64>]) -> Vec<f32> {
    v.iter().map(|x| x.map_or(f32::NAN, |x| x as f32)).collect()
}

// Polars' scan needs the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_vectors_equal_training_rows_and_scores_equal_onnxruntime() {
    let parity = parity();
    let registry = registry();
    let store = embedded_store().await;
    fill(&registry, store.as_ref(), parity.cut_time_us).await;
    let engine = engine(registry.clone(), store, models());
    let fraud = engine.pipelines().get("fraud").unwrap().clone();
    assert_eq!(
        fraud.input.feature_names, parity.features,
        "the pipeline's features are the model's"
    );
    assert!(
        fraud.input.feature_names.len() >= 100,
        "{} features",
        fraud.input.feature_names.len()
    );

    // The training set as the current code builds it, for the same (entity, time) rows.
    let entities = ferrite_features::ParquetSource::new(
        repo_root().join("crates/ferrite-pipelines/tests/data/fraud_parity_entities.parquet"),
    )
    .scan()
    .unwrap();
    let set = training_set(&registry, &fraud.input.refs, entities, "event_timestamp").unwrap();
    assert_eq!(set.height(), parity.rows.len());

    let online = engine
        .feature_rows("fraud", transactions(&parity.rows), parity.cut_time_us)
        .await
        .unwrap();
    for (i, (row, got)) in parity.rows.iter().zip(&online).enumerate() {
        let want = expected_vector(&row.vector);
        for (f, name) in fraud.input.feature_names.iter().enumerate() {
            let offline = set
                .column(name)
                .unwrap()
                .cast(&DataType::Float64)
                .unwrap()
                .f64()
                .unwrap()
                .get(i)
                .map_or(f32::NAN, |x| x as f32);
            assert!(
                same(got[f], offline),
                "row {i} (user {}), {name}: online {} vs training set {offline}",
                row.user_id,
                got[f]
            );
            assert!(
                same(got[f], want[f]),
                "row {i} (user {}), {name}: online {} vs committed reference {}",
                row.user_id,
                got[f],
                want[f]
            );
        }
    }

    let answer = engine
        .score("fraud", transactions(&parity.rows), None, parity.cut_time_us)
        .await
        .unwrap();
    assert_eq!(answer.rows.len(), parity.rows.len());
    for (row, got) in parity.rows.iter().zip(&answer.rows) {
        assert_eq!(got.fallback, None);
        assert_eq!(got.model_name, "fraud_txn_gbdt");
        assert_eq!(got.model_version, "1");
        assert!(
            (got.score - row.score).abs() <= 1e-6,
            "user {}: score {} vs onnxruntime {}",
            row.user_id,
            got.score,
            row.score
        );
        assert_eq!(got.decision, fraud.decide(got.score));
    }
    // Scoring one at a time gives the batch's answers.
    for row in parity.rows.iter().take(5) {
        let one = engine
            .score(
                "fraud",
                transactions(std::slice::from_ref(row)),
                None,
                parity.cut_time_us,
            )
            .await
            .unwrap();
        assert!((one.rows[0].score - row.score).abs() <= 1e-6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_trees_agree_with_onnxruntime_on_enough_rows_they_score_them_alike() {
    let parity = parity();
    let registry = registry();
    let store = embedded_store().await;
    fill(&registry, store.as_ref(), parity.cut_time_us).await;
    let models = models();
    let engine = relaxed_engine(registry.clone(), store.clone(), models.clone(), 10_000);
    let onnx_only = edited_engine(registry, store, models.clone(), 10_000, |line| {
        Some(match line.starts_with("explain =") {
            true => format!("{line}\nnative_trees = false"),
            false => line.to_string(),
        })
    });
    let executions = || {
        let v = models
            .get("fraud_txn_gbdt")
            .unwrap()
            .version("1")
            .unwrap()
            .clone();
        v.stats.execution_count.load(std::sync::atomic::Ordering::SeqCst)
    };
    let mut scored = 0;
    while !engine.scores_with_trees("fraud_txn_gbdt", 1) {
        assert!(scored < 2_000, "the trees were not trusted after {scored} rows");
        for e in [&engine, &onnx_only] {
            let answer = e
                .score("fraud", transactions(&parity.rows), None, parity.cut_time_us)
                .await
                .unwrap();
            assert!(answer.rows.iter().all(|r| r.fallback.is_none()));
        }
        scored += parity.rows.len();
    }
    // The trees are trusted only after a thousand rows agreed, and never where switched off.
    assert!(scored >= 1_000, "trusted after {scored} rows");
    assert!(!onnx_only.scores_with_trees("fraud_txn_gbdt", 1));
    // Scored by the trees: Python onnxruntime's scores, and one model run in the statistics.
    let before = executions();
    let answer = engine
        .score("fraud", transactions(&parity.rows), None, parity.cut_time_us)
        .await
        .unwrap();
    assert_eq!(executions(), before + 1);
    for (row, got) in parity.rows.iter().zip(&answer.rows) {
        assert_eq!(got.model_version, "1");
        assert!(
            (got.score - row.score).abs() <= 1e-6,
            "user {}: the trees' score {} vs onnxruntime {}",
            row.user_id,
            got.score,
            row.score
        );
    }
}

#[tokio::test]
async fn decisions_follow_the_thresholds_and_flagged_answers_carry_their_reasons() {
    let parity = parity();
    let registry = registry();
    let store = embedded_store().await;
    fill(&registry, store.as_ref(), parity.cut_time_us).await;
    let engine = engine(registry, store, models());
    let fraud = engine.pipelines().get("fraud").unwrap().clone();
    let f = fraud.fraud.as_ref().unwrap();
    assert_eq!(fraud.decide(f.review_at - 1e-9), Decision::Approve);
    assert_eq!(fraud.decide(f.review_at), Decision::Review);
    assert_eq!(fraud.decide(f.decline_at), Decision::Decline);

    // A transaction that looks like an account takeover: a huge amount, at night, on another
    // device, in a foreign currency.
    let mut risky = parity
        .rows
        .iter()
        .find(|r| r.vector.iter().flatten().count() > 50)
        .unwrap()
        .clone();
    risky.amount = 9_000.0;
    risky.device_type = "web".into();
    risky.currency = "USD".into();
    let answer = engine
        .score("fraud", transactions(&[risky]), None, parity.cut_time_us)
        .await
        .unwrap();
    let row = &answer.rows[0];
    assert_eq!(row.fallback, None);
    if row.decision == Decision::Approve {
        assert!(
            row.reasons.is_empty(),
            "approved answers carry no reasons by default"
        );
    } else {
        assert!(
            !row.reasons.is_empty() && row.reasons.len() <= f.top_reasons,
            "{row:?}"
        );
        for pair in row.reasons.windows(2) {
            assert!(
                pair[0].contribution.abs() >= pair[1].contribution.abs(),
                "{:?}",
                row.reasons
            );
        }
        for r in &row.reasons {
            assert!(fraud.input.feature_names.contains(&r.feature), "{}", r.feature);
            assert!(r.contribution != 0.0);
        }
    }
    assert!(row.feature_age_us > 0, "stored features were used");
}

/// Each reason's contribution is the score minus what the model gives for the row with that
/// one feature at its training mean (ONNX Runtime, one run of every variant here), and the
/// reasons are the largest such changes: whichever way the engine computed them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasons_are_the_changes_the_model_gives_with_one_feature_at_its_mean() {
    let parity = parity();
    let registry = registry();
    let store = embedded_store().await;
    fill(&registry, store.as_ref(), parity.cut_time_us).await;
    let models = models();
    let engine = edited_engine(registry, store, models.clone(), 60_000, |line| {
        Some(line.replace("explain = \"flagged\"", "explain = \"all\""))
    });
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("models/fraud_txn_gbdt/1/features.json")).unwrap(),
    )
    .unwrap();
    let baseline: Vec<f32> = meta["baseline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().map_or(f32::NAN, |m| m as f32))
        .collect();
    let rows = &parity.rows[..12];
    let answer = engine
        .score("fraud", transactions(rows), None, parity.cut_time_us)
        .await
        .unwrap();
    let vectors = engine
        .feature_rows("fraud", transactions(rows), parity.cut_time_us)
        .await
        .unwrap();
    let names = &engine.pipelines().get("fraud").unwrap().input.feature_names;
    let mut explained = 0;
    for (got, row) in answer.rows.iter().zip(&vectors) {
        let changed: Vec<usize> = (0..row.len())
            .filter(|&f| !(row[f] == baseline[f] || (row[f].is_nan() && baseline[f].is_nan())))
            .collect();
        let mut x = Vec::new();
        for &f in &changed {
            let mut variant = row.clone();
            variant[f] = baseline[f];
            x.extend(variant);
        }
        let input = ferrite_models::Tensor::new(
            "features",
            vec![changed.len(), row.len()],
            ferrite_models::TensorData::Fp32(x),
        )
        .unwrap();
        let (_, out) = models.infer("fraud_txn_gbdt", "1", vec![input]).await.unwrap();
        let ferrite_models::TensorData::Fp32(p) = &out[1].data else {
            panic!("probabilities are FP32")
        };
        let mut want: Vec<(String, f64)> = changed
            .iter()
            .zip(p.chunks(2))
            .map(|(&f, c)| (names[f].clone(), got.score - f64::from(c[1])))
            .filter(|(_, c)| *c != 0.0)
            .collect();
        want.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        assert_eq!(got.reasons.len(), want.len().min(3), "{:?}", got.reasons);
        for (r, (_, top)) in got.reasons.iter().zip(&want) {
            let (_, own) = want.iter().find(|(n, _)| *n == r.feature).unwrap();
            assert!(
                (r.contribution - own).abs() <= 1e-5,
                "{}: {} vs {own}",
                r.feature,
                r.contribution
            );
            assert!(
                (r.contribution.abs() - top.abs()).abs() <= 1e-5,
                "{:?} vs {:?}",
                got.reasons,
                &want[..3]
            );
        }
        explained += usize::from(!got.reasons.is_empty());
    }
    assert!(explained >= 10, "{explained} of {} rows explained", rows.len());
}

#[tokio::test]
async fn unknown_entities_get_the_cold_start_answer() {
    let parity = parity();
    let registry = registry();
    let store = embedded_store().await;
    fill(&registry, store.as_ref(), parity.cut_time_us).await;
    let engine = engine(registry, store, models());
    let mut stranger = parity.rows[0].clone();
    stranger.user_id = 1_999_999_999;
    let known = parity
        .rows
        .iter()
        .find(|r| r.vector.iter().flatten().count() > 50)
        .unwrap()
        .clone();
    let answer = engine
        .score(
            "fraud",
            transactions(&[stranger, known]),
            None,
            parity.cut_time_us,
        )
        .await
        .unwrap();
    assert!(answer.rows[0].cold_start && answer.rows[0].fallback.is_none());
    assert!((0.0..=1.0).contains(&answer.rows[0].score));
    assert!(!answer.rows[1].cold_start);
}

#[tokio::test]
async fn an_unloaded_model_gets_the_fallback_flagged_with_the_reason() {
    let parity = parity();
    let registry = registry();
    let store = embedded_store().await;
    fill(&registry, store.as_ref(), parity.cut_time_us).await;
    let models = models();
    let engine = engine(registry, store, models.clone());
    models.unload("fraud_txn_gbdt").unwrap();
    let row = parity.rows[0].clone();
    let answer = engine
        .score("fraud", transactions(&[row]), None, parity.cut_time_us)
        .await
        .unwrap();
    let r = &answer.rows[0];
    let reason = r.fallback.as_deref().expect("a fallback answer");
    assert!(reason.contains("fraud_txn_gbdt"), "{reason}");
    assert_eq!(r.decision, Decision::Review);
    assert!(r.model_version.is_empty() && r.reasons.is_empty());
}

#[tokio::test]
async fn bad_input_names_the_field_and_what_was_expected() {
    let parity = parity();
    let registry = registry();
    let store = embedded_store().await;
    let engine = engine(registry, store, models());
    let row = || parity.rows[0].clone();
    let call = |input: CallInput| engine.score("fraud", input, None, parity.cut_time_us);

    let err = engine
        .score("nope", transactions(&[row()]), None, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PipelineError::NotFound(_)) && err.to_string().contains("fraud"),
        "{err}"
    );

    let invalid = |e: PipelineError, field: &str, expected: &str| match &e {
        PipelineError::Invalid {
            field: f, message, ..
        } => {
            assert_eq!(f, field, "{e}");
            assert!(message.contains(expected), "{e}");
        }
        other => panic!("{other:?}"),
    };

    let mut nan = row();
    nan.amount = f64::NAN;
    invalid(call(transactions(&[nan])).await.unwrap_err(), "amount", "finite");
    let mut negative = row();
    negative.amount = -5.0;
    invalid(
        call(transactions(&[negative])).await.unwrap_err(),
        "amount",
        "below the minimum 0",
    );
    let mut currency = row();
    currency.currency = "XYZ".into();
    invalid(
        call(transactions(&[currency])).await.unwrap_err(),
        "currency",
        "EUR",
    );

    let mut missing = transactions(&[row()]);
    missing.fields.remove("device_type");
    invalid(call(missing).await.unwrap_err(), "device_type", "missing");
    let mut wrong_type = transactions(&[row()]);
    wrong_type
        .fields
        .insert("amount".into(), vec![ferrite_features::Value::Str("12".into())]);
    invalid(call(wrong_type).await.unwrap_err(), "amount", "expected float");
    let mut bad_id = transactions(&[row()]);
    bad_id
        .entities
        .insert("user_id".into(), vec![ferrite_features::Value::Str("abc".into())]);
    invalid(call(bad_id).await.unwrap_err(), "user_id", "integer id");
    let mut unknown = transactions(&[row()]);
    unknown
        .fields
        .insert("amout".into(), vec![ferrite_features::Value::Float(1.0)]);
    invalid(call(unknown).await.unwrap_err(), "amout", "not a request field");

    invalid(
        call(CallInput::default()).await.unwrap_err(),
        "rows",
        "at least one",
    );
    let many: Vec<_> = (0..257).map(|_| row()).collect();
    invalid(
        call(transactions(&many)).await.unwrap_err(),
        "rows",
        "at most 256",
    );

    // Ids as decimal strings are the same ids.
    let mut as_text = transactions(&[row()]);
    as_text.entities.insert(
        "user_id".into(),
        vec![ferrite_features::Value::Str(parity.rows[0].user_id.to_string())],
    );
    let a = engine
        .feature_rows("fraud", as_text, parity.cut_time_us)
        .await
        .unwrap();
    let b = engine
        .feature_rows("fraud", transactions(&[row()]), parity.cut_time_us)
        .await
        .unwrap();
    assert!(a[0].iter().zip(&b[0]).all(|(x, y)| same(*x, *y)));
}

#[tokio::test]
async fn a_deadline_shorter_than_the_work_gets_the_fallback_before_it() {
    let parity = parity();
    let registry = registry();
    let redis = ferrite_test_support::RedisServer::start();
    let store = ferrite_features::online::open(&ferrite_features::StoreConfig::Redis {
        url: redis.url(),
        timeouts: Default::default(),
    })
    .await
    .unwrap();
    fill(&registry, store.as_ref(), parity.cut_time_us).await;
    let engine = engine(registry, store, models());
    // Redis frozen: the read never answers; the caller's 100 ms deadline bounds the call.
    redis.pause();
    let deadline = Instant::now() + Duration::from_millis(100);
    let answer = tokio::time::timeout_at(
        deadline.into(),
        engine.score(
            "fraud",
            transactions(&[parity.rows[0].clone()]),
            Some(deadline),
            parity.cut_time_us,
        ),
    )
    .await
    .expect("the answer comes before the caller's deadline")
    .unwrap();
    redis.resume();
    let reason = answer.rows[0].fallback.as_deref().expect("a fallback answer");
    assert!(
        reason.contains("deadline") && reason.contains("online store"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_redis_outage_mid_run_gets_flagged_fallbacks_and_answers_recover_by_themselves() {
    let parity = parity();
    let registry = registry();
    let mut redis = ferrite_test_support::RedisServer::start();
    let store = ferrite_features::online::open(&ferrite_features::StoreConfig::Redis {
        url: redis.url(),
        timeouts: Default::default(),
    })
    .await
    .unwrap();
    fill(&registry, store.as_ref(), parity.cut_time_us).await;
    let engine = engine(registry.clone(), store.clone(), models());
    let budget = engine.pipelines().get("fraud").unwrap().budget;
    let call = |i: usize| {
        let row = parity.rows[i % parity.rows.len()].clone();
        let deadline = Instant::now() + budget;
        let engine = &engine;
        async move {
            tokio::time::timeout_at(
                deadline.into(),
                engine.score("fraud", transactions(&[row]), None, parity.cut_time_us),
            )
            .await
            .expect("every call answers within the pipeline's budget")
            .unwrap()
        }
    };
    for i in 0..10 {
        assert_eq!(call(i).await.rows[0].fallback, None, "call {i} before the outage");
    }
    redis.stop();
    for i in 10..30 {
        let answer = call(i).await;
        let reason = answer.rows[0]
            .fallback
            .as_deref()
            .expect("fallback during the outage");
        assert!(reason.contains("online store"), "call {i}: {reason}");
        assert_eq!(answer.rows[0].decision, Decision::Review);
    }
    redis.restart();
    fill(&registry, store.as_ref(), parity.cut_time_us).await;
    // The client reconnects by itself; bounded wait for it.
    let mut recovered = false;
    for i in 30..130 {
        if call(i).await.rows[0].fallback.is_none() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "answers did not recover after Redis came back");
}
