//! The canary's sequential test: is the canary's error rate above the stable's?
//!
//! Each error is attributed to the arm that served it. If the arm does not change the
//! error probability (the null), an error falls on the canary with the probability `rho`
//! that a request goes to the canary rather than to stable (the randomised split), whatever
//! the error rate is and however it drifts. Under the alternative that the canary's rate
//! is `lambda` times the stable's, that probability is `rho·lambda / (rho·lambda + 1 - rho)`.
//! The product of these likelihood ratios over errors is a non-negative martingale under the
//! null for each `lambda`, and so is an equal-weight mixture over a grid of `lambda`s (a
//! mixture sequential probability ratio test). Ville's inequality bounds the chance that it
//! ever reaches `1/alpha` under the null by `alpha`, so the test may be checked after every
//! request, for ever, and `rho` may change between steps (each factor uses the split in
//! force when the error happened). The test is one-sided: only a worse canary rejects.

/// Rate ratios (canary over stable) the mixture puts equal weight on.
const LAMBDAS: [f64; 8] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0];

/// A mixture SPRT over errors of a canary against its baseline.
#[derive(Debug, Clone)]
pub struct MixtureSprt {
    log_lr: [f64; LAMBDAS.len()],
    /// The mixture's log likelihood ratio, updated with each error (read on every request).
    log_evidence: f64,
}

impl Default for MixtureSprt {
    fn default() -> Self {
        MixtureSprt {
            log_lr: [0.0; LAMBDAS.len()],
            log_evidence: 0.0,
        }
    }
}

impl MixtureSprt {
    /// One error, served by the canary (`on_canary`) or by stable, while a request went to
    /// the canary with probability `rho` (canary share over canary + stable shares).
    pub fn observe_error(&mut self, on_canary: bool, rho: f64) {
        if !(rho > 0.0 && rho < 1.0) {
            return; // one arm takes everything: an error says nothing about the difference
        }
        for (l, lambda) in self.log_lr.iter_mut().zip(LAMBDAS) {
            let denominator = (rho * lambda + 1.0 - rho).ln();
            *l += if on_canary { lambda.ln() } else { 0.0 } - denominator;
        }
        self.log_evidence = self.mixture();
    }

    /// The log of the mixture's likelihood ratio (its e-value).
    pub fn log_evidence(&self) -> f64 {
        self.log_evidence
    }

    fn mixture(&self) -> f64 {
        let max = self.log_lr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = self.log_lr.iter().map(|l| (l - max).exp()).sum();
        max + (sum / LAMBDAS.len() as f64).ln()
    }

    /// True once the evidence reaches `1/alpha`: the canary is worse, with a false-alarm
    /// probability of at most `alpha` over the whole (unbounded) run.
    pub fn rejects(&self, alpha: f64) -> bool {
        self.log_evidence() >= (1.0 / alpha).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_only_on_the_canary_reject_quickly() {
        let mut t = MixtureSprt::default();
        let mut errors = 0;
        while !t.rejects(0.01) {
            t.observe_error(true, 0.05);
            errors += 1;
        }
        // At a 5 % split, each canary error multiplies the 100x component by ~17.
        assert!(errors <= 4, "{errors} errors before rejection");
    }

    #[test]
    fn errors_split_as_the_traffic_never_reject() {
        let mut t = MixtureSprt::default();
        for i in 0..10_000 {
            t.observe_error(i % 20 == 0, 0.05);
        }
        assert!(!t.rejects(0.01));
        assert!(t.log_evidence() < 0.0);
    }

    #[test]
    fn a_split_of_zero_or_one_carries_no_evidence() {
        let mut t = MixtureSprt::default();
        t.observe_error(true, 1.0);
        t.observe_error(false, 0.0);
        assert_eq!(t.log_evidence(), 0.0);
    }
}
