//! `ferrite experiment`: reading what experiments did.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ferrite_experiments::chart::{self, Bucket};
use ferrite_experiments::report::{self, ReportOptions, Weights};

#[derive(clap::Args)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    pub command: ExperimentCommand,
}

#[derive(clap::Subcommand)]
pub enum ExperimentCommand {
    /// Per-variant conversion and revenue from the exposure log joined with outcomes: lifts
    /// against the control with 95 % intervals, a sample-ratio check, a cumulative-lift chart.
    Report(ReportArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The exposure log's directory (its `exposures-*.parquet` files).
    #[arg(long)]
    pub exposures: PathBuf,
    /// Parquet file of outcomes: `unit_id`, `converted` (bool or 0/1), `revenue`, optional
    /// `time` (outcomes before a unit's first exposure are not counted) and `chargeback`.
    #[arg(long)]
    pub outcomes: PathBuf,
    /// The experiment (needed when the log holds several).
    #[arg(long)]
    pub experiment: Option<String>,
    /// The control variant (default: the first variant by name).
    #[arg(long)]
    pub control: Option<String>,
    /// The configured split for the sample-ratio check: `0.95,0.05` (control first, then the
    /// others by name) or `control=0.95,new=0.05`. Default: equal.
    #[arg(long)]
    pub weights: Option<Weights>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Where to write the cumulative-lift chart (SVG). Default:
    /// `<exposures>/<experiment>-lift.svg`.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Do not write the chart.
    #[arg(long, conflicts_with = "chart")]
    pub no_chart: bool,
    /// The variant the chart compares with the control (default: the first other variant).
    #[arg(long)]
    pub treatment: Option<String>,
    /// The chart's time step (default: hours for under a week, else days).
    #[arg(long, value_parser = ["hour", "day"])]
    pub bucket: Option<String>,
}

/// What `ferrite experiment report` prints, and the chart it wrote (if any).
pub struct ReportOutput {
    pub text: String,
    pub chart: Option<PathBuf>,
}

pub fn run(args: &ExperimentArgs) -> anyhow::Result<()> {
    match &args.command {
        ExperimentCommand::Report(args) => {
            let out = report(args)?;
            print!("{}", out.text);
            if let Some(path) = out.chart {
                eprintln!("chart: {}", path.display());
            }
            Ok(())
        }
    }
}

/// Runs the report; writes the chart unless `--no-chart`.
pub fn report(args: &ReportArgs) -> anyhow::Result<ReportOutput> {
    let units = report::load_units(&args.exposures, &args.outcomes, args.experiment.as_deref())?;
    let options = ReportOptions {
        experiment: args.experiment.clone(),
        control: args.control.clone(),
        weights: args.weights.clone(),
    };
    let summary = report::summarize(&units, &options)?;
    let text = if args.json {
        serde_json::to_string_pretty(&summary)? + "\n"
    } else {
        summary.to_text()
    };
    if args.no_chart {
        return Ok(ReportOutput { text, chart: None });
    }
    let treatment = match &args.treatment {
        Some(t) => t.clone(),
        None => match summary.variants.get(1) {
            Some(v) => v.variant.clone(),
            None => return Ok(ReportOutput { text, chart: None }),
        },
    };
    anyhow::ensure!(
        summary.variants.iter().any(|v| v.variant == treatment) && treatment != summary.control,
        "--treatment {treatment:?}: expected a variant other than the control {:?} (variants: {})",
        summary.control,
        summary
            .variants
            .iter()
            .map(|v| v.variant.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let bucket = match args.bucket.as_deref() {
        Some("day") => Bucket::Day,
        Some(_) => Bucket::Hour,
        None => {
            let times = units.units.iter().map(|u| u.first_exposure);
            let (first, last) = (times.clone().min().unwrap_or(0), times.max().unwrap_or(0));
            Bucket::for_span(first, last)
        }
    };
    let points = chart::cumulative_lift(&units, &summary.control, &treatment, bucket);
    let title = format!(
        "{}: {treatment} vs {}, cumulative conversion lift",
        summary.experiment, summary.control
    );
    let path = match &args.chart {
        Some(p) => p.clone(),
        None => default_chart_path(&args.exposures, &summary.experiment),
    };
    std::fs::write(&path, chart::svg(&points, &title, bucket))
        .with_context(|| format!("writing the chart to {}", path.display()))?;
    Ok(ReportOutput {
        text,
        chart: Some(path),
    })
}

fn default_chart_path(exposures: &Path, experiment: &str) -> PathBuf {
    let safe: String = experiment
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    exposures.join(format!("{safe}-lift.svg"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_experiments::exposure::{ExposureLog, ExposureLogConfig, ExposureRecord};
    use polars::prelude::*;

    /// 40 units a variant over two days; treatment converts twice as often.
    fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
        let exposures = dir.join("exposures");
        let log = ExposureLog::start(ExposureLogConfig {
            dir: exposures.clone(),
            ..ExposureLogConfig::default()
        })
        .unwrap();
        let (mut ids, mut converted, mut revenue) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..80i64 {
            let variant = if i % 2 == 0 { "control" } else { "treatment" };
            let unit = format!("u{i}");
            log.log(ExposureRecord {
                time: 1_793_491_200_000_000 + i * 3_600_000_000 / 2,
                experiment: "checkout".into(),
                variant: variant.into(),
                unit_id: unit.clone(),
                request_id: format!("r{i}"),
                model: "fraud".into(),
                model_version: "1".into(),
                score: None,
                decision: None,
                latency_us: 100,
                fallback: false,
                forced: false,
            });
            let conv = if i % 2 == 0 { i % 8 == 0 } else { i % 4 == 1 };
            ids.push(unit);
            converted.push(conv);
            revenue.push(if conv { 10.0 } else { 0.0 });
        }
        log.shutdown().unwrap();
        let outcomes = dir.join("outcomes.parquet");
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("unit_id".into(), ids),
            Column::new("converted".into(), converted),
            Column::new("revenue".into(), revenue),
        ])
        .unwrap();
        ParquetWriter::new(std::fs::File::create(&outcomes).unwrap())
            .finish(&mut df)
            .unwrap();
        (exposures, outcomes)
    }

    fn args(exposures: PathBuf, outcomes: PathBuf) -> ReportArgs {
        ReportArgs {
            exposures,
            outcomes,
            experiment: None,
            control: None,
            weights: None,
            json: false,
            chart: None,
            no_chart: false,
            treatment: None,
            bucket: None,
        }
    }

    #[test]
    fn report_prints_a_table_and_writes_the_chart_beside_the_exposures() {
        let dir = tempfile::tempdir().unwrap();
        let (exposures, outcomes) = fixture(dir.path());
        let out = report(&args(exposures.clone(), outcomes.clone())).unwrap();
        assert!(
            out.text.contains("treatment") && out.text.contains("+100.00%"),
            "{}",
            out.text
        );
        let chart = out.chart.unwrap();
        assert_eq!(chart, exposures.join("checkout-lift.svg"));
        assert!(
            std::fs::read_to_string(&chart)
                .unwrap()
                .contains("<polyline class=\"lift\"")
        );

        let json = report(&ReportArgs {
            json: true,
            no_chart: true,
            weights: Some("0.5,0.5".parse().unwrap()),
            ..args(exposures, outcomes)
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json.text).unwrap();
        let relative = v["variants"][1]["conversion_lift"]["relative"].as_f64().unwrap();
        assert!((relative - 1.0).abs() < 1e-9, "{relative}");
        assert_eq!(v["sample_ratio"]["mismatch"], false);
        assert!(json.chart.is_none());
    }
}
