//! Live recall: a share of answered searches is re-run exactly off the caller's path, and
//! recall@10 of what was answered is kept over a rolling window.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::snapshot::Snapshot;
use super::types::ItemFilter;

/// How live recall is sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecallConfig {
    /// Share of searches re-run exactly, 0..=1 (default 0.01).
    pub sample_fraction: f64,
    /// Samples waiting for the background thread; more are dropped and counted (default 64).
    pub queue: usize,
    /// Recall is the mean over the last this many samples (default 1,000).
    pub window: usize,
}

impl Default for RecallConfig {
    fn default() -> Self {
        RecallConfig {
            sample_fraction: 0.01,
            queue: 64,
            window: 1_000,
        }
    }
}

pub(crate) struct Sample {
    pub snapshot: Arc<Snapshot>,
    pub query: Vec<f32>,
    pub filter: ItemFilter,
    pub k: usize,
    pub answered: Vec<String>,
}

enum Job {
    Sample(Box<Sample>),
    Flush(SyncSender<()>),
}

struct Window {
    values: VecDeque<f64>,
    sum: f64,
    cap: usize,
}

/// Samples searches and measures their recall on a background thread.
pub(crate) struct RecallSampler {
    tx: SyncSender<Job>,
    fraction: f64,
    seen: AtomicU64,
    dropped: AtomicU64,
    window: Arc<Mutex<Window>>,
}

/// At most this many answered results are compared.
const RECALL_AT: usize = 10;

impl RecallSampler {
    pub fn start(config: &RecallConfig) -> Self {
        let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
        let window = Arc::new(Mutex::new(Window {
            values: VecDeque::new(),
            sum: 0.0,
            cap: config.window.max(1),
        }));
        let shared = Arc::clone(&window);
        std::thread::Builder::new()
            .name("ferrite-search-recall".into())
            .spawn(move || run(rx, &shared))
            .expect("spawning the live-recall thread");
        RecallSampler {
            tx,
            fraction: config.sample_fraction.clamp(0.0, 1.0),
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            window,
        }
    }

    /// Whether this search is sampled: every `1 / fraction`-th search, spread evenly.
    pub fn should_sample(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        (n * self.fraction).floor() != ((n + 1.0) * self.fraction).floor()
    }

    /// Queues a sample without waiting; a full queue drops it and counts the drop.
    pub fn offer(&self, sample: Sample) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Job::Sample(Box::new(sample)))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("ferrite_search_recall_samples_dropped_total").increment(1);
        }
    }

    /// Waits until every sample queued before this call has been measured.
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.send(Job::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }

    /// Mean recall@10 over the window; `None` before the first sample.
    pub fn recall(&self) -> Option<f64> {
        let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        (!w.values.is_empty()).then(|| w.sum / w.values.len() as f64)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn run(rx: Receiver<Job>, window: &Mutex<Window>) {
    for job in rx {
        let sample = match job {
            Job::Sample(sample) => sample,
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let k = sample.k.min(RECALL_AT);
        let exact = sample.snapshot.exact_all(&sample.query, k, &sample.filter);
        if exact.is_empty() {
            continue;
        }
        let found = sample
            .answered
            .iter()
            .take(k)
            .filter(|id| exact.contains(id))
            .count();
        let recall = found as f64 / exact.len() as f64;
        let mean = {
            let mut w = window.lock().unwrap_or_else(|p| p.into_inner());
            w.values.push_back(recall);
            w.sum += recall;
            if w.values.len() > w.cap
                && let Some(old) = w.values.pop_front()
            {
                w.sum -= old;
            }
            w.sum / w.values.len() as f64
        };
        metrics::gauge!("ferrite_search_live_recall_at_10").set(mean);
    }
}
