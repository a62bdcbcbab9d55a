//! Feature definitions: the shipped repository is valid, and every mistake is reported
//! with its file and line.

use ferrite_features::Registry;
use ferrite_test_support::repo_root;

#[test]
fn the_shipped_feature_repository_is_valid_against_its_sample_data() {
    let reg = Registry::load(&repo_root().join("features"), None).unwrap_or_else(|p| panic!("{p}"));
    assert!(reg.check_sources().is_empty(), "{:?}", reg.check_sources());
    let fraud = reg.service_refs("fraud_v1").unwrap();
    let stored = fraud
        .iter()
        .filter(|r| matches!(r, ferrite_features::FeatureRef::Stored { .. }))
        .count();
    assert_eq!(stored, 30, "the fraud service reads 30 stored user features");
    assert!(fraud.iter().any(|r| r.name() == "txn_features:amount_vs_avg_30d"));
}

fn load(files: &[(&str, &str)]) -> Result<Registry, String> {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    Registry::load(dir.path(), None).map_err(|p| p.to_string())
}

#[test]
fn every_problem_is_reported_with_file_and_line() {
    let a = r#"[[entity]]
name = "user"
join_keys = ["user_id"]
key_type = "int"

[[source]]
name = "s"
path = "s.parquet"

[[feature_view]]
name = "v"
entities = ["usr"]
source = "s"
ttl = "soon"
features = [
  { name = "a", dtype = "float", min = 2.0, max = 1.0 },
  { name = "b", dtype = "string", min = 0 },
  { name = "a", dtype = "int" },
]
"#;
    let b = r#"[[feature_view]]
name = "w"
entities = ["user"]
source = "nowhere"
features = [{ name = "x", dtype = "int" }]

[[feature_service]]
name = "svc"
features = ["ghost:x"]
"#;
    let err = load(&[("a.toml", a), ("b.toml", b)]).unwrap_err();
    let lines: Vec<&str> = err.lines().collect();
    let expect = [
        ("a.toml:10", "unknown entity \"usr\""),
        ("a.toml:10", "ttl \"soon\" is not a duration"),
        ("a.toml:16", "min 2 is above max 1"),
        ("a.toml:17", "min/max need an int or float feature"),
        ("a.toml:18", "feature \"a\" appears twice"),
        ("b.toml:1", "unknown source \"nowhere\""),
        ("b.toml:7", "unknown feature view \"ghost\""),
    ];
    for (loc, msg) in expect {
        assert!(
            lines.iter().any(|l| l.contains(loc) && l.contains(msg)),
            "no problem at {loc} saying {msg:?} in:\n{err}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "{err}");
}

#[test]
fn malformed_files_and_bad_expressions_name_the_line() {
    let err = load(&[(
        "bad.toml",
        "[[entity]]\nname = \"u\"\njoin_keys = [\"id\"]\nkey_type = \"uuid\"\n",
    )])
    .unwrap_err();
    assert!(err.contains("bad.toml:4") && err.contains("uuid"), "{err}");
    let err = load(&[("bad.toml", "[[entity]\nname = 1\n")]).unwrap_err();
    assert!(err.contains("bad.toml:1"), "{err}");
    let err = load(&[(
        "bad.toml",
        "[[entity]]\nname = \"u\"\njoin_keys = [\"id\"]\nkey_type = \"int\"\ncolour = 3\n",
    )])
    .unwrap_err();
    assert!(err.contains("bad.toml:5") && err.contains("colour"), "{err}");
    let req = r#"
[[request_view]]
name = "r"
request_fields = { amount = "float", country = "string" }
features = [
  { name = "ok", dtype = "float", expression = "amount * 2" },
  { name = "typo", dtype = "float", expression = "amount / amonut" },
  { name = "mixed", dtype = "float", expression = "amount + country" },
  { name = "wrong_type", dtype = "bool", expression = "amount * 2" },
]
"#;
    let err = load(&[("req.toml", req)]).unwrap_err();
    assert!(
        err.contains("req.toml:7") && err.contains("unknown request field \"amonut\""),
        "{err}"
    );
    assert!(
        err.contains("req.toml:8") && err.contains("arithmetic needs numbers"),
        "{err}"
    );
    assert!(
        err.contains("req.toml:9") && err.contains("declared bool but its expression gives float"),
        "{err}"
    );
}
