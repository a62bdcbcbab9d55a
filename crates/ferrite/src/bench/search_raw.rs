//! `--with-raw` for `visual-search-embedding`: the catalog index the server searches, loaded
//! from the same directory with the same `[search]` settings in this process and searched
//! with the same queries in the same order as the run's first caller sends them (batch 1,
//! one thread, the same `k` and filter), so a report holds the raw FAISS search beside the
//! RPC: back to back, and with `--rate` also on the run's schedule, the thread asleep in
//! between as a server's is.

use std::path::Path;

use anyhow::{Context, ensure};
use ferrite_search::catalog::{CatalogIndex, Expected, ItemFilter, read_meta};
use ferrite_server::Config;

use super::raw::{RawReport, timed, two_legs};

/// What the raw searches are.
pub struct Plan<'a> {
    /// The server's config file (`[search]`: the index directory and search settings).
    pub server_config: &'a Path,
    pub queries: &'a Path,
    pub top_k: usize,
    pub categories: &'a [String],
    /// Searches measured, after one unmeasured pass over the queries.
    pub calls: u64,
    /// The measured searches stop after this many seconds, whatever the count.
    pub duration_s: f64,
    /// The run's open-loop rate: the searches are then also timed on that schedule.
    pub rate: Option<f64>,
    /// The keys the run sends, in order: search `i` takes query `keys[i] % rows`, as the RPC
    /// does (`bench::search::Queries::get`), so both see the same mix of easy and hard queries.
    pub keys: &'a [u64],
}

/// Loads the index and times up to `calls` searches (none started after `duration_s`) back
/// to back, then on the run's schedule when it has a rate.
pub fn measure(plan: &Plan<'_>) -> anyhow::Result<Vec<RawReport>> {
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
    ensure!(!plan.keys.is_empty(), "no keys to take the queries by");
    let mut reports = Vec::new();
    let model = format!("faiss {}", meta.factory);
    for (calls, rate) in two_legs(plan.calls, plan.rate, plan.duration_s) {
        let timed = timed(calls, rate, plan.duration_s, |i| {
            let key = plan.keys[i % plan.keys.len()];
            let query = queries.row((key % queries.rows as u64) as usize);
            std::hint::black_box(index.search(query, plan.top_k, &filter)?);
            Ok(())
        })?;
        reports.push(RawReport::of(model.clone(), (false, false), 1, rate, timed));
    }
    Ok(reports)
}
