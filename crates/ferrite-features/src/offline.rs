//! The offline store: Parquet files scanned lazily with Polars, so nothing loads a whole
//! dataset into memory unless the query needs it.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::FeatureError;

/// One Parquet source: a file or a glob of files with the same schema.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    path: PathBuf,
}

impl ParquetSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ParquetSource { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: impl std::fmt::Display) -> FeatureError {
        FeatureError::Offline {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// A lazy scan of the source; nothing is read until the query is collected.
    pub fn scan(&self) -> Result<LazyFrame, FeatureError> {
        let path = PlRefPath::try_from_path(&self.path).map_err(|e| self.error(e))?;
        LazyFrame::scan_parquet(path, ScanArgsParquet::default()).map_err(|e| self.error(e))
    }

    /// The source's schema, read from the Parquet footer only.
    pub fn schema(&self) -> Result<SchemaRef, FeatureError> {
        self.scan()?.collect_schema().map_err(|e| self.error(e))
    }

    /// A scan of just `columns`, failing with the missing column's name if one is absent.
    pub fn scan_columns(&self, columns: &[&str]) -> Result<LazyFrame, FeatureError> {
        let schema = self.schema()?;
        if let Some(missing) = columns.iter().find(|c| !schema.contains(c)) {
            return Err(FeatureError::MissingColumn {
                path: self.path.clone(),
                column: missing.to_string(),
                available: schema.iter_names().map(|n| n.to_string()).collect(),
            });
        }
        Ok(self
            .scan()?
            .select(columns.iter().map(|c| col(*c)).collect::<Vec<_>>()))
    }
}
