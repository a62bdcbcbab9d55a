//! The catalogue a recommendations or pricing pipeline keeps in memory, rebuilt from the online
//! store on a timer: every item of the catalogue view, with what retrieval and the fallbacks
//! need when the store cannot be asked (the item tower's embeddings in a vector index, each
//! item's category, popularity and availability; each item's current price).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ferrite_features::serving::{AnswerSink, FeatureValue, Status, read_planned};
use ferrite_features::value::KeyValue;
use ferrite_features::{Micros, Value};
use ferrite_search::PositionIndex;

use crate::engine::Engine;
use crate::pipeline::{Pipeline, Pricing, Recs};
use crate::vector::Vectors;

/// Items read from the store per read while building a catalogue.
const CHUNK: usize = 512;

/// One pipeline's catalogue: item `p` is `ids[p]`.
pub struct Catalog {
    pub ids: Vec<Value>,
    positions: HashMap<KeyValue, usize>,
    /// When it was built (the time features were judged at).
    pub built_at: Micros,
    /// Recommendations: the item tower's embeddings, by position.
    pub index: Option<PositionIndex>,
    /// Recommendations: each item's vector (the item service's features) when the catalogue
    /// was built, `item_width` values a row: the ranker's item part.
    pub item_vectors: Vec<f32>,
    pub item_width: usize,
    /// The item tower's version that made `index`.
    pub tower_version: u64,
    pub categories: Vec<Option<Arc<str>>>,
    pub popularity: Vec<f32>,
    /// On sale and in stock when the catalogue was built.
    pub available: Vec<bool>,
    /// Positions by popularity, most popular first.
    pub by_popularity: Vec<usize>,
    /// Pricing: each item's current price (NaN: unknown).
    pub current_price: Vec<f64>,
}

impl Catalog {
    fn new(ids: Vec<Value>, built_at: Micros) -> Catalog {
        let positions = ids
            .iter()
            .enumerate()
            .filter_map(|(p, id)| key_of(id).map(|k| (k, p)))
            .collect();
        Catalog {
            ids,
            positions,
            built_at,
            index: None,
            item_vectors: Vec::new(),
            item_width: 0,
            tower_version: 0,
            categories: Vec::new(),
            popularity: Vec::new(),
            available: Vec::new(),
            by_popularity: Vec::new(),
            current_price: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The vector of the item at `position` when the catalogue was built.
    pub fn item_vector(&self, position: usize) -> &[f32] {
        &self.item_vectors[position * self.item_width..(position + 1) * self.item_width]
    }

    /// The position of item `id`, if the catalogue has it.
    pub fn position(&self, id: &Value) -> Option<usize> {
        key_of(id).and_then(|k| self.positions.get(&k).copied())
    }
}

/// An id as a map key (ids are ints or strings once checked).
pub(crate) fn key_of(id: &Value) -> Option<KeyValue> {
    match id {
        Value::Int(i) => Some(KeyValue::Int(*i)),
        Value::Str(s) => Some(KeyValue::Str(s.clone())),
        _ => None,
    }
}

/// Collects one string feature per row (an item's category).
pub(crate) struct Strings(pub(crate) Vec<Option<Arc<str>>>);

impl AnswerSink for Strings {
    fn push(&mut self, row: usize, _feature: usize, value: FeatureValue) {
        if let (Status::Present, Value::Str(s)) = (value.status, &value.value) {
            self.0[row] = Some(Arc::from(s.as_str()));
        }
    }
}

impl Engine {
    /// Rebuilds the catalogue of `pipeline` (recommendations and pricing) from the online store
    /// and swaps it in; the previous one keeps serving until then, and after a failure.
    /// Returns the number of items.
    pub async fn refresh_catalog(&self, pipeline: &str, now: Micros) -> Result<usize, String> {
        let p = self.pipelines.get(pipeline).map_err(|e| e.to_string())?.clone();
        let started = Instant::now();
        let built = match (&p.recs, &p.pricing) {
            (Some(recs), _) => self.build_recs_catalog(recs, now).await,
            (_, Some(pricing)) => self.build_pricing_catalog(&p, pricing, now).await,
            _ => return Ok(0),
        };
        match built {
            Ok(catalog) => {
                let n = catalog.len();
                if let Some(slot) = self.catalogs.get(&p.name) {
                    slot.store(Some(Arc::new(catalog)));
                }
                metrics::gauge!("ferrite_pipeline_catalog_items", "pipeline" => p.name.clone()).set(n as f64);
                tracing::info!(pipeline = %p.name, items = n, ms = started.elapsed().as_millis() as u64, "catalogue built");
                Ok(n)
            }
            Err(e) => {
                metrics::counter!("ferrite_pipeline_catalog_failures_total", "pipeline" => p.name.clone())
                    .increment(1);
                tracing::warn!(pipeline = %p.name, error = %e, "catalogue not rebuilt; the previous one stays");
                Err(e)
            }
        }
    }

    /// The pipelines that keep a catalogue, with how often it is rebuilt.
    pub fn catalog_refreshes(&self) -> Vec<(String, std::time::Duration)> {
        self.pipelines
            .pipelines
            .values()
            .filter_map(|p| match (&p.recs, &p.pricing) {
                (Some(r), _) => Some((p.name.clone(), r.refresh)),
                (_, Some(pr)) => Some((p.name.clone(), pr.refresh)),
                _ => None,
            })
            .collect()
    }

    /// The catalogue `pipeline` serves from now, if one was built.
    pub fn catalog(&self, pipeline: &str) -> Option<Arc<Catalog>> {
        self.catalogs.get(pipeline).and_then(|c| c.load_full())
    }

    async fn list_items(view: &Arc<ferrite_features::FeatureView>) -> Result<Vec<Value>, String> {
        let view = view.clone();
        tokio::task::spawn_blocking(move || ferrite_features::offline::entity_ids(&view))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("listing the items of the catalogue view: {e}"))
    }

    async fn build_recs_catalog(&self, recs: &Recs, now: Micros) -> Result<Catalog, String> {
        let listed = Self::list_items(&recs.catalog_view).await?;
        let tower = &recs.section.item_tower;
        let mut ids = Vec::with_capacity(listed.len());
        let mut embeddings: Vec<f32> = Vec::new();
        let (mut dim, mut tower_version) = (0, 0);
        let mut categories = Vec::with_capacity(listed.len());
        let mut popularity = Vec::with_capacity(listed.len());
        let mut available = Vec::with_capacity(listed.len());
        let mut item_vectors: Vec<f32> = Vec::new();
        let none = HashMap::new();
        for chunk in listed.chunks(CHUNK) {
            let entities = HashMap::from([(recs.item_key.0.clone(), chunk.to_vec())]);
            let mut vectors = Vectors::new(&recs.items, chunk.len());
            read_planned(
                &recs.items.plan,
                self.store.as_ref(),
                &entities,
                &none,
                now,
                &mut vectors,
            )
            .await
            .map_err(|e| format!("reading the items' features: {e}"))?;
            let mut cats = Strings(vec![None; chunk.len()]);
            read_planned(
                &recs.category_plan,
                self.store.as_ref(),
                &entities,
                &none,
                now,
                &mut cats,
            )
            .await
            .map_err(|e| format!("reading the items' categories: {e}"))?;
            // Items with no stored features at all are not (or no longer) in the store.
            let kept: Vec<usize> = (0..chunk.len()).filter(|&r| !vectors.cold_start(r)).collect();
            if kept.is_empty() {
                continue;
            }
            let mut x = Vec::with_capacity(kept.len() * vectors.width);
            for &r in &kept {
                x.extend_from_slice(vectors.row(r));
            }
            let (version, out, columns) = self
                .infer_matrix(
                    &tower.name,
                    &tower.version,
                    &tower.input,
                    &tower.output,
                    x,
                    kept.len(),
                )
                .await
                .map_err(|e| format!("item tower {:?}: {e}", tower.name))?;
            if dim != 0 && (columns != dim || version != tower_version) {
                return Err(format!(
                    "item tower {:?} changed while the catalogue was built; retrying at the next refresh",
                    tower.name
                ));
            }
            (dim, tower_version) = (columns, version);
            embeddings.extend_from_slice(&out);
            for &r in &kept {
                let row = vectors.row(r);
                item_vectors.extend_from_slice(row);
                ids.push(chunk[r].clone());
                categories.push(cats.0[r].clone());
                let pop = row[recs.popularity];
                popularity.push(if pop.is_nan() { 0.0 } else { pop });
                available.push(row[recs.active] != 0.0 && row[recs.in_stock] > 0.0);
            }
        }
        let mut catalog = Catalog::new(ids, now);
        if dim > 0 {
            catalog.index = Some(PositionIndex::new(dim, embeddings).map_err(|e| e.to_string())?);
        }
        let mut by_popularity: Vec<usize> = (0..catalog.len()).collect();
        by_popularity.sort_by(|&a, &b| popularity[b].total_cmp(&popularity[a]).then(a.cmp(&b)));
        catalog.tower_version = tower_version;
        catalog.item_width = recs.items.refs.len();
        catalog.item_vectors = item_vectors;
        catalog.categories = categories;
        catalog.popularity = popularity;
        catalog.available = available;
        catalog.by_popularity = by_popularity;
        Ok(catalog)
    }

    async fn build_pricing_catalog(
        &self,
        p: &Pipeline,
        pricing: &Pricing,
        now: Micros,
    ) -> Result<Catalog, String> {
        let listed = Self::list_items(&pricing.catalog_view).await?;
        let mut ids = Vec::with_capacity(listed.len());
        let mut prices = Vec::with_capacity(listed.len());
        for chunk in listed.chunks(CHUNK) {
            let entities = HashMap::from([(pricing.item_key.0.clone(), chunk.to_vec())]);
            let fetched =
                ferrite_features::serving::fetch(&p.input.plan, self.store.as_ref(), &entities, now)
                    .await
                    .map_err(|e| format!("reading the items' prices: {e}"))?;
            for (r, id) in chunk.iter().enumerate() {
                if let Some(price) = fetched
                    .stored_value(&p.input.plan, pricing.current_price, r)
                    .and_then(Value::as_f64)
                    .filter(|x| x.is_finite() && *x > 0.0)
                {
                    ids.push(id.clone());
                    prices.push(price);
                }
            }
        }
        let mut catalog = Catalog::new(ids, now);
        catalog.current_price = prices;
        Ok(catalog)
    }
}
