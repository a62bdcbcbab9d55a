//! The catalog's public data types: items, filters, hits, plans, settings, metadata.

use serde::{Deserialize, Serialize};

use super::error::CatalogError;

/// One catalog item with its embedding (of the model's dimension, before any projection).
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogItem {
    pub item_id: String,
    pub category: String,
    pub in_stock: bool,
    pub price: f64,
    pub vector: Vec<f32>,
}

impl CatalogItem {
    pub(crate) fn validate(&self, dim: usize) -> Result<(), CatalogError> {
        let invalid = |reason: String| CatalogError::InvalidItem {
            item_id: self.item_id.clone(),
            reason,
        };
        if self.item_id.is_empty() {
            return Err(invalid("item_id is empty".into()));
        }
        if !self.price.is_finite() {
            return Err(invalid(format!(
                "price is {}, expected a finite number",
                self.price
            )));
        }
        if self.vector.len() != dim {
            return Err(invalid(format!(
                "embedding has {} values, expected {dim}",
                self.vector.len()
            )));
        }
        if self.vector.iter().any(|v| !v.is_finite()) {
            return Err(invalid("embedding holds a NaN or infinite value".into()));
        }
        Ok(())
    }
}

/// Which items a search may return. The default keeps every item.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemFilter {
    /// Keep items of these categories; empty keeps every category.
    pub categories: Vec<String>,
    pub in_stock_only: bool,
    /// Inclusive bounds.
    pub min_price: Option<f64>,
    pub max_price: Option<f64>,
}

impl ItemFilter {
    pub fn is_empty(&self) -> bool {
        self.categories.is_empty()
            && !self.in_stock_only
            && self.min_price.is_none()
            && self.max_price.is_none()
    }

    pub(crate) fn validate(&self) -> Result<(), CatalogError> {
        for (name, bound) in [("min_price", self.min_price), ("max_price", self.max_price)] {
            if bound.is_some_and(|b| b.is_nan()) {
                return Err(CatalogError::InvalidFilter(format!("{name} is NaN")));
            }
        }
        if let (Some(min), Some(max)) = (self.min_price, self.max_price)
            && min > max
        {
            return Err(CatalogError::InvalidFilter(format!(
                "min_price {min} is above max_price {max}"
            )));
        }
        Ok(())
    }

    pub(crate) fn price_ok(&self, price: f64) -> bool {
        self.min_price.is_none_or(|min| price >= min) && self.max_price.is_none_or(|max| price <= max)
    }
}

/// One result: the item, its similarity to the query (higher is closer) and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogHit {
    pub item_id: String,
    pub score: f32,
    pub category: String,
    pub in_stock: bool,
    pub price: f64,
}

/// How a search was run; `as_str` is the label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterPlan {
    /// No filter and nothing removed: the FAISS index's own search.
    Unfiltered,
    /// Few items match: an exact scan of just their stored vectors.
    Exact,
    /// Many match: FAISS told which items it may return (an id selector bitmap).
    Selector,
    /// The index takes no selector: FAISS with a widened `k`, re-checked against the filter.
    PostFilter,
    /// The selector or post-filtered search found fewer than `k` of the matching items (an
    /// approximate index can miss a sparse subset), so it was answered by an exact scan.
    StarvedExact,
}

impl FilterPlan {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterPlan::Unfiltered => "unfiltered",
            FilterPlan::Exact => "exact",
            FilterPlan::Selector => "selector",
            FilterPlan::PostFilter => "post_filter",
            FilterPlan::StarvedExact => "starved_exact",
        }
    }
}

/// The hits of one search, best first, and the plan that found them.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    pub hits: Vec<CatalogHit>,
    pub plan: FilterPlan,
}

/// Similarity measure; scores are always "higher is closer" (L2 scores are the negated
/// squared distance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    #[default]
    InnerProduct,
    L2,
}

impl Metric {
    pub(crate) fn score(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::InnerProduct => lanes(a, b, |x, y| x * y),
            Metric::L2 => -lanes(a, b, |x, y| (x - y) * (x - y)),
        }
    }
}

/// Sum of `f(a[i], b[i])` in eight independent lanes, which the compiler can vectorise (a
/// single running `f32` sum cannot be reordered, so it stays scalar).
fn lanes(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += f(x[i], y[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// How searches are planned and run; not stored with the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Filters matching at most this many items are scanned exactly (default 2,000).
    pub exact_max_items: usize,
    /// ... or at most this share of the catalog (default 0.02).
    pub exact_max_fraction: f64,
    /// IVF lists probed per query (default 16).
    pub nprobe: usize,
    /// HNSW candidate list size (default 64).
    pub ef_search: usize,
    /// A selector search keeping a share `f` of the catalog probes `min(2 / f, this)` times
    /// the IVF lists (`nprobe`) or HNSW candidates (`ef_search`) of an unfiltered one, since
    /// a sparse filter leaves few matches among them (default 16).
    pub filtered_widen_max: f64,
    /// A post-filtered search widens `k` up to this many before scanning exactly (default 4,096).
    pub post_filter_max_k: usize,
    /// Copies of the FAISS index searched in parallel (default 1; each costs its memory).
    pub replicas: usize,
    /// Live updates beyond this share of the catalog make `needs_compaction` true (default 0.1).
    pub compact_fraction: f64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            exact_max_items: 2_000,
            exact_max_fraction: 0.02,
            nprobe: 16,
            ef_search: 64,
            filtered_widen_max: 16.0,
            post_filter_max_k: 4_096,
            replicas: 1,
            compact_fraction: 0.1,
        }
    }
}

/// A linear map applied to every vector (items and queries): `out = matrix · (x − mean)`,
/// then scaled to unit length; `matrix` is `out_dim` rows of `in_dim` values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Projection {
    pub in_dim: usize,
    pub out_dim: usize,
    pub mean: Vec<f32>,
    pub matrix: Vec<f32>,
}

impl Projection {
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let centred: Vec<f32> = x.iter().zip(&self.mean).map(|(v, m)| v - m).collect();
        let mut out: Vec<f32> = self
            .matrix
            .chunks(self.in_dim)
            .map(|row| row.iter().zip(&centred).map(|(a, b)| a * b).sum())
            .collect();
        let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|v| *v /= norm);
        }
        out
    }
}

/// What is stored beside the FAISS file (`index.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexMeta {
    pub format_version: u32,
    pub model: String,
    pub model_version: String,
    /// The embedding's dimension (queries and items before projection).
    pub dim: usize,
    pub metric: Metric,
    pub factory: String,
    pub projection: Option<Projection>,
    pub item_count: usize,
    /// Seconds since the Unix epoch when the build finished.
    pub built_at_unix_s: u64,
    pub build_seconds: f64,
}

impl IndexMeta {
    pub const FORMAT_VERSION: u32 = 1;

    /// The dimension FAISS and the stored vectors have.
    pub fn index_dim(&self) -> usize {
        self.projection.as_ref().map_or(self.dim, |p| p.out_dim)
    }
}
