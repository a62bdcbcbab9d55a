use super::*;

/// Deterministic values in -0.5..0.5 (a linear congruential generator).
pub(crate) fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn items(n: usize, dim: usize, seed: u64) -> Vec<CatalogItem> {
    let mut next = lcg(seed);
    (0..n)
        .map(|i| CatalogItem {
            item_id: format!("item-{i}"),
            category: ["shoes", "bags", "hats", "coats"][i % 4].to_string(),
            in_stock: i % 3 != 0,
            price: (i % 100) as f64,
            vector: unit((0..dim).map(|_| next()).collect()),
        })
        .collect()
}

fn config(model: &str) -> IndexBuildConfig {
    IndexBuildConfig {
        model: model.into(),
        model_version: "1".into(),
        ..IndexBuildConfig::default()
    }
}

/// Item ids of the best `k` of `items` the filter keeps, by brute force.
fn brute(items: &[CatalogItem], query: &[f32], k: usize, keep: impl Fn(&CatalogItem) -> bool) -> Vec<String> {
    let mut scored: Vec<(f32, &str)> = items
        .iter()
        .filter(|i| keep(i))
        .map(|i| (Metric::InnerProduct.score(query, &i.vector), i.item_id.as_str()))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().take(k).map(|(_, id)| id.to_string()).collect()
}

fn ids(results: &SearchResults) -> Vec<String> {
    results.hits.iter().map(|h| h.item_id.clone()).collect()
}

#[test]
fn unfiltered_flat_search_is_brute_force() {
    let catalog = items(500, 16, 1);
    let index = CatalogIndex::build(catalog.clone(), &config("m"), SearchConfig::default()).unwrap();
    let query = catalog[42].vector.clone();
    let results = index.search(&query, 5, &ItemFilter::default()).unwrap();
    assert_eq!(results.plan, FilterPlan::Unfiltered);
    assert_eq!(ids(&results), brute(&catalog, &query, 5, |_| true));
    assert_eq!(results.hits[0].item_id, "item-42");
    assert_eq!(results.hits[0].category, "hats");
    assert!((results.hits[0].score - 1.0).abs() < 1e-5);
}

#[test]
fn filters_are_planned_by_how_many_items_they_keep() {
    let catalog = items(2_000, 16, 2);
    let query = catalog[7].vector.clone();
    let filter = ItemFilter {
        categories: vec!["shoes".into(), "bags".into(), "unknown".into()],
        in_stock_only: true,
        min_price: Some(10.0),
        max_price: Some(60.0),
    };
    let keep = |i: &CatalogItem| {
        (i.category == "shoes" || i.category == "bags") && i.in_stock && (10.0..=60.0).contains(&i.price)
    };
    let expected = brute(&catalog, &query, 10, keep);

    let exact = CatalogIndex::build(catalog.clone(), &config("m"), SearchConfig::default()).unwrap();
    let results = exact.search(&query, 10, &filter).unwrap();
    assert_eq!(results.plan, FilterPlan::Exact);
    assert_eq!(ids(&results), expected);

    let selector_config = SearchConfig {
        exact_max_items: 0,
        exact_max_fraction: 0.0,
        ..SearchConfig::default()
    };
    let selector = CatalogIndex::build(catalog.clone(), &config("m"), selector_config).unwrap();
    let results = selector.search(&query, 10, &filter).unwrap();
    assert_eq!(results.plan, FilterPlan::Selector);
    assert_eq!(ids(&results), expected);
    assert!(
        results
            .hits
            .iter()
            .all(|h| h.in_stock && (h.category == "shoes" || h.category == "bags"))
    );

    let none = ItemFilter {
        categories: vec!["unknown".into()],
        ..ItemFilter::default()
    };
    assert!(selector.search(&query, 10, &none).unwrap().hits.is_empty());
}

#[test]
fn removed_items_are_never_returned_and_added_ones_are_found() {
    let catalog = items(1_000, 16, 3);
    let index = CatalogIndex::build(catalog.clone(), &config("m"), SearchConfig::default()).unwrap();
    let query = catalog[10].vector.clone();
    let before = ids(&index.search(&query, 10, &ItemFilter::default()).unwrap());
    let removed: Vec<String> = before[..5].to_vec();
    assert_eq!(index.remove(&removed), 5);
    assert_eq!(index.remove(&removed), 0, "already gone");
    let after = index.search(&query, 10, &ItemFilter::default()).unwrap();
    assert_eq!(after.hits.len(), 10);
    assert!(after.hits.iter().all(|h| !removed.contains(&h.item_id)));
    let remaining: Vec<CatalogItem> = catalog
        .iter()
        .filter(|i| !removed.contains(&i.item_id))
        .cloned()
        .collect();
    assert_eq!(ids(&after), brute(&remaining, &query, 10, |_| true));

    // A new item right on the query, and a re-embedded old one moved onto it too.
    let mut moved = catalog[500].clone();
    moved.vector = query.clone();
    let new = CatalogItem {
        item_id: "new".into(),
        vector: query.clone(),
        ..catalog[0].clone()
    };
    index.upsert(vec![new, moved]).unwrap();
    let mut top = ids(&index.search(&query, 2, &ItemFilter::default()).unwrap());
    top.sort();
    assert_eq!(top, vec!["item-500".to_string(), "new".to_string()]);
    assert_eq!(index.len(), 1_000 - 5 + 1);

    // A price change keeps the slot and is seen by filters.
    let mut cheaper = catalog[10].clone();
    cheaper.price = 1_000.0;
    index.upsert(vec![cheaper]).unwrap();
    let pricey = ItemFilter {
        min_price: Some(500.0),
        ..ItemFilter::default()
    };
    assert_eq!(
        ids(&index.search(&query, 5, &pricey).unwrap()),
        vec!["item-10".to_string()]
    );

    index.remove(&["new".to_string(), "item-500".to_string()]);
    let top = ids(&index.search(&query, 3, &ItemFilter::default()).unwrap());
    assert!(!top.contains(&"new".to_string()) && !top.contains(&"item-500".to_string()));
}

#[test]
fn compaction_folds_updates_into_the_index() {
    let catalog = items(800, 16, 4);
    let index = CatalogIndex::build(catalog.clone(), &config("m"), SearchConfig::default()).unwrap();
    let removed: Vec<String> = (0..100).map(|i| format!("item-{i}")).collect();
    index.remove(&removed);
    let added = items(50, 16, 99)
        .into_iter()
        .map(|mut i| {
            i.item_id = format!("added-{}", i.item_id);
            i
        })
        .collect::<Vec<_>>();
    index.upsert(added.clone()).unwrap();
    assert!(index.needs_compaction());
    let query = added[3].vector.clone();
    let before = index.search(&query, 10, &ItemFilter::default()).unwrap();
    let index = std::sync::Arc::new(index);
    assert!(index.spawn_compaction().join().unwrap().unwrap());
    assert!(!index.needs_compaction());
    assert_eq!(index.len(), 750);
    let after = index.search(&query, 10, &ItemFilter::default()).unwrap();
    assert_eq!(after.plan, FilterPlan::Unfiltered);
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(after.hits[0].item_id, "added-item-3");
}

#[test]
fn saved_index_loads_and_refuses_another_model() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = items(300, 8, 5);
    let meta = build_index(catalog.clone(), &config("embedder"), dir.path()).unwrap();
    assert_eq!(
        (meta.dim, meta.item_count, meta.factory.as_str()),
        (8, 300, "Flat")
    );
    let expected = Expected {
        model: "embedder".into(),
        model_version: "1".into(),
        dim: 8,
    };
    let index = CatalogIndex::load(dir.path(), &expected, SearchConfig::default()).unwrap();
    let query = catalog[9].vector.clone();
    assert_eq!(
        ids(&index.search(&query, 4, &ItemFilter::default()).unwrap()),
        brute(&catalog, &query, 4, |_| true)
    );
    assert_eq!(read_meta(dir.path()).unwrap(), meta);

    for (wrong, field) in [
        (
            Expected {
                model: "other".into(),
                ..expected.clone()
            },
            "model",
        ),
        (
            Expected {
                model_version: "2".into(),
                ..expected.clone()
            },
            "model_version",
        ),
        (
            Expected {
                dim: 1280,
                ..expected.clone()
            },
            "dim",
        ),
    ] {
        let err = CatalogIndex::load(dir.path(), &wrong, SearchConfig::default())
            .err()
            .unwrap();
        assert!(
            matches!(&err, CatalogError::Mismatch { field: f, .. } if *f == field),
            "{err}"
        );
    }
    let missing = dir.path().join("nope");
    assert!(matches!(
        CatalogIndex::load(&missing, &expected, SearchConfig::default()),
        Err(CatalogError::NotFound { .. })
    ));
    std::fs::write(dir.path().join("vectors.f32"), [0u8; 12]).unwrap();
    assert!(matches!(
        CatalogIndex::load(dir.path(), &expected, SearchConfig::default()),
        Err(CatalogError::Corrupt { .. })
    ));
}

#[test]
fn bad_input_is_refused_with_the_offending_value() {
    let catalog = items(50, 4, 6);
    let index = CatalogIndex::build(catalog.clone(), &config("m"), SearchConfig::default()).unwrap();
    assert!(matches!(
        index.search(&[0.0; 3], 1, &ItemFilter::default()),
        Err(CatalogError::Dimension {
            expected: 4,
            got: 3,
            ..
        })
    ));
    assert!(matches!(
        index.search(&[0.5; 4], 0, &ItemFilter::default()),
        Err(CatalogError::ZeroK)
    ));
    assert!(matches!(
        index.search(&[f32::NAN; 4], 1, &ItemFilter::default()),
        Err(CatalogError::InvalidQuery(_))
    ));
    let inverted = ItemFilter {
        min_price: Some(5.0),
        max_price: Some(1.0),
        ..ItemFilter::default()
    };
    assert!(matches!(
        index.search(&[0.5; 4], 1, &inverted),
        Err(CatalogError::InvalidFilter(_))
    ));
    let mut short = catalog[0].clone();
    short.vector.pop();
    let err = index.upsert(vec![short]).unwrap_err();
    assert!(
        err.to_string().contains("embedding has 3 values, expected 4"),
        "{err}"
    );
    let twice = vec![catalog[1].clone(), catalog[1].clone()];
    assert!(matches!(
        index.upsert(twice),
        Err(CatalogError::DuplicateItem { .. })
    ));
    assert!(matches!(
        CatalogIndex::build(
            vec![catalog[0].clone(), catalog[0].clone()],
            &config("m"),
            SearchConfig::default()
        ),
        Err(CatalogError::DuplicateItem { .. })
    ));
    let bad_factory = IndexBuildConfig {
        factory: "NoSuchIndex".into(),
        ..config("m")
    };
    assert!(matches!(
        CatalogIndex::build(catalog, &bad_factory, SearchConfig::default()),
        Err(CatalogError::Factory { .. })
    ));
}

#[test]
fn replace_swaps_the_whole_index() {
    let index = CatalogIndex::build(items(100, 8, 7), &config("m"), SearchConfig::default()).unwrap();
    let other_items: Vec<CatalogItem> = items(30, 8, 8)
        .into_iter()
        .map(|mut i| {
            i.item_id = format!("v2-{}", i.item_id);
            i
        })
        .collect();
    let other = CatalogIndex::build(other_items.clone(), &config("m"), SearchConfig::default()).unwrap();
    index.replace(other);
    assert_eq!(index.len(), 30);
    let hits = index
        .search(&other_items[0].vector, 3, &ItemFilter::default())
        .unwrap()
        .hits;
    assert!(hits.iter().all(|h| h.item_id.starts_with("v2-")));
}

#[test]
fn pca_projection_is_fitted_stored_and_applied_to_queries() {
    // Vectors in a 4-d subspace of a 16-d space: 4 components lose nothing.
    let mut next = lcg(9);
    let basis: Vec<Vec<f32>> = (0..4).map(|_| (0..16).map(|_| next()).collect()).collect();
    let catalog: Vec<CatalogItem> = items(600, 16, 10)
        .into_iter()
        .map(|mut item| {
            let w: Vec<f32> = (0..4).map(|_| next()).collect();
            item.vector = unit(
                (0..16)
                    .map(|j| (0..4).map(|b| w[b] * basis[b][j]).sum())
                    .collect(),
            );
            item
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let build = IndexBuildConfig {
        pca_dim: Some(4),
        ..config("m")
    };
    let meta = build_index(catalog.clone(), &build, dir.path()).unwrap();
    let projection = meta.projection.as_ref().expect("a fitted projection");
    assert_eq!((meta.dim, meta.index_dim(), projection.in_dim), (16, 4, 16));
    let expected = Expected {
        model: "m".into(),
        model_version: "1".into(),
        dim: 16,
    };
    let index = CatalogIndex::load(dir.path(), &expected, SearchConfig::default()).unwrap();
    assert_eq!(index.meta().projection.as_ref(), Some(projection));
    let query = catalog[33].vector.clone();
    let top = ids(&index.search(&query, 1, &ItemFilter::default()).unwrap());
    assert_eq!(top, vec!["item-33".to_string()]);
    // Live updates are projected the same way.
    let added = CatalogItem {
        item_id: "added".into(),
        ..catalog[33].clone()
    };
    index.upsert(vec![added]).unwrap();
    let mut top = ids(&index.search(&query, 2, &ItemFilter::default()).unwrap());
    top.sort();
    assert_eq!(top, vec!["added".to_string(), "item-33".to_string()]);
}

#[test]
fn an_index_that_refuses_selectors_is_post_filtered() {
    let catalog = items(1_000, 16, 12);
    let build = IndexBuildConfig {
        factory: "PQ4x4".into(),
        ..config("m")
    };
    let no_exact = SearchConfig {
        exact_max_items: 0,
        exact_max_fraction: 0.0,
        ..SearchConfig::default()
    };
    let index = CatalogIndex::build(catalog.clone(), &build, no_exact).unwrap();
    let hats = ItemFilter {
        categories: vec!["hats".into()],
        ..ItemFilter::default()
    };
    for query in [&catalog[2].vector, &catalog[3].vector] {
        let results = index.search(query, 10, &hats).unwrap();
        assert_eq!(results.plan, FilterPlan::PostFilter);
        assert_eq!(results.hits.len(), 10);
        assert!(results.hits.iter().all(|h| h.category == "hats"));
    }
}
