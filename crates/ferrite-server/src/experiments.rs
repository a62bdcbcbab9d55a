//! Starts the experiments of `experiments.directory`: canary states in the configured store
//! (Redis when replicas share one, else files), the sync task that adopts other replicas'
//! verdicts, the exposure log and the shadow runner.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferrite_experiments::exposure::{ExposureLog, ExposureLogConfig};
use ferrite_experiments::{
    Assigner, CanaryController, CanaryStore, EmbeddedCanaryStore, RedisCanaryStore, SystemClock,
};
use ferrite_models::ModelRepository;
use ferrite_pipelines::Experiments;

use crate::config::{Config, OnlineStoreKind, StateStoreKind};

/// The experiments to run, or `None` when the directory declares none.
pub async fn start(
    config: &Config,
    models: &Arc<ModelRepository>,
) -> anyhow::Result<Option<Arc<Experiments>>> {
    let c = &config.experiments;
    if !c.directory.is_dir() {
        return Ok(None);
    }
    let dir = c.directory.clone();
    let configs = tokio::task::spawn_blocking(move || ferrite_experiments::config::load_dir(&dir))
        .await?
        .context("loading the experiments (experiments.directory)")?;
    if configs.is_empty() {
        return Ok(None);
    }
    let redis = match c.state_store {
        StateStoreKind::Redis => true,
        StateStoreKind::Embedded => false,
        StateStoreKind::Auto => config.features.online_store == OnlineStoreKind::Redis,
    };
    let store: Arc<dyn CanaryStore> = if redis {
        let url = if c.redis_url.is_empty() {
            &config.features.redis_url
        } else {
            &c.redis_url
        };
        Arc::new(
            RedisCanaryStore::connect(url)
                .await
                .with_context(|| format!("connecting to the canary state store at {url}"))?,
        )
    } else {
        let dir = c.state_dir.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || EmbeddedCanaryStore::open(&dir))
                .await?
                .context("opening experiments.state_dir")?,
        )
    };
    let replica = format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "ferrite".into()),
        std::process::id()
    );
    let canaries = CanaryController::new(&configs, store, Arc::new(SystemClock), &replica);
    // Start from the stored verdicts: a rolled-back canary stays rolled back across restarts.
    canaries.sync_now().await;
    canaries.spawn_sync(Duration::from_millis(c.sync_interval_ms.max(10)));
    let names: Vec<String> = configs.iter().map(|e| e.name.clone()).collect();
    let assigner = Arc::new(Assigner::new(configs, Some(canaries.clone()))?);
    let exposures = if c.exposures_dir.as_os_str().is_empty() {
        None
    } else {
        let log_config = ExposureLogConfig {
            dir: c.exposures_dir.clone(),
            flush_interval_ms: c.flush_interval_ms,
            ..ExposureLogConfig::default()
        };
        Some(Arc::new(ExposureLog::start(log_config).context(
            "starting the exposure log (experiments.exposures_dir)",
        )?))
    };
    tracing::info!(experiments = ?names, shared_state = redis, "experiments ready");
    Ok(Some(Experiments::new(
        assigner,
        canaries,
        exposures,
        models.clone(),
        c.shadow_queue,
    )))
}
