//! Vector indexes for visual search: catalog embeddings in, nearest items out.
//!
//! Owns the `VectorIndex` trait and its FAISS implementation. It does not own turning
//! images into embeddings (a model backend does that) nor item metadata.

use faiss::index::flat::FlatIndex;
use faiss::index::id_map::IdMap;
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
