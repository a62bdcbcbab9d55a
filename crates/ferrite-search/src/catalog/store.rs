//! A built catalog on disk, one directory:
//! - `index.json`: [`IndexMeta`] (model, version, dimension, metric, factory, projection,
//!   item count, build time);
//! - `index.faiss`: the FAISS index, vectors numbered by slot;
//! - `items.jsonl`: one line per slot: `item_id`, `category`, `in_stock`, `price`;
//! - `vectors.f32`: the stored (projected) vectors, little-endian `f32`, slot after slot,
//!   for exact scans of sparse filters and for rebuilds.

use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use faiss::Index;
use faiss::index::IndexImpl;
use serde::{Deserialize, Serialize};

use super::ann::Ann;
use super::error::CatalogError;
use super::types::IndexMeta;

pub const META_FILE: &str = "index.json";
pub const FAISS_FILE: &str = "index.faiss";
pub const ITEMS_FILE: &str = "items.jsonl";
pub const VECTORS_FILE: &str = "vectors.f32";

/// One row of `items.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ItemRow {
    pub item_id: String,
    pub category: String,
    pub in_stock: bool,
    pub price: f64,
}

/// Everything a catalog directory holds, in memory.
pub(crate) struct Stored {
    pub meta: IndexMeta,
    pub index: IndexImpl,
    pub items: Vec<ItemRow>,
    pub vectors: Vec<f32>,
}

/// What a loaded index must have been built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub model: String,
    pub model_version: String,
    pub dim: usize,
}

pub(crate) fn save(dir: &Path, stored: &Stored) -> Result<(), CatalogError> {
    fs::create_dir_all(dir).map_err(CatalogError::io(dir))?;
    let meta_path = dir.join(META_FILE);
    let json = serde_json::to_vec_pretty(&stored.meta).map_err(|e| CatalogError::Corrupt {
        path: meta_path.clone(),
        reason: e.to_string(),
    })?;
    fs::write(&meta_path, json).map_err(CatalogError::io(&meta_path))?;
    Ann::write(&stored.index, &dir.join(FAISS_FILE))?;

    let items_path = dir.join(ITEMS_FILE);
    let file = fs::File::create(&items_path).map_err(CatalogError::io(&items_path))?;
    let mut out = BufWriter::new(file);
    for row in &stored.items {
        serde_json::to_writer(&mut out, row).map_err(|e| CatalogError::Io {
            path: items_path.clone(),
            source: e.into(),
        })?;
        out.write_all(b"\n").map_err(CatalogError::io(&items_path))?;
    }
    out.flush().map_err(CatalogError::io(&items_path))?;

    let vectors_path = dir.join(VECTORS_FILE);
    let bytes: Vec<u8> = stored.vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
    fs::write(&vectors_path, bytes).map_err(CatalogError::io(&vectors_path))?;
    Ok(())
}

/// Reads only `index.json` (to tell what an index directory holds without loading it).
pub fn read_meta(dir: &Path) -> Result<IndexMeta, CatalogError> {
    let path = dir.join(META_FILE);
    let text = read(&path, "catalog index metadata")?;
    serde_json::from_slice(&text).map_err(|e| CatalogError::Corrupt {
        path,
        reason: format!("not valid index metadata: {e}"),
    })
}

pub(crate) fn load(dir: &Path, expected: &Expected) -> Result<Stored, CatalogError> {
    if !dir.is_dir() {
        return Err(CatalogError::NotFound {
            path: dir.to_path_buf(),
            what: "catalog index directory",
        });
    }
    let meta = read_meta(dir)?;
    let meta_path = dir.join(META_FILE);
    if meta.format_version != IndexMeta::FORMAT_VERSION {
        return Err(mismatch(
            &meta_path,
            "format_version",
            IndexMeta::FORMAT_VERSION,
            meta.format_version,
        ));
    }
    if meta.model != expected.model {
        return Err(mismatch(&meta_path, "model", &expected.model, &meta.model));
    }
    if meta.model_version != expected.model_version {
        return Err(mismatch(
            &meta_path,
            "model_version",
            &expected.model_version,
            &meta.model_version,
        ));
    }
    if meta.dim != expected.dim {
        return Err(mismatch(&meta_path, "dim", expected.dim, meta.dim));
    }
    let n = meta.item_count;
    let d = meta.index_dim();

    let faiss_path = dir.join(FAISS_FILE);
    if !faiss_path.is_file() {
        return Err(CatalogError::NotFound {
            path: faiss_path,
            what: "FAISS index file",
        });
    }
    let index = Ann::read(&faiss_path)?;
    if index.d() as usize != d || index.ntotal() as usize != n {
        return Err(CatalogError::Corrupt {
            path: faiss_path,
            reason: format!(
                "holds {} vectors of dimension {}, index.json says {n} of dimension {d}",
                index.ntotal(),
                index.d()
            ),
        });
    }

    let items_path = dir.join(ITEMS_FILE);
    let text = read(&items_path, "catalog item table")?;
    let mut items = Vec::with_capacity(n);
    for (line_no, line) in BufReader::new(text.as_slice()).lines().enumerate() {
        let line = line.map_err(CatalogError::io(&items_path))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: ItemRow = serde_json::from_str(&line).map_err(|e| CatalogError::Corrupt {
            path: items_path.clone(),
            reason: format!("line {}: {e}", line_no + 1),
        })?;
        items.push(row);
    }
    if items.len() != n {
        return Err(CatalogError::Corrupt {
            path: items_path,
            reason: format!("{} items, index.json says {n}", items.len()),
        });
    }

    let vectors_path = dir.join(VECTORS_FILE);
    let bytes = read(&vectors_path, "stored vectors")?;
    if bytes.len() != n * d * 4 {
        return Err(CatalogError::Corrupt {
            path: vectors_path,
            reason: format!("{} bytes, expected {n} x {d} f32 = {}", bytes.len(), n * d * 4),
        });
    }
    let vectors = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Stored {
        meta,
        index,
        items,
        vectors,
    })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, CatalogError> {
    fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CatalogError::NotFound {
                path: path.to_path_buf(),
                what,
            }
        } else {
            CatalogError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn mismatch(path: &Path, field: &'static str, expected: impl ToString, found: impl ToString) -> CatalogError {
    CatalogError::Mismatch {
        path: PathBuf::from(path),
        field,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}
