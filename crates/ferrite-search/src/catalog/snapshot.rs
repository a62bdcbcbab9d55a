//! One consistent view of the catalog: an immutable base (FAISS index, stored vectors, item
//! ids by slot) plus what live updates changed since (attributes, removed slots, and a
//! small delta of added or re-embedded items searched exactly).

use std::collections::HashMap;
use std::sync::Arc;

use super::ann::Ann;
use super::error::CatalogError;
use super::types::{CatalogHit, CatalogItem, FilterPlan, IndexMeta, ItemFilter, SearchConfig, SearchResults};

/// What a build produced; never changed afterwards.
pub(crate) struct Base {
    pub ann: Ann,
    pub meta: IndexMeta,
    /// `slots × index_dim` values, already projected.
    pub vectors: Vec<f32>,
    pub item_ids: Vec<String>,
    pub slot_of: HashMap<String, u32>,
}

impl Base {
    pub fn len(&self) -> usize {
        self.item_ids.len()
    }

    fn vector(&self, slot: u32) -> &[f32] {
        let d = self.meta.index_dim();
        &self.vectors[slot as usize * d..(slot as usize + 1) * d]
    }
}

/// Mutable attributes of a base slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Attrs {
    pub category: u32,
    pub in_stock: bool,
    pub price: f64,
    pub live: bool,
}

/// An item added or re-embedded since the base was built.
#[derive(Debug, Clone)]
pub(crate) struct DeltaItem {
    pub item_id: String,
    pub attrs: Attrs,
    /// Projected.
    pub vector: Vec<f32>,
}

#[derive(Clone)]
pub(crate) struct Snapshot {
    pub base: Arc<Base>,
    pub attrs: Vec<Attrs>,
    pub category_names: Vec<String>,
    pub category_ids: HashMap<String, u32>,
    /// Live base slots per category id.
    pub by_category: Vec<Vec<u32>>,
    pub dead: usize,
    pub delta: Vec<DeltaItem>,
    pub delta_pos: HashMap<String, usize>,
}

/// A filter resolved against one snapshot's category ids.
struct Resolved<'a> {
    filter: &'a ItemFilter,
    /// `None`: every category.
    categories: Option<Vec<u32>>,
}

impl Resolved<'_> {
    fn keeps(&self, a: &Attrs) -> bool {
        a.live
            && (!self.filter.in_stock_only || a.in_stock)
            && self.filter.price_ok(a.price)
            && self.categories.as_ref().is_none_or(|c| c.contains(&a.category))
    }
}

impl Snapshot {
    /// A snapshot of a fresh base whose slots carry `attrs` (categories as names).
    pub fn new(base: Arc<Base>, items: Vec<(String, bool, f64)>) -> Self {
        let mut snapshot = Snapshot {
            base,
            attrs: Vec::with_capacity(items.len()),
            category_names: Vec::new(),
            category_ids: HashMap::new(),
            by_category: Vec::new(),
            dead: 0,
            delta: Vec::new(),
            delta_pos: HashMap::new(),
        };
        for (category, in_stock, price) in items {
            let category = snapshot.category_id(&category);
            snapshot.attrs.push(Attrs {
                category,
                in_stock,
                price,
                live: true,
            });
        }
        snapshot.reindex();
        snapshot
    }

    fn category_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.category_ids.get(name) {
            return id;
        }
        let id = self.category_names.len() as u32;
        self.category_names.push(name.to_string());
        self.category_ids.insert(name.to_string(), id);
        id
    }

    fn reindex(&mut self) {
        let mut by_category = vec![Vec::new(); self.category_names.len()];
        for (slot, a) in self.attrs.iter().enumerate() {
            if a.live {
                by_category[a.category as usize].push(slot as u32);
            }
        }
        self.by_category = by_category;
        self.dead = self.attrs.iter().filter(|a| !a.live).count();
    }

    /// Items searchable now.
    pub fn len(&self) -> usize {
        self.base.len() - self.dead + self.delta.len()
    }

    /// Live updates held outside the base (removed base slots plus delta items).
    pub fn pending(&self) -> usize {
        self.dead + self.delta.len()
    }

    /// Applies inserts and updates. An item whose vector is unchanged keeps its slot; a new
    /// or re-embedded one goes to the delta. Items must be validated and projected.
    pub fn upsert(&mut self, items: Vec<CatalogItem>) {
        for item in items {
            let category = self.category_id(&item.category);
            let attrs = Attrs {
                category,
                in_stock: item.in_stock,
                price: item.price,
                live: true,
            };
            if let Some(&pos) = self.delta_pos.get(&item.item_id) {
                self.delta[pos].attrs = attrs;
                self.delta[pos].vector = item.vector;
                continue;
            }
            if let Some(&slot) = self.base.slot_of.get(&item.item_id) {
                let same_vector = self.base.vector(slot) == item.vector.as_slice();
                if same_vector {
                    self.attrs[slot as usize] = attrs;
                    continue;
                }
                self.attrs[slot as usize].live = false;
            }
            self.delta_pos.insert(item.item_id.clone(), self.delta.len());
            self.delta.push(DeltaItem {
                item_id: item.item_id,
                attrs,
                vector: item.vector,
            });
        }
        self.reindex();
    }

    /// Removes items by id; returns how many were present.
    pub fn remove(&mut self, ids: &[String]) -> usize {
        let mut removed = 0;
        for id in ids {
            if let Some(pos) = self.delta_pos.remove(id) {
                self.delta.swap_remove(pos);
                if let Some(moved) = self.delta.get(pos) {
                    self.delta_pos.insert(moved.item_id.clone(), pos);
                }
                removed += 1;
                // A re-embedded base item's old slot is already dead.
                continue;
            }
            if let Some(&slot) = self.base.slot_of.get(id)
                && self.attrs[slot as usize].live
            {
                self.attrs[slot as usize].live = false;
                removed += 1;
            }
        }
        self.reindex();
        removed
    }

    /// The stored (projected) vector of a live item.
    pub fn vector_of(&self, item_id: &str) -> Option<&[f32]> {
        if let Some(&pos) = self.delta_pos.get(item_id) {
            return Some(&self.delta[pos].vector);
        }
        let &slot = self.base.slot_of.get(item_id)?;
        self.attrs[slot as usize].live.then(|| self.base.vector(slot))
    }

    /// Every live item, base then delta, as catalog items with projected vectors.
    pub fn live_items(&self) -> impl Iterator<Item = (&str, &Attrs, &[f32])> {
        let base = self
            .attrs
            .iter()
            .enumerate()
            .filter(|(_, a)| a.live)
            .map(|(slot, a)| {
                (
                    self.base.item_ids[slot].as_str(),
                    a,
                    self.base.vector(slot as u32),
                )
            });
        let delta = self
            .delta
            .iter()
            .map(|d| (d.item_id.as_str(), &d.attrs, d.vector.as_slice()));
        base.chain(delta)
    }

    fn resolve<'a>(&self, filter: &'a ItemFilter) -> Resolved<'a> {
        let categories = (!filter.categories.is_empty()).then(|| {
            filter
                .categories
                .iter()
                .filter_map(|c| self.category_ids.get(c).copied())
                .collect()
        });
        Resolved { filter, categories }
    }

    /// Base slots the filter keeps, in slot order.
    fn kept_slots(&self, resolved: &Resolved) -> Vec<u32> {
        match &resolved.categories {
            Some(categories) => {
                let mut kept: Vec<u32> = categories
                    .iter()
                    .flat_map(|&c| self.by_category[c as usize].iter().copied())
                    .filter(|&s| resolved.keeps(&self.attrs[s as usize]))
                    .collect();
                kept.sort_unstable();
                kept.dedup();
                kept
            }
            None => (0..self.base.len() as u32)
                .filter(|&s| resolved.keeps(&self.attrs[s as usize]))
                .collect(),
        }
    }

    /// The `k` best items for an already projected query, planned by how many items the
    /// filter keeps.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &ItemFilter,
        config: &SearchConfig,
    ) -> Result<SearchResults, CatalogError> {
        let resolved = self.resolve(filter);
        let n = self.base.len();
        let (mut scored, plan) = if filter.is_empty() && self.dead == 0 {
            let hits = if n == 0 {
                Vec::new()
            } else {
                self.base.ann.search(query, k.min(n))?
            };
            (hits, FilterPlan::Unfiltered)
        } else {
            self.search_filtered(query, k, &resolved, config)?
        };
        let mut hits: Vec<(Source, f32)> = scored
            .drain(..)
            .map(|(slot, score)| (Source::Base(slot), score))
            .collect();
        let metric = self.base.meta.metric;
        hits.extend(
            self.delta
                .iter()
                .enumerate()
                .filter(|(_, d)| resolved.keeps(&d.attrs))
                .map(|(i, d)| (Source::Delta(i), metric.score(query, &d.vector))),
        );
        top_k(&mut hits, k);
        let hits = hits
            .into_iter()
            .map(|(source, score)| self.hit(source, score))
            .collect();
        Ok(SearchResults { hits, plan })
    }

    fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        resolved: &Resolved,
        config: &SearchConfig,
    ) -> Result<(Vec<(u32, f32)>, FilterPlan), CatalogError> {
        let n = self.base.len();
        let kept = self.kept_slots(resolved);
        let exact_limit = config
            .exact_max_items
            .max((config.exact_max_fraction * n as f64) as usize);
        if kept.len() <= exact_limit || kept.len() <= k {
            return Ok((self.exact(query, k, &kept), FilterPlan::Exact));
        }
        let want = k.min(kept.len());
        let mut bitmap = vec![0u8; n.div_ceil(8)];
        for &s in &kept {
            bitmap[s as usize >> 3] |= 1 << (s & 7);
        }
        let ann = &self.base.ann;
        let widen = (2.0 * n as f64 / kept.len() as f64).min(config.filtered_widen_max);
        if let Some(hits) = ann.search_selected(query, k.min(n), &bitmap, widen)? {
            if hits.len() >= want {
                return Ok((hits, FilterPlan::Selector));
            }
            return Ok((self.exact(query, k, &kept), FilterPlan::StarvedExact));
        }
        let mut ask = (k * 4).max(64);
        loop {
            let ask_now = ask.min(n);
            let mut hits = ann.search(query, ask_now)?;
            hits.retain(|&(s, _)| bitmap[s as usize >> 3] & (1 << (s & 7)) != 0);
            if hits.len() >= want {
                hits.truncate(k);
                return Ok((hits, FilterPlan::PostFilter));
            }
            if ask_now >= n || ask >= config.post_filter_max_k {
                return Ok((self.exact(query, k, &kept), FilterPlan::StarvedExact));
            }
            ask *= 4;
        }
    }

    /// Exact scores of the given base slots, best `k`.
    pub fn exact(&self, query: &[f32], k: usize, slots: &[u32]) -> Vec<(u32, f32)> {
        let metric = self.base.meta.metric;
        let mut scored: Vec<(u32, f32)> = slots
            .iter()
            .map(|&s| (s, metric.score(query, self.base.vector(s))))
            .collect();
        top_k(&mut scored, k);
        scored
    }

    /// Exact answer over every live item the filter keeps (the recall reference).
    pub fn exact_all(&self, query: &[f32], k: usize, filter: &ItemFilter) -> Vec<String> {
        let resolved = self.resolve(filter);
        let metric = self.base.meta.metric;
        let mut scored: Vec<(&str, f32)> = self
            .live_items()
            .filter(|(_, a, _)| resolved.keeps(a))
            .map(|(id, _, v)| (id, metric.score(query, v)))
            .collect();
        top_k(&mut scored, k);
        scored.into_iter().map(|(id, _)| id.to_string()).collect()
    }

    fn hit(&self, source: Source, score: f32) -> CatalogHit {
        let (item_id, attrs) = match source {
            Source::Base(slot) => (
                self.base.item_ids[slot as usize].clone(),
                &self.attrs[slot as usize],
            ),
            Source::Delta(i) => (self.delta[i].item_id.clone(), &self.delta[i].attrs),
        };
        CatalogHit {
            item_id,
            score,
            category: self.category_names[attrs.category as usize].clone(),
            in_stock: attrs.in_stock,
            price: attrs.price,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Base(u32),
    Delta(usize),
}

/// Keeps the `k` highest scores, best first (ties by key, so answers are deterministic).
fn top_k<T: Ord + Copy>(scored: &mut Vec<(T, f32)>, k: usize) {
    let order = |a: &(T, f32), b: &(T, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > k && k > 0 {
        scored.select_nth_unstable_by(k - 1, order);
    }
    scored.truncate(k);
    scored.sort_by(order);
}
