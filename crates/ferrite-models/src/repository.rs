//! The model repository: `<root>/<name>/config.toml` and `<root>/<name>/<version>/<file>`.
//!
//! Loaded models live in an `ArcSwap` snapshot: a request takes the snapshot once and keeps
//! the version it started on even if a load or unload swaps the map meanwhile.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::queue::{Admission, BatchQueue, deadline_passed};
use crate::stats::{Rejection, VersionStats};
use crate::{BackendKind, ModelBackend, ModelConfig, ModelError, OnnxModel, OnnxRuntime, Tensor};

/// One loaded version of a model.
pub struct LoadedVersion {
    pub version: u64,
    pub backend: Arc<dyn ModelBackend>,
    pub stats: Arc<VersionStats>,
    /// The config requests to this version are checked against: the model's, with each `-1`
    /// dimension that this version's ONNX file fixes narrowed to the file's size.
    pub config: Arc<ModelConfig>,
    /// `model "name" version N`, for messages.
    label: String,
    /// The dynamic-batching queue, when the config asks for one.
    queue: Option<BatchQueue>,
    /// Without a queue: the calls waiting for or running on the blocking pool, bounded by
    /// `DEFAULT_MAX_QUEUE_SIZE` (inline runs hold no place: they never wait).
    direct: Arc<Admission>,
    /// Running mean (exponentially weighted, ns) of this version's direct runs, each run
    /// counted as at most `2 * INLINE_BELOW_NS`; `u64::MAX` until the first run. Decides where
    /// the next direct run goes (see `INLINE_BELOW_NS`).
    compute_ns: std::sync::atomic::AtomicU64,
}

/// A direct (unbatched) run whose model usually computes in less than this runs on the
/// calling async worker: handing it to the blocking pool and back costs more (two thread
/// wake-ups, ~30 µs of CPU on a small machine) than the model itself. The example 200-tree
/// GBDT takes ~12 µs with warm caches but 23 µs (p50) to 34 µs (p90) when the network stack
/// has run in between, as in a server, and more when the host preempts it: at 50 µs half of
/// its runs went to the pool. Slower models (or a model that becomes slower, e.g. with big
/// batches) go to the pool; 100 µs is the longest stretch tokio advises between awaits.
const INLINE_BELOW_NS: u64 = 100_000;

/// The running mean after one more run that took `took`.
fn next_mean(old: u64, took: std::time::Duration) -> u64 {
    // Clamped so that one run stalled by the OS (a preemption costs milliseconds) moves a fast
    // model's mean by a few µs instead of sending its next dozens of runs to the pool; a model
    // that is really slow still settles above the threshold.
    let x = took.as_nanos().min(2 * INLINE_BELOW_NS as u128) as u64;
    if old == u64::MAX { x } else { old - old / 8 + x / 8 }
}

impl LoadedVersion {
    fn new(
        name: &str,
        version: u64,
        config: Arc<ModelConfig>,
        backend: Arc<dyn ModelBackend>,
    ) -> Result<LoadedVersion, ModelError> {
        let label = format!("model {name:?} version {version}");
        let stats = Arc::new(VersionStats::new(name, version));
        let queue = match (&config.dynamic_batching, config.max_batch_size) {
            (Some(batching), max) if max > 0 => Some(BatchQueue::start(
                label.clone(),
                backend.clone(),
                stats.clone(),
                max,
                batching,
            )?),
            _ => None,
        };
        let direct = Arc::new(Admission::new(
            label.clone(),
            crate::config::DEFAULT_MAX_QUEUE_SIZE,
            "the fixed limit of a version without dynamic_batching",
            stats.clone(),
        ));
        Ok(LoadedVersion {
            version,
            backend,
            stats,
            config,
            label,
            queue,
            direct,
            compute_ns: std::sync::atomic::AtomicU64::new(u64::MAX),
        })
    }

    /// Whether the version can answer: false while its batching thread is dead (the next
    /// call starts a new one).
    pub fn is_ready(&self) -> bool {
        self.queue.as_ref().is_none_or(BatchQueue::is_alive)
    }

    /// Requests accepted and not yet answered (queued or running; inline runs not counted).
    pub fn queue_depth(&self) -> usize {
        self.queue.as_ref().map_or(self.direct.held(), BatchQueue::depth)
    }

    /// Runs the backend here, recording the run in the statistics and the running mean. A
    /// panic in the backend is caught, counted and answered as an error.
    fn run_direct(&self, inputs: &[Tensor], batched: bool) -> Result<Vec<Tensor>, ModelError> {
        use std::sync::atomic::Ordering;
        let compute = std::time::Instant::now();
        let outputs =
            catch_unwind(AssertUnwindSafe(|| self.backend.infer(inputs))).unwrap_or_else(|payload| {
                Err(crate::queue::panicked(&self.label, &self.stats, payload.as_ref()))
            });
        let took = compute.elapsed();
        let rows = if batched { inputs[0].shape[0] } else { 1 };
        self.stats.record_execution(rows, took);
        let old = self.compute_ns.load(Ordering::Relaxed);
        let mean = next_mean(old, took);
        self.compute_ns.store(mean, Ordering::Relaxed);
        outputs
    }

    fn runs_inline(&self) -> bool {
        self.compute_ns.load(std::sync::atomic::Ordering::Relaxed) < INLINE_BELOW_NS
    }

    /// A run without a batching queue: inline when the model is fast (see `INLINE_BELOW_NS`),
    /// else on the blocking pool, where it starts only if `deadline` has not passed and is
    /// waited for until `deadline` at the latest.
    async fn infer_direct(
        self: &Arc<Self>,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Tensor>, ModelError> {
        let batched = self.config.max_batch_size > 0;
        if self.runs_inline() {
            return self.run_direct(&inputs, batched);
        }
        // A model run of unknown or real cost: off the async workers.
        let ticket = self.direct.admit()?;
        let run = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _ticket = ticket;
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Err(deadline_passed(
                    &run.label,
                    "waiting for a thread; it was not run",
                ));
            }
            run.run_direct(&inputs, batched)
        });
        let joined = match deadline {
            None => task.await,
            // A run already started finishes on its thread; its answer is dropped.
            Some(at) => tokio::time::timeout_at(at.into(), task)
                .await
                .map_err(|_| deadline_passed(&self.label, "running"))?,
        };
        joined.unwrap_or_else(|e| Err(ModelError::Inference(format!("inference task failed: {e}"))))
    }
}

/// A model with the versions its policy serves.
pub struct LoadedModel {
    pub name: String,
    pub config: Arc<ModelConfig>,
    /// Highest version last.
    pub versions: BTreeMap<u64, Arc<LoadedVersion>>,
}

impl LoadedModel {
    /// `""` is the highest version; a number or a label (`stable`, `canary`) picks one.
    pub fn version(&self, requested: &str) -> Result<&Arc<LoadedVersion>, ModelError> {
        let not_found = || {
            ModelError::NotFound(format!(
                "model {:?} has no ready version {requested:?}; ready: {:?}, labels: {:?}",
                self.name,
                self.versions.keys().collect::<Vec<_>>(),
                self.config.labels
            ))
        };
        if requested.is_empty() {
            return self.versions.values().next_back().ok_or_else(not_found);
        }
        let number = match requested.parse::<u64>() {
            Ok(n) => n,
            Err(_) => *self.config.labels.get(requested).ok_or_else(not_found)?,
        };
        self.versions.get(&number).ok_or_else(not_found)
    }
}

/// Per model name, whether its (re)load succeeded.
pub type LoadResults = Vec<(String, Result<(), ModelError>)>;

/// What the repository index reports for one model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// Empty when the model could not be read far enough to know its versions.
    pub version: String,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    pub reason: String,
}

pub struct ModelRepository {
    root: PathBuf,
    runtime: OnnxRuntime,
    models: ArcSwap<BTreeMap<String, Arc<LoadedModel>>>,
    /// Why models that are not loaded failed to load, by name.
    failures: Mutex<BTreeMap<String, String>>,
    /// Serialises loads and unloads, so two never race on the same snapshot.
    writer: Mutex<()>,
    /// What each model's files looked like when last loaded (or tried), for hot reload.
    seen: Mutex<BTreeMap<String, Fingerprint>>,
}

/// The config file, every version's weights file and the warm-up data files, with their sizes
/// and modification times: when this changes, the model is reloaded.
type Fingerprint = Vec<(PathBuf, u64, Option<std::time::SystemTime>)>;

impl ModelRepository {
    pub fn new(root: impl Into<PathBuf>, runtime: OnnxRuntime) -> Self {
        ModelRepository {
            root: root.into(),
            runtime,
            models: ArcSwap::from_pointee(BTreeMap::new()),
            failures: Mutex::new(BTreeMap::new()),
            writer: Mutex::new(()),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every model directory under the root (those with a `config.toml`), by name.
    pub fn available(&self) -> Result<Vec<String>, ModelError> {
        let entries = std::fs::read_dir(&self.root).map_err(|e| ModelError::Config {
            path: self.root.clone(),
            message: format!("cannot list the model repository: {e}"),
        })?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("config.toml").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Loads every model found; a model that fails is logged and reported by `index`, and
    /// does not stop the others.
    pub fn load_all(&self) -> Result<LoadResults, ModelError> {
        Ok(self
            .available()?
            .into_iter()
            .map(|name| {
                let result = self.load(&name).map(|_| ());
                (name, result)
            })
            .collect())
    }

    /// Loads (or reloads) a model: reads its config, loads the versions its policy selects,
    /// and only then swaps it in. If anything fails, the versions already serving stay.
    pub fn load(&self, name: &str) -> Result<Arc<LoadedModel>, ModelError> {
        check_name(name)?;
        if !self.root.join(name).join("config.toml").is_file() {
            return Err(ModelError::NotFound(format!(
                "no model {name:?} in the repository {} (expected {name}/config.toml there)",
                self.root.display()
            )));
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let fingerprint = self.fingerprint(name);
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), fingerprint);
        match self.read_model(name) {
            Ok(model) => {
                let model = Arc::new(model);
                let mut next = BTreeMap::clone(&self.models.load());
                next.insert(name.to_string(), model.clone());
                self.models.store(Arc::new(next));
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
                tracing::info!(model = name, versions = ?model.versions.keys().collect::<Vec<_>>(), "model ready");
                Ok(model)
            }
            Err(e) => {
                tracing::error!(model = name, error = %e, "model failed to load; versions already serving stay");
                metrics::counter!("ferrite_model_load_failures_total", "model" => name.to_string())
                    .increment(1);
                self.failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_string(), e.to_string());
                Err(e)
            }
        }
    }

    /// Stops serving a model. Requests already running finish on the version they hold.
    pub fn unload(&self, name: &str) -> Result<(), ModelError> {
        check_name(name)?;
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::clone(&self.models.load());
        if next.remove(name).is_none() {
            return Err(ModelError::NotFound(format!("model {name:?} is not loaded")));
        }
        // The fingerprint stays: hot reload brings the model back only if its files change.
        self.models.store(Arc::new(next));
        tracing::info!(model = name, "model unloaded");
        Ok(())
    }

    /// Hot reload: loads models whose files changed since they were last loaded (a new
    /// version, new weights, a new config) and models that appeared; unloads models whose
    /// directory is gone. A failed reload leaves the versions already serving in place.
    pub fn reload_changed(&self) -> LoadResults {
        let Ok(available) = self.available() else {
            return Vec::new();
        };
        let mut results = Vec::new();
        let gone: Vec<String> = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.keys().filter(|n| !available.contains(n)).cloned().collect()
        };
        for name in gone {
            self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
            if self.models.load().contains_key(&name) {
                results.push((name.clone(), self.unload(&name)));
            }
        }
        for name in available {
            let changed = {
                let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.get(&name) != Some(&self.fingerprint(&name))
            };
            if changed {
                tracing::info!(model = %name, "model files changed: reloading");
                let result = self.load(&name).map(|_| ());
                results.push((name, result));
            }
        }
        results
    }

    fn fingerprint(&self, name: &str) -> Fingerprint {
        let dir = self.root.join(name);
        let config = dir.join("config.toml");
        let mut files = vec![config.clone()];
        if let Ok(c) = ModelConfig::from_file(&config) {
            let mut versions = versions_on_disk(&dir).unwrap_or_default();
            versions.sort_unstable();
            files.extend(
                versions
                    .iter()
                    .map(|v| dir.join(v.to_string()).join(c.model_filename())),
            );
            files.extend(crate::warmup::files(&c).map(|f| dir.join(f)));
        }
        files
            .into_iter()
            .map(|f| {
                let meta = std::fs::metadata(&f).ok();
                let size = meta.as_ref().map_or(0, |m| m.len());
                let modified = meta.and_then(|m| m.modified().ok());
                (f, size, modified)
            })
            .collect()
    }

    /// Every loaded model, by name.
    pub fn loaded(&self) -> Vec<Arc<LoadedModel>> {
        self.models.load().values().cloned().collect()
    }

    /// A loaded model by name.
    pub fn get(&self, name: &str) -> Result<Arc<LoadedModel>, ModelError> {
        if let Some(model) = self.models.load().get(name) {
            // Only checked names are ever loaded: a hit needs no check.
            return Ok(model.clone());
        }
        check_name(name)?;
        self.models.load().get(name).cloned().ok_or_else(|| {
            let reason = self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned();
            match reason {
                Some(reason) => ModelError::NotFound(format!("model {name:?} is not ready: {reason}")),
                None => ModelError::NotFound(format!("no model named {name:?} is loaded")),
            }
        })
    }

    /// Every loaded version, then every model that failed to load.
    pub fn index(&self) -> Vec<IndexEntry> {
        let mut entries: Vec<IndexEntry> = self
            .models
            .load()
            .values()
            .flat_map(|m| {
                m.versions.values().map(|v| {
                    let ready = v.is_ready();
                    IndexEntry {
                        name: m.name.clone(),
                        version: v.version.to_string(),
                        state: if ready { "READY" } else { "UNAVAILABLE" },
                        reason: if ready {
                            String::new()
                        } else {
                            "its batching thread stopped; the next inference call starts a new one".into()
                        },
                    }
                })
            })
            .collect();
        let loaded = self.models.load();
        for (name, reason) in self.failures.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if !loaded.contains_key(name) {
                entries.push(IndexEntry {
                    name: name.clone(),
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: reason.clone(),
                });
            }
        }
        entries
    }

    /// Checks `inputs` against the model's config, then runs them on the requested version,
    /// through its batching queue if it has one. Returns the version that ran and the outputs.
    pub async fn infer(
        &self,
        name: &str,
        version: &str,
        inputs: Vec<Tensor>,
    ) -> Result<(u64, Vec<Tensor>), ModelError> {
        self.infer_until(name, version, inputs, None).await
    }

    /// [`ModelRepository::infer`] for a caller with a deadline: a call whose deadline passes
    /// before its answer gets `DeadlineExceeded` (counted in
    /// `ferrite_model_rejected_total{reason="deadline"}`), and a request still waiting for the
    /// model then is not run.
    pub async fn infer_until(
        &self,
        name: &str,
        version: &str,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<(u64, Vec<Tensor>), ModelError> {
        let model = self.get(name)?;
        let loaded = model.version(version)?.clone();
        let start = Instant::now();
        let result = match crate::validate::check_inputs(&loaded.config, &inputs) {
            Err(e) => Err(e),
            Ok(()) if deadline.is_some_and(|d| d <= start) => Err(deadline_passed(
                &loaded.label,
                "on its way to the model; it was not run",
            )),
            Ok(()) => match &loaded.queue {
                Some(queue) => queue.infer(inputs, deadline).await,
                None => loaded.infer_direct(inputs, deadline).await,
            },
        };
        if let Err(ModelError::DeadlineExceeded(_)) = &result {
            loaded.stats.record_rejected(Rejection::Deadline);
        }
        loaded.stats.record_request(result.is_ok(), start.elapsed());
        Ok((loaded.version, result?))
    }

    /// Serves `backends` (version, backend), built in code rather than read from the
    /// repository directory, as model `name` with `config`'s checks, batching and limits; no
    /// warm-up runs. Replaces a loaded model of that name; hot reload leaves it alone. For
    /// programs that embed the repository, and for tests.
    pub fn insert(
        &self,
        name: &str,
        config: ModelConfig,
        backends: Vec<(u64, Arc<dyn ModelBackend>)>,
    ) -> Result<Arc<LoadedModel>, ModelError> {
        check_name(name)?;
        let fail = |message: String| ModelError::Config {
            path: PathBuf::from(format!("<model {name:?} built in code>")),
            message,
        };
        config.validate().map_err(fail)?;
        if backends.is_empty() {
            return Err(fail("no version to serve".into()));
        }
        let config = Arc::new(config);
        let mut versions = BTreeMap::new();
        for (version, backend) in backends {
            let loaded = LoadedVersion::new(name, version, config.clone(), backend)?;
            versions.insert(version, Arc::new(loaded));
        }
        let model = Arc::new(LoadedModel {
            name: name.to_string(),
            config,
            versions,
        });
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::clone(&self.models.load());
        next.insert(name.to_string(), model.clone());
        self.models.store(Arc::new(next));
        Ok(model)
    }

    fn read_model(&self, name: &str) -> Result<LoadedModel, ModelError> {
        let dir = self.root.join(name);
        let config = ModelConfig::from_file(&dir.join("config.toml"))?;
        let on_disk = versions_on_disk(&dir)?;
        let selected = config.version_policy.select(&on_disk);
        if selected.is_empty() {
            return Err(ModelError::Config {
                path: dir,
                message: format!(
                    "no version directory matches {:?} (found {on_disk:?})",
                    config.version_policy
                ),
            });
        }
        let mut versions = BTreeMap::new();
        for version in selected {
            let path = dir.join(version.to_string()).join(config.model_filename());
            let (backend, fitted): (Arc<dyn ModelBackend>, ModelConfig) = match config.backend {
                BackendKind::Onnx => {
                    let onnx = OnnxModel::load_instances(
                        &self.runtime,
                        &path,
                        config.threads,
                        config.instance_count,
                    )?;
                    let fitted = onnx.fit_config(&config).map_err(|message| ModelError::Load {
                        path: path.clone(),
                        message,
                    })?;
                    (Arc::new(onnx), fitted)
                }
                BackendKind::Candle => (
                    Arc::new(crate::candle_backend::CandleModel::load(&config, &path)?),
                    config.clone(),
                ),
            };
            if fitted != config {
                tracing::info!(
                    model = name,
                    version,
                    inputs = ?fitted.inputs.iter().map(|s| (&s.name, &s.dims)).collect::<Vec<_>>(),
                    "-1 dims narrowed to the sizes the ONNX file fixes"
                );
            }
            crate::warmup::run(&fitted, &dir, backend.as_ref()).map_err(|e| ModelError::Load {
                path: path.clone(),
                message: format!("warm-up failed: {e}"),
            })?;
            let loaded = LoadedVersion::new(name, version, Arc::new(fitted), backend)?;
            versions.insert(version, Arc::new(loaded));
        }
        // The model's own config (metadata, ModelConfig) shows the narrowed dims when every
        // version agrees on them; each version checks requests against its own either way.
        let mut fitted = versions.values().map(|v| &v.config);
        let first = fitted.next().map(|c| ModelConfig::clone(c));
        let config = match first {
            Some(first) if fitted.all(|c| **c == first) => first,
            _ => config,
        };
        Ok(LoadedModel {
            name: name.to_string(),
            config: Arc::new(config),
            versions,
        })
    }
}

/// Model names are plain directory names: nothing can reach outside the repository.
pub fn check_name(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ModelError::InvalidInput(format!(
            "invalid model name {name:?}: use letters, digits, '_', '-' and '.', not starting with '.'"
        )))
    }
}

fn versions_on_disk(dir: &Path) -> Result<Vec<u64>, ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::Config {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{INLINE_BELOW_NS, check_name, next_mean};
    use std::time::Duration;

    fn settle(runs: impl IntoIterator<Item = u64>) -> u64 {
        runs.into_iter()
            .fold(u64::MAX, |mean, us| next_mean(mean, Duration::from_micros(us)))
    }

    #[test]
    fn an_os_stall_does_not_push_a_fast_model_off_the_async_workers() {
        // A 10 µs model with one 5 ms stall, even two in a row, stays inline.
        let fast = || std::iter::repeat_n(10, 50);
        let mean = settle(fast().chain([5_000, 5_000]));
        assert!(mean < INLINE_BELOW_NS, "mean {mean} ns");
        // A model that really takes 300 µs goes to the blocking pool, even after fast runs.
        let mean = settle(fast().chain(std::iter::repeat_n(300, 20)));
        assert!(mean >= INLINE_BELOW_NS, "mean {mean} ns");
        // Until the first run, nothing is known: the pool.
        assert!(settle([]) >= INLINE_BELOW_NS);
    }

    #[test]
    fn names_cannot_escape_the_repository() {
        for good in ["fraud", "fraud_gbdt", "resnet-18", "v1.2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "..", "../etc", "a/b", ".hidden", "a\\b", "x y"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
