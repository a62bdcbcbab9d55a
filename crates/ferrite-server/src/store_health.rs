//! Whether the online store can serve now, as gRPC health, KServe `ServerReady` and the
//! `ferrite_online_store_up{store}` gauge show it.
//!
//! A background task asks the store (`OnlineStore::health`: a Redis PING) every
//! `features.health_interval_ms`, each check bounded by `features.health_timeout_ms`; a call
//! that finds the store unavailable (a feature read, a push, a pipeline's read: every one goes
//! through [`Reporting`]) starts a check at once instead of waiting for the next.
//! A check, not a failed call, decides: one slow read does not take the service out.
//!
//! While the store is down, `ferrite.v1.FeatureService` is NOT_SERVING (its reads cannot be
//! answered) and so is KServe `ServerReady`. `ferrite.v1.ScoringService` stays SERVING: its
//! pipelines answer their flagged fallback without features, which is what they are for.
//! Each transition is logged once (WARN with the reason going down, INFO coming back).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferrite_features::online::{ReadRow, RowKey, WriteOutcome, WriteRow};
use ferrite_features::{FeatureError, Micros, OnlineStore};
use tokio::sync::Notify;

/// The store's last known state, shared by the checker and the request path.
pub struct StoreHealth {
    up: AtomicBool,
    check_now: Notify,
    gauge: metrics::Gauge,
}

impl StoreHealth {
    /// A store that was just opened, so up.
    pub fn new(kind: &'static str) -> Self {
        let gauge = metrics::gauge!("ferrite_online_store_up", "store" => kind);
        gauge.set(1.0);
        StoreHealth {
            up: AtomicBool::new(true),
            check_now: Notify::new(),
            gauge,
        }
    }

    /// Whether the last check found the store serving.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Tells the checker what a call on the request path saw: an unavailable store starts a
    /// check now.
    pub fn saw(&self, error: &FeatureError) {
        // While down, only the periodic check can bring it back: failing calls add nothing.
        if matches!(error, FeatureError::Unavailable(_)) && self.is_up() {
            self.check_now.notify_one();
        }
    }

    /// Records a check's result; returns whether it changed the state.
    fn record(&self, up: bool) -> bool {
        self.gauge.set(if up { 1.0 } else { 0.0 });
        self.up.swap(up, Ordering::AcqRel) != up
    }
}

/// The online store as the server's calls use it: each error it answers is shown to
/// [`StoreHealth::saw`], so that an outage seen by any caller starts a check at once.
pub struct Reporting {
    inner: Arc<dyn OnlineStore>,
    health: Arc<StoreHealth>,
}

impl Reporting {
    pub fn new(inner: Arc<dyn OnlineStore>, health: Arc<StoreHealth>) -> Self {
        Reporting { inner, health }
    }

    fn seen<T>(&self, result: Result<T, FeatureError>) -> Result<T, FeatureError> {
        if let Err(e) = &result {
            self.health.saw(e);
        }
        result
    }
}

#[async_trait::async_trait]
impl OnlineStore for Reporting {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn health(&self) -> Result<(), FeatureError> {
        self.inner.health().await
    }

    async fn read(&self, keys: &[RowKey]) -> Result<Vec<Option<ReadRow>>, FeatureError> {
        self.seen(self.inner.read(keys).await)
    }

    async fn write(&self, rows: Vec<WriteRow>) -> Result<Vec<WriteOutcome>, FeatureError> {
        self.seen(self.inner.write(rows).await)
    }

    async fn watermark(&self, view: &str) -> Result<Option<Micros>, FeatureError> {
        self.seen(self.inner.watermark(view).await)
    }

    async fn set_watermark(&self, view: &str, ts: Micros) -> Result<(), FeatureError> {
        self.seen(self.inner.set_watermark(view, ts).await)
    }
}

/// Checks `store` until `stop` resolves, reporting each change to `on_change` (the gRPC
/// health of the feature service).
pub async fn watch<F, Fut>(
    store: Arc<dyn OnlineStore>,
    health: Arc<StoreHealth>,
    every: Duration,
    timeout: Duration,
    mut on_change: F,
    stop: impl std::future::Future<Output = ()>,
) where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {}
            _ = health.check_now.notified() => {}
        }
        let result = match tokio::time::timeout(timeout, store.health()).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer within {} ms (features.health_timeout_ms)",
                timeout.as_millis()
            )),
        };
        let up = result.is_ok();
        if !health.record(up) {
            continue;
        }
        match result {
            Ok(()) => tracing::info!(
                store = store.kind(),
                "online store is back: feature service SERVING"
            ),
            Err(reason) => tracing::warn!(
                store = store.kind(),
                reason = %reason,
                "online store is down: feature service NOT_SERVING until it answers again"
            ),
        }
        on_change(up).await;
    }
}
