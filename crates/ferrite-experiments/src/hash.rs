//! GrowthBook's bucketing, exactly: FNV-1a 32, hash versions 1 and 2, bucket ranges,
//! variation choice and namespaces, as the JS and Python SDKs compute them (checked against
//! GrowthBook's cross-SDK cases in `tests/data/growthbook_cases.json` and against the Python
//! package in `tests/python_parity.rs`).

const FNV_OFFSET: u32 = 0x811c_9dc5;
const FNV_PRIME: u32 = 0x0100_0193;

/// Weight vectors whose sum falls outside these bounds are replaced with equal weights.
const WEIGHT_SUM_MIN: f64 = 0.99;
const WEIGHT_SUM_MAX: f64 = 1.01;

/// Continues an FNV-1a 32 hash over `s`'s UTF-16 code units (what the JS SDK's
/// `charCodeAt` loop sees; for ASCII these are the bytes).
fn fnv_update(mut h: u32, s: &str) -> u32 {
    if s.is_ascii() {
        for &b in s.as_bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(FNV_PRIME);
        }
    } else {
        for unit in s.encode_utf16() {
            h = (h ^ u32::from(unit)).wrapping_mul(FNV_PRIME);
        }
    }
    h
}

/// FNV-1a 32 of `s` as GrowthBook computes it.
pub fn fnv32a(s: &str) -> u32 {
    fnv_update(FNV_OFFSET, s)
}

/// GrowthBook's `hash(seed, value, version)`: a number in [0, 1), or `None` for an unknown
/// version. Version 1 is `fnv32a(value + seed) % 1000 / 1000`; version 2 is
/// `fnv32a(decimal(fnv32a(seed + value))) % 10000 / 10000`.
pub fn hash(seed: &str, value: &str, version: u8) -> Option<f64> {
    match version {
        1 => {
            let n = fnv_update(fnv_update(FNV_OFFSET, value), seed);
            Some(f64::from(n % 1000) / 1000.0)
        }
        2 => {
            let inner = fnv_update(fnv_update(FNV_OFFSET, seed), value);
            let mut buf = [0u8; 10];
            let n = fnv_update(FNV_OFFSET, decimal(inner, &mut buf));
            Some(f64::from(n % 10000) / 10000.0)
        }
        _ => None,
    }
}

/// `n` in decimal without allocating (u32 has at most 10 digits).
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

/// GrowthBook's `getEqualWeights(n)`.
pub fn equal_weights(n: usize) -> Vec<f64> {
    vec![1.0 / n as f64; n]
}

/// GrowthBook's `getBucketRanges(numVariations, coverage, weights)`: variation `i` owns
/// `[start_i, start_i + coverage * w_i)` where `start_i` is the cumulative weight before it,
/// so lowering or raising coverage never moves a unit from one variation to another. Weights
/// of the wrong length, negative, not finite or not summing to 1 ± 0.01 are replaced with
/// equal weights (the Python SDK's rule; the JS SDK checks only length and sum).
pub fn bucket_ranges(n: usize, coverage: f64, weights: Option<&[f64]>) -> Vec<(f64, f64)> {
    let coverage = coverage.clamp(0.0, 1.0);
    let equal;
    let weights = match weights {
        Some(w) if valid_weights(w, n) => w,
        _ => {
            equal = equal_weights(n);
            &equal
        }
    };
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|w| {
            let start = cumulative;
            cumulative += w;
            (start, start + coverage * w)
        })
        .collect()
}

fn valid_weights(w: &[f64], n: usize) -> bool {
    if w.len() != n || w.iter().any(|x| !x.is_finite() || *x < 0.0) {
        return false;
    }
    let sum: f64 = w.iter().sum();
    (WEIGHT_SUM_MIN..=WEIGHT_SUM_MAX).contains(&sum)
}

/// GrowthBook's `chooseVariation(n, ranges)`: the first range with `start <= n < end`, or
/// `None` (GrowthBook's -1) when `n` falls outside every range (outside the coverage).
pub fn choose_variation(n: f64, ranges: &[(f64, f64)]) -> Option<usize> {
    ranges.iter().position(|&(start, end)| start <= n && n < end)
}

/// GrowthBook's `inNamespace(userId, [id, start, end])`.
pub fn in_namespace(unit: &str, namespace: &str, start: f64, end: f64) -> bool {
    let n = hash(&format!("__{namespace}"), unit, 1).expect("version 1 exists");
    start <= n && n < end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_values() {
        // FNV-1a 32 reference values (the empty string is the offset basis).
        assert_eq!(fnv32a(""), 0x811c_9dc5);
        assert_eq!(fnv32a("a"), 0xe40c_292c);
        assert_eq!(fnv32a("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn non_ascii_hashes_utf16_code_units() {
        // "é" is one UTF-16 unit 0x00E9: one round, not two (its UTF-8 bytes).
        let by_unit = (FNV_OFFSET ^ 0xE9).wrapping_mul(FNV_PRIME);
        assert_eq!(fnv32a("é"), by_unit);
        // An astral character is two surrogate units.
        let mut h = FNV_OFFSET;
        for u in [0xD83Du32, 0xDE00] {
            h = (h ^ u).wrapping_mul(FNV_PRIME);
        }
        assert_eq!(fnv32a("😀"), h);
    }

    #[test]
    fn decimal_writes_every_digit() {
        let mut buf = [0u8; 10];
        assert_eq!(decimal(0, &mut buf), "0");
        assert_eq!(decimal(u32::MAX, &mut buf), "4294967295");
        assert_eq!(decimal(1_000_000, &mut buf), "1000000");
    }
}
