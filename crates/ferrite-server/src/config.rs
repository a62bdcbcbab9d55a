//! The one TOML configuration file. Every field has a default, unknown keys are refused,
//! and every key is documented in the README.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub models: ModelsConfig,
    pub features: FeaturesConfig,
    pub pipelines: PipelinesConfig,
    pub experiments: ExperimentsConfig,
    pub search: SearchConfig,
}

/// Visual search (`ferrite.v1.SearchService`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// The catalog index `ferrite build-index` wrote. Missing: the server starts and search
    /// calls answer FAILED_PRECONDITION until `ReloadIndex` finds one.
    pub index_dir: PathBuf,
    /// The embedding model (in `models.repository`) the index must have been built with.
    pub model: String,
    /// Largest encoded image a call may send, bytes.
    pub max_image_bytes: usize,
    /// Largest width x height an image header may declare (checked before decoding).
    pub max_image_pixels: u64,
    /// Share of searches re-run exactly off the request path to measure live recall@10.
    pub live_recall_sample: f64,
    /// Filters keeping at most this many items (or `exact_max_fraction` of the catalog) are
    /// answered by an exact scan of those items; wider ones by FAISS with an id selector.
    pub exact_max_items: usize,
    pub exact_max_fraction: f64,
    /// IVF lists probed per query (IVF indexes).
    pub nprobe: usize,
    /// HNSW candidate list size (HNSW indexes).
    pub ef_search: usize,
    /// Live updates beyond this share of the catalog start a background rebuild (compaction).
    pub compact_fraction: f64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        let catalog = ferrite_search::catalog::SearchConfig::default();
        let limits = ferrite_search::preprocess::ImageLimits::default();
        SearchConfig {
            index_dir: PathBuf::from(".ferrite/index"),
            model: "image_embedder_onnx".into(),
            max_image_bytes: limits.max_bytes,
            max_image_pixels: limits.max_pixels,
            live_recall_sample: 0.05,
            exact_max_items: catalog.exact_max_items,
            exact_max_fraction: catalog.exact_max_fraction,
            nprobe: catalog.nprobe,
            ef_search: catalog.ef_search,
            compact_fraction: catalog.compact_fraction,
        }
    }
}

impl SearchConfig {
    /// The catalog's search settings these keys select.
    pub fn catalog(&self) -> ferrite_search::catalog::SearchConfig {
        ferrite_search::catalog::SearchConfig {
            exact_max_items: self.exact_max_items,
            exact_max_fraction: self.exact_max_fraction,
            nprobe: self.nprobe,
            ef_search: self.ef_search,
            compact_fraction: self.compact_fraction,
            ..Default::default()
        }
    }

    /// The image limits these keys select.
    pub fn image_limits(&self) -> ferrite_search::preprocess::ImageLimits {
        ferrite_search::preprocess::ImageLimits {
            max_bytes: self.max_image_bytes,
            max_pixels: self.max_image_pixels,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentsConfig {
    /// The directory of experiment definitions (`*.toml`, one experiment a file). A directory
    /// that does not exist declares no experiment.
    pub directory: PathBuf,
    /// Where canary states live. `auto`: in Redis when `features.online_store = "redis"`
    /// (shared by every replica on it), else `embedded`: files under `state_dir` (one
    /// process; a rollback survives restarts).
    pub state_store: StateStoreKind,
    pub state_dir: PathBuf,
    /// The Redis that `state_store = "redis"` uses; empty: `features.redis_url`.
    pub redis_url: String,
    /// How often a replica reads the shared canary states (a rollback decided elsewhere is
    /// adopted within this), ms.
    pub sync_interval_ms: u64,
    /// Where the exposure log's Parquet files go; empty: no exposure log.
    pub exposures_dir: PathBuf,
    /// The exposure log is written at least this often: what a crash can lose, ms.
    pub flush_interval_ms: u64,
    /// Shadow jobs waiting at most; more are dropped (and counted) so that shadows never
    /// slow the served path. The shadow runner takes the queue whole 50 ms after a job wakes
    /// it, so this bounds the calls per second a shadow keeps up with (1,024: ~20,000/s).
    pub shadow_queue: usize,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StateStoreKind {
    #[default]
    Auto,
    Embedded,
    Redis,
}

impl Default for ExperimentsConfig {
    fn default() -> Self {
        ExperimentsConfig {
            directory: PathBuf::from("experiments"),
            state_store: StateStoreKind::Auto,
            state_dir: PathBuf::from(".ferrite/experiments"),
            redis_url: String::new(),
            sync_interval_ms: 500,
            exposures_dir: PathBuf::from(".ferrite/exposures"),
            flush_interval_ms: 1000,
            shadow_queue: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PipelinesConfig {
    /// The directory of pipeline definitions (`*.toml`, one pipeline a file). A directory that
    /// does not exist declares no pipeline.
    pub directory: PathBuf,
}

impl Default for PipelinesConfig {
    fn default() -> Self {
        PipelinesConfig {
            directory: PathBuf::from("pipelines"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the gRPC API listens. Port 0 picks a free port; the log says which.
    pub grpc_addr: SocketAddr,
    /// Where the Prometheus `/metrics` endpoint listens. Port 0 picks a free port.
    pub metrics_addr: SocketAddr,
    /// On SIGINT/SIGTERM, how long in-flight calls may take to finish before the server exits.
    pub shutdown_grace_s: u64,
    /// Async worker threads of `ferrite serve`; 0 is one per CPU core. Read by the binary
    /// when it builds its runtime.
    pub worker_threads: usize,
    /// Threads of `ferrite serve` for blocking work (model runs too long for an async worker,
    /// blocking store reads and writes); beyond them such work waits its turn. 0 is four per
    /// CPU core, at least 8. Unbounded (tokio allows 512), each burst of slow calls started
    /// a thread per call in flight, each with its own allocator heap, and resident memory rose
    /// in steps with the thread count (BENCHMARKS.md §9). Read by the binary when it builds
    /// its runtime.
    pub blocking_threads: usize,
    /// Calls one gRPC service may have in flight; beyond it calls are answered
    /// RESOURCE_EXHAUSTED at once (not queued). Health and reflection are exempt.
    pub max_in_flight: NonZeroUsize,
    /// Per-service overrides of `max_in_flight`, by full service name
    /// (e.g. `"inference.GRPCInferenceService" = 256`).
    pub max_in_flight_by_service: BTreeMap<String, NonZeroUsize>,
    /// Largest request message a call may send, bytes; a larger one is answered
    /// RESOURCE_EXHAUSTED.
    pub max_message_bytes: NonZeroUsize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            shutdown_grace_s: 10,
            worker_threads: 0,
            blocking_threads: 0,
            max_in_flight: NonZeroUsize::new(512).unwrap_or(NonZeroUsize::MIN),
            max_in_flight_by_service: BTreeMap::new(),
            // Above `search.max_image_bytes` (10 MiB), so an image call meets that limit first.
            max_message_bytes: NonZeroUsize::new(16 * 1024 * 1024).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `ferrite_server=debug,info`, ... `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// The model repository: `<repository>/<name>/config.toml` and `<name>/<version>/`.
    pub repository: PathBuf,
    /// Path of `libonnxruntime.so`. Unset: `ORT_DYLIB_PATH`, then the project's `.venv`.
    pub onnxruntime_library: Option<PathBuf>,
    /// How often the repository is checked for new, changed or removed models (hot reload),
    /// in the control modes that poll. 0 turns hot reload off.
    pub poll_interval_s: f64,
    /// Who changes what is served once the server runs: the repository's files, the
    /// load/unload RPCs, both, or neither (Triton's `--model-control-mode`).
    pub control_mode: ModelControlMode,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            repository: PathBuf::from("models"),
            onnxruntime_library: None,
            poll_interval_s: 2.0,
            control_mode: ModelControlMode::default(),
        }
    }
}

/// `models.control_mode`. Every mode loads all the repository's models at start.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModelControlMode {
    /// What is loaded at start stays; the load/unload RPCs are refused.
    None,
    /// The repository is polled every `poll_interval_s` (which must be more than 0); the
    /// load/unload RPCs are refused.
    Poll,
    /// Only the load/unload RPCs change what is served; the repository is not polled.
    Explicit,
    /// Both: polled every `poll_interval_s` (0: not polled) and the RPCs are allowed.
    #[default]
    PollAndExplicit,
}

impl ModelControlMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelControlMode::None => "none",
            ModelControlMode::Poll => "poll",
            ModelControlMode::Explicit => "explicit",
            ModelControlMode::PollAndExplicit => "poll_and_explicit",
        }
    }

    /// Whether the load/unload RPCs may change what is served.
    pub fn allows_rpcs(self) -> bool {
        matches!(
            self,
            ModelControlMode::Explicit | ModelControlMode::PollAndExplicit
        )
    }
}

impl ModelsConfig {
    /// How often the repository is polled; `None`: never.
    pub fn poll_every(&self) -> Option<std::time::Duration> {
        match self.control_mode {
            ModelControlMode::None | ModelControlMode::Explicit => None,
            ModelControlMode::Poll | ModelControlMode::PollAndExplicit => {
                (self.poll_interval_s > 0.0).then(|| std::time::Duration::from_secs_f64(self.poll_interval_s))
            }
        }
    }

    /// Refuses settings that contradict each other; the message names the keys.
    pub fn check(&self) -> Result<(), String> {
        let poll = self.poll_interval_s;
        if !(poll >= 0.0 && poll.is_finite()) {
            return Err(format!(
                "models.poll_interval_s = {poll} must be a number of seconds, 0 or more"
            ));
        }
        if self.control_mode == ModelControlMode::Poll && poll == 0.0 {
            return Err("models.control_mode = \"poll\" needs models.poll_interval_s > 0 (it is 0)".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FeaturesConfig {
    /// The directory of feature definitions (`*.toml`).
    pub repository: PathBuf,
    /// Where source paths point. Unset: `<repository>/data`.
    pub data_dir: Option<PathBuf>,
    /// The online store: `embedded` (in-process, durable in `embedded_path`), `redis` or
    /// `redis_cluster`.
    pub online_store: OnlineStoreKind,
    /// Directory of the embedded store's database.
    pub embedded_path: PathBuf,
    /// The Redis server for `online_store = "redis"`.
    pub redis_url: String,
    /// Seed nodes for `online_store = "redis_cluster"`, e.g. `["redis://127.0.0.1:7000"]`.
    pub redis_cluster_nodes: Vec<String>,
    /// How long a Redis (or Redis Cluster) client waits for a connection, in ms.
    pub redis_connect_timeout_ms: NonZeroU64,
    /// How long a Redis (or Redis Cluster) read waits for its answer, in ms.
    pub redis_response_timeout_ms: NonZeroU64,
    /// How long one Redis write (a batch of up to 512 pushed or materialized rows) waits
    /// for its answer, in ms.
    pub redis_write_timeout_ms: NonZeroU64,
    /// Entity rows one online read may ask for.
    pub max_entities_per_read: NonZeroUsize,
    /// Entity rows × features one online read may answer.
    pub max_values_per_read: NonZeroUsize,
    /// How far ahead of the server's clock a pushed event time may be, in seconds.
    pub max_clock_skew_s: u64,
    /// How often the online store's health is checked (its gRPC health and
    /// `ferrite_online_store_up` follow it), in ms. A call that finds the store unavailable
    /// also starts a check at once.
    pub health_interval_ms: NonZeroU64,
    /// How long one health check may take before the store counts as down, in ms.
    pub health_timeout_ms: NonZeroU64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnlineStoreKind {
    #[default]
    Embedded,
    Redis,
    RedisCluster,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        let limits = ferrite_features::serving::Limits::default();
        let timeouts = ferrite_features::online::RedisTimeouts::default();
        let ms = |d: std::time::Duration| NonZeroU64::new(d.as_millis() as u64).unwrap_or(NonZeroU64::MIN);
        let count = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        FeaturesConfig {
            repository: PathBuf::from("features"),
            data_dir: None,
            online_store: OnlineStoreKind::Embedded,
            embedded_path: PathBuf::from(".ferrite/online"),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_cluster_nodes: Vec::new(),
            redis_connect_timeout_ms: ms(timeouts.connect),
            redis_response_timeout_ms: ms(timeouts.response),
            redis_write_timeout_ms: ms(timeouts.write),
            max_entities_per_read: count(limits.max_entities),
            max_values_per_read: count(limits.max_values),
            max_clock_skew_s: (limits.max_clock_skew / 1_000_000) as u64,
            health_interval_ms: NonZeroU64::new(1000).unwrap_or(NonZeroU64::MIN),
            health_timeout_ms: NonZeroU64::new(500).unwrap_or(NonZeroU64::MIN),
        }
    }
}

impl FeaturesConfig {
    /// The online store these keys select.
    pub fn store_config(&self) -> ferrite_features::StoreConfig {
        use ferrite_features::StoreConfig;
        let timeouts = ferrite_features::online::RedisTimeouts {
            connect: std::time::Duration::from_millis(self.redis_connect_timeout_ms.get()),
            response: std::time::Duration::from_millis(self.redis_response_timeout_ms.get()),
            write: std::time::Duration::from_millis(self.redis_write_timeout_ms.get()),
        };
        match self.online_store {
            OnlineStoreKind::Embedded => StoreConfig::Embedded {
                path: self.embedded_path.clone(),
            },
            OnlineStoreKind::Redis => StoreConfig::Redis {
                url: self.redis_url.clone(),
                timeouts,
            },
            OnlineStoreKind::RedisCluster => StoreConfig::RedisCluster {
                urls: self.redis_cluster_nodes.clone(),
                timeouts,
            },
        }
    }

    /// The bounds on reads and pushes these keys set.
    pub fn limits(&self) -> ferrite_features::serving::Limits {
        ferrite_features::serving::Limits {
            max_entities: self.max_entities_per_read.get(),
            max_values: self.max_values_per_read.get(),
            max_clock_skew: i64::try_from(self.max_clock_skew_s)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000),
        }
    }

    /// Loads and checks the definitions, with the configured limits.
    pub fn registry(&self) -> Result<ferrite_features::Registry, ferrite_features::FeatureError> {
        ferrite_features::Registry::load(&self.repository, self.data_dir.as_deref())
            .map(|registry| registry.with_limits(self.limits()))
            .map_err(ferrite_features::FeatureError::Definitions)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads a TOML file. Relative repository paths are taken relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        config.models.repository = base.join(&config.models.repository);
        config.features.repository = base.join(&config.features.repository);
        config.features.embedded_path = base.join(&config.features.embedded_path);
        config.pipelines.directory = base.join(&config.pipelines.directory);
        config.experiments.directory = base.join(&config.experiments.directory);
        config.experiments.state_dir = base.join(&config.experiments.state_dir);
        config.search.index_dir = base.join(&config.search.index_dir);
        if !config.experiments.exposures_dir.as_os_str().is_empty() {
            config.experiments.exposures_dir = base.join(&config.experiments.exposures_dir);
        }
        if let Some(dir) = &config.features.data_dir {
            config.features.data_dir = Some(base.join(dir));
        }
        if let Some(lib) = &config.models.onnxruntime_library {
            config.models.onnxruntime_library = Some(base.join(lib));
        }
        Ok(config)
    }

    /// Parses TOML text; the message names the offending key and line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.server.metrics_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(c.server.shutdown_grace_s, 10);
        assert_eq!(c.server.worker_threads, 0);
        assert_eq!(c.server.blocking_threads, 0);
        assert_eq!(c.server.max_in_flight.get(), 512);
        assert!(c.server.max_in_flight_by_service.is_empty());
        assert_eq!(c.server.max_message_bytes.get(), 16 * 1024 * 1024);
        assert_eq!(c.features.health_interval_ms.get(), 1000);
        assert_eq!(c.features.health_timeout_ms.get(), 500);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.models.repository, PathBuf::from("models"));
        assert_eq!(c.models.onnxruntime_library, None);
        assert_eq!(c.models.poll_interval_s, 2.0);
        assert_eq!(c.models.control_mode, ModelControlMode::PollAndExplicit);
        assert_eq!(c.features.repository, PathBuf::from("features"));
        assert_eq!(c.features.redis_connect_timeout_ms.get(), 200);
        assert_eq!(c.features.redis_response_timeout_ms.get(), 50);
        assert_eq!(c.features.redis_write_timeout_ms.get(), 2000);
        assert_eq!(c.features.max_entities_per_read.get(), 10_000);
        assert_eq!(c.features.max_values_per_read.get(), 1_000_000);
        assert_eq!(c.features.max_clock_skew_s, 300);
        assert_eq!(c.pipelines.directory, PathBuf::from("pipelines"));
        assert_eq!(c.search.index_dir, PathBuf::from(".ferrite/index"));
        assert_eq!(c.search.model, "image_embedder_onnx");
        assert_eq!(c.search.live_recall_sample, 0.05);
    }

    #[test]
    fn feature_store_limits_and_timeouts_reach_the_store_and_the_registry() {
        let c = Config::from_toml(
            "[features]\nonline_store = \"redis\"\nredis_connect_timeout_ms = 150\nredis_response_timeout_ms = 20\nredis_write_timeout_ms = 900\nmax_entities_per_read = 7\nmax_values_per_read = 70\nmax_clock_skew_s = 2\n",
        )
        .unwrap();
        let ferrite_features::StoreConfig::Redis { timeouts, .. } = c.features.store_config() else {
            panic!("a Redis store: {:?}", c.features.store_config());
        };
        assert_eq!(timeouts.connect, std::time::Duration::from_millis(150));
        assert_eq!(timeouts.response, std::time::Duration::from_millis(20));
        assert_eq!(timeouts.write, std::time::Duration::from_millis(900));
        let limits = c.features.limits();
        assert_eq!((limits.max_entities, limits.max_values), (7, 70));
        assert_eq!(limits.max_clock_skew, 2_000_000);
        let err = Config::from_toml("[features]\nredis_response_timeout_ms = 0\n").unwrap_err();
        assert!(
            err.contains("redis_response_timeout_ms") && err.contains("nonzero"),
            "{err}"
        );
    }

    #[test]
    fn in_flight_limits_are_read_per_service() {
        let c = Config::from_toml(
            "[server]\nmax_in_flight = 64\n[server.max_in_flight_by_service]\n\"inference.GRPCInferenceService\" = 8\n",
        )
        .unwrap();
        assert_eq!(c.server.max_in_flight.get(), 64);
        assert_eq!(
            c.server.max_in_flight_by_service["inference.GRPCInferenceService"].get(),
            8
        );
        let err = Config::from_toml("[server]\nmax_in_flight = 0\n").unwrap_err();
        assert!(err.contains("max_in_flight") && err.contains("nonzero"), "{err}");
    }

    #[test]
    fn the_model_control_mode_decides_polling_and_the_load_rpcs() {
        let mode = |text: &str| Config::from_toml(&format!("[models]\n{text}\n")).map(|c| c.models);
        let every = Some(std::time::Duration::from_secs(2));
        let cases = [
            ("", every, true),
            ("control_mode = \"poll_and_explicit\"", every, true),
            ("control_mode = \"poll\"", every, false),
            ("control_mode = \"explicit\"", None, true),
            ("control_mode = \"none\"", None, false),
            (
                "control_mode = \"poll_and_explicit\"\npoll_interval_s = 0",
                None,
                true,
            ),
        ];
        for (text, polls, rpcs) in cases {
            let m = mode(text).unwrap();
            m.check().unwrap();
            assert_eq!(m.poll_every(), polls, "{text}");
            assert_eq!(m.control_mode.allows_rpcs(), rpcs, "{text}");
        }
        let err = mode("control_mode = \"poll\"\npoll_interval_s = 0")
            .unwrap()
            .check()
            .unwrap_err();
        assert!(err.contains("models.poll_interval_s > 0"), "{err}");
        let err = mode("control_mode = \"manual\"").unwrap_err();
        assert!(err.contains("manual") && err.contains("explicit"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = Config::from_toml("[server]\ngrpc_adr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.contains("grpc_adr"), "{err}");
        let err = Config::from_toml("[sever]\n").unwrap_err();
        assert!(err.contains("sever"), "{err}");
    }

    #[test]
    fn a_bad_value_names_the_key_and_line() {
        let err = Config::from_toml("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(err.contains("xml") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn the_shipped_config_parses_and_repositories_resolve_next_to_it() {
        let path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../ferrite.toml");
        let c = Config::from_file(&path).unwrap();
        assert!(c.models.repository.ends_with("models"));
        assert!(c.models.repository.starts_with(path.parent().unwrap()));
    }
}
