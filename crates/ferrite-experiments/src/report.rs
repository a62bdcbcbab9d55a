//! The per-variant report: exposures joined with outcomes, one row per unit at its first
//! exposure, conversion and revenue per variant, lifts against the control with 95 %
//! intervals and p-values, and the sample-ratio-mismatch check.

mod load;
pub mod stats;
mod text;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use load::load_units;
pub use stats::{Lift, Moments, SampleRatio};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: no column {column:?}; expected {expected}")]
    MissingColumn {
        path: PathBuf,
        column: &'static str,
        expected: &'static str,
    },
    #[error("{path}: column {column:?} is {found}; expected {expected}")]
    ColumnType {
        path: PathBuf,
        column: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("{dir}: no exposures{}", .experiment.as_ref().map(|e| format!(" for experiment {e:?}")).unwrap_or_default())]
    NoExposures {
        dir: PathBuf,
        experiment: Option<String>,
    },
    #[error("the exposures hold several experiments ({found}); name one with --experiment")]
    SeveralExperiments { found: String },
    #[error("control variant {control:?} has no units; variants: {found}")]
    UnknownControl { control: String, found: String },
    #[error("--weights {value:?}: {expected}")]
    Weights { value: String, expected: String },
}

/// How to read the report.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// The experiment to report on; needed when the exposures hold more than one.
    pub experiment: Option<String>,
    /// The control variant (default: the first variant by name).
    pub control: Option<String>,
    /// The configured split, for the sample-ratio check (default: equal).
    pub weights: Option<Weights>,
}

/// Expected split: in report order (control first, then the others by name), or by name.
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    Ordered(Vec<f64>),
    Named(Vec<(String, f64)>),
}

impl std::str::FromStr for Weights {
    type Err = ReportError;

    /// `0.95,0.05` or `control=0.95,treatment=0.05`.
    fn from_str(s: &str) -> Result<Weights, ReportError> {
        let bad = |expected: &str| ReportError::Weights {
            value: s.to_string(),
            expected: expected.to_string(),
        };
        let number = |v: &str| match v.trim().parse::<f64>() {
            Ok(w) if w > 0.0 && w.is_finite() => Ok(w),
            _ => Err(bad(&format!("{v:?} is not a positive number"))),
        };
        let parts: Vec<&str> = s.split(',').collect();
        if parts.iter().all(|p| p.contains('=')) {
            let named = parts
                .iter()
                .map(|p| {
                    let (name, w) = p.split_once('=').unwrap_or((p, ""));
                    Ok((name.trim().to_string(), number(w)?))
                })
                .collect::<Result<Vec<_>, ReportError>>()?;
            Ok(Weights::Named(named))
        } else if parts.iter().any(|p| p.contains('=')) {
            Err(bad("all weights as numbers or all as variant=number"))
        } else {
            Ok(Weights::Ordered(
                parts.into_iter().map(number).collect::<Result<_, _>>()?,
            ))
        }
    }
}

/// One analysed unit: its first exposure and its outcomes after it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitOutcome {
    pub unit_id: String,
    pub variant: String,
    /// First exposure, µs since the epoch.
    pub first_exposure: i64,
    /// 1 if the unit converted, else 0.
    pub converted: f64,
    /// Revenue summed over the unit's outcomes (0 without any).
    pub revenue: f64,
    /// 1 if any outcome was charged back; `None` when the outcomes have no such column.
    pub chargeback: Option<f64>,
}

/// Units of one experiment, ready to summarise.
#[derive(Debug, Clone, PartialEq)]
pub struct Units {
    pub experiment: String,
    /// Exposure rows read for the experiment.
    pub exposures: u64,
    /// Units exposed to more than one variant: counted here, left out of `units`.
    pub contaminated: u64,
    pub units: Vec<UnitOutcome>,
}

/// One variant's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantReport {
    pub variant: String,
    pub units: u64,
    pub conversions: u64,
    pub conversion_rate: f64,
    pub revenue_per_unit: f64,
    pub revenue_total: f64,
    pub chargeback_rate: Option<f64>,
    /// Against the control; `None` for the control itself or too few units.
    pub conversion_lift: Option<Lift>,
    pub revenue_lift: Option<Lift>,
}

/// The report of one experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub experiment: String,
    pub control: String,
    pub exposures: u64,
    pub units: u64,
    pub contaminated_units: u64,
    /// Control first, then the other variants by name.
    pub variants: Vec<VariantReport>,
    pub sample_ratio: SampleRatio,
}

/// Reads the exposures under `exposures_dir` and the outcomes file, and reports.
pub fn report(exposures_dir: &Path, outcomes: &Path, options: &ReportOptions) -> Result<Report, ReportError> {
    let units = load_units(exposures_dir, outcomes, options.experiment.as_deref())?;
    summarize(&units, options)
}

/// The variants in report order: the control (named or the first by name), then the rest.
pub fn variant_order(units: &Units, control: Option<&str>) -> Result<Vec<String>, ReportError> {
    let mut names: Vec<String> = units.units.iter().map(|u| u.variant.clone()).collect();
    names.sort();
    names.dedup();
    let control = match control {
        Some(c) => c.to_string(),
        None => names.first().cloned().unwrap_or_default(),
    };
    let Some(at) = names.iter().position(|n| *n == control) else {
        return Err(ReportError::UnknownControl {
            control,
            found: names.join(", "),
        });
    };
    let c = names.remove(at);
    names.insert(0, c);
    Ok(names)
}

/// Per-variant figures, lifts and the sample-ratio check of `units`.
pub fn summarize(units: &Units, options: &ReportOptions) -> Result<Report, ReportError> {
    let order = variant_order(units, options.control.as_deref())?;
    let weights = expected_weights(&order, options.weights.as_ref())?;
    let moments = |v: &str, metric: fn(&UnitOutcome) -> f64| Moments::of(in_variant(units, v).map(metric));
    let (control_conv, control_rev) = (
        moments(&order[0], |u| u.converted),
        moments(&order[0], |u| u.revenue),
    );
    let variants: Vec<VariantReport> = order
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let conv = moments(v, |u| u.converted);
            let rev = moments(v, |u| u.revenue);
            let with_cb: Vec<f64> = in_variant(units, v).filter_map(|u| u.chargeback).collect();
            VariantReport {
                variant: v.clone(),
                units: conv.n as u64,
                conversions: in_variant(units, v).filter(|u| u.converted > 0.0).count() as u64,
                conversion_rate: conv.mean,
                revenue_per_unit: rev.mean,
                revenue_total: in_variant(units, v).map(|u| u.revenue).sum(),
                chargeback_rate: (!with_cb.is_empty()).then(|| Moments::of(with_cb).mean),
                conversion_lift: (i > 0).then(|| stats::compare(conv, control_conv)).flatten(),
                revenue_lift: (i > 0).then(|| stats::compare(rev, control_rev)).flatten(),
            }
        })
        .collect();
    let observed: Vec<u64> = variants.iter().map(|v| v.units).collect();
    Ok(Report {
        experiment: units.experiment.clone(),
        control: order[0].clone(),
        exposures: units.exposures,
        units: units.units.len() as u64,
        contaminated_units: units.contaminated,
        sample_ratio: stats::sample_ratio(&observed, &weights),
        variants,
    })
}

fn in_variant<'a>(units: &'a Units, variant: &'a str) -> impl Iterator<Item = &'a UnitOutcome> {
    units.units.iter().filter(move |u| u.variant == variant)
}

fn expected_weights(order: &[String], weights: Option<&Weights>) -> Result<Vec<f64>, ReportError> {
    let shown = |w: &Weights| format!("{w:?}");
    match weights {
        None => Ok(vec![1.0; order.len()]),
        Some(Weights::Ordered(w)) if w.len() == order.len() => Ok(w.clone()),
        Some(w @ Weights::Ordered(list)) => Err(ReportError::Weights {
            value: shown(w),
            expected: format!(
                "{} weights, one per variant in the order {}; got {}",
                order.len(),
                order.join(", "),
                list.len()
            ),
        }),
        Some(w @ Weights::Named(named)) => order
            .iter()
            .map(|v| {
                named
                    .iter()
                    .find(|(n, _)| n == v)
                    .map(|(_, x)| *x)
                    .ok_or_else(|| ReportError::Weights {
                        value: shown(w),
                        expected: format!("a weight for variant {v:?} (variants: {})", order.join(", ")),
                    })
            })
            .collect(),
    }
}
