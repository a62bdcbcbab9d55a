//! GrowthBook's published cross-SDK cases (tests/data/growthbook_cases.json, source named
//! there): every hash, bucket-range, variation, namespace and equal-weights case.

use ferrite_experiments::hash;
use serde_json::Value;

fn cases() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/growthbook_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("cases file")).expect("JSON")
}

fn section(name: &str) -> Vec<Value> {
    cases()[name].as_array().expect("a section").clone()
}

fn ranges(v: &Value) -> Vec<(f64, f64)> {
    v.as_array()
        .expect("ranges")
        .iter()
        .map(|r| (r[0].as_f64().unwrap(), r[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn hash_cases() {
    let cases = section("hash");
    assert_eq!(cases.len(), 15);
    for c in cases {
        let (seed, value) = (c[0].as_str().unwrap(), c[1].as_str().unwrap());
        let version = c[2].as_u64().unwrap() as u8;
        let got = hash::hash(seed, value, version);
        match c[3].as_f64() {
            Some(want) => assert_eq!(got, Some(want), "hash({seed:?}, {value:?}, {version})"),
            None => assert_eq!(got, None, "hash({seed:?}, {value:?}, {version})"),
        }
    }
}

#[test]
fn bucket_range_cases() {
    let cases = section("getBucketRange");
    assert_eq!(cases.len(), 13);
    for c in cases {
        let name = c[0].as_str().unwrap();
        let args = &c[1];
        let n = args[0].as_u64().unwrap() as usize;
        let coverage = args[1].as_f64().unwrap();
        let weights: Option<Vec<f64>> = args[2]
            .as_array()
            .map(|w| w.iter().map(|x| x.as_f64().unwrap()).collect());
        let got = hash::bucket_ranges(n, coverage, weights.as_deref());
        let want = ranges(&c[2]);
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(&want) {
            // The SDKs' own tests round to 6 places (0.2 + 0.2 * 0.3 is not 0.26 in binary).
            assert!(
                (g.0 - w.0).abs() < 1e-9 && (g.1 - w.1).abs() < 1e-9,
                "{name}: {got:?} != {want:?}"
            );
        }
    }
}

#[test]
fn choose_variation_cases() {
    let cases = section("chooseVariation");
    assert_eq!(cases.len(), 13);
    for c in cases {
        let name = c[0].as_str().unwrap();
        let got = hash::choose_variation(c[1].as_f64().unwrap(), &ranges(&c[2]));
        let want = c[3].as_i64().unwrap();
        assert_eq!(got.map_or(-1, |i| i as i64), want, "{name}");
    }
}

#[test]
fn in_namespace_cases() {
    let cases = section("inNamespace");
    assert_eq!(cases.len(), 16);
    for c in cases {
        let name = c[0].as_str().unwrap();
        let ns = &c[2];
        let got = hash::in_namespace(
            c[1].as_str().unwrap(),
            ns[0].as_str().unwrap(),
            ns[1].as_f64().unwrap(),
            ns[2].as_f64().unwrap(),
        );
        assert_eq!(got, c[3].as_bool().unwrap(), "{name}");
    }
}

#[test]
fn equal_weights_cases() {
    for c in section("getEqualWeights") {
        let n = c[0].as_i64().unwrap();
        let got = hash::equal_weights(n.max(0) as usize);
        let want: Vec<f64> = c[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len(), "n = {n}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-8, "n = {n}: {got:?} != {want:?}");
        }
    }
}
