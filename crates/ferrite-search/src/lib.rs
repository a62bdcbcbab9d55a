//! Visual search: image bytes to the embedder's input tensor, and catalog embeddings to the
//! nearest items.
//!
//! Owns image preprocessing ([`preprocess`]: decode, orient, resize, crop, normalise, with
//! limits checked before decoding), the catalog index ([`catalog`]: a FAISS index from a
//! factory string with item metadata, filters planned per query, live updates, atomic
//! swaps, live recall, and the on-disk format the CLI builds), the `VectorIndex` trait with
//! its exact FAISS implementation, `PositionIndex` (filtered exact search by position,
//! used by recommendations), and [`cpu::check`] (whether this CPU has the instructions FAISS
//! was compiled for). It does not own the embedding model (ferrite-models), the
//! wire types or status codes (ferrite-server), nor reading `catalog.parquet` (the CLI
//! turns its rows into [`catalog::CatalogRow`]s).

pub mod catalog;
pub mod cpu;
pub mod preprocess;

use faiss::index::SearchWithParams;
use faiss::index::flat::FlatIndex;
use faiss::index::id_map::IdMap;
use faiss::search_params::SearchParameters;
use faiss::selector::IdSelector;
use faiss::{ConcurrentIndex, Index};

/// Errors from building or querying an index.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("vector has {got} values, the index holds vectors of dimension {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("{ids} ids for {vectors} vectors")]
    IdCount { ids: usize, vectors: usize },
    #[error("id {0} is out of range: ids must be below 2^63")]
    IdRange(u64),
    #[error("top_k must be at least 1")]
    ZeroK,
    #[error("FAISS: {0}")]
    Faiss(#[from] faiss::error::Error),
}

/// One search result: the caller's id for the vector and its similarity (higher is closer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: u64,
    pub score: f32,
}

/// A nearest-neighbour index over fixed-dimension float vectors.
pub trait VectorIndex: Send + Sync {
    fn dim(&self) -> usize;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `k` most similar vectors to `query`, most similar first; fewer if the index is smaller.
    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, SearchError>;
}

/// Exact inner-product search in FAISS (`IndexIDMap` over `IndexFlatIP`). With L2-normalised
/// vectors the score is the cosine similarity.
pub struct FaissFlatIndex {
    index: IdMap<FlatIndex>,
    dim: usize,
}

impl FaissFlatIndex {
    pub fn new(dim: usize) -> Result<Self, SearchError> {
        if dim == 0 || dim > u32::MAX as usize {
            return Err(SearchError::Dimension {
                expected: 1,
                got: dim,
            });
        }
        let index = IdMap::new(FlatIndex::new_ip(dim as u32)?)?;
        Ok(FaissFlatIndex { index, dim })
    }

    /// Adds `ids.len()` vectors laid end to end in `vectors`.
    pub fn add(&mut self, ids: &[u64], vectors: &[f32]) -> Result<(), SearchError> {
        if !vectors.len().is_multiple_of(self.dim) {
            return Err(SearchError::Dimension {
                expected: self.dim,
                got: vectors.len() % self.dim,
            });
        }
        let count = vectors.len() / self.dim;
        if ids.len() != count {
            return Err(SearchError::IdCount {
                ids: ids.len(),
                vectors: count,
            });
        }
        if let Some(&id) = ids.iter().find(|&&id| id > i64::MAX as u64) {
            return Err(SearchError::IdRange(id));
        }
        let ids: Vec<faiss::Idx> = ids.iter().map(|&id| faiss::Idx::new(id)).collect();
        self.index.add_with_ids(vectors, &ids)?;
        Ok(())
    }
}

impl VectorIndex for FaissFlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn len(&self) -> usize {
        self.index.ntotal() as usize
    }

    fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, SearchError> {
        if query.len() != self.dim {
            return Err(SearchError::Dimension {
                expected: self.dim,
                got: query.len(),
            });
        }
        if k == 0 {
            return Err(SearchError::ZeroK);
        }
        let result = ConcurrentIndex::search(&self.index, query, k)?;
        Ok(result
            .labels
            .iter()
            .zip(result.distances)
            .filter_map(|(label, score)| label.get().map(|id| Hit { id, score }))
            .collect())
    }
}

/// How a filtered search was run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPlan {
    /// No filter: the index's own search.
    Index,
    /// The filter keeps few vectors: an exact scan of just those.
    Exact,
    /// The filter keeps many: the index's search, told which ids it may return (a FAISS
    /// `IDSelector` bitmap), so that no post-filter can starve the answer.
    Selector,
}

impl SearchPlan {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchPlan::Index => "index",
            SearchPlan::Exact => "exact",
            SearchPlan::Selector => "selector",
        }
    }
}

/// Exact inner-product search over vectors numbered `0..len` (their position is their id),
/// with filters planned per query: a filter that keeps at most `exact_share` of the vectors
/// is answered by scanning just those, a wider one by FAISS with an id selector.
pub struct PositionIndex {
    index: FlatIndex,
    vectors: Vec<f32>,
    dim: usize,
    exact_share: f64,
}

impl PositionIndex {
    /// Builds the index over `vectors` (rows of `dim` values laid end to end).
    pub fn new(dim: usize, vectors: Vec<f32>) -> Result<Self, SearchError> {
        if dim == 0 || dim > u32::MAX as usize {
            return Err(SearchError::Dimension {
                expected: 1,
                got: dim,
            });
        }
        if !vectors.len().is_multiple_of(dim) {
            return Err(SearchError::Dimension {
                expected: dim,
                got: vectors.len() % dim,
            });
        }
        let mut index = FlatIndex::new_ip(dim as u32)?;
        index.add(&vectors)?;
        Ok(PositionIndex {
            index,
            vectors,
            dim,
            exact_share: 0.05,
        })
    }

    /// Filters keeping at most this share of the vectors are scanned exactly (default 5 %).
    pub fn with_exact_share(mut self, share: f64) -> Self {
        self.exact_share = share;
        self
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.vectors.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The vector at `position`.
    pub fn vector(&self, position: usize) -> &[f32] {
        &self.vectors[position * self.dim..(position + 1) * self.dim]
    }

    /// The `k` vectors most similar to `query` among those `keep` accepts (all when `None`),
    /// most similar first, and how the search ran.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        keep: Option<&dyn Fn(usize) -> bool>,
    ) -> Result<(Vec<Hit>, SearchPlan), SearchError> {
        if query.len() != self.dim {
            return Err(SearchError::Dimension {
                expected: self.dim,
                got: query.len(),
            });
        }
        if k == 0 {
            return Err(SearchError::ZeroK);
        }
        let n = self.len();
        let hits = |result: faiss::index::SearchResult| {
            result
                .labels
                .iter()
                .zip(result.distances)
                .filter_map(|(label, score)| label.get().map(|id| Hit { id, score }))
                .collect::<Vec<_>>()
        };
        let Some(keep) = keep else {
            let result = ConcurrentIndex::search(&self.index, query, k.min(n.max(1)))?;
            return Ok((hits(result), SearchPlan::Index));
        };
        let kept: Vec<usize> = (0..n).filter(|&p| keep(p)).collect();
        if kept.is_empty() {
            return Ok((Vec::new(), SearchPlan::Exact));
        }
        if (kept.len() as f64) <= self.exact_share * n as f64 || kept.len() <= k {
            let mut scored: Vec<Hit> = kept
                .iter()
                .map(|&p| Hit {
                    id: p as u64,
                    score: self.vector(p).iter().zip(query).map(|(a, b)| a * b).sum(),
                })
                .collect();
            let k = k.min(scored.len());
            if k < scored.len() {
                scored.select_nth_unstable_by(k - 1, |a, b| b.score.total_cmp(&a.score));
                scored.truncate(k);
            }
            scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
            return Ok((scored, SearchPlan::Exact));
        }
        let mut bitmap = vec![0u8; n.div_ceil(8)];
        for &p in &kept {
            bitmap[p >> 3] |= 1 << (p & 7);
        }
        let params = SearchParameters::new(IdSelector::bitmap(&bitmap)?)?;
        let result = self.index.search_with_params(query, k.min(kept.len()), &params)?;
        Ok((hits(result), SearchPlan::Selector))
    }
}
