//! The offline store: Parquet files scanned lazily with Polars, so nothing loads a whole
//! dataset into memory unless the query needs it.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::FeatureError;

/// One Parquet source: a file or a glob of files with the same schema.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    /// The first path names the source in messages.
    path: PathBuf,
    paths: Vec<PathBuf>,
}

impl ParquetSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        ParquetSource {
            paths: vec![path.clone()],
            path,
        }
    }

    /// Several files or globs with one schema, scanned as one table.
    pub fn from_paths(paths: Vec<PathBuf>) -> Self {
        ParquetSource {
            path: paths.first().cloned().unwrap_or_default(),
            paths,
        }
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
        let paths = self
            .paths
            .iter()
            .map(|p| PlRefPath::try_from_path(p).map_err(|e| self.error(e)))
            .collect::<Result<Vec<_>, _>>()?;
        LazyFrame::scan_parquet_files(paths.into_iter().collect(), ScanArgsParquet::default())
            .map_err(|e| self.error(e))
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

/// Every distinct entity of a single-key view's offline source (pushed files included),
/// sorted: e.g. the whole catalogue of an item view, for jobs that must visit every item.
pub fn entity_ids(view: &crate::FeatureView) -> Result<Vec<crate::Value>, FeatureError> {
    let [key] = view.join_keys.as_slice() else {
        return Err(FeatureError::Invalid(format!(
            "feature view {:?} has join keys {:?}; listing entities needs exactly one",
            view.name, view.join_keys
        )));
    };
    let source = view.source.parquet();
    let frame = source
        .scan_columns(&[key.as_str()])?
        .unique(None, UniqueKeepStrategy::Any)
        .sort([key.as_str()], SortMultipleOptions::default())
        .collect()
        .map_err(|e| source.error(e))?;
    let column = frame.column(key).map_err(|e| source.error(e))?;
    let keys = crate::frame::key_values(column, view.key_types[0]).map_err(|e| source.error(e))?;
    Ok(keys
        .into_iter()
        .flatten()
        .map(|k| match k {
            crate::value::KeyValue::Int(i) => crate::Value::Int(i),
            crate::value::KeyValue::Str(s) => crate::Value::Str(s),
        })
        .collect())
}
