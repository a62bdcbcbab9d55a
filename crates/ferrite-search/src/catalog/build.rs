//! Building a catalog index: rows (an embedding, or an image to embed) → items → FAISS
//! index + item table + metadata in a directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use faiss::index::IndexImpl;
use serde::{Deserialize, Serialize};

use super::ann::Ann;
use super::error::CatalogError;
use super::store::{self, ItemRow, Stored};
use super::types::{CatalogItem, IndexMeta, Metric, Projection};
use crate::preprocess::{ImageBatch, Preprocessor};

/// How an index is built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexBuildConfig {
    /// A FAISS index factory string: `Flat`, `HNSW32`, `IVF4096,PQ64`, … (default `Flat`).
    pub factory: String,
    pub metric: Metric,
    /// The embedding model's name and version, checked again at load.
    pub model: String,
    pub model_version: String,
    /// The embedding's dimension (0: taken from the first item).
    pub dim: usize,
    /// Indexes that need training train on at most this many items, spread evenly over
    /// the catalog (default 100,000).
    pub train_sample: usize,
    /// A linear projection applied to items and queries before indexing, or none.
    pub projection: Option<Projection>,
    /// Fit a PCA projection to this many dimensions at build (when `projection` is none).
    pub pca_dim: Option<usize>,
    /// PCA is estimated from at most this many items, spread evenly (default 20,000).
    pub pca_sample: usize,
}

/// Orthogonal iterations when fitting PCA.
const PCA_ITERATIONS: usize = 40;

impl Default for IndexBuildConfig {
    fn default() -> Self {
        IndexBuildConfig {
            factory: "Flat".into(),
            metric: Metric::InnerProduct,
            model: String::new(),
            model_version: String::new(),
            dim: 0,
            train_sample: 100_000,
            projection: None,
            pca_dim: None,
            pca_sample: 20_000,
        }
    }
}

/// Rows `0..n` spread evenly, at most `sample` of them.
pub(crate) fn training_rows(vectors: &[f32], dim: usize, sample: usize) -> Vec<f32> {
    let n = vectors.len() / dim.max(1);
    if n <= sample || sample == 0 {
        return vectors.to_vec();
    }
    (0..sample)
        .flat_map(|i| {
            let row = i * n / sample;
            vectors[row * dim..(row + 1) * dim].iter().copied()
        })
        .collect()
}

pub(crate) fn build_faiss(
    dim: usize,
    factory: &str,
    metric: Metric,
    train_sample: usize,
    vectors: &[f32],
) -> Result<IndexImpl, CatalogError> {
    let train = training_rows(vectors, dim, train_sample);
    Ann::build(dim, factory, metric, &train, vectors)
}

/// Validates, projects and indexes `items`; nothing is written.
pub(crate) fn build_stored(
    items: impl IntoIterator<Item = CatalogItem>,
    config: &IndexBuildConfig,
) -> Result<Stored, CatalogError> {
    let started = Instant::now();
    let mut dim = config.dim;
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    let mut vectors = Vec::new();
    if let Some(p) = &config.projection
        && (p.mean.len() != p.in_dim || p.matrix.len() != p.in_dim * p.out_dim || p.out_dim == 0)
    {
        return Err(CatalogError::Config(format!(
            "projection is {} x {} but holds a mean of {} and a matrix of {} values",
            p.out_dim,
            p.in_dim,
            p.mean.len(),
            p.matrix.len()
        )));
    }
    for item in items {
        if dim == 0 {
            dim = item.vector.len();
        }
        item.validate(dim)?;
        if !seen.insert(item.item_id.clone()) {
            return Err(CatalogError::DuplicateItem {
                item_id: item.item_id,
            });
        }
        vectors.extend_from_slice(&item.vector);
        rows.push(ItemRow {
            item_id: item.item_id,
            category: item.category,
            in_stock: item.in_stock,
            price: item.price,
        });
    }
    if dim == 0 {
        return Err(CatalogError::Config(
            "dim is 0 and there is no item to take it from".into(),
        ));
    }
    let projection = match (&config.projection, config.pca_dim) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(out_dim)) => Some(super::pca::fit_pca(
            &vectors,
            dim,
            out_dim,
            config.pca_sample,
            PCA_ITERATIONS,
        )?),
        (None, None) => None,
    };
    if let Some(p) = &projection
        && p.in_dim != dim
    {
        return Err(CatalogError::Config(format!(
            "projection takes {} values, the embedding has {dim}",
            p.in_dim
        )));
    }
    if let Some(p) = &projection {
        vectors = vectors.chunks(dim).flat_map(|row| p.apply(row)).collect();
    }
    let index_dim = projection.as_ref().map_or(dim, |p| p.out_dim);
    let index = build_faiss(
        index_dim,
        &config.factory,
        config.metric,
        config.train_sample,
        &vectors,
    )?;
    let meta = IndexMeta {
        format_version: IndexMeta::FORMAT_VERSION,
        model: config.model.clone(),
        model_version: config.model_version.clone(),
        dim,
        metric: config.metric,
        factory: config.factory.clone(),
        projection,
        item_count: rows.len(),
        built_at_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        build_seconds: started.elapsed().as_secs_f64(),
    };
    Ok(Stored {
        meta,
        index,
        items: rows,
        vectors,
    })
}

/// Builds an index over `items` and writes it to `out_dir` (created if missing); what
/// `CatalogIndex::load` reads.
pub fn build_index(
    items: impl IntoIterator<Item = CatalogItem>,
    config: &IndexBuildConfig,
    out_dir: &Path,
) -> Result<IndexMeta, CatalogError> {
    let stored = build_stored(items, config)?;
    store::save(out_dir, &stored)?;
    Ok(stored.meta)
}

/// Turns preprocessed images into embeddings: `[n, 3, side, side]` in, `n` vectors out.
pub trait Embedder {
    fn embed(&self, images: &ImageBatch) -> Result<Vec<Vec<f32>>, String>;
}

/// Where a catalog row's embedding comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum RowSource {
    Embedding(Vec<f32>),
    Image(PathBuf),
}

/// One row of a catalog table (e.g. `catalog.parquet`: `item_id`, `image_path` or
/// `embedding`, `category`, `in_stock`, `price`).
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogRow {
    pub item_id: String,
    pub category: String,
    pub in_stock: bool,
    pub price: f64,
    pub source: RowSource,
}

/// Rows → items: embeddings are kept; images are read, preprocessed and embedded
/// `batch_size` at a time, with a progress bar on a terminal.
pub fn embed_rows(
    rows: Vec<CatalogRow>,
    preprocessor: &Preprocessor,
    embedder: &dyn Embedder,
    batch_size: usize,
) -> Result<Vec<CatalogItem>, CatalogError> {
    let images = rows
        .iter()
        .filter(|r| matches!(r.source, RowSource::Image(_)))
        .count() as u64;
    let bar = indicatif::ProgressBar::new(images);
    bar.set_style(
        indicatif::ProgressStyle::with_template("embedding {pos}/{len} images [{elapsed}] {bar:40}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut items: Vec<Option<CatalogItem>> = Vec::with_capacity(rows.len());
    let mut pending: Vec<(usize, Vec<u8>)> = Vec::new();
    let flush = |pending: &mut Vec<(usize, Vec<u8>)>,
                 items: &mut Vec<Option<CatalogItem>>,
                 rows: &[CatalogRow]|
     -> Result<(), CatalogError> {
        if pending.is_empty() {
            return Ok(());
        }
        let bytes: Vec<&[u8]> = pending.iter().map(|(_, b)| b.as_slice()).collect();
        let batch = preprocessor.preprocess_batch(&bytes).map_err(|e| match e {
            crate::preprocess::PreprocessError::InBatch { index, source } => CatalogError::InvalidItem {
                item_id: rows[pending[index].0].item_id.clone(),
                reason: source.to_string(),
            },
            other => other.into(),
        })?;
        let vectors = embedder.embed(&batch).map_err(CatalogError::Embed)?;
        if vectors.len() != pending.len() {
            return Err(CatalogError::Embed(format!(
                "{} embeddings for {} images",
                vectors.len(),
                pending.len()
            )));
        }
        for ((row, _), vector) in pending.drain(..).zip(vectors) {
            let r = &rows[row];
            items[row] = Some(CatalogItem {
                item_id: r.item_id.clone(),
                category: r.category.clone(),
                in_stock: r.in_stock,
                price: r.price,
                vector,
            });
        }
        Ok(())
    };
    for (i, row) in rows.iter().enumerate() {
        match &row.source {
            RowSource::Embedding(v) => items.push(Some(CatalogItem {
                item_id: row.item_id.clone(),
                category: row.category.clone(),
                in_stock: row.in_stock,
                price: row.price,
                vector: v.clone(),
            })),
            RowSource::Image(path) => {
                items.push(None);
                let bytes = std::fs::read(path).map_err(CatalogError::io(path))?;
                pending.push((i, bytes));
                if pending.len() >= batch_size.max(1) {
                    let done = pending.len() as u64;
                    flush(&mut pending, &mut items, &rows)?;
                    bar.inc(done);
                }
            }
        }
    }
    let done = pending.len() as u64;
    flush(&mut pending, &mut items, &rows)?;
    bar.inc(done);
    bar.finish_and_clear();
    Ok(items.into_iter().flatten().collect())
}
