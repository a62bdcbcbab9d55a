//! Pipeline files that cannot work are refused when they load, naming the file and the key.

use ferrite_features::Registry;
use ferrite_pipelines::PipelineSet;
use ferrite_test_support::repo_root;

const GOOD: &str = r#"
kind = "fraud"
feature_service = "fraud_v2"
budget_ms = 50
[model]
name = "fraud_txn_gbdt"
[fraud]
review_at = 0.3
decline_at = 0.8
[fallback]
score = "if(amount > 1000.0, 0.5, 0.05)"
"#;

fn load(text: &str) -> Result<PipelineSet, String> {
    let registry = Registry::load(&repo_root().join("features"), None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("checkout.toml"), text).unwrap();
    PipelineSet::load(dir.path(), &registry).map_err(|e| e.to_string())
}

#[test]
fn a_good_file_resolves_its_inputs_from_the_feature_service() {
    let set = load(GOOD).unwrap();
    let p = set.get("checkout").unwrap();
    assert_eq!(p.budget.as_millis(), 50);
    assert_eq!(p.max_batch, 1024);
    let keys: Vec<&str> = p.input.entity_keys.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.contains(&"user_id") && keys.contains(&"merchant_id"),
        "{keys:?}"
    );
    assert!(p.input.request_fields.contains_key("amount"));
    assert_eq!(p.input.feature_names.len(), p.input.refs.len());
    let err = set.get("nope").unwrap_err().to_string();
    assert!(err.contains("pipeline") && err.contains("checkout"), "{err}");
}

#[test]
fn files_that_cannot_work_are_refused_with_the_key() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("budget_ms = 50", "budget_ms = 50\ncolour = 1", &["colour"]),
        (
            "feature_service = \"fraud_v2\"",
            "feature_service = \"nope\"",
            &["feature_service", "nope"],
        ),
        // fraud_v1 holds string features: not a model input.
        (
            "feature_service = \"fraud_v2\"",
            "feature_service = \"fraud_v1\"",
            &["int, float or bool", "string"],
        ),
        ("review_at = 0.3", "review_at = 0.9", &["review_at", "decline_at"]),
        (
            "score = \"if(amount > 1000.0, 0.5, 0.05)\"",
            "score = \"user_stats.avg_amount_30d / 1000.0\"",
            &["fallback.score", "request fields only"],
        ),
        (
            "score = \"if(amount > 1000.0, 0.5, 0.05)\"",
            "score = \"amont\"",
            &["fallback.score", "amont"],
        ),
        (
            "score = \"if(amount > 1000.0, 0.5, 0.05)\"",
            "score = \"currency\"",
            &["fallback.score", "number"],
        ),
        ("budget_ms = 50", "budget_ms = 0", &["budget_ms"]),
        (
            "budget_ms = 50",
            "budget_ms = 50\n[field_rules]\nnope = { min = 0.0 }",
            &["field_rules.nope"],
        ),
        (
            "budget_ms = 50",
            "budget_ms = 50\n[cold_start]\namount_eur = 0.0",
            &["cold_start.amount_eur", "stored feature"],
        ),
    ];
    for (from, to, needles) in cases {
        let text = GOOD.replacen(from, to, 1);
        assert_ne!(text, GOOD, "{from:?} not in the good file");
        let err = load(&text).unwrap_err();
        assert!(err.contains("checkout.toml"), "{err}");
        for n in *needles {
            assert!(err.contains(n), "{to:?}: {err:?} lacks {n:?}");
        }
    }
}

#[test]
fn the_shipped_pipelines_load() {
    let registry = Registry::load(&repo_root().join("features"), None).unwrap();
    let set = PipelineSet::load(&repo_root().join("pipelines"), &registry).unwrap();
    assert!(set.get("fraud").is_ok());
    let recs = set.get("recommendations").unwrap();
    let r = recs.recs.as_ref().unwrap();
    assert_eq!(r.item_key.0, "item_id");
    assert_eq!(r.items.feature_names[r.in_stock], "stock_level");
    assert_eq!(recs.input.entity_keys[0].0, "user_id");
    let pricing = set.get("pricing").unwrap();
    let p = pricing.pricing.as_ref().unwrap();
    assert_eq!(pricing.input.feature_names[p.cost], "cost");
    assert_eq!(pricing.input.feature_names[p.current_price], "list_price");
    assert!(pricing.input.request_fields.contains_key("price"));
    // A directory that does not exist declares no pipeline.
    let none = PipelineSet::load(&repo_root().join("no-such-dir"), &registry).unwrap();
    assert!(none.pipelines.is_empty());
}

/// The shipped recommendations and pricing files, each broken one key at a time.
#[test]
fn recommendations_and_pricing_files_that_cannot_work_are_refused_with_the_key() {
    let shipped = |name: &str| std::fs::read_to_string(repo_root().join("pipelines").join(name)).unwrap();
    let recs = shipped("recommendations.toml");
    let pricing = shipped("pricing.toml");
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            &recs,
            "in_stock = \"stock_level\"",
            "in_stock = \"stock\"",
            &["recommendations.in_stock", "stock"],
        ),
        (
            &recs,
            "category = \"item_features:category\"",
            "category = \"user_profile:country\"",
            &["recommendations.category", "item"],
        ),
        (
            &recs,
            "item_service = \"recs_item_v1\"",
            "item_service = \"pricing_v1\"",
            &["item_service", "request fields"],
        ),
        (&recs, "top_k = 20", "top_k = 200", &["top_k", "max_top_k"]),
        (
            &recs,
            "exclude_purchased = \"user_taste:purchased_items_30d\"",
            "exclude_purchased = \"user_taste:clicks_30d\"",
            &["recommendations.exclude_purchased", "string feature"],
        ),
        (
            &recs,
            "exclude_purchased = \"user_taste:purchased_items_30d\"",
            "exclude_purchased = \"item_features:category\"",
            &["recommendations.exclude_purchased", "user entity"],
        ),
        (
            &recs,
            "in_stock = \"stock_level\"",
            "in_stock = \"item_log_price\"",
            &["recommendations.in_stock", "request-time"],
        ),
        (
            &recs,
            "budget_ms = 20",
            "budget_ms = 20\n[fallback]\nscore = \"0.5\"",
            &["[fallback]", "built in"],
        ),
        (
            &recs,
            "budget_ms = 20",
            "budget_ms = 20\n[fraud]\nreview_at = 0.3\ndecline_at = 0.8",
            &["[fraud]", "recommendations pipeline"],
        ),
        (
            &recs,
            "[recommendations]",
            "[recommendation]",
            &["recommendation"],
        ),
        (
            &pricing,
            "max_change = 0.10",
            "max_change = 1.5",
            &["pricing.max_change"],
        ),
        (
            &pricing,
            "min_margin = 0.10",
            "min_margin = -2.0",
            &["pricing.min_margin"],
        ),
        (
            &pricing,
            "cost = \"cost\"",
            "cost = \"price_vs_list\"",
            &["pricing.cost", "request-time"],
        ),
        (
            &pricing,
            "price_field = \"price\"",
            "price_field = \"amount\"",
            &["pricing.price_field", "amount"],
        ),
        (
            &pricing,
            "{ step = 1.0, at = 0.99 }",
            "{ step = 1.0, at = 1.5 }",
            &["pricing.endings[0]"],
        ),
        (
            &pricing,
            "candidates = 50",
            "candidates = 1",
            &["pricing.candidates"],
        ),
    ];
    for (good, from, to, needles) in cases {
        let text = good.replacen(from, to, 1);
        assert_ne!(&text, good, "{from:?} not in the shipped file");
        let err = load(&text).unwrap_err();
        assert!(err.contains("checkout.toml"), "{err}");
        for n in *needles {
            assert!(err.contains(n), "{to:?}: {err:?} lacks {n:?}");
        }
    }
}
