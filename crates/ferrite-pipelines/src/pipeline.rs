//! A pipeline resolved against the feature definitions: its features in model-input order,
//! the entity keys and request fields a call must carry, and its rules.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferrite_features::definitions::Rules;
use ferrite_features::expr::{Expr, Input};
use ferrite_features::serving::ReadPlan;
use ferrite_features::{DType, FeatureRef, KeyType, Registry};

use crate::PipelineError;
use crate::config::{FallbackSection, FraudSection, Kind, ModelSection, PipelineFile};

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

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub kind: Kind,
    pub description: String,
    pub feature_service: String,
    /// The model's input vector: these features, in this order.
    pub refs: Vec<FeatureRef>,
    /// How the online store is read for them, resolved once.
    pub plan: Arc<ReadPlan>,
    /// Each ref's feature name (the training set's column name).
    pub feature_names: Vec<String>,
    /// Join keys a call must carry, with their types.
    pub entity_keys: Vec<(String, KeyType)>,
    /// Request fields a call must carry, with their types.
    pub request_fields: BTreeMap<String, DType>,
    /// Checks on request fields beyond their types (the feature store's rules).
    pub field_rules: BTreeMap<String, Rules>,
    pub budget: Duration,
    pub max_batch: usize,
    pub model: ModelSection,
    pub fraud: Option<FraudSection>,
    pub fallback: Fallback,
    /// Per feature: its value when its entity is unknown (`None`: missing, NaN).
    pub cold_start: Vec<Option<f32>>,
    /// Per feature: the entity (an index into `entities`) whose stored row it comes from;
    /// `None` for request-time features.
    pub feature_entity: Vec<Option<usize>>,
    /// The join-key sets of the stored views, e.g. `["user_id"]`, `["merchant_id"]`.
    pub entities: Vec<Vec<String>>,
}

impl Pipeline {
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
        let refs = registry
            .service_refs(&file.feature_service)
            .map_err(|e| bad(format!("feature_service: {e}")))?;
        let mut feature_names = Vec::with_capacity(refs.len());
        let mut entities: Vec<Vec<String>> = Vec::new();
        let mut entity_keys: Vec<(String, KeyType)> = Vec::new();
        let mut feature_entity = Vec::with_capacity(refs.len());
        let mut request_fields: BTreeMap<String, DType> = BTreeMap::new();
        for r in &refs {
            let fname = r.feature_name().to_string();
            if feature_names.contains(&fname) {
                return Err(bad(format!(
                    "feature service {:?} has two features named {fname:?}; model inputs need unique names",
                    file.feature_service
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
        for field in file.field_rules.keys() {
            if !request_fields.contains_key(field) {
                return Err(bad(format!(
                    "field_rules.{field}: not a request field of this pipeline; its fields are {:?}",
                    request_fields.keys().collect::<Vec<_>>()
                )));
            }
        }
        let mut cold_start = vec![None; refs.len()];
        for (feature, value) in &file.cold_start {
            let at = feature_names
                .iter()
                .position(|n| n == feature)
                .filter(|&i| feature_entity[i].is_some())
                .ok_or_else(|| {
                    bad(format!(
                        "cold_start.{feature}: not a stored feature of feature service {:?}",
                        file.feature_service
                    ))
                })?;
            cold_start[at] = Some(*value as f32);
        }
        if file.budget_ms == 0 {
            return Err(bad("budget_ms: expected a number of milliseconds > 0".into()));
        }
        if file.max_batch == 0 {
            return Err(bad("max_batch: expected at least 1".into()));
        }
        let fraud = match (file.kind, file.fraud) {
            (Kind::Fraud, None) => return Err(bad("a fraud pipeline needs a [fraud] section".into())),
            (Kind::Fraud, Some(f)) => {
                let ok = |x: f64| (0.0..=1.0).contains(&x);
                if !ok(f.review_at) || !ok(f.decline_at) || f.review_at > f.decline_at {
                    return Err(bad(format!(
                        "fraud: expected 0 <= review_at <= decline_at <= 1, got review_at = {}, decline_at = {}",
                        f.review_at, f.decline_at
                    )));
                }
                Some(f)
            }
        };
        let fallback = resolve_fallback(path, file.fallback, &request_fields)?;
        let plan = ReadPlan::new(registry, &refs).map_err(|e| bad(format!("feature_service: {e}")))?;
        Ok(Pipeline {
            name,
            kind: file.kind,
            description: file.description,
            feature_service: file.feature_service,
            refs,
            plan: Arc::new(plan),
            feature_names,
            entity_keys,
            request_fields,
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
            fraud,
            fallback,
            cold_start,
            feature_entity,
            entities,
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
