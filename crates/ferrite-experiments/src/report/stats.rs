//! The statistics the report needs, written out: sample moments, Welch's t-test on a
//! difference of means, the delta-method interval of a relative lift, and the χ² test of a
//! sample ratio. The distribution functions use the standard series and continued fractions
//! for the regularised gamma and beta functions.

use serde::Serialize;

/// Count, mean and sample variance (n − 1) of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: f64,
    pub mean: f64,
    pub variance: f64,
}

impl Moments {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Moments {
        // Welford's update: stable for long runs of 0/1 values.
        let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
        for x in values {
            n += 1.0;
            let d = x - mean;
            mean += d / n;
            m2 += d * (x - mean);
        }
        let variance = if n > 1.0 { m2 / (n - 1.0) } else { 0.0 };
        Moments { n, mean, variance }
    }
}

/// Treatment against control on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lift {
    /// Treatment mean − control mean.
    pub difference: f64,
    /// Welch's 95 % interval of the difference.
    pub difference_low: f64,
    pub difference_high: f64,
    /// Treatment mean / control mean − 1.
    pub relative: f64,
    /// Delta-method 95 % interval of the relative lift.
    pub relative_low: f64,
    pub relative_high: f64,
    /// Two-sided p-value of Welch's t-test (difference = 0).
    pub p_value: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub df: f64,
}

/// The z of a two-sided 95 % normal interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// Compares two samples; `None` when either has fewer than two values or both have no spread.
pub fn compare(treatment: Moments, control: Moments) -> Option<Lift> {
    let (t, c) = (treatment, control);
    if t.n < 2.0 || c.n < 2.0 {
        return None;
    }
    let (vt, vc) = (t.variance / t.n, c.variance / c.n);
    let se = (vt + vc).sqrt();
    if se == 0.0 {
        return None;
    }
    let df = (vt + vc).powi(2) / (vt * vt / (t.n - 1.0) + vc * vc / (c.n - 1.0));
    let difference = t.mean - c.mean;
    let q = t_quantile_975(df);
    let p_value = 2.0 * student_t_sf(difference.abs() / se, df);
    let (relative, relative_se) = if c.mean != 0.0 {
        let r = t.mean / c.mean - 1.0;
        let var = vt / (c.mean * c.mean) + t.mean * t.mean * vc / c.mean.powi(4);
        (r, var.sqrt())
    } else {
        (f64::NAN, f64::NAN)
    };
    Some(Lift {
        difference,
        difference_low: difference - q * se,
        difference_high: difference + q * se,
        relative,
        relative_low: relative - Z_95 * relative_se,
        relative_high: relative + Z_95 * relative_se,
        p_value: p_value.min(1.0),
        df,
    })
}

/// The sample-ratio-mismatch test: χ² of observed counts against expected weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleRatio {
    /// Expected share of each variant, in report order, summing to 1.
    pub expected: Vec<f64>,
    pub observed: Vec<u64>,
    pub chi_square: f64,
    pub df: u32,
    pub p_value: f64,
    /// p below [`SRM_ALPHA`]: the split is not the one configured; do not trust the lifts.
    pub mismatch: bool,
}

/// The p-value under which a sample ratio is flagged.
pub const SRM_ALPHA: f64 = 0.001;

/// `weights` are positive and as many as `observed` (checked by the caller).
pub fn sample_ratio(observed: &[u64], weights: &[f64]) -> SampleRatio {
    let total: f64 = observed.iter().map(|&o| o as f64).sum();
    let sum: f64 = weights.iter().sum();
    let expected: Vec<f64> = weights.iter().map(|w| w / sum).collect();
    let chi_square: f64 = observed
        .iter()
        .zip(&expected)
        .map(|(&o, &share)| {
            let e = share * total;
            if e > 0.0 { (o as f64 - e).powi(2) / e } else { 0.0 }
        })
        .sum();
    let df = observed.len().saturating_sub(1) as u32;
    let p_value = if df == 0 || total == 0.0 {
        1.0
    } else {
        chi_square_sf(chi_square, f64::from(df))
    };
    SampleRatio {
        expected,
        observed: observed.to_vec(),
        chi_square,
        df,
        p_value,
        mismatch: p_value < SRM_ALPHA,
    }
}

/// P(X > x) for X ~ χ²(df).
pub fn chi_square_sf(x: f64, df: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(df / 2.0, x / 2.0)
}

/// P(T > t) for T ~ Student's t(df); for t ≥ 0 this is half the two-sided p-value.
pub fn student_t_sf(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return if t > 0.0 { 0.0 } else { 1.0 };
    }
    let tail = 0.5 * beta_reg(df / (df + t * t), df / 2.0, 0.5);
    if t >= 0.0 { tail } else { 1.0 - tail }
}

/// The 97.5 % quantile of Student's t(df), by bisection on the tail.
pub fn t_quantile_975(df: f64) -> f64 {
    if !df.is_finite() || df > 1e7 {
        return Z_95;
    }
    let (mut lo, mut hi) = (Z_95, 1e4);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_sf(mid, df) > 0.025 {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-12 {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Φ(x), the standard normal CDF, through erfc.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The complementary error function: erfc(x) = Q(1/2, x²) for x ≥ 0.
pub fn erfc(x: f64) -> f64 {
    if x >= 0.0 {
        gamma_q(0.5, x * x)
    } else {
        2.0 - gamma_q(0.5, x * x)
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients: ~15 significant digits).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

const EPS: f64 = 1e-15;
const TINY: f64 = 1e-300;
const MAX_ITER: usize = 10_000;

/// The regularised upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a).
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let log_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // Series for P(a, x).
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..MAX_ITER {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * EPS {
                break;
            }
        }
        1.0 - sum * log_prefix.exp()
    } else {
        // Continued fraction for Q(a, x), modified Lentz.
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..MAX_ITER {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < EPS {
                break;
            }
        }
        log_prefix.exp() * h
    }
}

/// The regularised incomplete beta function I_x(a, b).
pub fn beta_reg(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let log_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The continued fraction converges fast on this side; the other side by symmetry.
    if x < (a + 1.0) / (a + b + 2.0) {
        log_front.exp() * beta_fraction(x, a, b) / a
    } else {
        1.0 - log_front.exp() * beta_fraction(1.0 - x, b, a) / b
    }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    let clamp = |v: f64| if v.abs() < TINY { TINY } else { v };
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / clamp(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..MAX_ITER {
        let m = m as f64;
        let m2 = 2.0 * m;
        let even = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 / clamp(1.0 + even * d);
        c = clamp(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 / clamp(1.0 + odd * d);
        c = clamp(1.0 + odd / c);
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} != {b} (± {tol})");
    }

    #[test]
    fn distribution_functions_match_closed_forms() {
        close(ln_gamma(5.0), 24f64.ln(), 1e-12);
        close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-12);
        close(normal_cdf(1.959_963_984_540_054), 0.975, 1e-12);
        close(normal_cdf(-1.0), 0.158_655_253_931_457, 1e-12);
        // χ²(2) survival is exp(-x/2); χ²(1) is erfc(sqrt(x/2)).
        close(chi_square_sf(5.0, 2.0), (-2.5f64).exp(), 1e-12);
        close(chi_square_sf(3.841_458_820_694_124, 1.0), 0.05, 1e-10);
        // t(1) is Cauchy: P(T > 1) = 1/4; t(2): P(T > t) = (1 - t / sqrt(2 + t²)) / 2.
        close(student_t_sf(1.0, 1.0), 0.25, 1e-12);
        close(student_t_sf(2.0, 2.0), 0.5 * (1.0 - 2.0 / 6f64.sqrt()), 1e-12);
        close(t_quantile_975(1.0), (std::f64::consts::PI * 0.475).tan(), 1e-9);
        close(t_quantile_975(1e9), Z_95, 1e-12);
    }

    #[test]
    fn moments_use_the_sample_variance() {
        let m = Moments::of([1.0, 2.0, 3.0, 4.0]);
        assert_eq!((m.n, m.mean), (4.0, 2.5));
        close(m.variance, 5.0 / 3.0, 1e-12);
    }
}
