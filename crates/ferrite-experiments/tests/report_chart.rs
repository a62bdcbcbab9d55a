//! The cumulative-lift chart: its points are the report's lifts on the units seen so far,
//! and the SVG draws them (a line, an interval band) in a well-formed document.

mod report_support;

use ferrite_experiments::chart::{Bucket, LiftPoint, cumulative_lift, svg};
use ferrite_experiments::report::{ReportOptions, Units, summarize};
use report_support::{BASE, HOUR, synthetic};

fn units() -> Units {
    synthetic(
        21,
        30_000,
        &[("control", 0.5, 0.10), ("treatment", 0.5, 0.12)],
        72,
    )
}

#[test]
fn each_point_is_the_report_lift_of_the_units_exposed_before_its_end() {
    let units = units();
    let points = cumulative_lift(&units, "control", "treatment", Bucket::Hour);
    assert_eq!(points.len(), 72);
    for (k, p) in points.iter().enumerate() {
        assert_eq!(p.end, BASE + (k as i64 + 1) * HOUR);
        let seen = Units {
            units: units
                .units
                .iter()
                .filter(|u| u.first_exposure < p.end)
                .cloned()
                .collect(),
            ..units.clone()
        };
        let r = summarize(&seen, &ReportOptions::default()).unwrap();
        let l = r.variants[1].conversion_lift.unwrap();
        assert_eq!(
            (p.lift, p.low, p.high),
            (l.relative, l.relative_low, l.relative_high)
        );
        assert_eq!(
            (p.control_units, p.treatment_units),
            (r.variants[0].units, r.variants[1].units)
        );
    }
    // The last point is the whole experiment's lift.
    let whole = summarize(&units, &ReportOptions::default()).unwrap();
    assert_eq!(
        points[71].lift,
        whole.variants[1].conversion_lift.unwrap().relative
    );
    // The interval narrows as units accrue.
    assert!(points[71].high - points[71].low < points[5].high - points[5].low);
    let days = cumulative_lift(&units, "control", "treatment", Bucket::Day);
    assert_eq!(
        days.iter().map(|p| p.end).collect::<Vec<_>>(),
        [1, 2, 3].map(|d| BASE + d * 24 * HOUR)
    );
    assert_eq!(Bucket::for_span(BASE, BASE + 7 * 24 * HOUR), Bucket::Day);
    assert_eq!(Bucket::for_span(BASE, BASE + 72 * HOUR), Bucket::Hour);
}

/// The value of `name="..."` in `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let start = tag
        .find(&format!(" {name}=\""))
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + name.len()
        + 3;
    &tag[start..start + tag[start..].find('"').unwrap()]
}

/// Every element is closed, in order; returns the opening tags.
fn well_formed(doc: &str) -> Vec<&str> {
    let mut open: Vec<&str> = Vec::new();
    let mut tags = Vec::new();
    let mut rest = doc;
    while let Some(at) = rest.find('<') {
        let end = rest[at..].find('>').expect("a tag is closed") + at;
        let tag = &rest[at + 1..end];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop(), Some(name.trim()), "mismatched </{name}>");
        } else {
            tags.push(tag);
            if !tag.ends_with('/') {
                open.push(tag.split_whitespace().next().unwrap());
            }
        }
        rest = &rest[end + 1..];
    }
    assert!(open.is_empty(), "unclosed: {open:?}");
    tags
}

#[test]
fn the_svg_draws_the_points_line_and_band() {
    let points = cumulative_lift(&units(), "control", "treatment", Bucket::Hour);
    let doc = svg(
        &points,
        "checkout: treatment vs control <conversion>",
        Bucket::Hour,
    );
    let tags = well_formed(&doc);
    assert!(tags[0].starts_with("svg ") && attr(tags[0], "xmlns") == "http://www.w3.org/2000/svg");
    assert!(doc.contains("&lt;conversion&gt;"));
    let line = tags
        .iter()
        .find(|t| t.starts_with("polyline") && attr(t, "class") == "lift")
        .unwrap();
    let band = tags
        .iter()
        .find(|t| t.starts_with("polygon") && attr(t, "class") == "interval")
        .unwrap();
    assert_eq!(attr(line, "points").split(' ').count(), points.len());
    assert_eq!(attr(band, "points").split(' ').count(), 2 * points.len());
    let read: Vec<LiftPoint> = tags
        .iter()
        .filter(|t| t.starts_with("circle") && attr(t, "class") == "point")
        .map(|t| LiftPoint {
            end: attr(t, "data-end").parse().unwrap(),
            control_units: attr(t, "data-control-units").parse().unwrap(),
            treatment_units: attr(t, "data-treatment-units").parse().unwrap(),
            lift: attr(t, "data-lift").parse().unwrap(),
            low: attr(t, "data-low").parse().unwrap(),
            high: attr(t, "data-high").parse().unwrap(),
        })
        .collect();
    assert_eq!(read, points);
    // The line's points are the circles' centres: the drawing is of these numbers.
    let centres: Vec<String> = tags
        .iter()
        .filter(|t| t.starts_with("circle"))
        .map(|t| format!("{},{}", attr(t, "cx"), attr(t, "cy")))
        .collect();
    assert_eq!(attr(line, "points").split(' ').collect::<Vec<_>>(), centres);
    // The band's top edge is above the line everywhere (SVG y grows downwards).
    let ys = |s: &str| {
        s.split(' ')
            .map(|p| p.split(',').nth(1).unwrap().parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    let (line_y, band_y) = (ys(attr(line, "points")), ys(attr(band, "points")));
    assert!(line_y.iter().zip(&band_y).all(|(l, top)| top <= l));
    // Axis labels: UTC hours on x, percentages on y.
    assert!(doc.contains(">11-01 01:00<") && doc.contains("%<"), "{doc}");
}

#[test]
fn an_empty_chart_says_so() {
    let doc = svg(&[], "nothing yet", Bucket::Day);
    well_formed(&doc);
    assert!(doc.contains("not enough units"));
}
