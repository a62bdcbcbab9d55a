//! A canary's state and where replicas share it: `CanaryStore`, with an embedded store (a
//! JSON file per canary under a state directory, so a rollback survives restarts), an
//! in-memory one (one process, nothing kept) and Redis (`redis_store.rs`).
//!
//! Every store keeps the same rule: a rolled-back canary stays rolled back, and an older
//! generation never overwrites a newer one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Transitions kept in a state's history.
const HISTORY_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStatus {
    /// Serving its current share and being judged.
    Running,
    /// Share 0 for good (until `bucket_version` is bumped).
    RolledBack,
    /// Reached 100 %.
    Promoted,
}

/// One change of a canary's share or status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub at_ms: u64,
    pub from_share: f64,
    pub to_share: f64,
    pub status: CanaryStatus,
    pub reason: String,
    /// The replica that decided it.
    pub replica: String,
}

/// What replicas agree on for one canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryState {
    pub experiment: String,
    pub status: CanaryStatus,
    /// The canary's share of covered units, 0..=1.
    pub share: f64,
    /// Bumped on every transition; the higher generation wins.
    pub generation: u64,
    pub updated_ms: u64,
    /// The latest transitions, oldest first.
    pub history: Vec<Transition>,
}

impl CanaryState {
    pub fn new(experiment: &str, share: f64, now_ms: u64) -> Self {
        CanaryState {
            experiment: experiment.to_string(),
            status: CanaryStatus::Running,
            share,
            generation: 0,
            updated_ms: now_ms,
            history: Vec::new(),
        }
    }

    /// The next state after `t`.
    pub fn transition(&self, t: Transition) -> Self {
        let mut next = self.clone();
        next.status = t.status;
        next.share = t.to_share;
        next.generation += 1;
        next.updated_ms = t.at_ms;
        next.history.push(t);
        if next.history.len() > HISTORY_LEN {
            next.history.remove(0);
        }
        next
    }

    /// Whether `self` replaces `other`: a rollback replaces anything but an earlier rollback
    /// (the first one stays); otherwise the higher generation wins.
    pub fn wins_over(&self, other: &CanaryState) -> bool {
        match (
            self.status == CanaryStatus::RolledBack,
            other.status == CanaryStatus::RolledBack,
        ) {
            (_, true) => false,
            (true, false) => true,
            (false, false) => self.generation > other.generation,
        }
    }
}

/// Where replicas share canary states; `key` is the experiment name and bucket version.
#[async_trait::async_trait]
pub trait CanaryStore: Send + Sync {
    async fn load(&self, key: &str) -> Result<Option<CanaryState>, StoreError>;
    /// Writes `state` when there is none yet or it wins over the stored one
    /// ([`CanaryState::wins_over`]); returns whether it was written.
    async fn save(&self, key: &str, state: &CanaryState) -> Result<bool, StoreError>;
}

/// One process, nothing kept across restarts.
#[derive(Default)]
pub struct MemoryCanaryStore {
    states: Mutex<HashMap<String, CanaryState>>,
}

#[async_trait::async_trait]
impl CanaryStore for MemoryCanaryStore {
    async fn load(&self, key: &str) -> Result<Option<CanaryState>, StoreError> {
        Ok(self.states.lock().expect("not poisoned").get(key).cloned())
    }

    async fn save(&self, key: &str, state: &CanaryState) -> Result<bool, StoreError> {
        let mut states = self.states.lock().expect("not poisoned");
        if states.get(key).is_some_and(|s| !state.wins_over(s)) {
            return Ok(false);
        }
        states.insert(key.to_string(), state.clone());
        Ok(true)
    }
}

/// A JSON file per canary, `<dir>/<key>.json`, replaced atomically (write, then rename).
pub struct EmbeddedCanaryStore {
    dir: PathBuf,
    /// Serialises this process's read-check-write cycles.
    write: tokio::sync::Mutex<()>,
}

impl EmbeddedCanaryStore {
    /// Uses (and creates) `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(EmbeddedCanaryStore {
            dir: dir.to_path_buf(),
            write: tokio::sync::Mutex::new(()),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    fn read(&self, key: &str) -> Result<Option<CanaryState>, StoreError> {
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Decode {
                    key: key.to_string(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }
}

#[async_trait::async_trait]
impl CanaryStore for EmbeddedCanaryStore {
    async fn load(&self, key: &str) -> Result<Option<CanaryState>, StoreError> {
        self.read(key)
    }

    async fn save(&self, key: &str, state: &CanaryState) -> Result<bool, StoreError> {
        let _guard = self.write.lock().await;
        if self.read(key)?.is_some_and(|s| !state.wins_over(&s)) {
            return Ok(false);
        }
        let path = self.path(key);
        let tmp = self.dir.join(format!(".{key}.json.tmp"));
        let bytes = serde_json::to_vec_pretty(state).expect("a canary state serialises");
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(true)
    }
}
