//! The catalog index on real FAISS: recall under a sparse filter against brute force, live
//! recall, and searches that keep succeeding while the index is swapped and updated.

use std::collections::HashMap;

use ferrite_search::catalog::{
    CatalogIndex, CatalogItem, FilterPlan, IndexBuildConfig, ItemFilter, RecallConfig, SearchConfig,
};

/// Deterministic values in -0.5..0.5 (a linear congruential generator; no dependency).
fn lcg(seed: u64) -> impl FnMut() -> f32 {
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

/// `n` unit vectors around 200 centres (as embeddings of a catalog cluster), in 100
/// categories of 1 % each, independent of the clusters.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<CatalogItem> {
    let mut next = lcg(seed);
    let centres: Vec<Vec<f32>> = (0..200)
        .map(|_| unit((0..dim).map(|_| next()).collect()))
        .collect();
    (0..n)
        .map(|i| {
            let centre = &centres[i % 200];
            let vector = unit(centre.iter().map(|c| c + 0.15 * next()).collect());
            CatalogItem {
                item_id: format!("item-{i}"),
                category: format!("c{}", (i * 7919) % 100),
                in_stock: true,
                price: 10.0,
                vector,
            }
        })
        .collect()
}

fn brute(items: &[CatalogItem], query: &[f32], k: usize, categories: &[String]) -> Vec<String> {
    let mut scored: Vec<(f32, &str)> = items
        .iter()
        .filter(|i| categories.is_empty() || categories.contains(&i.category))
        .map(|i| (dot(query, &i.vector), i.item_id.as_str()))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(k).map(|(_, id)| id.to_string()).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Mean recall@10 over `queries` and how often each plan ran.
fn recall(
    index: &CatalogIndex,
    items: &[CatalogItem],
    queries: &[Vec<f32>],
    categories: &[String],
) -> (f64, HashMap<&'static str, usize>) {
    let filter = ItemFilter {
        categories: categories.to_vec(),
        ..ItemFilter::default()
    };
    let mut plans = HashMap::new();
    let mut total = 0.0;
    for query in queries {
        let results = index.search(query, 10, &filter).unwrap();
        *plans.entry(results.plan.as_str()).or_insert(0) += 1;
        assert!(
            results
                .hits
                .iter()
                .all(|h| categories.is_empty() || categories.contains(&h.category)),
            "a hit outside the filter"
        );
        let exact = brute(items, query, 10, categories);
        let found = results.hits.iter().filter(|h| exact.contains(&h.item_id)).count();
        total += found as f64 / exact.len() as f64;
    }
    (total / queries.len() as f64, plans)
}

fn build(items: &[CatalogItem], factory: &str, config: SearchConfig) -> CatalogIndex {
    let build = IndexBuildConfig {
        factory: factory.into(),
        model: "test".into(),
        model_version: "1".into(),
        ..IndexBuildConfig::default()
    };
    CatalogIndex::build(items.to_vec(), &build, config).unwrap()
}

#[test]
fn recall_under_a_one_percent_filter_stays_above_0_9() {
    let items = clustered(20_000, 64, 11);
    let mut next = lcg(12);
    let queries: Vec<Vec<f32>> = (0..50)
        .map(|q| {
            let base = &items[(q * 397) % items.len()].vector;
            unit(base.iter().map(|v| v + 0.1 * next()).collect())
        })
        .collect();
    let forced_selector = SearchConfig {
        exact_max_items: 0,
        exact_max_fraction: 0.0,
        ..SearchConfig::default()
    };
    let one_percent = vec!["c42".to_string()];
    let a_quarter: Vec<String> = (0..25).map(|c| format!("c{c}")).collect();
    for factory in ["HNSW32", "IVF256,Flat"] {
        let planned = build(&items, factory, SearchConfig::default());
        let (r, plans) = recall(&planned, &items, &queries, &one_percent);
        eprintln!("{factory}: 1 % filter, planned: recall@10 {r:.3}, plans {plans:?}");
        assert!(r >= 0.9, "{factory}: recall {r} under a 1 % filter");
        assert_eq!(plans.get("exact"), Some(&queries.len()));

        let selector = build(&items, factory, forced_selector.clone());
        let (r, plans) = recall(&selector, &items, &queries, &one_percent);
        eprintln!("{factory}: 1 % filter, selector forced: recall@10 {r:.3}, plans {plans:?}");
        // What the planner avoids: an approximate index walked with a 1 % selector misses
        // many matches (HNSW32 measured 0.85-0.89 here); the answer still keeps to the filter.
        assert!(!plans.contains_key("exact"));

        let (r, plans) = recall(&planned, &items, &queries, &a_quarter);
        eprintln!("{factory}: 25 % filter: recall@10 {r:.3}, plans {plans:?}");
        assert!(r >= 0.9, "{factory}: recall {r} under a 25 % filter");
        assert_eq!(plans.get("selector"), Some(&queries.len()));

        let (r, plans) = recall(&planned, &items, &queries, &[]);
        eprintln!("{factory}: no filter: recall@10 {r:.3}, plans {plans:?}");
        assert!(r >= 0.8, "{factory}: unfiltered recall {r}");
    }
}

#[test]
fn live_recall_is_one_for_an_exact_index_and_lower_for_a_poor_one() {
    let items = clustered(5_000, 32, 21);
    let queries: Vec<Vec<f32>> = (0..200).map(|q| items[q * 13].vector.clone()).collect();
    let sampled = RecallConfig {
        sample_fraction: 1.0,
        queue: 1_000,
        window: 1_000,
    };

    let exact = build(&items, "Flat", SearchConfig::default()).with_recall_sampler(&sampled);
    assert_eq!(exact.live_recall(), None);
    for q in &queries {
        exact.search(q, 10, &ItemFilter::default()).unwrap();
    }
    exact.flush_recall();
    assert_eq!(exact.recall_samples_dropped(), 0);
    assert_eq!(exact.live_recall(), Some(1.0));

    let poor_config = SearchConfig {
        nprobe: 1,
        ..SearchConfig::default()
    };
    // Unclustered vectors and perturbed queries: one probed list of 64 misses neighbours.
    let mut next = lcg(22);
    let uniform: Vec<CatalogItem> = items
        .iter()
        .map(|i| CatalogItem {
            vector: unit((0..32).map(|_| next()).collect()),
            ..i.clone()
        })
        .collect();
    let queries: Vec<Vec<f32>> = (0..200)
        .map(|q| unit(uniform[q * 13].vector.iter().map(|v| v + 0.2 * next()).collect()))
        .collect();
    let poor = build(&uniform, "IVF64,Flat", poor_config).with_recall_sampler(&sampled);
    let mut answered = Vec::new();
    for q in &queries {
        let r = poor.search(q, 10, &ItemFilter::default()).unwrap();
        answered.push(r);
    }
    poor.flush_recall();
    let live = poor.live_recall().unwrap();
    let (offline, _) = recall(&poor, &uniform, &queries, &[]);
    eprintln!("IVF64 nprobe 1: live recall@10 {live:.3}, offline {offline:.3}");
    assert!(live < 0.95, "live recall {live}");
    assert!(
        (live - offline).abs() < 1e-9,
        "live {live} against offline {offline}"
    );
    assert!(answered.iter().all(|r| r.plan == FilterPlan::Unfiltered));
}

#[test]
fn a_full_recall_queue_drops_samples_instead_of_waiting() {
    let items = clustered(2_000, 16, 31);
    let tiny = RecallConfig {
        sample_fraction: 1.0,
        queue: 1,
        window: 10,
    };
    let index = build(&items, "Flat", SearchConfig::default()).with_recall_sampler(&tiny);
    for item in &items[..500] {
        index.search(&item.vector, 10, &ItemFilter::default()).unwrap();
    }
    index.flush_recall();
    // Every search either reached the sampler or was counted as dropped; none blocked.
    assert!(index.live_recall().is_some());
    assert!(index.recall_samples_dropped() <= 499);
}

#[test]
fn searches_succeed_while_the_index_is_swapped_and_updated() {
    let items = clustered(3_000, 16, 41);
    let index = build(&items, "HNSW32", SearchConfig::default());
    let replacement = |seed: u64| build(&clustered(1_000, 16, seed), "Flat", SearchConfig::default());
    let wide = ItemFilter {
        in_stock_only: true,
        ..ItemFilter::default()
    };
    std::thread::scope(|scope| {
        let searchers: Vec<_> = (0..4)
            .map(|t| {
                let index = &index;
                let items = &items;
                let wide = &wide;
                scope.spawn(move || {
                    for i in 0..300 {
                        let query = &items[(t * 300 + i) % items.len()].vector;
                        let filter = if i % 2 == 0 { &ItemFilter::default() } else { wide };
                        let results = index.search(query, 10, filter).expect("search during a swap");
                        assert_eq!(results.hits.len(), 10);
                    }
                })
            })
            .collect();
        for round in 0..10u64 {
            index.replace(replacement(100 + round));
            index.remove(&["item-1".to_string(), "item-2".to_string()]);
            let mut moved = items[5].clone();
            moved.vector = items[6].vector.clone();
            index.upsert(vec![moved]).unwrap();
        }
        for s in searchers {
            s.join().unwrap();
        }
    });
}
