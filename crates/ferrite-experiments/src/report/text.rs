//! The report as a text table.

use std::fmt::Write as _;

use super::{Lift, Report};

impl Report {
    /// The report as a text table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "experiment {}: {} units ({} exposures); control variant: {}; {} unit(s) seen in several variants left out",
            self.experiment, self.units, self.exposures, self.control, self.contaminated_units
        );
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>10} {:>26} {:>8} {:>12} {:>26} {:>8}",
            "variant",
            "units",
            "conv rate",
            "conv lift [95% CI]",
            "p",
            "revenue/unit",
            "revenue lift [95% CI]",
            "p"
        );
        for v in &self.variants {
            let (cl, cp) = lift_cells(v.conversion_lift.as_ref());
            let (rl, rp) = lift_cells(v.revenue_lift.as_ref());
            let _ = writeln!(
                out,
                "{:<16} {:>9} {:>9.3}% {cl:>26} {cp:>8} {:>12.4} {rl:>26} {rp:>8}",
                v.variant,
                v.units,
                100.0 * v.conversion_rate,
                v.revenue_per_unit
            );
        }
        if self.variants.iter().any(|v| v.chargeback_rate.is_some()) {
            for v in &self.variants {
                let _ = writeln!(
                    out,
                    "chargeback rate {}: {:.3}%",
                    v.variant,
                    100.0 * v.chargeback_rate.unwrap_or(0.0)
                );
            }
        }
        let s = &self.sample_ratio;
        let expected: Vec<String> = s.expected.iter().map(|w| format!("{w:.4}")).collect();
        let _ = writeln!(
            out,
            "sample ratio: observed {:?}, expected shares [{}]: chi2 = {:.3} (df {}), p = {:.3e}{}",
            s.observed,
            expected.join(", "),
            s.chi_square,
            s.df,
            s.p_value,
            if s.mismatch {
                "  ** SAMPLE RATIO MISMATCH: the split is not the configured one; do not trust the lifts **"
            } else {
                ""
            }
        );
        out
    }
}

fn lift_cells(lift: Option<&Lift>) -> (String, String) {
    match lift {
        None => ("-".into(), "-".into()),
        Some(l) => (
            format!(
                "{:+.2}% [{:+.2}, {:+.2}]",
                100.0 * l.relative,
                100.0 * l.relative_low,
                100.0 * l.relative_high
            ),
            format!("{:.4}", l.p_value),
        ),
    }
}
