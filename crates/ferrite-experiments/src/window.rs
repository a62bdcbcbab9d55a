//! What a canary has seen: counts since it started (for the sequential test, which must see
//! everything) and, per step, counts and latency histograms (for the p99 budget and for
//! promotion, which judge the share in force now).

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::sprt::MixtureSprt;

/// Latencies are kept in microseconds up to a minute, at 2 significant digits.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
}

impl Counts {
    fn add(&mut self, ok: bool) {
        self.requests += 1;
        self.errors += u64::from(!ok);
    }

    pub fn error_rate(&self) -> f64 {
        match self.requests {
            0 => 0.0,
            n => self.errors as f64 / n as f64,
        }
    }
}

pub(crate) struct Step {
    pub since_ms: u64,
    pub canary: Counts,
    pub stable: Counts,
    pub canary_latency: Histogram<u64>,
    pub stable_latency: Histogram<u64>,
}

impl Step {
    fn new(since_ms: u64) -> Self {
        let hist = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid bounds");
        Step {
            since_ms,
            canary: Counts::default(),
            stable: Counts::default(),
            canary_latency: hist(),
            stable_latency: hist(),
        }
    }

    /// The canary's p99 in this step, in milliseconds.
    pub fn canary_p99_ms(&self) -> Option<f64> {
        (!self.canary_latency.is_empty()).then(|| self.canary_latency.value_at_quantile(0.99) as f64 / 1000.0)
    }
}

pub(crate) struct Window {
    pub sprt: MixtureSprt,
    pub canary: Counts,
    pub stable: Counts,
    pub step: Step,
    /// The state generation this step belongs to.
    pub generation: u64,
    /// The chance that a request goes to the canary rather than to stable in this step.
    pub rho: f64,
}

impl Window {
    pub fn new(now_ms: u64, generation: u64, rho: f64) -> Self {
        Window {
            sprt: MixtureSprt::default(),
            canary: Counts::default(),
            stable: Counts::default(),
            step: Step::new(now_ms),
            generation,
            rho,
        }
    }

    /// One request on the canary or on stable.
    pub fn observe(&mut self, on_canary: bool, ok: bool, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        if on_canary {
            self.canary.add(ok);
            self.step.canary.add(ok);
            self.step.canary_latency.saturating_record(us);
        } else {
            self.stable.add(ok);
            self.step.stable.add(ok);
            self.step.stable_latency.saturating_record(us);
        }
        if !ok {
            self.sprt.observe_error(on_canary, self.rho);
        }
    }

    /// Starts a new step (after a transition) for state `generation` under split `rho`.
    pub fn new_step(&mut self, now_ms: u64, generation: u64, rho: f64) {
        self.step = Step::new(now_ms);
        self.generation = generation;
        self.rho = rho;
    }
}
