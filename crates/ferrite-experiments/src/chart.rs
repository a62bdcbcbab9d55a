//! The cumulative-lift chart: the treatment's relative conversion lift over the control,
//! counting every unit first exposed up to the end of each hour or day, with its 95 %
//! interval, drawn as a small SVG (a line, a shaded band, axes and labels).

use std::fmt::Write as _;

use serde::Serialize;

use crate::exposure::civil_from_days;
use crate::report::{Moments, Units, stats};

/// The step of the time axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    pub fn micros(self) -> i64 {
        match self {
            Bucket::Hour => 3_600_000_000,
            Bucket::Day => 86_400_000_000,
        }
    }

    /// Hours for an experiment shorter than a week (at most 168 points), days otherwise.
    pub fn for_span(first: i64, last: i64) -> Bucket {
        if last - first < 7 * Bucket::Day.micros() {
            Bucket::Hour
        } else {
            Bucket::Day
        }
    }
}

/// The cumulative lift at the end of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LiftPoint {
    /// End of the bucket (exclusive), µs since the epoch: units first exposed before it count.
    pub end: i64,
    pub control_units: u64,
    pub treatment_units: u64,
    /// Relative conversion lift (treatment / control − 1) and its delta-method 95 % interval.
    pub lift: f64,
    pub low: f64,
    pub high: f64,
}

/// The cumulative conversion lift of `treatment` over `control` at the end of each bucket
/// that has units; buckets where the lift is undefined (too few units, no control
/// conversions) are left out.
pub fn cumulative_lift(units: &Units, control: &str, treatment: &str, bucket: Bucket) -> Vec<LiftPoint> {
    let mut rows: Vec<(i64, bool, f64)> = units
        .units
        .iter()
        .filter(|u| u.variant == control || u.variant == treatment)
        .map(|u| (u.first_exposure, u.variant == treatment, u.converted))
        .collect();
    rows.sort_by_key(|r| r.0);
    let step = bucket.micros();
    let mut points = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let end = (rows[i].0.div_euclid(step) + 1) * step;
        while i < rows.len() && rows[i].0 < end {
            i += 1;
        }
        let seen = &rows[..i];
        let of = |t: bool| Moments::of(seen.iter().filter(move |r| r.1 == t).map(|r| r.2));
        let (c, t) = (of(false), of(true));
        if let Some(l) = stats::compare(t, c).filter(|l| l.relative.is_finite() && l.relative_low.is_finite())
        {
            points.push(LiftPoint {
                end,
                control_units: c.n as u64,
                treatment_units: t.n as u64,
                lift: l.relative,
                low: l.relative_low,
                high: l.relative_high,
            });
        }
    }
    points
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// The chart as an SVG document. Each point is also a `<circle>` carrying its values in
/// `data-*` attributes, so tools (and tests) can read the numbers back.
pub fn svg(points: &[LiftPoint], title: &str, bucket: Bucket) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    if points.is_empty() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">not enough units for a lift yet</text>"#,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        out.push_str("</svg>\n");
        return out;
    }
    let (x0, x1) = (points[0].end as f64, points[points.len() - 1].end as f64);
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { (x0 - 1.0, x1 + 1.0) };
    let lo = points.iter().map(|p| p.low).fold(0f64, f64::min);
    let hi = points.iter().map(|p| p.high).fold(0f64, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let (y0, y1) = (lo - pad, hi + pad);
    let x = |t: i64| LEFT + (t as f64 - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT);
    let y = |v: f64| TOP + (y1 - v) / (y1 - y0) * (HEIGHT - TOP - BOTTOM);
    let (bottom, right) = (HEIGHT - BOTTOM, WIDTH - RIGHT);

    // Axes, the zero line, ticks.
    let _ = writeln!(
        out,
        r#"<path class="axes" d="M{LEFT},{TOP} V{bottom} H{right}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        out,
        r##"<line class="zero" x1="{LEFT}" x2="{right}" y1="{0:.2}" y2="{0:.2}" stroke="#888" stroke-dasharray="4 3"/>"##,
        y(0.0)
    );
    for k in 0..=4 {
        let v = y0 + (y1 - y0) * f64::from(k) / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.2}" text-anchor="end">{:+.1}%</text>"#,
            LEFT - 6.0,
            y(v) + 4.0,
            100.0 * v
        );
    }
    let ticks = points.len().min(6);
    for k in 0..ticks {
        let p = &points[k * (points.len() - 1) / (ticks - 1).max(1)];
        let _ = writeln!(
            out,
            r#"<text x="{:.2}" y="{}" text-anchor="middle">{}</text>"#,
            x(p.end),
            bottom + 16.0,
            time_label(p.end, bucket)
        );
    }
    let unit = match bucket {
        Bucket::Hour => "hour",
        Bucket::Day => "day",
    };
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">first exposure up to the end of each {unit} (UTC)</text>"#,
        (LEFT + right) / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">conversion lift (95% interval)</text>"#,
        (TOP + bottom) / 2.0
    );

    // The interval band: along the upper bound, back along the lower.
    let upper = points.iter().map(|p| format!("{:.2},{:.2}", x(p.end), y(p.high)));
    let lower = points
        .iter()
        .rev()
        .map(|p| format!("{:.2},{:.2}", x(p.end), y(p.low)));
    let band: Vec<String> = upper.chain(lower).collect();
    let _ = writeln!(
        out,
        r##"<polygon class="interval" points="{}" fill="#4a7bd0" fill-opacity="0.2" stroke="none"/>"##,
        band.join(" ")
    );
    let line: Vec<String> = points
        .iter()
        .map(|p| format!("{:.2},{:.2}", x(p.end), y(p.lift)))
        .collect();
    let _ = writeln!(
        out,
        r##"<polyline class="lift" points="{}" fill="none" stroke="#1f4fa0" stroke-width="2"/>"##,
        line.join(" ")
    );
    for p in points {
        let _ = writeln!(
            out,
            r##"<circle class="point" cx="{:.2}" cy="{:.2}" r="2.5" fill="#1f4fa0" data-end="{}" data-lift="{:e}" data-low="{:e}" data-high="{:e}" data-control-units="{}" data-treatment-units="{}"/>"##,
            x(p.end),
            y(p.lift),
            p.end,
            p.lift,
            p.low,
            p.high,
            p.control_units,
            p.treatment_units
        );
    }
    out.push_str("</svg>\n");
    out
}

/// `2026-12-01` for days, `12-01 14:00` for hours (UTC).
fn time_label(micros: i64, bucket: Bucket) -> String {
    let secs = micros.div_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    match bucket {
        Bucket::Day => format!("{y:04}-{m:02}-{d:02}"),
        Bucket::Hour => format!("{m:02}-{d:02} {:02}:00", secs.rem_euclid(86_400) / 3600),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
