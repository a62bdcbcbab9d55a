//! Canary judgement on simulated traffic: a failing canary is rolled back within its window,
//! an equal one never is over a million requests, a slow one is rolled back on its p99, a
//! healthy one is promoted step by step; and the measured false-alarm rate (ignored test).

mod canary_support;

use std::sync::Arc;
use std::time::Duration;

use canary_support::{NAME, Sim, arm, canary, experiment};
use ferrite_experiments::assign::assign_one;
use ferrite_experiments::sprt::MixtureSprt;
use ferrite_experiments::{CanaryController, CanaryStatus, ManualClock, MemoryCanaryStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn sim(extra: &str, seed: u64) -> Sim {
    Sim::new(
        experiment(canary(extra)),
        Arc::new(MemoryCanaryStore::default()),
        seed,
    )
}

#[test]
fn a_canary_failing_3_percent_is_rolled_back_within_its_window() {
    let mut s = sim("min_requests = 1000", 7);
    let (bad, good) = (arm(0.03, 5), arm(0.0, 5));
    let mut requests = 0;
    while s.share() > 0.0 && requests < 1_000_000 {
        s.request(bad, good);
        requests += 1;
    }
    let view = &s.controller.list()[0];
    assert_eq!(view.state.status, CanaryStatus::RolledBack);
    // Judged as soon as it may be: at min_requests canary requests, well within two windows.
    assert!(
        view.canary.requests <= 2_000,
        "rolled back after {} canary requests",
        view.canary.requests
    );
    let t = view.state.history.last().expect("a transition");
    assert_eq!((t.from_share, t.to_share), (0.05, 0.0));
    assert!(t.reason.contains("error rate"), "{}", t.reason);
    // Rolled back: nobody gets the canary any more, and its calls are no longer judged.
    for _ in 0..10_000 {
        assert!(!s.request(bad, good));
    }
    assert_eq!(s.controller.current_weights(NAME).unwrap()[0].1, 1.0);
}

#[test]
fn a_canary_failing_1_percent_against_0_2_percent_is_rolled_back() {
    let mut s = sim("", 11);
    let mut requests = 0;
    while s.share() > 0.0 && requests < 2_000_000 {
        s.request(arm(0.01, 5), arm(0.002, 5));
        requests += 1;
    }
    assert_eq!(s.controller.list()[0].state.status, CanaryStatus::RolledBack);
}

#[test]
fn a_canary_equal_to_its_baseline_is_never_rolled_back_over_a_million_requests() {
    let mut s = sim("", 20261201);
    let same = arm(0.002, 5);
    for _ in 0..1_000_000 {
        s.request(same, same);
    }
    let view = &s.controller.list()[0];
    assert_eq!(view.state.status, CanaryStatus::Running);
    assert!(view.state.history.is_empty());
    assert!(view.canary.requests > 40_000 && view.canary.errors > 0);
    assert!(view.stable.errors > 1_000);
    assert_eq!(s.share(), 0.05);
}

#[test]
fn a_canary_over_its_p99_budget_is_rolled_back() {
    let mut s = sim("min_requests = 500\np99_budget_ms = 25", 3);
    let mut requests = 0;
    while s.share() > 0.0 && requests < 1_000_000 {
        s.request(arm(0.0, 40), arm(0.0, 5));
        requests += 1;
    }
    let view = &s.controller.list()[0];
    assert_eq!(view.state.status, CanaryStatus::RolledBack);
    let reason = &view.state.history[0].reason;
    assert!(
        reason.contains("p99") && reason.contains("p99_budget_ms 25"),
        "{reason}"
    );
}

#[test]
fn a_healthy_canary_is_promoted_step_by_step() {
    let mut s = sim(
        "min_requests = 200\npromote_steps = [5, 25, 50, 100]\npromote_after_s = 60\np99_budget_ms = 25",
        5,
    );
    s.tick = Duration::from_millis(10);
    let same = arm(0.002, 5);
    let mut requests = 0;
    while s.controller.list()[0].state.status == CanaryStatus::Running && requests < 1_000_000 {
        s.request(same, same);
        requests += 1;
    }
    let state = &s.controller.list()[0].state;
    assert_eq!(state.status, CanaryStatus::Promoted);
    let shares: Vec<(f64, f64)> = state.history.iter().map(|t| (t.from_share, t.to_share)).collect();
    assert_eq!(shares, vec![(0.05, 0.25), (0.25, 0.5), (0.5, 1.0)]);
    for pair in state.history.windows(2) {
        assert!(
            pair[1].at_ms - pair[0].at_ms >= 60_000,
            "a step lasted under 60 s"
        );
    }
    assert_eq!(state.generation, 3);
}

#[test]
fn raising_the_canary_share_never_moves_a_canary_unit_back_to_stable() {
    let config = experiment(canary(""));
    let shares = [0.0, 0.05, 0.25, 0.5, 1.0];
    for i in 0..50_000 {
        let unit = format!("u{i}");
        let on: Vec<bool> = shares
            .iter()
            .map(|s| &*assign_one(&config, &unit, Some(*s)).variant.name == "v8")
            .collect();
        for pair in on.windows(2) {
            assert!(!pair[0] || pair[1], "{unit} left the canary as its share grew");
        }
        assert!(!on[0] && on[4]);
    }
}

/// Runs 200 canaries equal to their baseline (both failing at `error_rate`) for `requests`
/// each through the controller, choosing the arm at random with the canary's share, and
/// returns the share of them rolled back.
fn false_alarm_rate(extra: &str, weight: f64, error_rate: f64, requests: u64) -> f64 {
    let replications = 200;
    let mut alarms = 0;
    for r in 0..replications {
        let mut config = experiment(canary(extra));
        config.variants[0].weight = 1.0 - weight;
        config.variants[1].weight = weight;
        let clock = Arc::new(ManualClock::default());
        let controller = CanaryController::new(
            &[config],
            Arc::new(MemoryCanaryStore::default()),
            clock.clone(),
            "sim",
        );
        let mut rng = StdRng::seed_from_u64(1_000 + r);
        for _ in 0..requests {
            let variant = if rng.random::<f64>() < weight { "v8" } else { "v7" };
            let ok = rng.random::<f64>() >= error_rate;
            controller.record(NAME, variant, ok, Duration::from_millis(5));
            clock.advance(Duration::from_millis(1));
        }
        alarms += usize::from(controller.current_share(NAME) == Some(0.0));
    }
    alarms as f64 / replications as f64
}

/// The sequential test alone: only errors move it, and under the null each error falls on
/// the canary with probability `rho`, so errors are drawn directly. Returns the share of
/// `replications` runs of `errors` errors each in which the test ever rejected.
fn sprt_false_alarm_rate(rho: f64, alpha: f64, errors: usize, replications: u64) -> f64 {
    let mut alarms = 0;
    for r in 0..replications {
        let mut rng = StdRng::seed_from_u64(r);
        let mut test = MixtureSprt::default();
        for _ in 0..errors {
            test.observe_error(rng.random::<f64>() < rho, rho);
            if test.rejects(alpha) {
                alarms += 1;
                break;
            }
        }
    }
    alarms as f64 / replications as f64
}

/// The README's false-alarm figures:
/// `cargo test -p ferrite-experiments --test canary_sim -- --ignored --nocapture`.
#[test]
#[ignore]
fn measured_false_alarm_rates() {
    let defaults = false_alarm_rate("", 0.05, 0.002, 50_000);
    println!("defaults (5 % canary, both 0.2 % errors, 200 x 50k requests): {defaults:.3}");
    for rho in [0.05, 0.5] {
        for alpha in [0.01f64, 0.05] {
            let rate = sprt_false_alarm_rate(rho, alpha, 5_000, 2_000);
            println!("sequential test alone, rho {rho}, alpha {alpha} (2,000 x 5,000 errors): {rate:.4}");
            // Ville's bound, with room for sampling error (3 standard errors).
            assert!(
                rate <= alpha + 3.0 * (alpha / 2_000.0).sqrt(),
                "{rate} above {alpha}"
            );
        }
    }
}
