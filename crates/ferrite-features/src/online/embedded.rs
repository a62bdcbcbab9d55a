//! The embedded online store: every row in memory for reads, and in a redb database in a
//! local directory so that a restart or a crash loses nothing that was acknowledged.
//!
//! Writes take one lock, commit a redb transaction (fsync) and only then update memory,
//! so a read never sees a row that a crash could lose. Expired rows are kept and reported
//! as expired on read; the next write of the same key replaces them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::codec::{decode_row, encode_row};
use super::{OnlineStore, ReadRow, RowKey, StoredRow, WriteOutcome, WriteRow};
use crate::FeatureError;
use crate::value::Micros;

const ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rows_v1");
const WATERMARKS: TableDefinition<&str, i64> = TableDefinition::new("watermarks_v1");

/// The separator between view and entity in a row's key; it cannot occur in a view name.
const SEP: char = '\u{1f}';

fn key_text(key: &RowKey) -> String {
    let mut s = String::with_capacity(key.view.len() + key.entity.len() + 1);
    s.push_str(&key.view);
    s.push(SEP);
    s.push_str(&key.entity);
    s
}

pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Database,
    rows: DashMap<String, Arc<StoredRow>>,
    write_lock: Mutex<()>,
}

fn storage_error(path: &Path, e: impl std::fmt::Display) -> FeatureError {
    FeatureError::Unavailable(format!("embedded store {}: {e}", path.display()))
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir` and loads every row into memory.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, FeatureError> {
        std::fs::create_dir_all(dir).map_err(|e| storage_error(dir, e))?;
        let file = dir.join("online.redb");
        let db = Database::create(&file).map_err(|e| {
            let hint = if e.to_string().contains("already open") || e.to_string().contains("lock") {
                " (is a running `ferrite serve` holding it? stop it, or push rows through its API)"
            } else {
                ""
            };
            storage_error(&file, format!("{e}{hint}"))
        })?;
        let rows = DashMap::new();
        {
            let txn = db.begin_write().map_err(|e| storage_error(&file, e))?;
            txn.open_table(ROWS).map_err(|e| storage_error(&file, e))?;
            txn.open_table(WATERMARKS).map_err(|e| storage_error(&file, e))?;
            txn.commit().map_err(|e| storage_error(&file, e))?;
            let read = db.begin_read().map_err(|e| storage_error(&file, e))?;
            let table = read.open_table(ROWS).map_err(|e| storage_error(&file, e))?;
            for entry in table.iter().map_err(|e| storage_error(&file, e))? {
                let (k, v) = entry.map_err(|e| storage_error(&file, e))?;
                let key = String::from_utf8_lossy(k.value()).into_owned();
                // An undecodable row stays visible as invalid rather than silently missing.
                let row = decode_row(v.value()).unwrap_or(StoredRow {
                    event_ts: 0,
                    created_ts: 0,
                    fingerprint: 0,
                    values: Vec::new(),
                });
                rows.insert(key, Arc::new(row));
            }
        }
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path: file,
                db,
                rows,
                write_lock: Mutex::new(()),
            }),
        })
    }

    /// Number of stored rows (all views).
    pub fn len(&self) -> usize {
        self.inner.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.rows.is_empty()
    }
}

impl Inner {
    fn write_blocking(&self, rows: Vec<WriteRow>) -> Result<Vec<WriteOutcome>, FeatureError> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut outcomes = vec![WriteOutcome::Superseded; rows.len()];
        let mut accepted: Vec<(String, StoredRow)> = Vec::with_capacity(rows.len());
        let txn = self.db.begin_write().map_err(|e| storage_error(&self.path, e))?;
        {
            let mut table = txn.open_table(ROWS).map_err(|e| storage_error(&self.path, e))?;
            // Rows later in the batch for the same key compete with earlier ones.
            let mut pending: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
            for (at, w) in rows.into_iter().enumerate() {
                let key = key_text(&w.key);
                let newer = match pending.get(&key) {
                    Some(&i) => w.row.supersedes(&accepted[i].1),
                    None => self.rows.get(&key).is_none_or(|cur| w.row.supersedes(&cur)),
                };
                if !newer {
                    continue;
                }
                table
                    .insert(key.as_bytes(), encode_row(&w.row).as_slice())
                    .map_err(|e| storage_error(&self.path, e))?;
                outcomes[at] = WriteOutcome::Written;
                match pending.get(&key) {
                    Some(&i) => accepted[i].1 = w.row,
                    None => {
                        pending.insert(key.clone(), accepted.len());
                        accepted.push((key, w.row));
                    }
                }
            }
        }
        txn.commit().map_err(|e| storage_error(&self.path, e))?;
        for (key, row) in accepted {
            self.rows.insert(key, Arc::new(row));
        }
        Ok(outcomes)
    }
}

#[async_trait::async_trait]
impl OnlineStore for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn health(&self) -> Result<(), FeatureError> {
        Ok(())
    }

    async fn read(&self, keys: &[RowKey]) -> Result<Vec<Option<ReadRow>>, FeatureError> {
        let mut buf = String::new();
        Ok(keys
            .iter()
            .map(|k| {
                buf.clear();
                buf.push_str(&k.view);
                buf.push(SEP);
                buf.push_str(&k.entity);
                self.inner
                    .rows
                    .get(buf.as_str())
                    .map(|r| ReadRow::Shared(r.clone()))
            })
            .collect())
    }

    async fn write(&self, rows: Vec<WriteRow>) -> Result<Vec<WriteOutcome>, FeatureError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // The commit fsyncs: keep it off the async workers.
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.write_blocking(rows))
            .await
            .map_err(|e| FeatureError::Unavailable(format!("embedded store writer failed: {e}")))?
    }

    async fn watermark(&self, view: &str) -> Result<Option<Micros>, FeatureError> {
        let read = self
            .inner
            .db
            .begin_read()
            .map_err(|e| storage_error(&self.inner.path, e))?;
        let table = read
            .open_table(WATERMARKS)
            .map_err(|e| storage_error(&self.inner.path, e))?;
        Ok(table
            .get(view)
            .map_err(|e| storage_error(&self.inner.path, e))?
            .map(|v| v.value()))
    }

    async fn set_watermark(&self, view: &str, ts: Micros) -> Result<(), FeatureError> {
        let _guard = self.inner.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(|e| storage_error(&self.inner.path, e))?;
        {
            let mut table = txn
                .open_table(WATERMARKS)
                .map_err(|e| storage_error(&self.inner.path, e))?;
            table
                .insert(view, ts)
                .map_err(|e| storage_error(&self.inner.path, e))?;
        }
        txn.commit().map_err(|e| storage_error(&self.inner.path, e))
    }
}
