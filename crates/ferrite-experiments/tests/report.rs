//! The report: hand-computed figures on a tiny fixture, then seeded synthetic experiments
//! with a known effect (interval coverage, A/A false positives, sample-ratio mismatch).

mod report_support;

use ferrite_experiments::report::{self, ReportError, ReportOptions, Weights, summarize};
use report_support::{BASE, Outcome, log_all, record, synthetic, write_outcomes, write_units};

fn close(a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol, "{a} != {b} (± {tol})");
}

fn outcome(unit: &str, minutes: i64, converted: bool, revenue: f64, chargeback: bool) -> Outcome {
    Outcome {
        unit_id: unit.into(),
        time: Some(BASE + minutes * 60_000_000),
        converted,
        revenue,
        chargeback,
    }
}

/// Control u1..u4, treatment u5..u8, u9 in both; another experiment's unit x1.
fn tiny_fixture(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let exposures = dir.join("exposures");
    let m = |minutes: i64| BASE + minutes * 60_000_000;
    log_all(
        &exposures,
        [
            record("checkout", "control", "u1", m(10)),
            record("checkout", "control", "u1", m(20)),
            record("checkout", "control", "u2", m(11)),
            record("checkout", "control", "u3", m(12)),
            record("checkout", "control", "u4", m(13)),
            record("checkout", "treatment", "u5", m(14)),
            record("checkout", "treatment", "u6", m(15)),
            record("checkout", "treatment", "u7", m(16)),
            record("checkout", "treatment", "u8", m(17)),
            record("checkout", "control", "u9", m(18)),
            record("checkout", "treatment", "u9", m(19)),
            record("search", "a", "x1", m(10)),
        ],
    );
    let outcomes = dir.join("outcomes.parquet");
    write_outcomes(
        &outcomes,
        &[
            outcome("u1", 30, true, 10.0, false),
            outcome("u2", 30, false, 0.0, false),
            // Before u3's first exposure: not caused by the experiment, not counted.
            outcome("u3", 5, true, 99.0, false),
            outcome("u5", 30, true, 20.0, false),
            outcome("u5", 40, false, 5.0, false),
            outcome("u6", 30, true, 10.0, true),
            outcome("u7", 30, false, 0.0, false),
            outcome("u9", 30, true, 50.0, false),
            outcome("nobody", 30, true, 70.0, false),
        ],
        true,
        true,
        true,
    );
    (exposures, outcomes)
}

fn options(experiment: &str) -> ReportOptions {
    ReportOptions {
        experiment: Some(experiment.into()),
        ..ReportOptions::default()
    }
}

#[test]
fn tiny_fixture_matches_hand_computed_figures() {
    let dir = tempfile::tempdir().unwrap();
    let (exposures, outcomes) = tiny_fixture(dir.path());
    let r = report::report(&exposures, &outcomes, &options("checkout")).unwrap();
    assert_eq!(
        (r.experiment.as_str(), r.control.as_str()),
        ("checkout", "control")
    );
    assert_eq!((r.exposures, r.units, r.contaminated_units), (11, 8, 1));
    let (c, t) = (&r.variants[0], &r.variants[1]);
    assert_eq!((c.variant.as_str(), c.units, c.conversions), ("control", 4, 1));
    assert_eq!((t.variant.as_str(), t.units, t.conversions), ("treatment", 4, 2));
    assert_eq!((c.conversion_rate, t.conversion_rate), (0.25, 0.5));
    assert_eq!((c.revenue_per_unit, t.revenue_per_unit), (2.5, 8.75));
    assert_eq!((c.revenue_total, t.revenue_total), (10.0, 35.0));
    assert_eq!((c.chargeback_rate, t.chargeback_rate), (Some(0.0), Some(0.25)));
    assert!(c.conversion_lift.is_none() && c.revenue_lift.is_none());

    // Welch by hand: variances 1/4 and 1/3 over 4 units each; df 5.88; t(5.88) integrated
    // numerically for the quantile and the p-value.
    let l = t.conversion_lift.unwrap();
    close(l.difference, 0.25, 1e-12);
    close(l.df, 5.88, 1e-9);
    close(l.difference_low, -0.689_072_040_869, 1e-6);
    close(l.difference_high, 1.189_072_040_869, 1e-6);
    close(l.p_value, 0.537_440_344_427, 1e-6);
    close(l.relative, 1.0, 1e-12);
    close(l.relative_low, -3.526_342_936_305, 1e-9);
    close(l.relative_high, 5.526_342_936_305, 1e-9);
    let l = t.revenue_lift.unwrap();
    close(l.difference, 6.25, 1e-12);
    close(l.df, 4.041_225_987_481, 1e-9);
    close(l.difference_low, -11.488_088_991_517, 1e-5);
    close(l.p_value, 0.384_528_599_038, 1e-6);
    close(l.relative, 2.5, 1e-12);
    close(l.relative_low, -5.776_836_088_489, 1e-9);

    // Equal split expected and seen: χ² = 0.
    assert_eq!((r.sample_ratio.chi_square, r.sample_ratio.p_value), (0.0, 1.0));
    // 4 and 4 against 0.8 / 0.2: χ² = 2.4²/6.4 + 2.4²/1.6 = 4.5, p = erfc(√2.25) (df 1).
    let weighted = report::report(
        &exposures,
        &outcomes,
        &ReportOptions {
            weights: Some("treatment=0.2,control=0.8".parse().unwrap()),
            ..options("checkout")
        },
    )
    .unwrap();
    close(weighted.sample_ratio.chi_square, 4.5, 1e-12);
    close(weighted.sample_ratio.p_value, 0.033_894_853_524_689, 1e-10);
    assert!(!weighted.sample_ratio.mismatch);

    let text = r.to_text();
    assert!(text.contains("control") && text.contains("+100.00%"), "{text}");
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["variants"][1]["conversion_lift"]["relative"], 1.0);
}

#[test]
fn a_named_control_comes_first_and_bad_arguments_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (exposures, outcomes) = tiny_fixture(dir.path());
    let r = report::report(
        &exposures,
        &outcomes,
        &ReportOptions {
            control: Some("treatment".into()),
            ..options("checkout")
        },
    )
    .unwrap();
    assert_eq!(r.variants[0].variant, "treatment");
    close(r.variants[1].conversion_lift.unwrap().relative, -0.5, 1e-12);

    let e = report::report(&exposures, &outcomes, &ReportOptions::default()).unwrap_err();
    assert!(matches!(e, ReportError::SeveralExperiments { .. }), "{e}");
    assert!(e.to_string().contains("checkout, search"), "{e}");
    let e = report::report(
        &exposures,
        &outcomes,
        &ReportOptions {
            control: Some("nope".into()),
            ..options("checkout")
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("\"nope\"") && e.to_string().contains("control, treatment"),
        "{e}"
    );
    let e = report::report(
        &exposures,
        &outcomes,
        &ReportOptions {
            weights: Some("0.2,0.3,0.5".parse().unwrap()),
            ..options("checkout")
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("2 weights"), "{e}");
    assert!(
        "0.5,x"
            .parse::<Weights>()
            .unwrap_err()
            .to_string()
            .contains("\"x\"")
    );
    let e = report::report(
        &exposures,
        &dir.path().join("missing.parquet"),
        &options("checkout"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("missing.parquet"), "{e}");
    let empty = dir.path().join("empty");
    log_all(&empty, []);
    std::fs::write(empty.join("exposures-x-000000.parquet.tmp"), b"half").unwrap();
    let e = report::report(&empty, &outcomes, &ReportOptions::default()).unwrap_err();
    assert!(
        matches!(e, ReportError::NoExposures { .. }) && e.to_string().contains("no exposures"),
        "{e}"
    );
    let e = report::report(&exposures, &outcomes, &options("pricing")).unwrap_err();
    assert!(e.to_string().contains("\"pricing\""), "{e}");
}

#[test]
fn outcomes_without_time_count_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let (exposures, _) = tiny_fixture(dir.path());
    let outcomes = dir.path().join("plain.parquet");
    write_outcomes(
        &outcomes,
        &[outcome("u3", 5, true, 99.0, false)],
        false,
        false,
        false,
    );
    let r = report::report(&exposures, &outcomes, &options("checkout")).unwrap();
    assert_eq!(r.variants[0].conversions, 1);
    assert_eq!(r.variants[0].revenue_total, 99.0);
    assert_eq!(r.variants[0].chargeback_rate, None);
}

const CONTROL_RATE: f64 = 0.10;
const TRUE_LIFT: f64 = 0.20;

#[test]
fn the_interval_covers_the_true_lift_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let units = synthetic(
        7,
        40_000,
        &[
            ("control", 0.5, CONTROL_RATE),
            ("treatment", 0.5, CONTROL_RATE * (1.0 + TRUE_LIFT)),
        ],
        48,
    );
    let (exposures, outcomes) = (dir.path().join("exposures"), dir.path().join("outcomes.parquet"));
    write_units(&units, &exposures, &outcomes);
    let r = report::report(&exposures, &outcomes, &ReportOptions::default()).unwrap();
    // Through the files, the same figures as from the units directly.
    assert_eq!(r, summarize(&units, &ReportOptions::default()).unwrap());
    let l = r.variants[1].conversion_lift.unwrap();
    assert!(l.relative_low < TRUE_LIFT && TRUE_LIFT < l.relative_high, "{l:?}");
    assert!(l.p_value < 0.001, "a 20 % lift on 40,000 units is clear: {l:?}");
    assert!(!r.sample_ratio.mismatch);
}

#[test]
fn intervals_cover_the_true_lift_about_95_percent_of_the_time() {
    let runs = 200;
    let covered = (0..runs)
        .filter(|&seed| {
            let units = synthetic(
                1_000 + seed,
                4_000,
                &[
                    ("a", 0.5, CONTROL_RATE),
                    ("b", 0.5, CONTROL_RATE * (1.0 + TRUE_LIFT)),
                ],
                24,
            );
            let l = summarize(&units, &ReportOptions::default()).unwrap().variants[1]
                .conversion_lift
                .unwrap();
            l.relative_low < TRUE_LIFT && TRUE_LIFT < l.relative_high
        })
        .count();
    // Binomial(200, 0.95) lies in [180, 199] with probability > 0.999.
    assert!((180..=199).contains(&covered), "covered {covered} of {runs}");
}

#[test]
fn an_a_a_split_is_not_significant() {
    let units = synthetic(
        11,
        40_000,
        &[("a", 0.5, CONTROL_RATE), ("b", 0.5, CONTROL_RATE)],
        24,
    );
    let r = summarize(&units, &ReportOptions::default()).unwrap();
    let (conv, rev) = (
        r.variants[1].conversion_lift.unwrap(),
        r.variants[1].revenue_lift.unwrap(),
    );
    assert!(conv.p_value > 0.05 && rev.p_value > 0.05, "{conv:?} {rev:?}");
    assert!(conv.relative_low < 0.0 && 0.0 < conv.relative_high);
    assert!(!r.sample_ratio.mismatch);
    // Over many A/A runs about 5 % are significant at 0.05: Binomial(200, 0.05) lies in
    // [2, 21] with probability > 0.999.
    let significant = (0..200)
        .filter(|&seed| {
            let units = synthetic(
                5_000 + seed,
                2_000,
                &[("a", 0.5, CONTROL_RATE), ("b", 0.5, CONTROL_RATE)],
                24,
            );
            summarize(&units, &ReportOptions::default()).unwrap().variants[1]
                .conversion_lift
                .unwrap()
                .p_value
                < 0.05
        })
        .count();
    assert!(
        (2..=21).contains(&significant),
        "{significant} of 200 A/A runs significant"
    );
}

#[test]
fn a_skewed_split_is_flagged_as_sample_ratio_mismatch() {
    // Configured 50/50, served 52/48.
    let units = synthetic(
        3,
        20_000,
        &[("control", 0.52, CONTROL_RATE), ("treatment", 0.48, CONTROL_RATE)],
        24,
    );
    let r = summarize(&units, &ReportOptions::default()).unwrap();
    assert!(r.sample_ratio.mismatch, "{:?}", r.sample_ratio);
    assert!(r.to_text().contains("SAMPLE RATIO MISMATCH"));
    // A 95/5 split is fine when the weights say so, a mismatch when they do not.
    let units = synthetic(
        4,
        20_000,
        &[("control", 0.95, CONTROL_RATE), ("treatment", 0.05, CONTROL_RATE)],
        24,
    );
    let weighted = ReportOptions {
        weights: Some("0.95,0.05".parse().unwrap()),
        ..ReportOptions::default()
    };
    let r = summarize(&units, &weighted).unwrap();
    assert!(!r.sample_ratio.mismatch, "{:?}", r.sample_ratio);
    assert!(
        summarize(&units, &ReportOptions::default())
            .unwrap()
            .sample_ratio
            .mismatch
    );
}
