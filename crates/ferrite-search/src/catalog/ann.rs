//! The FAISS part of a catalog: an index from a factory string, numbered by slot (the row's
//! position in the catalog table), searched with or without an id selector.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use faiss::index::autotune::ParameterSpace;
use faiss::index::{IndexImpl, SearchWithParamsMut, TryClone};
use faiss::search_params::{SearchParameters, SearchParametersIVF};
use faiss::selector::IdSelector;
use faiss::{Index, MetricType};

use super::error::CatalogError;
use super::types::Metric;

/// Search-time knobs of the FAISS index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct AnnParams {
    pub nprobe: usize,
    pub ef_search: usize,
    pub replicas: usize,
}

/// One factory-built FAISS index (held as `replicas` copies: the `faiss` crate searches a
/// factory-built index through `&mut`, so each copy serves one search at a time).
pub(crate) struct Ann {
    replicas: Vec<Mutex<IndexImpl>>,
    next: AtomicUsize,
    ivf: bool,
    hnsw: bool,
    metric: Metric,
    nprobe: usize,
    ef_search: usize,
    /// Set once a selector search fails: the index type takes no selector, so filtered
    /// searches post-filter instead.
    selector_refused: AtomicBool,
}

fn faiss_err(context: &str) -> impl FnOnce(faiss::error::Error) -> CatalogError + '_ {
    move |source| CatalogError::Faiss {
        context: context.to_string(),
        source,
    }
}

pub(crate) fn faiss_metric(metric: Metric) -> MetricType {
    match metric {
        Metric::InnerProduct => MetricType::InnerProduct,
        Metric::L2 => MetricType::L2,
    }
}

impl Ann {
    /// Builds from `factory`, training on `train` (rows laid end to end) when the index
    /// needs it, then adds `vectors` numbered `0..n`.
    pub fn build(
        dim: usize,
        factory: &str,
        metric: Metric,
        train: &[f32],
        vectors: &[f32],
    ) -> Result<IndexImpl, CatalogError> {
        let mut index =
            faiss::index_factory(dim as u32, factory, faiss_metric(metric)).map_err(|source| {
                CatalogError::Factory {
                    factory: factory.to_string(),
                    reason: source.to_string(),
                }
            })?;
        if !index.is_trained() {
            index.train(train).map_err(|source| CatalogError::Factory {
                factory: factory.to_string(),
                reason: format!(
                    "training on {} vectors failed: {source}",
                    train.len() / dim.max(1)
                ),
            })?;
        }
        if !vectors.is_empty() {
            index.add(vectors).map_err(faiss_err("adding vectors"))?;
        }
        Ok(index)
    }

    pub fn read(path: &Path) -> Result<IndexImpl, CatalogError> {
        let name = path.to_str().ok_or_else(|| CatalogError::Corrupt {
            path: path.to_path_buf(),
            reason: "path is not UTF-8".into(),
        })?;
        faiss::read_index(name).map_err(|source| CatalogError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("FAISS could not read the index: {source}"),
        })
    }

    pub fn write(index: &IndexImpl, path: &Path) -> Result<(), CatalogError> {
        let name = path.to_str().ok_or_else(|| CatalogError::Corrupt {
            path: path.to_path_buf(),
            reason: "path is not UTF-8".into(),
        })?;
        faiss::write_index(index, name).map_err(faiss_err("writing the index"))
    }

    /// Wraps a built or read index with its search-time parameters.
    pub fn new(
        index: IndexImpl,
        factory: &str,
        metric: Metric,
        params: AnnParams,
    ) -> Result<Self, CatalogError> {
        let ivf = factory.contains("IVF");
        // An IVF index with an HNSW coarse quantizer (`IVF65536_HNSW32,...`) is tuned by nprobe.
        let hnsw = factory.contains("HNSW") && !ivf;
        let space = ParameterSpace::new().map_err(faiss_err("parameter space"))?;
        if ivf {
            space
                .set_index_parameter(&index, "nprobe", params.nprobe as f64)
                .map_err(faiss_err("setting nprobe"))?;
        }
        if hnsw {
            space
                .set_index_parameter(&index, "efSearch", params.ef_search as f64)
                .map_err(faiss_err("setting efSearch"))?;
        }
        let mut replicas = Vec::with_capacity(params.replicas.max(1));
        for _ in 1..params.replicas.max(1) {
            replicas.push(Mutex::new(
                index.try_clone().map_err(faiss_err("copying the index"))?,
            ));
        }
        replicas.push(Mutex::new(index));
        Ok(Ann {
            replicas,
            next: AtomicUsize::new(0),
            ivf,
            hnsw,
            metric,
            nprobe: params.nprobe,
            ef_search: params.ef_search,
            selector_refused: AtomicBool::new(false),
        })
    }

    pub fn takes_selectors(&self) -> bool {
        !self.selector_refused.load(Ordering::Relaxed)
    }

    /// Runs `f` on a free copy of the index (or waits for one).
    fn with_index<T>(&self, f: impl FnOnce(&mut IndexImpl) -> T) -> T {
        for replica in &self.replicas {
            if let Ok(mut index) = replica.try_lock() {
                return f(&mut index);
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.replicas.len();
        let mut index = self.replicas[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut index)
    }

    /// Nearest `k` slots with scores (higher is closer).
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u32, f32)>, CatalogError> {
        let result = self
            .with_index(|index| index.search(query, k))
            .map_err(faiss_err("searching"))?;
        Ok(self.hits(&result.labels, &result.distances))
    }

    /// Nearest `k` slots among those set in `bitmap` (bit `slot % 8` of byte `slot / 8`),
    /// with the IVF lists probed or the HNSW candidate list widened `widen` times (a sparse
    /// filter leaves few matches among the candidates an unfiltered search looks at).
    /// `Ok(None)` when this index type takes no selector.
    pub fn search_selected(
        &self,
        query: &[f32],
        k: usize,
        bitmap: &[u8],
        widen: f64,
    ) -> Result<Option<Vec<(u32, f32)>>, CatalogError> {
        if !self.takes_selectors() {
            return Ok(None);
        }
        let widened = |base: usize| ((base as f64 * widen.max(1.0)).ceil() as usize).max(base);
        let selector = IdSelector::bitmap(bitmap).map_err(faiss_err("selector"))?;
        let params = if self.ivf {
            SearchParametersIVF::new_with(selector, widened(self.nprobe), 0)
                .map_err(faiss_err("search parameters"))?
                .upcast()
        } else {
            SearchParameters::new(selector).map_err(faiss_err("search parameters"))?
        };
        let result = self.with_index(|index| {
            if !self.hnsw {
                return index.search_with_params(query, k, &params);
            }
            // The `faiss` crate has no per-query HNSW parameters, so the copy held here
            // is widened for this search and set back before it is released.
            let space = ParameterSpace::new()?;
            space.set_index_parameter(&*index, "efSearch", widened(self.ef_search) as f64)?;
            let result = index.search_with_params(query, k, &params);
            space.set_index_parameter(&*index, "efSearch", self.ef_search as f64)?;
            result
        });
        match result {
            Ok(result) => Ok(Some(self.hits(&result.labels, &result.distances))),
            Err(error) => {
                tracing::warn!(%error, "FAISS index refused an id selector; filtered searches post-filter from now on");
                self.selector_refused.store(true, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    fn hits(&self, labels: &[faiss::Idx], distances: &[f32]) -> Vec<(u32, f32)> {
        labels
            .iter()
            .zip(distances)
            .filter_map(|(label, &d)| {
                label.get().map(|slot| {
                    let score = match self.metric {
                        Metric::InnerProduct => d,
                        Metric::L2 => -d,
                    };
                    (slot as u32, score)
                })
            })
            .collect()
    }
}
