//! FAISS really runs: the nearest neighbour of a vector is the one it was built from, and
//! filtered searches, however planned, answer what a brute-force scan answers.

use ferrite_search::{FaissFlatIndex, Hit, PositionIndex, SearchError, SearchPlan, VectorIndex};

fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

#[test]
fn nearest_neighbour_is_the_closest_catalog_vector() {
    let mut index = FaissFlatIndex::new(3).unwrap();
    let catalog = [
        (10u64, [1.0, 0.0, 0.0]),
        (20, [0.0, 1.0, 0.0]),
        (30, [0.0, 0.0, 1.0]),
        (40, [1.0, 1.0, 0.0]),
    ];
    let ids: Vec<u64> = catalog.iter().map(|(id, _)| *id).collect();
    let vectors: Vec<f32> = catalog.iter().flat_map(|(_, v)| unit(v)).collect();
    index.add(&ids, &vectors).unwrap();
    assert_eq!(index.len(), 4);

    let hits = index.search(&unit(&[0.9, 0.1, 0.0]), 2).unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![10, 40]);
    assert!(hits[0].score > hits[1].score);
    assert!((hits[0].score - unit(&[0.9, 0.1, 0.0])[0]).abs() < 1e-6);
}

#[test]
fn k_larger_than_the_index_returns_what_there_is() {
    let mut index = FaissFlatIndex::new(2).unwrap();
    index.add(&[7], &[0.6, 0.8]).unwrap();
    let hits = index.search(&[0.6, 0.8], 5).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, 7);
}

#[test]
fn bad_dimensions_and_counts_are_errors() {
    assert!(FaissFlatIndex::new(0).is_err());
    let mut index = FaissFlatIndex::new(3).unwrap();
    assert!(matches!(
        index.search(&[1.0, 0.0], 1),
        Err(SearchError::Dimension { expected: 3, got: 2 })
    ));
    assert!(matches!(
        index.add(&[1, 2], &[0.0; 3]),
        Err(SearchError::IdCount { ids: 2, vectors: 1 })
    ));
    assert!(matches!(
        index.add(&[1], &[0.0; 4]),
        Err(SearchError::Dimension { .. })
    ));
    assert!(matches!(
        index.search(&[1.0, 0.0, 0.0], 0),
        Err(SearchError::ZeroK)
    ));
    assert!(matches!(
        index.add(&[u64::MAX], &[0.0; 3]),
        Err(SearchError::IdRange(u64::MAX))
    ));
    assert!(index.is_empty(), "a rejected add must not leave vectors behind");
}

/// Deterministic pseudo-random vectors (a linear congruential generator; no dependency).
fn vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n * dim)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

/// The `k` best positions among those `keep` accepts, by brute force.
fn brute_force(data: &[f32], dim: usize, query: &[f32], k: usize, keep: &dyn Fn(usize) -> bool) -> Vec<u64> {
    let mut scored: Vec<(f32, usize)> = (0..data.len() / dim)
        .filter(|&p| keep(p))
        .map(|p| {
            (
                data[p * dim..(p + 1) * dim]
                    .iter()
                    .zip(query)
                    .map(|(a, b)| a * b)
                    .sum(),
                p,
            )
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, p)| p as u64).collect()
}

#[test]
fn filtered_search_plans_exact_or_selector_and_both_equal_brute_force() {
    let (n, dim, k) = (2_000, 16, 10);
    let data = vectors(n, dim, 7);
    let index = PositionIndex::new(dim, data.clone()).unwrap();
    assert_eq!(index.len(), n);
    let query = vectors(1, dim, 99);
    let ids = |hits: &[Hit]| hits.iter().map(|h| h.id).collect::<Vec<_>>();

    let (all, plan) = index.search(&query, k, None).unwrap();
    assert_eq!(plan, SearchPlan::Index);
    assert_eq!(ids(&all), brute_force(&data, dim, &query, k, &|_| true));

    // 1 % of the vectors: scanned exactly.
    let narrow = |p: usize| p % 100 == 3;
    let (hits, plan) = index.search(&query, k, Some(&narrow)).unwrap();
    assert_eq!(plan, SearchPlan::Exact);
    assert_eq!(ids(&hits), brute_force(&data, dim, &query, k, &narrow));
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    // Half of them: FAISS with an id selector; nothing filtered out comes back.
    let wide = |p: usize| p.is_multiple_of(2);
    let (hits, plan) = index.search(&query, k, Some(&wide)).unwrap();
    assert_eq!(plan, SearchPlan::Selector);
    assert_eq!(ids(&hits), brute_force(&data, dim, &query, k, &wide));

    // A filter that keeps nothing answers nothing; one that keeps fewer than k answers those.
    let (hits, _) = index.search(&query, k, Some(&|_| false)).unwrap();
    assert!(hits.is_empty());
    let few = |p: usize| p < 3;
    let (hits, _) = index.search(&query, k, Some(&few)).unwrap();
    assert_eq!(ids(&hits), brute_force(&data, dim, &query, k, &few));
    assert_eq!(hits.len(), 3);

    assert!(matches!(
        index.search(&query[..3], k, None),
        Err(SearchError::Dimension { expected: 16, got: 3 })
    ));
}
