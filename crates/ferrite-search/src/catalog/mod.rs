//! The catalog index for visual search: items (id, category, stock, price, embedding) in a
//! FAISS index built from a factory string, searched with filters planned per query,
//! updated live, swapped whole, and watched by a live-recall sampler.
//!
//! Readers take the current [`Snapshot`] from an `ArcSwap` and never wait for writers.
//! Writers (upsert, remove, replace, compaction) are serialised by one mutex and publish a
//! new snapshot; the FAISS index inside a snapshot never changes. Live additions are
//! searched exactly beside it until a compaction rebuilds it.

mod ann;
mod build;
mod error;
mod pca;
mod recall;
mod snapshot;
mod store;
mod types;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

pub use build::{CatalogRow, Embedder, IndexBuildConfig, RowSource, build_index, embed_rows};
pub use error::CatalogError;
pub use pca::fit_pca;
pub use recall::RecallConfig;
pub use store::{Expected, read_meta};
pub use types::{
    CatalogHit, CatalogItem, FilterPlan, IndexMeta, ItemFilter, Metric, Projection, SearchConfig,
    SearchResults,
};

use ann::{Ann, AnnParams};
use recall::{RecallSampler, Sample};
use snapshot::{Base, Snapshot};
use store::Stored;

/// A pending change, kept while a compaction runs so it can be replayed on the rebuilt base.
enum Change {
    Upsert(Vec<CatalogItem>),
    Remove(Vec<String>),
}

#[derive(Default)]
struct Writer {
    /// `Some` while a compaction runs.
    log: Option<Vec<Change>>,
    /// Bumped by `replace`, so a compaction started before it is discarded.
    generation: u64,
}

/// A live catalog index. Share it as `Arc<CatalogIndex>`.
pub struct CatalogIndex {
    current: ArcSwap<Snapshot>,
    writer: Mutex<Writer>,
    config: SearchConfig,
    recall: Option<RecallSampler>,
}

impl CatalogIndex {
    /// Builds in memory (nothing is written).
    pub fn build(
        items: impl IntoIterator<Item = CatalogItem>,
        build: &IndexBuildConfig,
        config: SearchConfig,
    ) -> Result<Self, CatalogError> {
        let stored = build::build_stored(items, build)?;
        Self::from_stored(stored, config)
    }

    /// Loads a directory written by [`build_index`], refusing one built for another model,
    /// version or dimension.
    pub fn load(dir: &Path, expected: &Expected, config: SearchConfig) -> Result<Self, CatalogError> {
        Self::from_stored(store::load(dir, expected)?, config)
    }

    fn from_stored(stored: Stored, config: SearchConfig) -> Result<Self, CatalogError> {
        let snapshot = snapshot_of(stored, &config)?;
        Ok(CatalogIndex {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(Writer::default()),
            config,
            recall: None,
        })
    }

    /// Samples `config.sample_fraction` of searches for live recall (see [`Self::live_recall`]).
    pub fn with_recall_sampler(mut self, config: &RecallConfig) -> Self {
        self.recall = Some(RecallSampler::start(config));
        self
    }

    pub fn meta(&self) -> IndexMeta {
        self.current.load().base.meta.clone()
    }

    /// Items searchable now.
    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` items most similar to `query` (an embedding of the model's dimension) among
    /// those `filter` keeps, best first, and the plan that found them.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &ItemFilter,
    ) -> Result<SearchResults, CatalogError> {
        let snapshot = self.current.load_full();
        let meta = &snapshot.base.meta;
        if query.len() != meta.dim {
            return Err(CatalogError::Dimension {
                field: "query embedding",
                expected: meta.dim,
                got: query.len(),
            });
        }
        if query.iter().any(|v| !v.is_finite()) {
            return Err(CatalogError::InvalidQuery(
                "query embedding holds a NaN or infinite value".into(),
            ));
        }
        if k == 0 {
            return Err(CatalogError::ZeroK);
        }
        filter.validate()?;
        let projected = match &meta.projection {
            Some(p) => p.apply(query),
            None => query.to_vec(),
        };
        let results = snapshot.search(&projected, k, filter, &self.config)?;
        metrics::counter!("ferrite_search_plans_total", "plan" => results.plan.as_str()).increment(1);
        if let Some(sampler) = &self.recall
            && sampler.should_sample()
        {
            sampler.offer(Sample {
                snapshot,
                query: projected,
                filter: filter.clone(),
                k,
                answered: results.hits.iter().map(|h| h.item_id.clone()).collect(),
            });
        }
        Ok(results)
    }

    /// Whether `item_id` is a live item now.
    pub fn contains(&self, item_id: &str) -> bool {
        self.current.load().vector_of(item_id).is_some()
    }

    /// The `k` items most similar to catalog item `item_id` (its stored embedding) among
    /// those `filter` keeps, the item itself left out; `None` when no such item is live.
    pub fn similar(
        &self,
        item_id: &str,
        k: usize,
        filter: &ItemFilter,
    ) -> Result<Option<SearchResults>, CatalogError> {
        if k == 0 {
            return Err(CatalogError::ZeroK);
        }
        filter.validate()?;
        let snapshot = self.current.load_full();
        let Some(vector) = snapshot.vector_of(item_id).map(<[f32]>::to_vec) else {
            return Ok(None);
        };
        let mut results = snapshot.search(&vector, k + 1, filter, &self.config)?;
        results.hits.retain(|h| h.item_id != item_id);
        results.hits.truncate(k);
        metrics::counter!("ferrite_search_plans_total", "plan" => results.plan.as_str()).increment(1);
        Ok(Some(results))
    }

    /// Mean recall@10 of sampled searches over the window; `None` without a sampler or
    /// before its first measurement.
    pub fn live_recall(&self) -> Option<f64> {
        self.recall.as_ref().and_then(RecallSampler::recall)
    }

    /// Samples dropped because the recall queue was full.
    pub fn recall_samples_dropped(&self) -> u64 {
        self.recall.as_ref().map_or(0, RecallSampler::dropped)
    }

    /// Waits until every sample queued so far has been measured (for tests and shutdown).
    pub fn flush_recall(&self) {
        if let Some(sampler) = &self.recall {
            sampler.flush();
        }
    }

    /// Adds items or updates them (by `item_id`); visible to searches that start after it
    /// returns. A changed embedding is searched exactly until the next compaction.
    pub fn upsert(&self, items: Vec<CatalogItem>) -> Result<(), CatalogError> {
        let mut writer = self.lock_writer();
        let current = self.current.load_full();
        let projected = project_items(&current.base.meta, items)?;
        let mut next = Snapshot::clone(&current);
        if let Some(log) = &mut writer.log {
            log.push(Change::Upsert(projected.clone()));
        }
        next.upsert(projected);
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// Removes items by id; returns how many were in the catalog.
    pub fn remove(&self, item_ids: &[String]) -> usize {
        let mut writer = self.lock_writer();
        let mut next = Snapshot::clone(&self.current.load());
        let removed = next.remove(item_ids);
        if let Some(log) = &mut writer.log {
            log.push(Change::Remove(item_ids.to_vec()));
        }
        self.current.store(Arc::new(next));
        removed
    }

    /// Swaps in a whole new index (e.g. one rebuilt and loaded from disk); searches running
    /// meanwhile finish on the old one. The new one keeps its own settings but not the
    /// recall sampler, which stays with `self`.
    pub fn replace(&self, other: CatalogIndex) {
        let mut writer = self.lock_writer();
        // A compaction running now finds the generation changed and discards its result.
        writer.generation += 1;
        self.current.store(other.current.load_full());
    }

    /// Whether live updates have grown past `compact_fraction` of the catalog.
    pub fn needs_compaction(&self) -> bool {
        let s = self.current.load();
        s.pending() as f64 > self.config.compact_fraction * s.base.len().max(1) as f64
    }

    /// Rebuilds the FAISS index from every live item (same factory, metric and projection),
    /// then swaps it in with the updates made meanwhile replayed. Blocking and heavy: call
    /// it from a background thread (see [`Self::spawn_compaction`]). Returns `false` when
    /// another compaction was running or a `replace` overtook this one.
    pub fn compact(&self) -> Result<bool, CatalogError> {
        let (start, generation) = {
            let mut writer = self.lock_writer();
            if writer.log.is_some() {
                return Ok(false);
            }
            writer.log = Some(Vec::new());
            (self.current.load_full(), writer.generation)
        };
        let built = rebuild(&start);
        let mut writer = self.lock_writer();
        let log = writer.log.take().unwrap_or_default();
        if writer.generation != generation {
            return Ok(false);
        }
        let mut next = snapshot_of(built?, &self.config)?;
        for change in log {
            match change {
                Change::Upsert(items) => next.upsert(items),
                Change::Remove(ids) => {
                    next.remove(&ids);
                }
            }
        }
        self.current.store(Arc::new(next));
        Ok(true)
    }

    /// Runs [`Self::compact`] on a new thread.
    pub fn spawn_compaction(self: &Arc<Self>) -> std::thread::JoinHandle<Result<bool, CatalogError>> {
        let index = Arc::clone(self);
        std::thread::spawn(move || index.compact())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn snapshot_of(stored: Stored, config: &SearchConfig) -> Result<Snapshot, CatalogError> {
    let params = AnnParams {
        nprobe: config.nprobe,
        ef_search: config.ef_search,
        replicas: config.replicas,
    };
    let ann = Ann::new(stored.index, &stored.meta.factory, stored.meta.metric, params)?;
    let mut item_ids = Vec::with_capacity(stored.items.len());
    let mut slot_of = HashMap::with_capacity(stored.items.len());
    let mut attrs = Vec::with_capacity(stored.items.len());
    for (slot, row) in stored.items.into_iter().enumerate() {
        slot_of.insert(row.item_id.clone(), slot as u32);
        item_ids.push(row.item_id);
        attrs.push((row.category, row.in_stock, row.price));
    }
    let base = Base {
        ann,
        meta: stored.meta,
        vectors: stored.vectors,
        item_ids,
        slot_of,
    };
    Ok(Snapshot::new(Arc::new(base), attrs))
}

/// Validates items against the model's dimension and projects them to the index's.
fn project_items(meta: &IndexMeta, items: Vec<CatalogItem>) -> Result<Vec<CatalogItem>, CatalogError> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .map(|mut item| {
            item.validate(meta.dim)?;
            if !seen.insert(item.item_id.clone()) {
                return Err(CatalogError::DuplicateItem {
                    item_id: item.item_id,
                });
            }
            if let Some(p) = &meta.projection {
                item.vector = p.apply(&item.vector);
            }
            Ok(item)
        })
        .collect()
}

/// A fresh base over a snapshot's live items (vectors already projected).
fn rebuild(snapshot: &Snapshot) -> Result<Stored, CatalogError> {
    let started = std::time::Instant::now();
    let meta = &snapshot.base.meta;
    let mut items = Vec::with_capacity(snapshot.len());
    let mut vectors = Vec::with_capacity(snapshot.len() * meta.index_dim());
    for (id, attrs, vector) in snapshot.live_items() {
        items.push(store::ItemRow {
            item_id: id.to_string(),
            category: snapshot.category_names[attrs.category as usize].clone(),
            in_stock: attrs.in_stock,
            price: attrs.price,
        });
        vectors.extend_from_slice(vector);
    }
    let train_sample = IndexBuildConfig::default().train_sample;
    let index = build::build_faiss(
        meta.index_dim(),
        &meta.factory,
        meta.metric,
        train_sample,
        &vectors,
    )?;
    let mut meta = meta.clone();
    meta.item_count = items.len();
    meta.build_seconds = started.elapsed().as_secs_f64();
    meta.built_at_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Stored {
        meta,
        index,
        items,
        vectors,
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
