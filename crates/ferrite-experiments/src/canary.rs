//! Canaries judged on live traffic: the pipelines `record` how each canary or stable call
//! went; the controller rolls the canary back (share 0) when its error rate is above
//! `max_error_rate` and the sequential test (`sprt.rs`) finds it above stable's, or when its
//! p99 exceeds the budget; it promotes through `promote_steps` after healthy steps. Every
//! transition is logged, counted (`ferrite_canary_transitions_total`), kept in the state's
//! history and written to the shared `CanaryStore`, which other replicas poll.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::assign::current_weights;
use crate::config::{CanaryConfig, ExperimentConfig};
use crate::state::{CanaryState, CanaryStatus, CanaryStore, Transition};
use crate::window::{Counts, Window};

/// Milliseconds since the Unix epoch; swapped for a manual clock in simulations.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (simulations and tests).
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One canary: its config, shared state and what this replica has seen.
struct Run {
    experiment: ExperimentConfig,
    canary: CanaryConfig,
    /// Store key: name and bucket version (a bump starts a fresh canary).
    key: String,
    state: ArcSwap<CanaryState>,
    window: Mutex<Window>,
}

impl Run {
    fn new(experiment: &ExperimentConfig, canary: &CanaryConfig, now_ms: u64) -> Self {
        let share = experiment.variant(&canary.variant).map_or(0.0, |v| v.weight);
        let rho = rho(experiment, canary, share);
        Run {
            key: format!("{}.v{}", experiment.name, experiment.bucket_version),
            state: ArcSwap::from_pointee(CanaryState::new(&experiment.name, share, now_ms)),
            window: Mutex::new(Window::new(now_ms, 0, rho)),
            experiment: experiment.clone(),
            canary: canary.clone(),
        }
    }

    /// Starts a new step after the state moved to `generation` with `share`.
    fn new_step(&self, now_ms: u64, generation: u64, share: f64) {
        let rho = rho(&self.experiment, &self.canary, share);
        let mut w = self.window.lock().expect("not poisoned");
        w.new_step(now_ms, generation, rho);
    }

    /// What the window says about a running canary: roll back, promote, or nothing.
    /// `on_canary`: the request just observed was the canary's (only those move its p99, which
    /// is read from the histogram only then: it is the costly part of a judgement).
    fn judge(&self, w: &Window, state: &CanaryState, now_ms: u64, on_canary: bool) -> Option<(f64, String)> {
        let c = &self.canary;
        let rate = w.canary.error_rate();
        if w.canary.requests >= c.min_requests && rate > c.max_error_rate && w.sprt.rejects(c.alpha) {
            return Some((
                0.0,
                format!(
                    "error rate {rate:.4} > max_error_rate {} and above stable's {:.4} \
                     (sequential test at alpha {}, {} canary requests)",
                    c.max_error_rate,
                    w.stable.error_rate(),
                    c.alpha,
                    w.canary.requests
                ),
            ));
        }
        if let Some(budget) = c.p99_budget_ms
            && on_canary
            && w.step.canary.requests >= c.min_requests
            && let Some(p99) = w.step.canary_p99_ms()
            && p99 > budget
        {
            return Some((0.0, format!("p99 {p99:.1} ms > p99_budget_ms {budget}")));
        }
        let next = c
            .promote_steps
            .iter()
            .map(|s| s / 100.0)
            .find(|s| *s > state.share + 1e-9)?;
        let healthy_for = now_ms.saturating_sub(w.step.since_ms);
        (healthy_for >= c.promote_after_s * 1000 && w.step.canary.requests >= c.min_requests).then(|| {
            let reason = format!(
                "healthy for {} s over {} canary requests (error rate {:.4})",
                healthy_for / 1000,
                w.step.canary.requests,
                w.step.canary.error_rate()
            );
            (next, reason)
        })
    }
}

/// The chance that a request served by the canary or stable went to the canary when the
/// canary holds `share` (units outside coverage go to stable).
fn rho(experiment: &ExperimentConfig, canary: &CanaryConfig, share: f64) -> f64 {
    let weights = current_weights(experiment, Some(share));
    let weight = |n: &str| weights.iter().find(|(v, _)| v == n).map_or(0.0, |w| w.1);
    let coverage = experiment.coverage;
    let on_canary = coverage * weight(&canary.variant);
    let on_stable = coverage * weight(&canary.stable) + (1.0 - coverage);
    if on_canary + on_stable > 0.0 {
        on_canary / (on_canary + on_stable)
    } else {
        0.0
    }
}

/// A canary as `list()` shows it: the shared state and this replica's view of the traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryView {
    pub state: CanaryState,
    pub canary: Counts,
    pub stable: Counts,
    /// Natural log of the sequential test's evidence; rollback needs ln(1/alpha).
    pub log_evidence: f64,
    pub step_canary_p99_ms: Option<f64>,
}

/// Judges every experiment's canary and shares the verdicts through a `CanaryStore`.
pub struct CanaryController {
    runs: ArcSwap<HashMap<String, Arc<Run>>>,
    store: Arc<dyn CanaryStore>,
    clock: Arc<dyn Clock>,
    replica: String,
    /// Transitions not yet written to the store.
    pending: Mutex<Vec<(String, CanaryState)>>,
    wake: tokio::sync::Notify,
}

impl CanaryController {
    /// A controller for the canaries among `experiments`; `replica` names this process in
    /// transitions. Call [`Self::sync_now`] once at start to pick up stored states.
    pub fn new(
        experiments: &[ExperimentConfig],
        store: Arc<dyn CanaryStore>,
        clock: Arc<dyn Clock>,
        replica: &str,
    ) -> Arc<Self> {
        let controller = CanaryController {
            runs: ArcSwap::from_pointee(HashMap::new()),
            store,
            clock,
            replica: replica.to_string(),
            pending: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        };
        controller.reload(experiments);
        Arc::new(controller)
    }

    /// Swaps in `experiments`; a canary whose experiment and canary config are unchanged keeps
    /// its state and counts.
    pub fn reload(&self, experiments: &[ExperimentConfig]) {
        let now = self.clock.now_ms();
        let old = self.runs.load();
        let runs = experiments
            .iter()
            .filter_map(|e| {
                let canary = e.canary.as_ref()?;
                let run = match old.get(&e.name) {
                    Some(r) if r.experiment == *e => r.clone(),
                    _ => Arc::new(Run::new(e, canary, now)),
                };
                Some((e.name.clone(), run))
            })
            .collect();
        self.runs.store(Arc::new(runs));
    }

    /// How one call on `variant` of `experiment` went. Calls on other variants, other
    /// experiments or a canary no longer running are ignored.
    pub fn record(&self, experiment: &str, variant: &str, ok: bool, latency: Duration) {
        let runs = self.runs.load();
        let Some(run) = runs.get(experiment) else {
            return;
        };
        let on_canary = variant == run.canary.variant;
        if !on_canary && variant != run.canary.stable {
            return;
        }
        let state = run.state.load_full();
        if state.status != CanaryStatus::Running {
            return;
        }
        let now = self.clock.now_ms();
        let verdict = {
            let mut w = run.window.lock().expect("not poisoned");
            w.observe(on_canary, ok, latency);
            run.judge(&w, &state, now, on_canary)
        };
        if let Some((to_share, reason)) = verdict {
            let status = match to_share {
                s if s <= 0.0 => CanaryStatus::RolledBack,
                s if s >= 1.0 => CanaryStatus::Promoted,
                _ => CanaryStatus::Running,
            };
            let t = Transition {
                at_ms: now,
                from_share: state.share,
                to_share,
                status,
                reason,
                replica: self.replica.clone(),
            };
            self.apply(run, &state, t);
        }
    }

    /// Moves `run` from `current` to the state after `t`, unless another thread moved it
    /// first.
    fn apply(&self, run: &Run, current: &Arc<CanaryState>, t: Transition) {
        let next = Arc::new(current.transition(t.clone()));
        let prev = run.state.compare_and_swap(current, next.clone());
        if !Arc::ptr_eq(&prev, current) {
            return;
        }
        run.new_step(t.at_ms, next.generation, next.share);
        log_transition(&next.experiment, &t, "decided here");
        self.pending
            .lock()
            .expect("not poisoned")
            .push((run.key.clone(), (*next).clone()));
        self.wake.notify_one();
    }

    /// The canary's current share of `experiment` (0 once rolled back), if it has a canary.
    pub fn current_share(&self, experiment: &str) -> Option<f64> {
        self.runs.load().get(experiment).map(|r| r.state.load().share)
    }

    /// The arms' current weights of `experiment`: the canary at its current share, stable
    /// with the rest.
    pub fn current_weights(&self, experiment: &str) -> Option<Vec<(String, f64)>> {
        let runs = self.runs.load();
        let run = runs.get(experiment)?;
        Some(current_weights(&run.experiment, Some(run.state.load().share)))
    }

    /// Every canary, by experiment name.
    pub fn list(&self) -> Vec<CanaryView> {
        let runs = self.runs.load();
        let mut views: Vec<CanaryView> = runs
            .values()
            .map(|r| {
                let w = r.window.lock().expect("not poisoned");
                CanaryView {
                    state: (*r.state.load_full()).clone(),
                    canary: w.canary,
                    stable: w.stable,
                    log_evidence: w.sprt.log_evidence(),
                    step_canary_p99_ms: w.step.canary_p99_ms(),
                }
            })
            .collect();
        views.sort_by(|a, b| a.state.experiment.cmp(&b.state.experiment));
        views
    }

    /// Writes this replica's transitions to the store and adopts the stored states that win
    /// over this replica's (another replica's rollback, a later step). A store error is
    /// logged and retried on the next call.
    pub async fn sync_now(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("not poisoned"));
        for (key, state) in pending {
            if let Err(e) = self.store.save(&key, &state).await {
                tracing::warn!(key, error = %e, "canary state not saved; will retry");
                self.pending.lock().expect("not poisoned").push((key, state));
            }
        }
        let runs = self.runs.load_full();
        for run in runs.values() {
            match self.store.load(&run.key).await {
                Ok(Some(stored)) => self.adopt(run, stored),
                Ok(None) => {}
                Err(e) => tracing::warn!(key = run.key, error = %e, "canary state not loaded"),
            }
        }
    }

    fn adopt(&self, run: &Run, stored: CanaryState) {
        let local = run.state.load_full();
        if !stored.wins_over(&local) {
            return;
        }
        let now = self.clock.now_ms();
        let (generation, share) = (stored.generation, stored.share);
        if let Some(t) = stored.history.last() {
            log_transition(&stored.experiment, t, "adopted from the store");
        }
        run.state.store(Arc::new(stored));
        run.new_step(now, generation, share);
    }

    /// Syncs with the store every `every` and as soon as a transition happens here. Abort
    /// the handle to stop.
    pub fn spawn_sync(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = me.wake.notified() => {}
                }
                me.sync_now().await;
            }
        })
    }
}

fn log_transition(experiment: &str, t: &Transition, how: &'static str) {
    let status = match t.status {
        CanaryStatus::Running => "promoted_step",
        CanaryStatus::RolledBack => "rolled_back",
        CanaryStatus::Promoted => "promoted",
    };
    match t.status {
        CanaryStatus::RolledBack => tracing::warn!(
            experiment, from_share = t.from_share, reason = %t.reason, replica = %t.replica, how,
            "canary rolled back"
        ),
        _ => tracing::info!(
            experiment, from_share = t.from_share, to_share = t.to_share, reason = %t.reason,
            replica = %t.replica, how, "canary promoted"
        ),
    }
    metrics::counter!(
        "ferrite_canary_transitions_total",
        "experiment" => experiment.to_string(),
        "transition" => status,
    )
    .increment(1);
}
