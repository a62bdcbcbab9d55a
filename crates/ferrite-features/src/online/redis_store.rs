//! The Redis online store, through a reconnecting `ConnectionManager`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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
        // Fail fast when the server is not there at start; once connected, the manager
        // reconnects in the background.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(Duration::from_secs(2)));
        let conn = ConnectionManager::new_with_config(client, config)
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
