//! The Redis and Redis Cluster online stores.
//!
//! Key layout, version 1 (documented in the README):
//!
//! ```text
//! ferrite:v1:{<entity key>}:<view>    a row, encoded by `codec` (header + values)
//! ferrite:v1:watermark:<view>         end of the last materialized window, µs, decimal
//! ```
//!
//! `<entity key>` is the canonical join-key text (`user_id=42`); inside braces it is the
//! Redis Cluster hash tag, so all views of one entity live in one slot. Rows expire through
//! Redis (`PXAT` event time + TTL) and are also checked against the TTL on read.
//!
//! Reads are one `MGET` (split per slot by the cluster client). Writes go through a Lua
//! script that keeps the newer row by comparing the 32-byte time header, in batches: one
//! script call per batch on a single server, one per entity (hash slot) on a cluster.
//!
//! Every call is bounded, the time it waits behind earlier calls on the multiplexed
//! connection included: reads (and health, watermarks) by `RedisTimeouts::response`, far
//! inside the serving budget; write scripts, which carry up to `WRITE_BATCH` rows, by
//! `RedisTimeouts::write`, and only a few are in flight at once.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;

use super::codec::{decode_row, encode_row};
use super::{OnlineStore, ReadRow, RedisTimeouts, RowKey, StoredRow, WriteOutcome, WriteRow, check_answers};
use crate::FeatureError;
use crate::value::{Micros, now_micros};

pub const KEY_PREFIX: &str = "ferrite:v1:";

/// Writes each KEYS[i] = ARGV[2i-1] unless the stored row's time header is newer;
/// ARGV[2i] is the expiry in Unix ms (0 = none). Returns one answer per key: 1 written,
/// 0 not (a newer row is stored).
const WRITE_NEWER: &str = r#"
local out = {}
for i = 1, #KEYS do
  local v = ARGV[2 * i - 1]
  local exp = tonumber(ARGV[2 * i])
  local cur = redis.call('GETRANGE', KEYS[i], 0, 31)
  if cur == '' or cur <= string.sub(v, 1, 32) then
    if exp > 0 then
      redis.call('SET', KEYS[i], v, 'PXAT', exp)
    else
      redis.call('SET', KEYS[i], v)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

/// Keys per script call on a single server.
const WRITE_BATCH: usize = 512;

/// Script calls in flight at once: on one server (batches of `WRITE_BATCH` keys), and on a
/// cluster (one entity each, spread over the nodes). Each call's response timeout includes
/// its wait behind the calls sent before it.
const IN_FLIGHT_SINGLE: usize = 4;
const IN_FLIGHT_CLUSTER: usize = 64;

pub fn row_key(key: &RowKey) -> String {
    let mut s = String::with_capacity(KEY_PREFIX.len() + key.entity.len() + key.view.len() + 3);
    push_row_key(&mut s, key);
    s
}

/// Appends `row_key(key)` to `out`.
fn push_row_key(out: &mut String, key: &RowKey) {
    out.push_str(KEY_PREFIX);
    out.push('{');
    out.push_str(&key.entity);
    out.push_str("}:");
    out.push_str(&key.view);
}

fn watermark_key(view: &str) -> String {
    format!("{KEY_PREFIX}watermark:{view}")
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub struct RedisStore {
    conn: Conn,
    script: Arc<redis::Script>,
    /// Bounds every call but the write scripts (those the client's own timeout bounds).
    response_timeout: Duration,
}

/// The client's own per-call timeout: the longer of the two, so that it bounds write
/// scripts; reads are bounded by `RedisTimeouts::response` around each call.
fn client_timeout(timeouts: RedisTimeouts) -> Duration {
    timeouts.write.max(timeouts.response)
}

/// `TCP_NODELAY`: the client's default leaves Nagle's algorithm on, which holds back a
/// request written while an earlier one on the multiplexed connection is unacknowledged.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

fn unavailable(what: &str, e: redis::RedisError) -> FeatureError {
    FeatureError::Unavailable(format!("{what}: {e}"))
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`) with the default timeouts and fails if the
    /// server does not answer.
    pub async fn connect(url: &str) -> Result<Self, FeatureError> {
        Self::connect_with(url, RedisTimeouts::default()).await
    }

    /// Connects to `url` (`redis://host:port/db`) and fails if the server does not answer.
    pub async fn connect_with(url: &str, timeouts: RedisTimeouts) -> Result<Self, FeatureError> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| FeatureError::Unavailable(format!("bad Redis URL {url:?}: {e}")))?
            .set_tcp_settings(tcp_settings());
        let client = redis::Client::open(info)
            .map_err(|e| FeatureError::Unavailable(format!("bad Redis URL {url:?}: {e}")))?;
        // Fail fast when the server is not there at start; once connected, the manager
        // reconnects in the background.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(client_timeout(timeouts)));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| unavailable(&format!("cannot connect to {url}"), e))?;
        Ok(RedisStore {
            conn: Conn::Single(conn),
            script: Arc::new(redis::Script::new(WRITE_NEWER)),
            response_timeout: timeouts.response,
        })
    }

    /// Connects to a Redis Cluster through any of its nodes, with the default timeouts.
    pub async fn connect_cluster(urls: &[String]) -> Result<Self, FeatureError> {
        Self::connect_cluster_with(urls, RedisTimeouts::default()).await
    }

    /// Connects to a Redis Cluster through any of its nodes. The response timeout bounds a
    /// whole call, retries and redirections included.
    pub async fn connect_cluster_with(
        urls: &[String],
        timeouts: RedisTimeouts,
    ) -> Result<Self, FeatureError> {
        let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
            .connection_timeout(timeouts.connect)
            .response_timeout(client_timeout(timeouts))
            .retries(2)
            .tcp_settings(tcp_settings())
            .build()
            .map_err(|e| unavailable(&format!("bad Redis Cluster nodes {urls:?}"), e))?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(|e| unavailable(&format!("cannot connect to the Redis Cluster at {urls:?}"), e))?;
        Ok(RedisStore {
            conn: Conn::Cluster(conn),
            script: Arc::new(redis::Script::new(WRITE_NEWER)),
            response_timeout: timeouts.response,
        })
    }

    /// A connection handle on a single server; clones share the one multiplexed connection.
    pub fn connection(&self) -> Option<ConnectionManager> {
        match &self.conn {
            Conn::Single(c) => Some(c.clone()),
            Conn::Cluster(_) => None,
        }
    }
}

/// Runs one command, failing when no answer comes within `limit`.
async fn query<T: redis::FromRedisValue, C: ConnectionLike + Send>(
    cmd: &redis::Cmd,
    conn: &mut C,
    limit: Duration,
) -> Result<T, FeatureError> {
    match tokio::time::timeout(limit, cmd.query_async(conn)).await {
        Ok(answer) => answer.map_err(|e| unavailable("Redis", e)),
        Err(_) => Err(FeatureError::Unavailable(format!(
            "Redis: no answer within {} ms (features.redis_response_timeout_ms)",
            limit.as_millis()
        ))),
    }
}

/// One row to write: key, encoded row, expiry in Unix ms (0 = none).
type Batched = (String, Vec<u8>, i64);

/// Runs the write script on one batch; one answer per key (1 written, 0 superseded).
async fn run_script<C: ConnectionLike + Send>(
    script: &redis::Script,
    conn: &mut C,
    batch: &[(usize, Batched)],
) -> Result<Vec<i64>, FeatureError> {
    let mut inv = script.prepare_invoke();
    for (_, (key, value, exp)) in batch {
        inv.key(key).arg(value.as_slice()).arg(*exp);
    }
    inv.invoke_async(conn)
        .await
        .map_err(|e| unavailable("Redis write", e))
}

#[async_trait::async_trait]
impl OnlineStore for RedisStore {
    fn kind(&self) -> &'static str {
        match self.conn {
            Conn::Single(_) => "redis",
            Conn::Cluster(_) => "redis_cluster",
        }
    }

    async fn health(&self) -> Result<(), FeatureError> {
        let cmd = redis::cmd("PING");
        let pong: String = match self.conn.clone() {
            Conn::Single(mut c) => query(&cmd, &mut c, self.response_timeout).await?,
            Conn::Cluster(mut c) => query(&cmd, &mut c, self.response_timeout).await?,
        };
        if pong == "PONG" {
            Ok(())
        } else {
            Err(FeatureError::Unavailable(format!("PING answered {pong:?}")))
        }
    }

    async fn read(&self, keys: &[RowKey]) -> Result<Vec<Option<ReadRow>>, FeatureError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        let mut key = String::new();
        for k in keys {
            key.clear();
            push_row_key(&mut key, k);
            cmd.arg(key.as_str());
        }
        let values: Vec<Option<Vec<u8>>> = match self.conn.clone() {
            Conn::Single(mut c) => query(&cmd, &mut c, self.response_timeout).await?,
            Conn::Cluster(mut c) => query(&cmd, &mut c, self.response_timeout).await?,
        };
        check_answers(self.kind(), "read", keys.len(), values.len())?;
        Ok(values
            .into_iter()
            .map(|v| {
                v.map(|bytes| {
                    ReadRow::Owned(decode_row(&bytes).unwrap_or(StoredRow {
                        event_ts: 0,
                        created_ts: 0,
                        fingerprint: 0,
                        values: Vec::new(),
                    }))
                })
            })
            .collect())
    }

    async fn write(&self, rows: Vec<WriteRow>) -> Result<Vec<WriteOutcome>, FeatureError> {
        let now_ms = now_micros() / 1000;
        let mut outcomes = vec![WriteOutcome::Expired; rows.len()];
        // (entity, (row index, (key, value, expiry ms))): the entity is the hash tag, so rows
        // of one entity share a slot.
        let mut items: Vec<(Arc<str>, (usize, Batched))> = Vec::with_capacity(rows.len());
        for (at, w) in rows.into_iter().enumerate() {
            let exp_ms = w.expire_at.map(|t: Micros| t.div_euclid(1000)).unwrap_or(0);
            if w.expire_at.is_some() && exp_ms <= now_ms {
                // Already expired: Redis would drop it at once.
                continue;
            }
            let key = row_key(&w.key);
            items.push((w.key.entity, (at, (key, encode_row(&w.row), exp_ms))));
        }
        let (batches, in_flight): (Vec<Vec<(usize, Batched)>>, usize) = match &self.conn {
            Conn::Single(_) => {
                let mut flat = items.into_iter().map(|(_, item)| item).peekable();
                let mut batches = Vec::new();
                while flat.peek().is_some() {
                    batches.push(flat.by_ref().take(WRITE_BATCH).collect());
                }
                (batches, IN_FLIGHT_SINGLE)
            }
            // A script may only touch keys of one slot: one batch per entity.
            Conn::Cluster(_) => {
                let mut groups: std::collections::HashMap<Arc<str>, Vec<(usize, Batched)>> =
                    std::collections::HashMap::new();
                for (entity, item) in items {
                    groups.entry(entity).or_default().push(item);
                }
                (groups.into_values().collect(), IN_FLIGHT_CLUSTER)
            }
        };
        let kind = self.kind();
        // Sent in order, so rows of one key in different batches compete in order.
        let answers: Vec<(Vec<usize>, Vec<i64>)> = futures::stream::iter(batches)
            .map(|b| {
                let conn = self.conn.clone();
                let script = self.script.clone();
                async move {
                    let answers = match conn {
                        Conn::Single(mut c) => run_script(&script, &mut c, &b).await,
                        Conn::Cluster(mut c) => run_script(&script, &mut c, &b).await,
                    }?;
                    check_answers(kind, "write", b.len(), answers.len())?;
                    Ok::<_, FeatureError>((b.into_iter().map(|(at, _)| at).collect(), answers))
                }
            })
            .buffered(in_flight)
            .try_collect()
            .await?;
        for (batch, answers) in answers {
            for (at, answer) in batch.into_iter().zip(answers) {
                outcomes[at] = if answer == 1 {
                    WriteOutcome::Written
                } else {
                    WriteOutcome::Superseded
                };
            }
        }
        Ok(outcomes)
    }

    async fn watermark(&self, view: &str) -> Result<Option<Micros>, FeatureError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(watermark_key(view));
        let v: Option<i64> = match self.conn.clone() {
            Conn::Single(mut c) => query(&cmd, &mut c, self.response_timeout).await?,
            Conn::Cluster(mut c) => query(&cmd, &mut c, self.response_timeout).await?,
        };
        Ok(v)
    }

    async fn set_watermark(&self, view: &str, ts: Micros) -> Result<(), FeatureError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(watermark_key(view)).arg(ts);
        match self.conn.clone() {
            Conn::Single(mut c) => query::<(), _>(&cmd, &mut c, self.response_timeout).await,
            Conn::Cluster(mut c) => query::<(), _>(&cmd, &mut c, self.response_timeout).await,
        }
    }
}
