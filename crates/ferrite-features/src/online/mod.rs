//! Online stores: the latest feature values per entity, read on the request path.

mod redis_store;

pub use redis_store::RedisStore;

use crate::FeatureError;

/// One online store. Callers hold `Arc<dyn OnlineStore>`; only the factory names a backend.
#[async_trait::async_trait]
pub trait OnlineStore: Send + Sync {
    /// A short name for logs and metrics: "embedded", "redis", "redis_cluster".
    fn kind(&self) -> &'static str;
    /// Succeeds when the store can serve reads now.
    async fn health(&self) -> Result<(), FeatureError>;
}
