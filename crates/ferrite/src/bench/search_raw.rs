//! `--with-raw` for `visual-search-embedding`: the catalog index the server searches, loaded
//! from the same directory with the same `[search]` settings in this process and searched
//! with the same queries (batch 1, one thread, the same `k` and filter), so a report holds
//! the raw FAISS search beside the RPC.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, ensure};
use ferrite_search::catalog::{CatalogIndex, Expected, ItemFilter, read_meta};
use ferrite_server::Config;
use hdrhistogram::Histogram;

use super::raw::RawReport;

/// What the raw searches are.
pub struct Plan<'a> {
    /// The server's config file (`[search]`: the index directory and search settings).
    pub server_config: &'a Path,
    pub queries: &'a Path,
    pub top_k: usize,
    pub categories: &'a [String],
    /// Searches measured (the queries taken in turn), after one unmeasured pass over them.
    pub calls: u64,
    /// The measured searches stop after this many seconds, whatever the count.
    pub duration_s: f64,
}

/// Loads the index and times `calls` searches, back to back.
pub fn measure(plan: &Plan<'_>) -> anyhow::Result<RawReport> {
    let config = Config::from_file(plan.server_config)?.search;
    let index_dir = config.index_dir.as_path();
    let meta = read_meta(index_dir).with_context(|| {
        format!(
            "the index of --server-config {} for --with-raw",
            plan.server_config.display()
        )
    })?;
    let expected = Expected {
        model: meta.model.clone(),
        model_version: meta.model_version.clone(),
        dim: meta.dim,
    };
    let index = CatalogIndex::load(index_dir, &expected, config.catalog())
        .with_context(|| format!("loading the catalog index in {}", index_dir.display()))?;
    let queries = crate::npy::read_f32_matrix(plan.queries)?;
    ensure!(
        queries.rows > 0 && queries.dim == meta.dim,
        "--queries {}: {} rows of {} values; the index at {} takes {} values",
        plan.queries.display(),
        queries.rows,
        queries.dim,
        index_dir.display(),
        meta.dim
    );
    let filter = ItemFilter {
        categories: plan.categories.to_vec(),
        ..Default::default()
    };
    for i in 0..queries.rows {
        index.search(queries.row(i), plan.top_k, &filter)?;
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let start = Instant::now();
    let mut calls = 0;
    while calls < plan.calls && start.elapsed().as_secs_f64() < plan.duration_s {
        let query = queries.row(calls as usize % queries.rows);
        let t0 = Instant::now();
        let results = index.search(query, plan.top_k, &filter)?;
        histogram.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        std::hint::black_box(results);
        calls += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(RawReport {
        model: format!("faiss {}", meta.factory),
        trees: false,
        batch: 1,
        rate: None,
        calls,
        calls_per_s: calls as f64 / elapsed,
        rows_per_s: calls as f64 / elapsed,
        latency_us: super::percentiles(&histogram),
    })
}
