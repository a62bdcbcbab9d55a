//! `ferrite.v1.SearchService`: visual search over the catalog index built by
//! `ferrite build-index`. Requests are checked and converted here; images are decoded and
//! searched on the blocking pool and embedded through the model repository.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ferrite_models::{ModelError, ModelRepository, Tensor, TensorData};
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::search_service_server::{SearchService, SearchServiceServer};
use ferrite_search::catalog::{
    CatalogIndex, CatalogItem, Embedder, Expected, FilterPlan, IndexMeta, ItemFilter, RecallConfig,
    SearchResults,
};
use ferrite_search::preprocess::{ImageBatch, ImageLimits, Normalization, PreprocessConfig, Preprocessor};
use tonic::{Request, Response, Status};

use super::{arrival, call_deadline};
use crate::config::SearchConfig;
use crate::status::ApiError;

/// The embedding model's output the index holds.
pub const EMBEDDING_OUTPUT: &str = "embedding";
/// `top_k` when the request leaves it 0, and the most it may ask for.
const DEFAULT_TOP_K: usize = 10;
const MAX_TOP_K: usize = 1000;
/// Items one UpsertItems call may carry, and images among them.
const MAX_UPSERT_ITEMS: usize = 10_000;
const MAX_UPSERT_IMAGES: usize = 256;

/// How images become the embedder's input: the shorter side resized to 256, the centred
/// 224 × 224 crop, and EfficientNet-Lite's `(pixel - 127) / 128` (the normalisation the
/// weights were trained with; `crates/ferrite-models/tests/efficientnet.rs` checks it).
pub fn preprocess_config(limits: ImageLimits) -> PreprocessConfig {
    use ferrite_models::efficientnet::{IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD};
    PreprocessConfig {
        resize_shorter: (IMAGE_SIZE * 256 / 224) as u32,
        crop: IMAGE_SIZE as u32,
        normalization: Normalization {
            mean: [PIXEL_MEAN / 255.0; 3],
            std: [PIXEL_STD / 255.0; 3],
        },
        limits,
    }
}

/// What a search index must match to serve `model`: its highest loaded version and the
/// width of its `embedding` output.
pub fn expected_for(models: &ModelRepository, model: &str) -> Result<Expected, ModelError> {
    let loaded = models.get(model)?;
    let version = loaded.version("")?.version;
    let dim = loaded
        .config
        .outputs
        .iter()
        .find(|o| o.name == EMBEDDING_OUTPUT)
        .and_then(|o| o.dims.last().copied())
        .filter(|&d| d > 0)
        .ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "model {model:?} has no fixed-width output named {EMBEDDING_OUTPUT:?} to search with"
            ))
        })?;
    Ok(Expected {
        model: model.to_string(),
        model_version: version.to_string(),
        dim: dim as usize,
    })
}

/// Runs the embedding model of a repository on the calling thread (`ferrite build-index`,
/// tests): batches go straight to the model version's backend.
pub struct ModelEmbedder {
    models: Arc<ModelRepository>,
    model: String,
    version: String,
}

impl ModelEmbedder {
    pub fn new(models: Arc<ModelRepository>, model: &str, version: &str) -> Self {
        ModelEmbedder {
            models,
            model: model.to_string(),
            version: version.to_string(),
        }
    }
}

impl Embedder for ModelEmbedder {
    fn embed(&self, images: &ImageBatch) -> Result<Vec<Vec<f32>>, String> {
        let model = self.models.get(&self.model).map_err(|e| e.to_string())?;
        let loaded = model.version(&self.version).map_err(|e| e.to_string())?;
        let input = input_tensor(&model.config.inputs[0].name, images).map_err(|e| e.to_string())?;
        let outputs = loaded.backend.infer(&[input]).map_err(|e| e.to_string())?;
        embeddings_of(outputs, images.n).map_err(|e| e.to_string())
    }
}

fn input_tensor(name: &str, images: &ImageBatch) -> Result<Tensor, ModelError> {
    let [n, c, h, w] = images.shape();
    Tensor::new(name, vec![n, c, h, w], TensorData::Fp32(images.data.clone()))
}

fn embeddings_of(outputs: Vec<Tensor>, n: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let output = outputs
        .into_iter()
        .find(|t| t.name == EMBEDDING_OUTPUT)
        .ok_or_else(|| ModelError::Inference(format!("the model gave no {EMBEDDING_OUTPUT:?} output")))?;
    let TensorData::Fp32(values) = output.data else {
        return Err(ModelError::Inference(format!("{EMBEDDING_OUTPUT:?} is not FP32")));
    };
    if n == 0 || !values.len().is_multiple_of(n) {
        return Err(ModelError::Inference(format!(
            "{} embedding values for {n} images",
            values.len()
        )));
    }
    Ok(values.chunks(values.len() / n).map(<[f32]>::to_vec).collect())
}

/// The index being served, or why there is none.
enum Slot {
    Ready(Loaded),
    Missing(String),
}

struct Loaded {
    index: Arc<CatalogIndex>,
    meta: Arc<IndexMeta>,
    version: String,
}

/// Visual search's state: the index behind an atomic swap, the preprocessing and the model.
pub struct SearchState {
    config: SearchConfig,
    models: Arc<ModelRepository>,
    preprocessor: Preprocessor,
    slot: ArcSwap<Slot>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    compacting: Arc<AtomicBool>,
    health: Option<tonic_health::server::HealthReporter>,
}

impl SearchState {
    /// Loads `config.index_dir` if it can; a missing or refused index is logged and the
    /// service answers FAILED_PRECONDITION until `ReloadIndex` succeeds.
    pub async fn start(
        config: SearchConfig,
        models: Arc<ModelRepository>,
        health: Option<tonic_health::server::HealthReporter>,
    ) -> anyhow::Result<Arc<Self>> {
        let preprocessor = Preprocessor::new(preprocess_config(config.image_limits()))
            .map_err(|e| anyhow::anyhow!("search image limits: {e}"))?;
        let state = Arc::new(SearchState {
            config,
            models,
            preprocessor,
            slot: ArcSwap::from_pointee(Slot::Missing("the index is loading".into())),
            reloading: tokio::sync::Mutex::new(()),
            compacting: Arc::new(AtomicBool::new(false)),
            health,
        });
        match state.reload().await {
            Ok(loaded) => tracing::info!(
                dir = %state.config.index_dir.display(),
                items = loaded.0,
                version = %loaded.1,
                "visual search index ready"
            ),
            Err(e) => {
                let message = e.to_string();
                match e {
                    ApiError::NoIndex(_) => tracing::warn!(error = %message, "visual search has no index"),
                    _ => tracing::error!(error = %message, "visual search index refused"),
                }
                state.slot.store(Arc::new(Slot::Missing(message)));
                state.set_health(false).await;
            }
        }
        Ok(state)
    }

    /// Loads the index directory again and swaps it in; calls in flight finish on the old
    /// one. Returns the new index's size and version. A failure keeps the old index.
    async fn reload(&self) -> Result<(usize, String), ApiError> {
        let _one = self.reloading.lock().await;
        let dir = self.config.index_dir.clone();
        let models = self.models.clone();
        let model = self.config.model.clone();
        let catalog = self.config.catalog();
        let (index, meta) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            if !dir.join("index.json").is_file() {
                return Err(ApiError::NoIndex(format!(
                    "no index at {}: run `ferrite build-index --catalog FILE --out {}`, then ReloadIndex",
                    dir.display(),
                    dir.display()
                )));
            }
            let expected = expected_for(&models, &model).map_err(|e| {
                ApiError::NoIndex(format!("search.model {model:?} cannot serve visual search: {e}"))
            })?;
            let index = CatalogIndex::load(&dir, &expected, catalog)?;
            let meta = index.meta();
            Ok((index, meta))
        })
        .await
        .map_err(|e| ApiError::NoIndex(format!("index load task failed: {e}")))??;
        let version = index_version(&meta);
        let len = index.len();
        let index = match &**self.slot.load() {
            // The same CatalogIndex keeps its live-recall sampler across swaps.
            Slot::Ready(current) => {
                current.index.replace(index);
                current.index.clone()
            }
            Slot::Missing(_) => {
                let mut index = index;
                if self.config.live_recall_sample > 0.0 {
                    index = index.with_recall_sampler(&RecallConfig {
                        sample_fraction: self.config.live_recall_sample.min(1.0),
                        ..RecallConfig::default()
                    });
                }
                Arc::new(index)
            }
        };
        self.slot.store(Arc::new(Slot::Ready(Loaded {
            index,
            meta: Arc::new(meta),
            version: version.clone(),
        })));
        metrics::gauge!("ferrite_search_index_items").set(len as f64);
        self.set_health(true).await;
        Ok((len, version))
    }

    async fn set_health(&self, serving: bool) {
        if let Some(health) = &self.health {
            if serving {
                health.set_serving::<SearchServiceServer<Search>>().await;
            } else {
                health.set_not_serving::<SearchServiceServer<Search>>().await;
            }
        }
    }

    fn ready(&self) -> Result<(Arc<CatalogIndex>, Arc<IndexMeta>, String), ApiError> {
        match &**self.slot.load() {
            Slot::Ready(l) => Ok((l.index.clone(), l.meta.clone(), l.version.clone())),
            Slot::Missing(why) => Err(ApiError::NoIndex(why.clone())),
        }
    }

    /// Decodes and preprocesses each image off the async workers; an error names `field(i)`.
    async fn preprocess(
        &self,
        images: Vec<Vec<u8>>,
        field: impl Fn(usize) -> String + Send + 'static,
    ) -> Result<ImageBatch, Status> {
        let preprocessor = self.preprocessor.clone();
        tokio::task::spawn_blocking(move || {
            let n = images.len();
            let mut data = Vec::new();
            for (i, bytes) in images.iter().enumerate() {
                let pixels = preprocessor
                    .preprocess(bytes)
                    .map_err(|e| Status::from(ApiError::from(e)))
                    .map_err(|s| Status::new(s.code(), format!("{}: {}", field(i), s.message())))?;
                data.extend_from_slice(&pixels);
            }
            Ok(ImageBatch {
                data,
                n,
                side: preprocessor.config().crop as usize,
            })
        })
        .await
        .map_err(|e| Status::internal(format!("image task failed: {e}")))?
    }

    /// Embeds a preprocessed batch with the model version the index was built with, at most
    /// the model's batch size per run.
    async fn embed(&self, images: &ImageBatch, version: &str) -> Result<Vec<Vec<f32>>, ApiError> {
        let model = self.models.get(&self.config.model)?;
        let input = model.config.inputs[0].name.clone();
        let per_run = model.config.max_batch_size.max(1);
        let len = 3 * images.side * images.side;
        let mut out = Vec::with_capacity(images.n);
        for start in (0..images.n).step_by(per_run) {
            let end = (start + per_run).min(images.n);
            let part = ImageBatch {
                data: images.data[start * len..end * len].to_vec(),
                n: end - start,
                side: images.side,
            };
            let tensor = input_tensor(&input, &part)?;
            let (_, outputs) = self
                .models
                .infer(&self.config.model, version, vec![tensor])
                .await?;
            out.extend(embeddings_of(outputs, part.n)?);
        }
        Ok(out)
    }

    /// Starts a background rebuild when live updates have grown past `compact_fraction`.
    fn maybe_compact(&self, index: &Arc<CatalogIndex>) {
        if !index.needs_compaction() || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let index = index.clone();
        let flag = self.compacting.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            match index.compact() {
                Ok(done) => tracing::info!(
                    swapped = done,
                    items = index.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "search index compacted"
                ),
                Err(e) => tracing::error!(error = %e, "search index compaction failed"),
            }
            flag.store(false, Ordering::Release);
        });
    }
}

/// A build id for the response's `index_version`: the build time and a hash of the metadata
/// (FNV-1a, stable across Rust releases).
fn index_version(meta: &IndexMeta) -> String {
    let bytes = serde_json::to_vec(meta).unwrap_or_default();
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{}-{hash:016x}", meta.built_at_unix_s)
}

/// The plan names of the API.
fn plan_name(plan: FilterPlan) -> &'static str {
    match plan {
        FilterPlan::Unfiltered => "unfiltered",
        FilterPlan::Exact | FilterPlan::StarvedExact => "exact_scan",
        FilterPlan::Selector => "faiss_selector",
        FilterPlan::PostFilter => "faiss_widened",
    }
}

fn top_k(requested: u32) -> Result<usize, Status> {
    match requested as usize {
        0 => Ok(DEFAULT_TOP_K),
        k if k > MAX_TOP_K => Err(Status::invalid_argument(format!(
            "top_k is {k}, expected 1 to {MAX_TOP_K} (0 asks for {DEFAULT_TOP_K})"
        ))),
        k => Ok(k),
    }
}

fn filter_of(filter: Option<pb::SearchFilter>) -> Result<ItemFilter, Status> {
    let Some(f) = filter else {
        return Ok(ItemFilter::default());
    };
    for (name, bound) in [
        ("filter.min_price", f.min_price),
        ("filter.max_price", f.max_price),
    ] {
        if bound.is_some_and(|b| !b.is_finite()) {
            return Err(Status::invalid_argument(format!(
                "{name} is {bound:?}, expected a finite number"
            )));
        }
    }
    if let (Some(min), Some(max)) = (f.min_price, f.max_price)
        && min > max
    {
        return Err(Status::invalid_argument(format!(
            "filter.min_price {min} is above filter.max_price {max}"
        )));
    }
    Ok(ItemFilter {
        categories: f.categories,
        in_stock_only: f.in_stock_only,
        min_price: f.min_price,
        max_price: f.max_price,
    })
}

fn check_embedding(field: &str, values: &[f32], meta: &IndexMeta) -> Result<(), Status> {
    if values.len() != meta.dim {
        return Err(Status::invalid_argument(format!(
            "{field} has {} values, expected {} (the dimension of model {:?})",
            values.len(),
            meta.dim,
            meta.model
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Status::invalid_argument(format!(
            "{field} holds a NaN or infinite value"
        )));
    }
    Ok(())
}

/// Server-side stage times of one call.
#[derive(Default)]
struct Stages {
    decode: Duration,
    embed: Duration,
    search: Duration,
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn respond(
    results: SearchResults,
    meta: &IndexMeta,
    version: String,
    stages: Stages,
    started: Instant,
    include_latency: bool,
) -> pb::VisualSearchResponse {
    for (stage, took) in [
        ("decode", stages.decode),
        ("embed", stages.embed),
        ("search", stages.search),
    ] {
        if !took.is_zero() {
            metrics::histogram!("ferrite_search_stage_seconds", "stage" => stage).record(took.as_secs_f64());
        }
    }
    pb::VisualSearchResponse {
        hits: results
            .hits
            .into_iter()
            .map(|h| pb::SearchHit {
                item_id: h.item_id,
                score: h.score,
                category: h.category,
                in_stock: h.in_stock,
                price: h.price,
            })
            .collect(),
        meta: Some(pb::ResponseMeta {
            model_name: meta.model.clone(),
            model_version: meta.model_version.clone(),
            ..Default::default()
        }),
        index_version: version,
        plan: plan_name(results.plan).to_string(),
        latency: include_latency.then(|| pb::SearchLatency {
            decode_us: micros(stages.decode),
            embed_us: micros(stages.embed),
            search_us: micros(stages.search),
            total_us: micros(started.elapsed()),
        }),
    }
}

/// Runs one search (a few milliseconds of FAISS) on this worker thread, its other tasks
/// handed to another thread meanwhile (`block_in_place`): the search starts on the core that
/// just decoded the request, caches warm, without waking a pool thread, and the answer goes
/// out without waking this one (search stage 0.95–1.04 against 1.07–1.25 ms on the blocking
/// pool, BENCHMARKS.md §7). The deadline layer cannot answer while the thread searches, so a
/// search that ends past the call's deadline answers DEADLINE_EXCEEDED itself. On a
/// current-thread runtime (tests), the search runs on the blocking pool.
async fn searching<T: Send + 'static>(
    rpc: &str,
    deadline: Option<Instant>,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Status> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
        return blocking(work).await;
    }
    let answer = tokio::task::block_in_place(work).map_err(Status::from);
    match deadline {
        Some(deadline) if Instant::now() >= deadline => Err(Status::deadline_exceeded(format!(
            "{rpc}: the call's deadline passed during its search; the answer was dropped"
        ))),
        _ => answer,
    }
}

/// Runs blocking index work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("search task failed: {e}")))?
        .map_err(Status::from)
}

pub struct Search {
    state: Arc<SearchState>,
}

impl Search {
    pub fn new(state: Arc<SearchState>) -> Self {
        Search { state }
    }
}

impl Search {
    async fn by_image(
        &self,
        req: pb::VisualSearchRequest,
        started: Instant,
        deadline: Option<Instant>,
    ) -> Result<Response<pb::VisualSearchResponse>, Status> {
        use pb::visual_search_request::Query;
        let k = top_k(req.top_k)?;
        let filter = filter_of(req.filter)?;
        let (index, meta, version) = self.state.ready()?;
        let mut stages = Stages::default();
        let query = match req.query {
            Some(Query::Image(bytes)) => {
                let at = Instant::now();
                let batch = self
                    .state
                    .preprocess(vec![bytes], |_| "image".to_string())
                    .await?;
                stages.decode = at.elapsed();
                let at = Instant::now();
                let mut vectors = self.state.embed(&batch, &meta.model_version).await?;
                stages.embed = at.elapsed();
                vectors.pop().unwrap_or_default()
            }
            Some(Query::Embedding(e)) => {
                check_embedding("embedding", &e.values, &meta)?;
                e.values
            }
            None => {
                return Err(Status::invalid_argument(
                    "query is empty: set image (JPEG, PNG or WebP bytes) or embedding",
                ));
            }
        };
        let at = Instant::now();
        let results = searching("VisualSearch", deadline, move || {
            Ok(index.search(&query, k, &filter)?)
        })
        .await?;
        stages.search = at.elapsed();
        Ok(Response::new(respond(
            results,
            &meta,
            version,
            stages,
            started,
            req.include_latency,
        )))
    }

    async fn by_item(
        &self,
        req: pb::SimilarItemsRequest,
        started: Instant,
        deadline: Option<Instant>,
    ) -> Result<Response<pb::VisualSearchResponse>, Status> {
        if req.item_id.is_empty() {
            return Err(Status::invalid_argument(
                "item_id is empty, expected a catalog item id",
            ));
        }
        let k = top_k(req.top_k)?;
        let filter = filter_of(req.filter)?;
        let (index, meta, version) = self.state.ready()?;
        let id = req.item_id;
        let at = Instant::now();
        let results = searching("SimilarItems", deadline, move || {
            match index.similar(&id, k, &filter)? {
                Some(results) => Ok(results),
                None => Err(ApiError::UnknownItem(format!(
                    "item_id {id:?} is not in the catalog index"
                ))),
            }
        })
        .await?;
        let stages = Stages {
            search: at.elapsed(),
            ..Stages::default()
        };
        Ok(Response::new(respond(
            results,
            &meta,
            version,
            stages,
            started,
            req.include_latency,
        )))
    }
}

#[tonic::async_trait]
impl SearchService for Search {
    async fn visual_search(
        &self,
        request: Request<pb::VisualSearchRequest>,
    ) -> Result<Response<pb::VisualSearchResponse>, Status> {
        let (started, deadline) = (arrival(&request), call_deadline(&request));
        self.by_image(request.into_inner(), started, deadline).await
    }

    async fn similar_items(
        &self,
        request: Request<pb::SimilarItemsRequest>,
    ) -> Result<Response<pb::VisualSearchResponse>, Status> {
        let (started, deadline) = (arrival(&request), call_deadline(&request));
        self.by_item(request.into_inner(), started, deadline).await
    }

    async fn upsert_items(
        &self,
        request: Request<pb::UpsertItemsRequest>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        use pb::catalog_item::Vector;
        let items = request.into_inner().items;
        let (index, meta, _) = self.state.ready()?;
        if items.len() > MAX_UPSERT_ITEMS {
            return Err(Status::invalid_argument(format!(
                "items holds {} items, at most {MAX_UPSERT_ITEMS} per call",
                items.len()
            )));
        }
        let mut images = Vec::new();
        let mut image_rows = Vec::new();
        let mut vectors: Vec<Option<Vec<f32>>> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if item.item_id.is_empty() {
                return Err(Status::invalid_argument(format!("items[{i}].item_id is empty")));
            }
            if !item.price.is_finite() {
                return Err(Status::invalid_argument(format!(
                    "items[{i}].price is {}, expected a finite number",
                    item.price
                )));
            }
            match &item.vector {
                Some(Vector::Embedding(e)) => {
                    check_embedding(&format!("items[{i}].embedding"), &e.values, &meta)?;
                    vectors.push(Some(e.values.clone()));
                }
                Some(Vector::Image(bytes)) => {
                    images.push(bytes.clone());
                    image_rows.push(i);
                    vectors.push(None);
                }
                None => {
                    return Err(Status::invalid_argument(format!(
                        "items[{i}] ({:?}) has no vector: set image or embedding",
                        item.item_id
                    )));
                }
            }
        }
        if images.len() > MAX_UPSERT_IMAGES {
            return Err(Status::invalid_argument(format!(
                "items holds {} images, at most {MAX_UPSERT_IMAGES} per call",
                images.len()
            )));
        }
        if !images.is_empty() {
            let rows = image_rows.clone();
            let batch = self
                .state
                .preprocess(images, move |j| format!("items[{}].image", rows[j]))
                .await?;
            let embedded = self.state.embed(&batch, &meta.model_version).await?;
            for (row, vector) in image_rows.into_iter().zip(embedded) {
                vectors[row] = Some(vector);
            }
        }
        let catalog: Vec<CatalogItem> = items
            .into_iter()
            .zip(vectors)
            .map(|(item, vector)| CatalogItem {
                item_id: item.item_id,
                category: item.category,
                in_stock: item.in_stock,
                price: item.price,
                vector: vector.unwrap_or_default(),
            })
            .collect();
        let upserted = catalog.len() as u32;
        let target = index.clone();
        blocking(move || Ok(target.upsert(catalog)?)).await?;
        self.state.maybe_compact(&index);
        Ok(Response::new(pb::UpsertItemsResponse {
            upserted,
            index_size: index.len() as u64,
        }))
    }

    async fn remove_items(
        &self,
        request: Request<pb::RemoveItemsRequest>,
    ) -> Result<Response<pb::RemoveItemsResponse>, Status> {
        let ids = request.into_inner().item_ids;
        let (index, _, _) = self.state.ready()?;
        if let Some(i) = ids.iter().position(String::is_empty) {
            return Err(Status::invalid_argument(format!("item_ids[{i}] is empty")));
        }
        let target = index.clone();
        let (removed, not_found) = blocking(move || {
            let mut seen = std::collections::HashSet::new();
            let not_found: Vec<String> = ids
                .iter()
                .filter(|id| seen.insert(id.as_str()) && !target.contains(id))
                .cloned()
                .collect();
            Ok((target.remove(&ids), not_found))
        })
        .await?;
        self.state.maybe_compact(&index);
        Ok(Response::new(pb::RemoveItemsResponse {
            removed: removed as u32,
            not_found,
            index_size: index.len() as u64,
        }))
    }

    async fn reload_index(
        &self,
        _request: Request<pb::ReloadIndexRequest>,
    ) -> Result<Response<pb::ReloadIndexResponse>, Status> {
        let (len, version) = self.state.reload().await?;
        tracing::info!(items = len, version = %version, "visual search index reloaded");
        Ok(Response::new(pb::ReloadIndexResponse {
            index_version: version,
            index_size: len as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow_search() -> Result<u32, ApiError> {
        std::thread::sleep(Duration::from_millis(40));
        Ok(7)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_search_that_ends_past_the_deadline_answers_deadline_exceeded() {
        let deadline = Instant::now() + Duration::from_millis(5);
        let status = searching("VisualSearch", Some(deadline), slow_search)
            .await
            .expect_err("the deadline passed during the search");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().starts_with("VisualSearch: "),
            "{}",
            status.message()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_search_inside_its_deadline_or_without_one_answers() {
        let deadline = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            searching("VisualSearch", Some(deadline), slow_search)
                .await
                .unwrap(),
            7
        );
        assert_eq!(searching("SimilarItems", None, slow_search).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn on_a_current_thread_runtime_the_search_runs_on_the_blocking_pool() {
        // block_in_place would panic here.
        assert_eq!(searching("VisualSearch", None, slow_search).await.unwrap(), 7);
    }
}
