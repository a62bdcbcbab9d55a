//! Declarative feature definitions: `features/*.toml` files with entities, sources,
//! feature views, request views (request-time features) and feature services.
//!
//! `Registry::load` parses every file and checks names and references, collecting every
//! problem with its file and line; `Registry::check_sources` then compares the views with
//! the Parquet schemas (what `ferrite validate` runs).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use polars::prelude::DataType as PlType;
use serde::Deserialize;
use toml::Spanned;

use crate::expr::{Expr, Input};
use crate::offline::ParquetSource;
use crate::value::{DType, KeyType, Micros, Value, parse_duration};

/// Where a definition was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One problem found in the definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

// ---- The file format -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    entity: Vec<Spanned<EntityDef>>,
    #[serde(default)]
    source: Vec<Spanned<SourceDef>>,
    #[serde(default)]
    feature_view: Vec<Spanned<ViewDef>>,
    #[serde(default)]
    request_view: Vec<Spanned<RequestViewDef>>,
    #[serde(default)]
    feature_service: Vec<Spanned<ServiceDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityDef {
    name: String,
    join_keys: Vec<String>,
    key_type: KeyType,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceDef {
    name: String,
    path: String,
    #[serde(default = "default_timestamp_field")]
    timestamp_field: String,
    created_timestamp_field: Option<String>,
    push_dir: Option<String>,
    #[serde(default)]
    description: String,
}

fn default_timestamp_field() -> String {
    "event_timestamp".into()
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewDef {
    name: String,
    entities: Vec<String>,
    source: String,
    #[serde(default = "zero")]
    ttl: String,
    #[serde(default = "default_true")]
    online: bool,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    description: String,
    features: Vec<Spanned<FeatureDef>>,
}

fn zero() -> String {
    "0".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureDef {
    name: String,
    dtype: DType,
    column: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    not_null: bool,
    min: Option<f64>,
    max: Option<f64>,
    allowed: Option<Vec<toml::Value>>,
    max_staleness: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestViewDef {
    name: String,
    #[serde(default)]
    request_fields: BTreeMap<String, DType>,
    #[serde(default)]
    description: String,
    features: Vec<Spanned<RequestFeatureDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFeatureDef {
    name: String,
    dtype: DType,
    expression: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceDef {
    name: String,
    features: Vec<String>,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

// ---- The resolved registry ------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Entity {
    pub name: String,
    pub join_keys: Vec<String>,
    pub key_type: KeyType,
    pub description: String,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    /// The path or glob as written, resolved against the data directory.
    pub path: PathBuf,
    pub timestamp_field: String,
    pub created_timestamp_field: Option<String>,
    /// Where pushed rows are appended as Parquet files, if the source takes pushes.
    pub push_dir: Option<PathBuf>,
    pub description: String,
    pub location: Location,
}

impl Source {
    /// The Parquet files to scan: the path (or glob) plus any pushed files.
    pub fn parquet(&self) -> ParquetSource {
        let mut paths = vec![self.path.clone()];
        if let Some(dir) = &self.push_dir {
            let has_files = std::fs::read_dir(dir).is_ok_and(|mut d| {
                d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "parquet")))
            });
            if has_files {
                paths.push(dir.join("*.parquet"));
            }
        }
        ParquetSource::from_paths(paths)
    }
}

/// Data-quality rules of one feature; a row that breaks one is not written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    pub not_null: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub allowed: Option<Vec<Value>>,
    /// The row's event time may be at most this old when it is ingested.
    pub max_staleness: Option<Micros>,
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        *self == Rules::default()
    }

    /// Checks one value; `age` is how old the row is at ingestion.
    pub fn check(&self, value: &Value, age: Micros) -> Result<(), String> {
        if value.is_null() {
            return if self.not_null {
                Err("is null".into())
            } else {
                Ok(())
            };
        }
        // NaN and ±inf are never stored: no rule or model can compare them meaningfully.
        match value {
            Value::Float(x) if !x.is_finite() => return Err(format!("{x} is not a finite number")),
            Value::FloatVec(v) => {
                if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                    return Err(format!("element {i} is {x}, not a finite number"));
                }
            }
            _ => {}
        }
        if let Some(x) = value.as_f64() {
            if let Some(min) = self.min
                && x < min
            {
                return Err(format!("{value} is below the minimum {min}"));
            }
            if let Some(max) = self.max
                && x > max
            {
                return Err(format!("{value} is above the maximum {max}"));
            }
        }
        if let Some(allowed) = &self.allowed
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
            return Err(format!("{value} is not one of [{}]", list.join(", ")));
        }
        if let Some(limit) = self.max_staleness
            && age > limit
        {
            return Err(format!(
                "the row is {} old, more than the maximum staleness {}",
                humantime::format_duration(std::time::Duration::from_secs((age / 1_000_000).max(0) as u64)),
                humantime::format_duration(std::time::Duration::from_secs((limit / 1_000_000) as u64))
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Feature {
    pub name: String,
    pub dtype: DType,
    /// The source column (defaults to the feature name).
    pub column: String,
    pub description: String,
    pub rules: Rules,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub struct FeatureView {
    pub name: String,
    pub entities: Vec<String>,
    /// The join keys of all the view's entities, in order, with their types.
    pub join_keys: Vec<String>,
    pub key_types: Vec<KeyType>,
    pub source: Arc<Source>,
    /// How long a value stays valid after its event time; 0 means forever.
    pub ttl: Micros,
    pub online: bool,
    pub owner: String,
    pub tags: BTreeMap<String, String>,
    pub description: String,
    pub features: Vec<Feature>,
    /// A hash of the stored layout (join keys, feature names and types). Online rows carry
    /// it so that a row written under another layout is never decoded as this one.
    pub fingerprint: u64,
    /// How far ahead of the server's clock a pushed event time may be (the registry's
    /// `Limits::max_clock_skew`, set by `Registry::with_limits`).
    pub max_clock_skew: Micros,
    pub location: Location,
}

impl FeatureView {
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }

    /// Whether a value with this event time has outlived the TTL at `now`.
    pub fn is_expired(&self, event_ts: Micros, now: Micros) -> bool {
        self.ttl > 0 && event_ts < now.saturating_sub(self.ttl)
    }

    pub fn has_rules(&self) -> bool {
        self.features.iter().any(|f| !f.rules.is_empty())
    }
}

#[derive(Debug, Clone)]
pub struct RequestFeature {
    pub name: String,
    pub dtype: DType,
    pub expression: String,
    pub expr: Expr,
    pub description: String,
}

/// Features computed at request time from request fields and stored features.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub name: String,
    pub request_fields: BTreeMap<String, DType>,
    pub description: String,
    pub features: Vec<RequestFeature>,
    pub location: Location,
}

/// A feature as a caller names it: `view:feature`.
#[derive(Debug, Clone)]
pub enum FeatureRef {
    Stored { view: Arc<FeatureView>, index: usize },
    Request { view: Arc<RequestView>, index: usize },
}

impl FeatureRef {
    /// `view:feature`. Built by hand: every online read names each feature it answers, and
    /// `format!` costs about six times as many instructions (callgrind: 29 k of a 1 × 30
    /// read's 130 k).
    pub fn name(&self) -> String {
        let (view, feature) = match self {
            FeatureRef::Stored { view, index } => (view.name.as_str(), view.features[*index].name.as_str()),
            FeatureRef::Request { view, index } => (view.name.as_str(), view.features[*index].name.as_str()),
        };
        let mut name = String::with_capacity(view.len() + 1 + feature.len());
        name.push_str(view);
        name.push(':');
        name.push_str(feature);
        name
    }

    pub fn feature_name(&self) -> &str {
        match self {
            FeatureRef::Stored { view, index } => &view.features[*index].name,
            FeatureRef::Request { view, index } => &view.features[*index].name,
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            FeatureRef::Stored { view, index } => view.features[*index].dtype,
            FeatureRef::Request { view, index } => view.features[*index].dtype,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FeatureService {
    pub name: String,
    pub features: Vec<String>,
    pub owner: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub location: Location,
}

/// All definitions of a feature repository, resolved and checked.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub root: PathBuf,
    pub data_dir: PathBuf,
    pub entities: BTreeMap<String, Entity>,
    pub sources: BTreeMap<String, Arc<Source>>,
    pub views: BTreeMap<String, Arc<FeatureView>>,
    pub request_views: BTreeMap<String, Arc<RequestView>>,
    pub services: BTreeMap<String, FeatureService>,
    /// Bounds on reads and pushes (`Registry::with_limits`); the defaults unless configured.
    pub limits: crate::serving::Limits,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with('-')
}

fn toml_to_value(v: &toml::Value) -> Option<Value> {
    match v {
        toml::Value::String(s) => Some(Value::Str(s.clone())),
        toml::Value::Integer(i) => Some(Value::Int(*i)),
        toml::Value::Float(f) => Some(Value::Float(*f)),
        toml::Value::Boolean(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

/// FNV-1a: a stable 64-bit hash (std's hasher may change between Rust releases).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

struct Loader {
    problems: Vec<Problem>,
}

impl Loader {
    fn problem(&mut self, location: &Location, message: impl Into<String>) {
        self.problems.push(Problem {
            location: location.clone(),
            message: message.into(),
        });
    }
}

impl Registry {
    /// Loads every `*.toml` file in `root` (not recursive). Sources resolve against
    /// `data_dir`, which defaults to `<root>/data`.
    pub fn load(root: &Path, data_dir: Option<&Path>) -> Result<Registry, Problems> {
        let data_dir = data_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.join("data"));
        let mut files: Vec<PathBuf> = match std::fs::read_dir(root) {
            Ok(dir) => dir
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect(),
            Err(e) => {
                return Err(Problems(vec![Problem {
                    location: Location {
                        file: root.to_path_buf(),
                        line: 0,
                    },
                    message: format!("cannot read the feature repository: {e}"),
                }]));
            }
        };
        files.sort();
        let mut loader = Loader { problems: Vec::new() };
        let mut docs = Vec::new();
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    loader.problem(
                        &Location {
                            file: file.clone(),
                            line: 0,
                        },
                        format!("cannot read: {e}"),
                    );
                    continue;
                }
            };
            match toml::from_str::<FileDoc>(&text) {
                Ok(doc) => docs.push((file, text, doc)),
                Err(e) => {
                    let line = e.span().map(|s| line_of(&text, s.start)).unwrap_or(0);
                    loader.problem(
                        &Location {
                            file: file.clone(),
                            line,
                        },
                        e.message().trim().to_string(),
                    );
                }
            }
        }
        let mut reg = Registry {
            root: root.to_path_buf(),
            data_dir: data_dir.clone(),
            ..Default::default()
        };
        let loc = |file: &Path, text: &str, span: std::ops::Range<usize>| Location {
            file: file.to_path_buf(),
            line: line_of(text, span.start),
        };

        // Entities and sources first: views refer to them.
        for (file, text, doc) in &docs {
            for e in &doc.entity {
                let location = loc(file, text, e.span());
                let e = e.get_ref();
                if !valid_name(&e.name) {
                    loader.problem(
                        &location,
                        format!("entity name {:?} must be letters, digits, _ or -", e.name),
                    );
                } else if reg.entities.contains_key(&e.name) {
                    loader.problem(&location, format!("entity {:?} is defined twice", e.name));
                }
                if e.join_keys.is_empty() {
                    loader.problem(
                        &location,
                        format!("entity {:?} needs at least one join key", e.name),
                    );
                }
                reg.entities.insert(
                    e.name.clone(),
                    Entity {
                        name: e.name.clone(),
                        join_keys: e.join_keys.clone(),
                        key_type: e.key_type,
                        description: e.description.clone(),
                        location,
                    },
                );
            }
            for s in &doc.source {
                let location = loc(file, text, s.span());
                let s = s.get_ref();
                if reg.sources.contains_key(&s.name) {
                    loader.problem(&location, format!("source {:?} is defined twice", s.name));
                }
                if s.path.split('/').any(|c| c == "..") {
                    loader.problem(
                        &location,
                        format!("source path {:?} may not contain '..'", s.path),
                    );
                }
                reg.sources.insert(
                    s.name.clone(),
                    Arc::new(Source {
                        name: s.name.clone(),
                        path: data_dir.join(&s.path),
                        timestamp_field: s.timestamp_field.clone(),
                        created_timestamp_field: s.created_timestamp_field.clone(),
                        push_dir: s.push_dir.as_ref().map(|d| data_dir.join(d)),
                        description: s.description.clone(),
                        location,
                    }),
                );
            }
        }

        for (file, text, doc) in &docs {
            for v in &doc.feature_view {
                let location = loc(file, text, v.span());
                if let Some(view) = reg.resolve_view(&mut loader, v.get_ref(), location, file, text) {
                    reg.views.insert(view.name.clone(), Arc::new(view));
                }
            }
        }
        // Request views read stored features, so they come after all feature views.
        for (file, text, doc) in &docs {
            for v in &doc.request_view {
                let location = loc(file, text, v.span());
                if let Some(view) = reg.resolve_request_view(&mut loader, v.get_ref(), location, file, text) {
                    reg.request_views.insert(view.name.clone(), Arc::new(view));
                }
            }
        }
        for (file, text, doc) in &docs {
            for s in &doc.feature_service {
                let location = loc(file, text, s.span());
                let s = s.get_ref();
                if reg.services.contains_key(&s.name) {
                    loader.problem(
                        &location,
                        format!("feature service {:?} is defined twice", s.name),
                    );
                }
                match reg.resolve_refs(&s.features) {
                    Ok(refs) => {
                        let mut seen = HashSet::new();
                        for r in &refs {
                            if !seen.insert(r.feature_name().to_string()) {
                                loader.problem(
                                    &location,
                                    format!(
                                        "feature service {:?} has two features named {:?}; training sets need unique column names",
                                        s.name,
                                        r.feature_name()
                                    ),
                                );
                            }
                        }
                    }
                    Err(e) => loader.problem(&location, format!("feature service {:?}: {e}", s.name)),
                }
                reg.services.insert(
                    s.name.clone(),
                    FeatureService {
                        name: s.name.clone(),
                        features: s.features.clone(),
                        owner: s.owner.clone(),
                        description: s.description.clone(),
                        tags: s.tags.clone(),
                        location,
                    },
                );
            }
        }
        let names: Vec<(&String, &Location)> = reg
            .views
            .values()
            .map(|v| (&v.name, &v.location))
            .chain(reg.request_views.values().map(|v| (&v.name, &v.location)))
            .collect();
        let mut seen = HashSet::new();
        let mut clashes = Vec::new();
        for (name, location) in names {
            if !seen.insert(name) {
                clashes.push((location.clone(), format!("view name {name:?} is used twice")));
            }
        }
        for (l, m) in clashes {
            loader.problem(&l, m);
        }
        if loader.problems.is_empty() {
            Ok(reg)
        } else {
            Err(Problems(loader.problems))
        }
    }

    fn resolve_view(
        &self,
        loader: &mut Loader,
        v: &ViewDef,
        location: Location,
        file: &Path,
        text: &str,
    ) -> Option<FeatureView> {
        if !valid_name(&v.name) {
            loader.problem(
                &location,
                format!("view name {:?} must be letters, digits, _ or -", v.name),
            );
        }
        if self.views.contains_key(&v.name) {
            loader.problem(&location, format!("feature view {:?} is defined twice", v.name));
        }
        let mut join_keys = Vec::new();
        let mut key_types = Vec::new();
        for e in &v.entities {
            match self.entities.get(e) {
                Some(entity) => {
                    for k in &entity.join_keys {
                        join_keys.push(k.clone());
                        key_types.push(entity.key_type);
                    }
                }
                None => loader.problem(
                    &location,
                    format!(
                        "feature view {:?}: unknown entity {e:?}; defined: {:?}",
                        v.name,
                        self.entities.keys().collect::<Vec<_>>()
                    ),
                ),
            }
        }
        if v.entities.is_empty() {
            loader.problem(
                &location,
                format!("feature view {:?} needs at least one entity", v.name),
            );
        }
        let source = match self.sources.get(&v.source) {
            Some(s) => Some(s.clone()),
            None => {
                loader.problem(
                    &location,
                    format!(
                        "feature view {:?}: unknown source {:?}; defined: {:?}",
                        v.name,
                        v.source,
                        self.sources.keys().collect::<Vec<_>>()
                    ),
                );
                None
            }
        };
        let ttl = parse_duration(&v.ttl).unwrap_or_else(|e| {
            loader.problem(&location, format!("feature view {:?}: ttl {e}", v.name));
            0
        });
        let mut features = Vec::new();
        let mut names = HashSet::new();
        for f in &v.features {
            let floc = Location {
                file: file.to_path_buf(),
                line: line_of(text, f.span().start),
            };
            let f = f.get_ref();
            if !valid_name(&f.name) {
                loader.problem(
                    &floc,
                    format!("feature name {:?} must be letters, digits, _ or -", f.name),
                );
            }
            if !names.insert(f.name.clone()) {
                loader.problem(
                    &floc,
                    format!("feature {:?} appears twice in view {:?}", f.name, v.name),
                );
            }
            let rules = resolve_rules(loader, f, &floc);
            features.push(Feature {
                name: f.name.clone(),
                dtype: f.dtype,
                column: f.column.clone().unwrap_or_else(|| f.name.clone()),
                description: f.description.clone(),
                rules,
                location: floc,
            });
        }
        if features.is_empty() {
            loader.problem(&location, format!("feature view {:?} has no features", v.name));
        }
        // A view with problems is still registered (when its source is known) so that
        // references to it do not add a cascade of "unknown view" problems; the load fails
        // anyway because of the problems already recorded.
        let mut parts: Vec<&str> = vec!["v1"];
        parts.extend(join_keys.iter().map(String::as_str));
        for f in &features {
            parts.push(&f.name);
            parts.push(f.dtype.name());
        }
        let fingerprint = fnv1a(&parts);
        Some(FeatureView {
            name: v.name.clone(),
            entities: v.entities.clone(),
            join_keys,
            key_types,
            source: source?,
            ttl,
            online: v.online,
            owner: v.owner.clone(),
            tags: v.tags.clone(),
            description: v.description.clone(),
            features,
            fingerprint,
            max_clock_skew: crate::serving::Limits::default().max_clock_skew,
            location,
        })
    }

    fn resolve_request_view(
        &self,
        loader: &mut Loader,
        v: &RequestViewDef,
        location: Location,
        file: &Path,
        text: &str,
    ) -> Option<RequestView> {
        if !valid_name(&v.name) {
            loader.problem(
                &location,
                format!("view name {:?} must be letters, digits, _ or -", v.name),
            );
        }
        let type_of = |input: &Input| -> Result<DType, String> {
            match input {
                Input::Request(name) => v.request_fields.get(name).copied().ok_or_else(|| {
                    format!(
                        "unknown request field {name:?}; declared in request_fields: {:?}",
                        v.request_fields.keys().collect::<Vec<_>>()
                    )
                }),
                Input::Feature { view, feature } => {
                    let fv = self
                        .views
                        .get(view)
                        .ok_or_else(|| format!("unknown feature view {view:?}"))?;
                    fv.features
                        .iter()
                        .find(|f| f.name == *feature)
                        .map(|f| f.dtype)
                        .ok_or_else(|| format!("feature view {view:?} has no feature {feature:?}"))
                }
            }
        };
        let mut features = Vec::new();
        for f in &v.features {
            let floc = Location {
                file: file.to_path_buf(),
                line: line_of(text, f.span().start),
            };
            let f = f.get_ref();
            match Expr::parse(&f.expression, &type_of) {
                Ok(expr) => {
                    let fits =
                        expr.dtype() == f.dtype || (expr.dtype() == DType::Int && f.dtype == DType::Float);
                    if !fits {
                        loader.problem(
                            &floc,
                            format!(
                                "request feature {:?} is declared {} but its expression gives {}",
                                f.name,
                                f.dtype,
                                expr.dtype()
                            ),
                        );
                    }
                    features.push(RequestFeature {
                        name: f.name.clone(),
                        dtype: f.dtype,
                        expression: f.expression.clone(),
                        expr,
                        description: f.description.clone(),
                    });
                }
                Err(e) => loader.problem(&floc, format!("request feature {:?}: {e}", f.name)),
            }
        }
        Some(RequestView {
            name: v.name.clone(),
            request_fields: v.request_fields.clone(),
            description: v.description.clone(),
            features,
            location,
        })
    }

    /// Resolves `view:feature` (or `view:*`) references.
    pub fn resolve_refs(&self, refs: &[String]) -> Result<Vec<FeatureRef>, String> {
        let mut out = Vec::new();
        for r in refs {
            let (view, feature) = r
                .split_once(':')
                .ok_or_else(|| format!("feature reference {r:?} must look like \"view:feature\""))?;
            if let Some(v) = self.views.get(view) {
                if feature == "*" {
                    out.extend((0..v.features.len()).map(|index| FeatureRef::Stored {
                        view: v.clone(),
                        index,
                    }));
                } else {
                    let index = v.feature_index(feature).ok_or_else(|| {
                        format!(
                            "feature view {view:?} has no feature {feature:?}; it has {:?}",
                            v.features.iter().map(|f| &f.name).collect::<Vec<_>>()
                        )
                    })?;
                    out.push(FeatureRef::Stored {
                        view: v.clone(),
                        index,
                    });
                }
            } else if let Some(v) = self.request_views.get(view) {
                if feature == "*" {
                    out.extend((0..v.features.len()).map(|index| FeatureRef::Request {
                        view: v.clone(),
                        index,
                    }));
                } else {
                    let index = v.features.iter().position(|f| f.name == feature).ok_or_else(|| {
                        format!(
                            "request view {view:?} has no feature {feature:?}; it has {:?}",
                            v.features.iter().map(|f| &f.name).collect::<Vec<_>>()
                        )
                    })?;
                    out.push(FeatureRef::Request {
                        view: v.clone(),
                        index,
                    });
                }
            } else {
                return Err(format!(
                    "unknown feature view {view:?} in {r:?}; defined: {:?}",
                    self.views
                        .keys()
                        .chain(self.request_views.keys())
                        .collect::<Vec<_>>()
                ));
            }
        }
        Ok(out)
    }

    /// The features of a service, resolved.
    pub fn service_refs(&self, service: &str) -> Result<Vec<FeatureRef>, String> {
        let s = self.services.get(service).ok_or_else(|| {
            format!(
                "unknown feature service {service:?}; defined: {:?}",
                self.services.keys().collect::<Vec<_>>()
            )
        })?;
        self.resolve_refs(&s.features)
    }

    /// Sets the bounds on reads and pushes (from the server's config) for every view.
    pub fn with_limits(mut self, limits: crate::serving::Limits) -> Registry {
        self.limits = limits;
        for view in self.views.values_mut() {
            Arc::make_mut(view).max_clock_skew = limits.max_clock_skew;
        }
        self
    }

    pub fn view(&self, name: &str) -> Result<&Arc<FeatureView>, String> {
        self.views.get(name).ok_or_else(|| {
            format!(
                "unknown feature view {name:?}; defined: {:?}",
                self.views.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Compares every feature view with its source's Parquet schema (read from the file
    /// footers only): columns present, types compatible.
    pub fn check_sources(&self) -> Vec<Problem> {
        self.views.values().flat_map(|v| check_view(v)).collect()
    }
}

/// Compares one view with its source's Parquet schema.
pub fn check_view(view: &FeatureView) -> Vec<Problem> {
    let mut problems = Vec::new();
    let source = &view.source;
    let schema = match source.parquet().schema() {
        Ok(s) => s,
        Err(e) => {
            problems.push(Problem {
                location: source.location.clone(),
                message: format!("source {:?}: {e}", source.name),
            });
            return problems;
        }
    };
    let file = source.path.display();
    let mut expect = |location: &Location, column: &str, what: &str, ok: &dyn Fn(&PlType) -> bool| {
        match schema.get(column) {
            None => problems.push(Problem {
                location: location.clone(),
                message: format!(
                    "{file}: missing column {column:?} ({what}); the file has {:?}",
                    schema.iter_names().collect::<Vec<_>>()
                ),
            }),
            Some(t) if !ok(t) => problems.push(Problem {
                location: location.clone(),
                message: format!(
                    "{file}: column {column:?} is {t} but {what} must be {}",
                    what_type(what)
                ),
            }),
            Some(_) => {}
        }
    };
    for (key, kt) in view.join_keys.iter().zip(&view.key_types) {
        let kt = *kt;
        expect(&view.location, key, key_kind(kt), &move |t| {
            key_type_matches(kt, t)
        });
    }
    expect(
        &source.location,
        &source.timestamp_field,
        "the event timestamp",
        &is_time,
    );
    if let Some(c) = &source.created_timestamp_field {
        expect(&source.location, c, "the created timestamp", &is_time);
    }
    for f in &view.features {
        let dt = f.dtype;
        expect(&f.location, &f.column, dtype_kind(dt), &move |t| {
            dtype_matches(dt, t)
        });
    }
    problems
}

fn resolve_rules(loader: &mut Loader, f: &FeatureDef, floc: &Location) -> Rules {
    let numeric = f.dtype.is_numeric();
    if (f.min.is_some() || f.max.is_some()) && !numeric {
        loader.problem(
            floc,
            format!(
                "feature {:?}: min/max need an int or float feature, not {}",
                f.name, f.dtype
            ),
        );
    }
    if let (Some(min), Some(max)) = (f.min, f.max)
        && min > max
    {
        loader.problem(
            floc,
            format!("feature {:?}: min {min} is above max {max}", f.name),
        );
    }
    let allowed = f.allowed.as_ref().map(|list| {
        list.iter()
            .filter_map(|v| match toml_to_value(v).map(|x| x.coerce(f.dtype)) {
                Some(Ok(x)) => Some(x),
                _ => {
                    loader.problem(
                        floc,
                        format!("feature {:?}: allowed value {v} is not a {}", f.name, f.dtype),
                    );
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    if allowed.is_some() && !matches!(f.dtype, DType::Int | DType::String | DType::Bool) {
        loader.problem(
            floc,
            format!(
                "feature {:?}: allowed values need an int, string or bool feature",
                f.name
            ),
        );
    }
    let max_staleness = f.max_staleness.as_ref().and_then(|s| match parse_duration(s) {
        Ok(d) if d > 0 => Some(d),
        Ok(_) => None,
        Err(e) => {
            loader.problem(floc, format!("feature {:?}: max_staleness {e}", f.name));
            None
        }
    });
    Rules {
        not_null: f.not_null,
        min: f.min,
        max: f.max,
        allowed,
        max_staleness,
    }
}

fn key_kind(kt: KeyType) -> &'static str {
    match kt {
        KeyType::Int => "an int join key",
        KeyType::String => "a string join key",
    }
}

fn dtype_kind(dt: DType) -> &'static str {
    match dt {
        DType::Int => "an int feature",
        DType::Float => "a float feature",
        DType::String => "a string feature",
        DType::Bool => "a bool feature",
        DType::FloatVector => "a float_vector feature",
    }
}

fn what_type(what: &str) -> &'static str {
    match what {
        w if w.contains("timestamp") => "a Datetime or Date column",
        w if w.starts_with("an int") => "an integer column",
        w if w.starts_with("a float_vector") => "a list of floats",
        w if w.starts_with("a float") => "a float (or integer) column",
        w if w.starts_with("a string") => "a string column",
        _ => "a boolean column",
    }
}

fn is_time(t: &PlType) -> bool {
    matches!(t, PlType::Datetime(_, _) | PlType::Date)
}

fn is_int(t: &PlType) -> bool {
    matches!(t, PlType::Int32 | PlType::Int64 | PlType::UInt32 | PlType::UInt64)
}

pub(crate) fn key_type_matches(kt: KeyType, t: &PlType) -> bool {
    match kt {
        KeyType::Int => is_int(t),
        KeyType::String => matches!(t, PlType::String),
    }
}

pub(crate) fn dtype_matches(dt: DType, t: &PlType) -> bool {
    match dt {
        DType::Int => is_int(t),
        DType::Float => matches!(t, PlType::Float32 | PlType::Float64) || is_int(t),
        DType::String => matches!(t, PlType::String),
        DType::Bool => matches!(t, PlType::Boolean),
        DType::FloatVector => {
            matches!(t, PlType::List(inner) if matches!(**inner, PlType::Float32 | PlType::Float64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_break_the_rules_with_or_without_bounds() {
        let min0 = Rules {
            min: Some(0.0),
            ..Rules::default()
        };
        let err = min0.check(&Value::Float(f64::INFINITY), 0).unwrap_err();
        assert!(err.contains("inf is not a finite number"), "{err}");
        for rules in [Rules::default(), min0] {
            for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                assert!(rules.check(&Value::Float(x), 0).is_err(), "{x} with {rules:?}");
            }
            assert_eq!(rules.check(&Value::Float(1.0), 0), Ok(()));
        }
        let none = Rules::default();
        let err = none.check(&Value::FloatVec(vec![0.0, f32::NAN]), 0).unwrap_err();
        assert!(err.contains("element 1 is NaN"), "{err}");
        assert!(none.check(&Value::FloatVec(vec![f32::NEG_INFINITY]), 0).is_err());
        assert_eq!(none.check(&Value::FloatVec(vec![0.5, -1.0]), 0), Ok(()));
    }
}
