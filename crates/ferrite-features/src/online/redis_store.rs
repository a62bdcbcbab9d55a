//! The Redis online store, through a reconnecting `ConnectionManager`.

use redis::aio::ConnectionManager;

use super::OnlineStore;
use crate::FeatureError;

pub struct RedisStore {
    conn: ConnectionManager,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`) and fails if the server does not answer.
    pub async fn connect(url: &str) -> Result<Self, FeatureError> {
        let client = redis::Client::open(url)
            .map_err(|e| FeatureError::Unavailable(format!("bad Redis URL {url:?}: {e}")))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(|e| FeatureError::Unavailable(format!("cannot connect to {url}: {e}")))?;
        Ok(RedisStore { conn })
    }

    /// A connection handle; clones share the one multiplexed connection.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

#[async_trait::async_trait]
impl OnlineStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn health(&self) -> Result<(), FeatureError> {
        let mut conn = self.conn.clone();
        let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(FeatureError::Unavailable(format!("PING answered {pong:?}")))
        }
    }
}
