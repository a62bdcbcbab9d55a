//! Online stores: the latest feature row per (feature view, entity), read on the request
//! path. One trait, three backends: embedded (default), Redis, Redis Cluster.

mod codec;
mod embedded;
mod redis_store;

pub use codec::{decode_row, encode_row};
pub use embedded::EmbeddedStore;
pub use redis_store::RedisStore;

use std::sync::Arc;

use crate::FeatureError;
use crate::value::Micros;
use crate::value::Value;

/// The stored row of one view for one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    pub event_ts: Micros,
    pub created_ts: Micros,
    /// The view layout the values were written under (`FeatureView::fingerprint`); a row
    /// that cannot be decoded carries 0.
    pub fingerprint: u64,
    /// One value per feature of the view, in definition order.
    pub values: Vec<Value>,
}

impl StoredRow {
    /// Whether this row should replace `current`: newer event time, or the same event time
    /// and a created time at least as new (so re-writing the same row is a no-op).
    pub fn supersedes(&self, current: &StoredRow) -> bool {
        (self.event_ts, self.created_ts) >= (current.event_ts, current.created_ts)
    }
}

/// A row as a read returns it: shared with the store's memory (the embedded store), or
/// decoded for this read alone (Redis), which the caller may take values out of.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadRow {
    Shared(Arc<StoredRow>),
    Owned(StoredRow),
}

impl ReadRow {
    /// The row's values, if this read alone holds them.
    pub fn values_mut(&mut self) -> Option<&mut Vec<Value>> {
        match self {
            ReadRow::Shared(row) => Arc::get_mut(row).map(|r| &mut r.values),
            ReadRow::Owned(row) => Some(&mut row.values),
        }
    }
}

impl std::ops::Deref for ReadRow {
    type Target = StoredRow;

    fn deref(&self) -> &StoredRow {
        match self {
            ReadRow::Shared(row) => row,
            ReadRow::Owned(row) => row,
        }
    }
}

/// Names one stored row: a feature view and the canonical text of an entity key
/// (see `value::encode_entity_key`). Shared strings: a read of many entities over several
/// views names each view, and each entity, once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub view: Arc<str>,
    pub entity: Arc<str>,
}

/// A row to write, with the time it expires (event time + TTL), if the view has a TTL.
#[derive(Debug, Clone)]
pub struct WriteRow {
    pub key: RowKey,
    pub row: StoredRow,
    pub expire_at: Option<Micros>,
}

/// What a write did with one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Written,
    /// Not written: the store holds a row for the key that is at least as new (later event
    /// time, or the same event time and a later created time).
    Superseded,
    /// Not written: the row's expiry had already passed.
    Expired,
}

/// One online store. Callers hold `Arc<dyn OnlineStore>`; only `open` names a backend.
///
/// One answer per key: `read` returns exactly one entry per key and `write` one outcome per
/// row, in the order given. Callers check it and treat any other count as a store error,
/// never as a shorter answer to line up.
#[async_trait::async_trait]
pub trait OnlineStore: Send + Sync {
    /// A short name for logs and metrics: "embedded", "redis", "redis_cluster".
    fn kind(&self) -> &'static str;
    /// Succeeds when the store can serve reads now.
    async fn health(&self) -> Result<(), FeatureError>;
    /// Reads many rows in one round trip: one entry per key, in order; `None` where nothing
    /// is stored.
    async fn read(&self, keys: &[RowKey]) -> Result<Vec<Option<ReadRow>>, FeatureError>;
    /// Writes rows, keeping per key the newest by (event time, created time); returns one
    /// outcome per row, in order. Returns only once the rows are durable. Rows later in
    /// `rows` for the same key compete with earlier ones as if written after them.
    async fn write(&self, rows: Vec<WriteRow>) -> Result<Vec<WriteOutcome>, FeatureError>;
    /// The end of the last materialized window of a view.
    async fn watermark(&self, view: &str) -> Result<Option<Micros>, FeatureError>;
    async fn set_watermark(&self, view: &str, ts: Micros) -> Result<(), FeatureError>;
}

/// Checks that a store answered once per key; `what` names the call for the message.
pub(crate) fn check_answers(
    store: &str,
    what: &str,
    asked: usize,
    answered: usize,
) -> Result<(), FeatureError> {
    if asked == answered {
        Ok(())
    } else {
        Err(FeatureError::Internal(format!(
            "the {store} online store answered a {what} of {asked} keys with {answered} entries; expected one per key"
        )))
    }
}

/// How long a Redis client waits: for a connection, for the answer to a read, and for the
/// answer to one write script (up to 512 rows of a push or a materialization). Connect and
/// response bound the request path, so they sit far below the serving budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisTimeouts {
    pub connect: std::time::Duration,
    pub response: std::time::Duration,
    pub write: std::time::Duration,
}

impl Default for RedisTimeouts {
    fn default() -> Self {
        RedisTimeouts {
            connect: std::time::Duration::from_millis(200),
            response: std::time::Duration::from_millis(50),
            write: std::time::Duration::from_millis(2000),
        }
    }
}

/// Which online store to open.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// In-process, durable in this directory.
    Embedded {
        path: std::path::PathBuf,
    },
    Redis {
        url: String,
        timeouts: RedisTimeouts,
    },
    /// Seed nodes of a Redis Cluster.
    RedisCluster {
        urls: Vec<String>,
        timeouts: RedisTimeouts,
    },
}

/// Opens the configured store.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn OnlineStore>, FeatureError> {
    Ok(match config {
        StoreConfig::Embedded { path } => Arc::new(EmbeddedStore::open(path)?),
        StoreConfig::Redis { url, timeouts } => Arc::new(RedisStore::connect_with(url, *timeouts).await?),
        StoreConfig::RedisCluster { urls, timeouts } => {
            Arc::new(RedisStore::connect_cluster_with(urls, *timeouts).await?)
        }
    })
}
