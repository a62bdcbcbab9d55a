//! FAISS really runs: the nearest neighbour of a vector is the one it was built from.

use ferrite_search::{FaissFlatIndex, SearchError, VectorIndex};

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
