//! Canary states in Redis: a hash per canary (`ferrite:canary:<key>`) with the state as JSON,
//! its generation and status. Writes go through a script that keeps
//! [`CanaryState::wins_over`]'s rule, so replicas racing each other converge.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::StoreError;
use crate::state::{CanaryState, CanaryStore};

const SAVE: &str = r#"
if redis.call('HGET', KEYS[1], 'status') == 'rolled_back' then return 0 end
if ARGV[2] ~= 'rolled_back' then
  local generation = tonumber(redis.call('HGET', KEYS[1], 'generation') or '-1')
  if tonumber(ARGV[1]) <= generation then return 0 end
end
redis.call('HSET', KEYS[1], 'generation', ARGV[1], 'status', ARGV[2], 'state', ARGV[3])
return 1
"#;

pub struct RedisCanaryStore {
    conn: ConnectionManager,
    save: redis::Script,
}

impl RedisCanaryStore {
    /// Connects to `url` (`redis://host:port/db`); fails if the server does not answer.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(RedisCanaryStore {
            conn,
            save: redis::Script::new(SAVE),
        })
    }

    fn key(key: &str) -> String {
        format!("ferrite:canary:{key}")
    }
}

#[async_trait::async_trait]
impl CanaryStore for RedisCanaryStore {
    async fn load(&self, key: &str) -> Result<Option<CanaryState>, StoreError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = redis::cmd("HGET")
            .arg(Self::key(key))
            .arg("state")
            .query_async(&mut conn)
            .await?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|source| StoreError::Decode {
                key: key.to_string(),
                source,
            })
        })
        .transpose()
    }

    async fn save(&self, key: &str, state: &CanaryState) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let status = serde_json::to_value(state.status).expect("a status serialises");
        let json = serde_json::to_string(state).expect("a canary state serialises");
        let written: i64 = self
            .save
            .key(Self::key(key))
            .arg(state.generation)
            .arg(status.as_str().unwrap_or_default())
            .arg(json)
            .invoke_async(&mut conn)
            .await?;
        Ok(written == 1)
    }
}
