//! The visual-search requests `ferrite bench` sends: the images of a directory (JPEG, PNG or
//! WebP files, sorted by name) or the rows of a `.npy` file of embeddings, each request
//! encoded once; the key picks which.

use std::path::Path;

use anyhow::{Context, ensure};
use ferrite_proto::ferrite::v1::{FloatVector, SearchFilter, VisualSearchRequest, visual_search_request};
use prost::Message;

use super::rpc::Encoded;

/// Encoded `VisualSearchRequest`s.
pub struct Queries {
    requests: Vec<Encoded>,
}

impl Queries {
    /// One request per image file in `dir`.
    pub fn images(dir: &Path, top_k: u32, filter: Option<SearchFilter>) -> anyhow::Result<Queries> {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("--images {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    ["jpg", "jpeg", "png", "webp"].contains(&e.to_ascii_lowercase().as_str())
                })
            })
            .collect();
        paths.sort();
        ensure!(
            !paths.is_empty(),
            "--images {}: no JPEG, PNG or WebP files",
            dir.display()
        );
        let requests = paths
            .iter()
            .map(|p| {
                let image = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                Ok(encode(
                    visual_search_request::Query::Image(image),
                    top_k,
                    filter.clone(),
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Queries { requests })
    }

    /// One request per row of the float32 `[n, d]` matrix in `path`.
    pub fn embeddings(path: &Path, top_k: u32, filter: Option<SearchFilter>) -> anyhow::Result<Queries> {
        let m = crate::npy::read_f32_matrix(path)?;
        ensure!(m.rows > 0, "--queries {}: no rows", path.display());
        let requests = (0..m.rows)
            .map(|i| {
                let values = m.row(i).to_vec();
                encode(
                    visual_search_request::Query::Embedding(FloatVector { values }),
                    top_k,
                    filter.clone(),
                )
            })
            .collect();
        Ok(Queries { requests })
    }

    pub fn get(&self, key: u64) -> Encoded {
        self.requests[(key % self.requests.len() as u64) as usize].clone()
    }
}

fn encode(query: visual_search_request::Query, top_k: u32, filter: Option<SearchFilter>) -> Encoded {
    let request = VisualSearchRequest {
        query: Some(query),
        top_k,
        filter,
        include_latency: false,
    };
    Encoded(request.encode_to_vec().into())
}
