//! Experiment config: one TOML file per experiment under an `experiments/` directory, with
//! defaults, `deny_unknown_fields` and validation that names the field and the value.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Tolerance on the sum of the arms' weights.
const WEIGHT_SUM_TOLERANCE: f64 = 1e-6;

/// One experiment on a target (a pipeline or a KServe model name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Unique; letters, digits, `_`, `-` and `.` (it names state files and Redis keys).
    pub name: String,
    /// The pipeline or KServe model whose calls this experiment splits.
    pub target: String,
    /// The request field the split is keyed on (`user_id`, `transaction_id`, ...).
    pub unit: String,
    /// Hash seed; defaults to `name`.
    #[serde(default)]
    pub seed: Option<String>,
    /// Share of units in the experiment, 0..=1; units outside get the stable (or first) arm.
    #[serde(default = "one")]
    pub coverage: f64,
    /// Bumping it reassigns every unit on purpose (it is appended to the seed) and starts a
    /// fresh canary.
    #[serde(default)]
    pub bucket_version: u32,
    /// GrowthBook hash version, 1 or 2.
    #[serde(default = "two")]
    pub hash_version: u8,
    pub variants: Vec<VariantConfig>,
    #[serde(default)]
    pub canary: Option<CanaryConfig>,
}

/// One variant: an arm that serves a share of units, or a shadow that runs beside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    pub name: String,
    /// The model version it runs: a number or a version label.
    pub model_version: ModelVersion,
    /// Share of covered units (arms only; the arms' weights sum to 1).
    #[serde(default)]
    pub weight: f64,
    #[serde(default)]
    pub kind: VariantKind,
}

/// A model version: a number (`3`) or a label (`"canary"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelVersion {
    Number(u64),
    Label(String),
}

impl std::fmt::Display for ModelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelVersion::Number(n) => write!(f, "{n}"),
            ModelVersion::Label(l) => f.write_str(l),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VariantKind {
    /// Serves the answer to the units it is assigned.
    #[default]
    Arm,
    /// Runs on a copy of the request; its answer is only compared, never served.
    Shadow,
}

/// A canary: `variant` judged against `stable` on live traffic, rolled back by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The arm under test.
    pub variant: String,
    /// The arm it is compared with and that takes over on rollback.
    pub stable: String,
    /// Canary requests needed before any judgement (and per step before a promotion).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Roll back only when the canary's error rate is above this...
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// ...and the sequential test says it is above the stable's at this false-alarm bound.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Roll back when the canary's p99 latency in the current step exceeds this.
    #[serde(default)]
    pub p99_budget_ms: Option<f64>,
    /// Canary shares in percent to promote through, e.g. `[5, 25, 50, 100]`; steps at or below
    /// the canary's configured weight are skipped. Empty: the share stays put.
    #[serde(default)]
    pub promote_steps: Vec<f64>,
    /// A step lasts at least this long (and `min_requests` canary requests) before promotion.
    #[serde(default = "default_promote_after_s")]
    pub promote_after_s: u64,
}

fn one() -> f64 {
    1.0
}
fn two() -> u8 {
    2
}
fn default_min_requests() -> u64 {
    1000
}
fn default_max_error_rate() -> f64 {
    0.005
}
fn default_alpha() -> f64 {
    0.01
}
fn default_promote_after_s() -> u64 {
    600
}

impl ExperimentConfig {
    /// Parses one experiment from TOML text and validates it.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: ExperimentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The seed the hash uses: `seed` (or `name`), with `/v<bucket_version>` appended when
    /// the bucket version is above 0.
    pub fn effective_seed(&self) -> String {
        let seed = self.seed.as_deref().unwrap_or(&self.name);
        match self.bucket_version {
            0 => seed.to_string(),
            v => format!("{seed}/v{v}"),
        }
    }

    pub fn variant(&self, name: &str) -> Option<&VariantConfig> {
        self.variants.iter().find(|v| v.name == name)
    }

    /// The arms, in config order (the order GrowthBook's ranges follow).
    pub fn arms(&self) -> impl Iterator<Item = &VariantConfig> {
        self.variants.iter().filter(|v| v.kind == VariantKind::Arm)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.name.as_str();
        let bad = |field: &str, problem: String| Err(ConfigError::invalid(n, field, problem));
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
            return bad(
                "name",
                "must be non-empty letters, digits, `_`, `-` or `.`".into(),
            );
        }
        if self.target.is_empty() {
            return bad("target", "is empty; expected a pipeline or model name".into());
        }
        if self.unit.is_empty() {
            return bad(
                "unit",
                "is empty; expected a request field such as `user_id`".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.coverage) {
            return bad("coverage", format!("is {}; expected 0..=1", self.coverage));
        }
        if !matches!(self.hash_version, 1 | 2) {
            return bad(
                "hash_version",
                format!("is {}; expected 1 or 2", self.hash_version),
            );
        }
        let mut seen = HashMap::new();
        for (i, v) in self.variants.iter().enumerate() {
            if v.name.is_empty() {
                return bad(&format!("variants[{i}].name"), "is empty".into());
            }
            if seen.insert(v.name.as_str(), i).is_some() {
                return bad("variants", format!("name `{}` is used twice", v.name));
            }
            let field = format!("variants[{i}].weight");
            match v.kind {
                VariantKind::Arm if !(0.0..=1.0).contains(&v.weight) => {
                    return bad(&field, format!("is {}; expected 0..=1", v.weight));
                }
                VariantKind::Shadow if v.weight != 0.0 => {
                    return bad(&field, format!("is {}; a shadow takes no weight", v.weight));
                }
                _ => {}
            }
        }
        if self.arms().next().is_none() {
            return bad(
                "variants",
                "has no arm; expected at least one `kind = \"arm\"`".into(),
            );
        }
        let sum: f64 = self.arms().map(|v| v.weight).sum();
        if (sum - 1.0).abs() > WEIGHT_SUM_TOLERANCE {
            return bad(
                "variants",
                format!("arm weights sum to {sum:.6}; expected 1 ± 1e-6"),
            );
        }
        match &self.canary {
            Some(c) => self.validate_canary(c),
            None => Ok(()),
        }
    }

    fn validate_canary(&self, c: &CanaryConfig) -> Result<(), ConfigError> {
        let bad = |field: &str, problem: String| {
            Err(ConfigError::invalid(
                &self.name,
                &format!("canary.{field}"),
                problem,
            ))
        };
        for (field, name) in [("variant", &c.variant), ("stable", &c.stable)] {
            match self.variant(name) {
                Some(v) if v.kind == VariantKind::Arm => {}
                Some(_) => return bad(field, format!("`{name}` is a shadow; expected an arm")),
                None => return bad(field, format!("`{name}` is not a variant of this experiment")),
            }
        }
        if self.variant(&c.variant).is_some_and(|v| v.weight <= 0.0) {
            return bad(
                "variant",
                format!(
                    "`{}` has weight 0; its weight is the share it starts at",
                    c.variant
                ),
            );
        }
        if c.variant == c.stable {
            return bad("stable", format!("is `{}`, the canary itself", c.stable));
        }
        if c.min_requests == 0 {
            return bad("min_requests", "is 0; expected at least 1".into());
        }
        if !(c.max_error_rate > 0.0 && c.max_error_rate < 1.0) {
            return bad(
                "max_error_rate",
                format!("is {}; expected 0 < x < 1", c.max_error_rate),
            );
        }
        if !(c.alpha > 0.0 && c.alpha <= 0.5) {
            return bad("alpha", format!("is {}; expected 0 < alpha <= 0.5", c.alpha));
        }
        if let Some(b) = c.p99_budget_ms
            && !(b > 0.0 && b.is_finite())
        {
            return bad("p99_budget_ms", format!("is {b}; expected a positive number"));
        }
        let mut last = 0.0;
        for s in &c.promote_steps {
            if !(*s > last && *s <= 100.0) {
                return bad(
                    "promote_steps",
                    format!("{:?} is not increasing within (0, 100]", c.promote_steps),
                );
            }
            last = *s;
        }
        if c.promote_after_s == 0 {
            return bad("promote_after_s", "is 0; expected at least 1".into());
        }
        Ok(())
    }
}

/// Reads every `*.toml` in `dir` (one experiment per file, in file-name order) and checks the
/// set: unique names, at most one experiment per target.
pub fn load_dir(dir: &Path) -> Result<Vec<ExperimentConfig>, ConfigError> {
    let read_err = |path: &Path, source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| read_err(dir, e))? {
        let path = entry.map_err(|e| read_err(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut configs = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
        configs.push(ExperimentConfig::from_toml(&text, &path)?);
    }
    validate_set(&configs)?;
    Ok(configs)
}

/// Checks a set of (individually valid) experiments: unique names, one per target.
pub fn validate_set(configs: &[ExperimentConfig]) -> Result<(), ConfigError> {
    let mut names = HashMap::new();
    let mut targets: HashMap<&str, &str> = HashMap::new();
    for c in configs {
        c.validate()?;
        if names.insert(c.name.as_str(), ()).is_some() {
            return Err(ConfigError::DuplicateName(c.name.clone()));
        }
        if let Some(first) = targets.insert(c.target.as_str(), c.name.as_str()) {
            return Err(ConfigError::DuplicateTarget {
                target: c.target.clone(),
                first: first.to_string(),
                second: c.name.clone(),
            });
        }
    }
    Ok(())
}
