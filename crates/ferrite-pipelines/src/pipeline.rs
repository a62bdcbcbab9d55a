//! A pipeline resolved against the feature definitions: its features in model-input order,
//! the entity keys and request fields a call must carry, and its rules.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferrite_features::definitions::Rules;
use ferrite_features::expr::{Expr, Input};
use ferrite_features::serving::ReadPlan;
use ferrite_features::{DType, FeatureRef, FeatureView, KeyType, Registry};

use crate::PipelineError;
use crate::config::{
    FallbackSection, FraudSection, Kind, ModelSection, PipelineFile, PricingSection, RecsSection,
};

/// What a fraud pipeline decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Review,
    Decline,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Review => "review",
            Decision::Decline => "decline",
        }
    }

    fn parse(s: &str) -> Option<Decision> {
        match s {
            "approve" => Some(Decision::Approve),
            "review" => Some(Decision::Review),
            "decline" => Some(Decision::Decline),
            _ => None,
        }
    }
}

/// The answer when the features or the model cannot answer in time.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub expression: String,
    pub expr: Expr,
    pub default_score: f64,
    pub decision: Decision,
}

/// A feature service resolved for serving: the model input vector it makes, in order, and
/// what a call must carry to read it.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// The vector: these features, in this order.
    pub refs: Vec<FeatureRef>,
    /// How the online store is read for them, resolved once.
    pub plan: Arc<ReadPlan>,
    /// Each ref's feature name (the training set's column name).
    pub feature_names: Vec<String>,
    /// Join keys a call must carry, with their types.
    pub entity_keys: Vec<(String, KeyType)>,
    /// Request fields a call must carry, with their types.
    pub request_fields: BTreeMap<String, DType>,
    /// Per feature: its value when its entity is unknown (`None`: missing, NaN).
    pub cold_start: Vec<Option<f32>>,
    /// Per feature: the entity (an index into `entities`) whose stored row it comes from;
    /// `None` for request-time features.
    pub feature_entity: Vec<Option<usize>>,
    /// The join-key sets of the stored views, e.g. `["user_id"]`, `["merchant_id"]`.
    pub entities: Vec<Vec<String>>,
}

impl Service {
    /// Resolves feature service `service` (named by `key` in messages about `path`).
    fn resolve(path: &Path, key: &str, service: &str, registry: &Registry) -> Result<Service, PipelineError> {
        let bad = |m: String| PipelineError::config(path, m);
        let refs = registry
            .service_refs(service)
            .map_err(|e| bad(format!("{key}: {e}")))?;
        let mut feature_names = Vec::with_capacity(refs.len());
        let mut entities: Vec<Vec<String>> = Vec::new();
        let mut entity_keys: Vec<(String, KeyType)> = Vec::new();
        let mut feature_entity = Vec::with_capacity(refs.len());
        let mut request_fields: BTreeMap<String, DType> = BTreeMap::new();
        for r in &refs {
            let fname = r.feature_name().to_string();
            if feature_names.contains(&fname) {
                return Err(bad(format!(
                    "feature service {service:?} has two features named {fname:?}; model inputs need unique names"
                )));
            }
            if !matches!(r.dtype(), DType::Int | DType::Float | DType::Bool) {
                return Err(bad(format!(
                    "feature {} is {}: a model input must be int, float or bool (encode strings with a request-time feature)",
                    r.name(),
                    r.dtype()
                )));
            }
            feature_names.push(fname);
            match r {
                FeatureRef::Stored { view, .. } => {
                    let at = match entities.iter().position(|k| *k == view.join_keys) {
                        Some(at) => at,
                        None => {
                            entities.push(view.join_keys.clone());
                            entities.len() - 1
                        }
                    };
                    feature_entity.push(Some(at));
                    for (k, t) in view.join_keys.iter().zip(&view.key_types) {
                        if !entity_keys.iter().any(|(n, _)| n == k) {
                            entity_keys.push((k.clone(), *t));
                        }
                    }
                }
                FeatureRef::Request { view, index } => {
                    feature_entity.push(None);
                    for input in view.features[*index].expr.inputs() {
                        match input {
                            Input::Request(field) => {
                                let dtype = view.request_fields[field];
                                if let Some(old) = request_fields.insert(field.clone(), dtype)
                                    && old != dtype
                                {
                                    return Err(bad(format!(
                                        "request field {field:?} is {old} in one request view and {dtype} in {:?}",
                                        view.name
                                    )));
                                }
                            }
                            Input::Feature { view: v, .. } => {
                                // Request-time features read stored features of views whose keys
                                // the call must then carry too.
                                let fv = registry.view(v).map_err(bad)?;
                                for (k, t) in fv.join_keys.iter().zip(&fv.key_types) {
                                    if !entity_keys.iter().any(|(n, _)| n == k) {
                                        entity_keys.push((k.clone(), *t));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let plan = ReadPlan::new(registry, &refs).map_err(|e| bad(format!("{key}: {e}")))?;
        Ok(Service {
            name: service.to_string(),
            cold_start: vec![None; refs.len()],
            refs,
            plan: Arc::new(plan),
            feature_names,
            entity_keys,
            request_fields,
            feature_entity,
            entities,
        })
    }

    /// The position of feature `name` in the vector, or a message naming `key`.
    fn position(&self, key: &str, name: &str) -> Result<usize, String> {
        self.feature_names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| format!("{key}: feature service {:?} has no feature {name:?}", self.name))
    }

    /// The position of stored feature `name`, or a message naming `key`.
    fn stored_position(&self, key: &str, name: &str) -> Result<usize, String> {
        let at = self.position(key, name)?;
        match self.feature_entity[at] {
            Some(_) => Ok(at),
            None => Err(format!(
                "{key}: {name:?} is a request-time feature of {:?}; a stored feature is needed",
                self.name
            )),
        }
    }

    /// The single join key of this service's entity, when it has exactly one.
    fn single_key(&self, key: &str) -> Result<(String, KeyType), String> {
        match self.entity_keys.as_slice() {
            [one] => Ok(one.clone()),
            keys => Err(format!(
                "{key}: feature service {:?} must describe one entity with one join key, it needs {:?}",
                self.name,
                keys.iter().map(|(k, _)| k).collect::<Vec<_>>()
            )),
        }
    }
}

/// A recommendations pipeline's parts beyond the user's vector.
#[derive(Debug, Clone)]
pub struct Recs {
    pub section: RecsSection,
    /// The item's vector (item tower input, ranker item part, filters).
    pub items: Service,
    /// The item entity's join key.
    pub item_key: (String, KeyType),
    /// The view that lists the catalogue (the first stored view of the item service).
    pub catalog_view: Arc<FeatureView>,
    /// Reads each item's category.
    pub category_plan: Arc<ReadPlan>,
    /// Positions in `items` of the in-stock, active and popularity features.
    pub in_stock: usize,
    pub active: usize,
    pub popularity: usize,
    /// Reads just the in-stock and active features (in that order): what a call re-checks
    /// live for its candidates.
    pub live_plan: Arc<ReadPlan>,
    /// With `exclude_purchased`: reads the user's vector and, as one more column after it,
    /// the user's recently bought items, in one store read.
    pub user_plan: Option<Arc<ReadPlan>>,
    pub refresh: Duration,
}

/// A pricing pipeline's parts.
#[derive(Debug, Clone)]
pub struct Pricing {
    pub section: PricingSection,
    /// The item entity's join key.
    pub item_key: (String, KeyType),
    /// Positions in the input vector of the cost and current-price features.
    pub cost: usize,
    pub current_price: usize,
    /// The view that lists the items priced (the current price's view).
    pub catalog_view: Arc<FeatureView>,
    pub refresh: Duration,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    /// The main feature service: the model's input (for recommendations: the user's vector).
    pub input: Service,
    /// Checks on request fields beyond their types (the feature store's rules).
    pub field_rules: BTreeMap<String, Rules>,
    pub budget: Duration,
    pub max_batch: usize,
    pub model: ModelSection,
    pub fraud: Option<FraudSection>,
    /// The fraud pipeline's rule-based answer.
    pub fallback: Option<Fallback>,
    pub recs: Option<Recs>,
    pub pricing: Option<Pricing>,
}

impl Pipeline {
    /// The model an experiment on this pipeline routes between versions of: the ranker of a
    /// recommendations pipeline (the towers and the index stay as they are), else the model.
    pub fn experiment_model(&self) -> &ModelSection {
        match &self.recs {
            Some(r) => &r.section.ranker,
            None => &self.model,
        }
    }

    /// Resolves `file` (read from `path`) against the feature definitions.
    pub fn resolve(path: &Path, file: PipelineFile, registry: &Registry) -> Result<Pipeline, PipelineError> {
        let bad = |m: String| PipelineError::config(path, m);
        let name = match file.name {
            Some(n) => n,
            None => path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string(),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(format!(
                "pipeline name {name:?}: expected letters, digits, '_' or '-'"
            )));
        }
        let mut input = Service::resolve(path, "feature_service", &file.feature_service, registry)?;
        for field in file.field_rules.keys() {
            if !input.request_fields.contains_key(field) {
                return Err(bad(format!(
                    "field_rules.{field}: not a request field of this pipeline; its fields are {:?}",
                    input.request_fields.keys().collect::<Vec<_>>()
                )));
            }
        }
        for (feature, value) in &file.cold_start {
            let at = input
                .feature_names
                .iter()
                .position(|n| n == feature)
                .filter(|&i| input.feature_entity[i].is_some())
                .ok_or_else(|| {
                    bad(format!(
                        "cold_start.{feature}: not a stored feature of feature service {:?}",
                        file.feature_service
                    ))
                })?;
            input.cold_start[at] = Some(*value as f32);
        }
        if file.budget_ms == 0 {
            return Err(bad("budget_ms: expected a number of milliseconds > 0".into()));
        }
        if file.max_batch == 0 {
            return Err(bad("max_batch: expected at least 1".into()));
        }
        let section = |present: bool, key: &str| -> Result<(), PipelineError> {
            match (present, key == file.kind.name()) {
                (false, true) => Err(bad(format!("a {key} pipeline needs a [{key}] section"))),
                (true, false) => Err(bad(format!(
                    "[{key}]: this is a {} pipeline; only a {key} pipeline takes a [{key}] section",
                    file.kind.name()
                ))),
                _ => Ok(()),
            }
        };
        section(file.fraud.is_some(), "fraud")?;
        section(file.recommendations.is_some(), "recommendations")?;
        section(file.pricing.is_some(), "pricing")?;
        if let Some(f) = &file.fraud {
            let ok = |x: f64| (0.0..=1.0).contains(&x);
            if !ok(f.review_at) || !ok(f.decline_at) || f.review_at > f.decline_at {
                return Err(bad(format!(
                    "fraud: expected 0 <= review_at <= decline_at <= 1, got review_at = {}, decline_at = {}",
                    f.review_at, f.decline_at
                )));
            }
        }
        let fallback = match (file.kind, file.fallback) {
            (Kind::Fraud, None) => {
                return Err(bad(
                    "a fraud pipeline needs a [fallback] section (its rule-based score)".into(),
                ));
            }
            (Kind::Fraud, Some(f)) => Some(resolve_fallback(path, f, &input.request_fields)?),
            (kind, Some(_)) => {
                return Err(bad(format!(
                    "[fallback]: a {} pipeline's fallback is built in (recommendations: popular in-stock items; pricing: the current price); remove the section",
                    kind.name()
                )));
            }
            (_, None) => None,
        };
        let recs = match file.recommendations {
            Some(r) => Some(resolve_recs(path, r, &input, registry)?),
            None => None,
        };
        let pricing = match file.pricing {
            Some(p) => Some(resolve_pricing(path, p, &input).map_err(bad)?),
            None => None,
        };
        Ok(Pipeline {
            name,
            kind: file.kind,
            description: file.description,
            input,
            field_rules: file
                .field_rules
                .into_iter()
                .map(|(field, r)| {
                    let rules = Rules {
                        min: r.min,
                        max: r.max,
                        allowed: r
                            .allowed
                            .map(|a| a.into_iter().map(ferrite_features::Value::Str).collect()),
                        ..Rules::default()
                    };
                    (field, rules)
                })
                .collect(),
            budget: Duration::from_millis(file.budget_ms),
            max_batch: file.max_batch,
            model: file.model,
            fraud: file.fraud,
            fallback,
            recs,
            pricing,
        })
    }

    /// The decision for a model score.
    pub fn decide(&self, score: f64) -> Decision {
        match &self.fraud {
            Some(f) if score >= f.decline_at => Decision::Decline,
            Some(f) if score >= f.review_at => Decision::Review,
            _ => Decision::Approve,
        }
    }
}

fn resolve_recs(
    path: &Path,
    section: RecsSection,
    user: &Service,
    registry: &Registry,
) -> Result<Recs, PipelineError> {
    let bad = |m: String| PipelineError::config(path, m);
    let items = Service::resolve(
        path,
        "recommendations.item_service",
        &section.item_service,
        registry,
    )?;
    if !items.request_fields.is_empty() {
        return Err(bad(format!(
            "recommendations.item_service: {:?} reads request fields {:?}; an item's vector must come from stored features only (it is computed for the whole catalogue)",
            items.name,
            items.request_fields.keys().collect::<Vec<_>>()
        )));
    }
    let item_key = items.single_key("recommendations.item_service").map_err(bad)?;
    let catalog_view = items
        .refs
        .iter()
        .find_map(|r| match r {
            FeatureRef::Stored { view, .. } => Some(view.clone()),
            FeatureRef::Request { .. } => None,
        })
        .ok_or_else(|| {
            bad(format!(
                "recommendations.item_service: {:?} has no stored feature to list the catalogue from",
                items.name
            ))
        })?;
    let category_ref = registry
        .resolve_refs(std::slice::from_ref(&section.category))
        .map_err(|e| bad(format!("recommendations.category: {e}")))?;
    match category_ref.first() {
        Some(FeatureRef::Stored { view, .. }) if view.join_keys == [item_key.0.clone()] => {}
        _ => {
            return Err(bad(format!(
                "recommendations.category: expected a stored feature `view:feature` of the item entity ({:?}), got {:?}",
                item_key.0, section.category
            )));
        }
    }
    let category_plan =
        ReadPlan::new(registry, &category_ref).map_err(|e| bad(format!("recommendations.category: {e}")))?;
    let in_stock = items
        .position("recommendations.in_stock", &section.in_stock)
        .map_err(bad)?;
    let active = items
        .position("recommendations.active", &section.active)
        .map_err(bad)?;
    let popularity = items
        .position("recommendations.popularity", &section.popularity)
        .map_err(bad)?;
    let live = |key: &str, at: usize| match &items.refs[at] {
        r @ FeatureRef::Stored { .. } => Ok(r.clone()),
        FeatureRef::Request { .. } => Err(bad(format!(
            "{key}: {:?} is a request-time feature; availability is re-checked from a stored feature",
            items.feature_names[at]
        ))),
    };
    let live_refs = [
        live("recommendations.in_stock", in_stock)?,
        live("recommendations.active", active)?,
    ];
    let live_plan = ReadPlan::new(registry, &live_refs).map_err(|e| bad(format!("recommendations: {e}")))?;
    let user_key = user.single_key("feature_service").map_err(bad)?;
    let user_plan = match &section.exclude_purchased {
        None => None,
        Some(feature) => {
            let refs = registry
                .resolve_refs(std::slice::from_ref(feature))
                .map_err(|e| bad(format!("recommendations.exclude_purchased: {e}")))?;
            match refs.first() {
                Some(r @ FeatureRef::Stored { view, .. })
                    if refs.len() == 1
                        && view.join_keys == [user_key.0.clone()]
                        && r.dtype() == DType::String => {}
                _ => {
                    return Err(bad(format!(
                        "recommendations.exclude_purchased: expected one stored string feature `view:feature` of the user entity ({:?}), got {feature:?}",
                        user_key.0
                    )));
                }
            }
            let both: Vec<FeatureRef> = user.refs.iter().cloned().chain(refs).collect();
            Some(Arc::new(ReadPlan::new(registry, &both).map_err(|e| {
                bad(format!("recommendations.exclude_purchased: {e}"))
            })?))
        }
    };
    if section.candidates == 0 || section.top_k == 0 || section.max_top_k < section.top_k {
        return Err(bad(format!(
            "recommendations: expected candidates >= 1 and 1 <= top_k <= max_top_k, got candidates = {}, top_k = {}, max_top_k = {}",
            section.candidates, section.top_k, section.max_top_k
        )));
    }
    if section.refresh_s == 0 {
        return Err(bad("recommendations.refresh_s: expected seconds > 0".into()));
    }
    Ok(Recs {
        refresh: Duration::from_secs(section.refresh_s),
        section,
        items,
        item_key,
        catalog_view,
        category_plan: Arc::new(category_plan),
        in_stock,
        active,
        popularity,
        live_plan: Arc::new(live_plan),
        user_plan,
    })
}

fn resolve_pricing(path: &Path, section: PricingSection, input: &Service) -> Result<Pricing, String> {
    let _ = path;
    let item_key = input.single_key("feature_service")?;
    match input.request_fields.get(&section.price_field) {
        Some(DType::Float) => {}
        other => {
            return Err(format!(
                "pricing.price_field: {:?} must be a float request field of feature service {:?}, it is {}",
                section.price_field,
                input.name,
                other.map_or("not one", |d| d.name())
            ));
        }
    }
    let cost = input.stored_position("pricing.cost", &section.cost)?;
    let current_price = input.stored_position("pricing.current_price", &section.current_price)?;
    let catalog_view = match &input.refs[current_price] {
        FeatureRef::Stored { view, .. } => view.clone(),
        FeatureRef::Request { .. } => unreachable!("checked to be stored above"),
    };
    if section.candidates < 2 {
        return Err(format!(
            "pricing.candidates: expected at least 2 candidate prices, got {}",
            section.candidates
        ));
    }
    if !(section.min_margin.is_finite() && section.min_margin > -1.0) {
        return Err(format!(
            "pricing.min_margin: expected a fraction > -1 (0.1 = price at least cost + 10 %), got {}",
            section.min_margin
        ));
    }
    if !(section.max_change.is_finite() && section.max_change > 0.0 && section.max_change < 1.0) {
        return Err(format!(
            "pricing.max_change: expected a fraction in (0, 1) (0.1 = at most 10 % a day), got {}",
            section.max_change
        ));
    }
    for (i, e) in section.endings.iter().enumerate() {
        if !(e.step > 0.0 && e.at >= 0.0 && e.at < e.step) {
            return Err(format!(
                "pricing.endings[{i}]: expected step > 0 and 0 <= at < step, got step = {}, at = {}",
                e.step, e.at
            ));
        }
    }
    if section.refresh_s == 0 {
        return Err("pricing.refresh_s: expected seconds > 0".into());
    }
    Ok(Pricing {
        refresh: Duration::from_secs(section.refresh_s),
        section,
        item_key,
        cost,
        current_price,
        catalog_view,
    })
}

fn resolve_fallback(
    path: &Path,
    section: FallbackSection,
    fields: &BTreeMap<String, DType>,
) -> Result<Fallback, PipelineError> {
    let type_of = |input: &Input| match input {
        Input::Request(name) => fields.get(name).copied().ok_or_else(|| {
            format!(
                "{name:?} is not a request field of this pipeline; its fields are {:?}",
                fields.keys().collect::<Vec<_>>()
            )
        }),
        Input::Feature { view, feature } => Err(format!(
            "{view}.{feature}: a fallback reads request fields only (it runs when the store cannot answer)"
        )),
    };
    let expr = Expr::parse(&section.score, &type_of)
        .map_err(|e| PipelineError::config(path, format!("fallback.score: {e}")))?;
    if !matches!(expr.dtype(), DType::Float | DType::Int) {
        return Err(PipelineError::config(
            path,
            format!(
                "fallback.score: expected a number, the expression is {}",
                expr.dtype()
            ),
        ));
    }
    let decision = match section.decision.as_deref() {
        None => Decision::Review,
        Some(d) => Decision::parse(d).ok_or_else(|| {
            PipelineError::config(
                path,
                format!("fallback.decision: expected approve, review or decline, got {d:?}"),
            )
        })?,
    };
    Ok(Fallback {
        expression: section.score,
        expr,
        default_score: section.default_score,
        decision,
    })
}

/// Every pipeline of a directory (`*.toml`, one pipeline a file), by name.
#[derive(Debug, Clone, Default)]
pub struct PipelineSet {
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
}

impl PipelineSet {
    /// Loads `dir/*.toml`. A directory that does not exist holds no pipelines.
    pub fn load(dir: &Path, registry: &Registry) -> Result<PipelineSet, PipelineError> {
        let mut set = PipelineSet::default();
        if !dir.exists() {
            return Ok(set);
        }
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| PipelineError::config(dir, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for path in files {
            let pipeline = Pipeline::resolve(&path, PipelineFile::read(&path)?, registry)?;
            if set.pipelines.contains_key(&pipeline.name) {
                return Err(PipelineError::config(
                    &path,
                    format!(
                        "a pipeline named {:?} is already defined in {}",
                        pipeline.name,
                        dir.display()
                    ),
                ));
            }
            set.pipelines.insert(pipeline.name.clone(), Arc::new(pipeline));
        }
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Result<&Arc<Pipeline>, PipelineError> {
        self.pipelines.get(name).ok_or_else(|| {
            PipelineError::NotFound(format!(
                "pipeline: no pipeline named {name:?}; declared: {:?}",
                self.pipelines.keys().collect::<Vec<_>>()
            ))
        })
    }
}
