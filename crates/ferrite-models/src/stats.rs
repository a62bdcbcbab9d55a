//! Per-version inference statistics: what Triton's ModelStatistics reports, kept with atomics
//! on the request path, plus the same events as Prometheus metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and the total time it took.
#[derive(Debug, Default)]
pub struct Duration64 {
    pub count: AtomicU64,
    pub ns: AtomicU64,
}

impl Duration64 {
    fn add(&self, n: u64, d: Duration) {
        self.count.fetch_add(n, Ordering::Relaxed);
        self.ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// (count, total nanoseconds)
    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug)]
pub struct VersionStats {
    /// Requests answered, with their end-to-end time inside the model layer.
    pub success: Duration64,
    /// Requests refused or failed.
    pub fail: Duration64,
    /// Time requests waited before their batch ran.
    pub queue: Duration64,
    /// Model executions and their compute time.
    pub compute: Duration64,
    /// Requests served (a batch of n requests counts n).
    pub inference_count: AtomicU64,
    /// Model executions (a batch counts once).
    pub execution_count: AtomicU64,
    /// Milliseconds since the Unix epoch of the last inference.
    pub last_inference_ms: AtomicU64,
    /// Requests refused because the version already held its limit of requests.
    pub rejected_queue_full: AtomicU64,
    /// Requests answered DEADLINE_EXCEEDED.
    pub rejected_deadline: AtomicU64,
    /// Model runs (or batching-thread iterations) that panicked.
    pub panics: AtomicU64,
    /// Batch size -> (executions, compute time).
    batches: Mutex<BTreeMap<usize, (u64, u64)>>,
    /// Prometheus handles, looked up once: building a labelled key on every call allocates.
    metrics: Handles,
}

#[derive(Debug)]
struct Handles {
    compute_seconds: metrics::Histogram,
    batch_size: metrics::Histogram,
    queue_seconds: metrics::Histogram,
    requests_ok: metrics::Counter,
    requests_error: metrics::Counter,
    rejected_queue_full: metrics::Counter,
    rejected_deadline: metrics::Counter,
    panics: metrics::Counter,
    queue_depth: metrics::Gauge,
}

/// Why a request was refused without running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The version already held `max_queue_size` requests.
    QueueFull,
    /// The caller's deadline passed first.
    Deadline,
}

impl VersionStats {
    /// Statistics for one version. The Prometheus series are registered with the recorder
    /// installed at this point (the server installs its recorder before loading models).
    pub fn new(model: &str, version: u64) -> Self {
        let labels = [("model", model.to_string()), ("version", version.to_string())];
        let with_status = |status: &'static str| {
            [
                labels[0].clone(),
                labels[1].clone(),
                ("status", status.to_string()),
            ]
        };
        let with_reason = |reason: &'static str| {
            [
                labels[0].clone(),
                labels[1].clone(),
                ("reason", reason.to_string()),
            ]
        };
        VersionStats {
            success: Duration64::default(),
            fail: Duration64::default(),
            queue: Duration64::default(),
            compute: Duration64::default(),
            inference_count: AtomicU64::new(0),
            execution_count: AtomicU64::new(0),
            last_inference_ms: AtomicU64::new(0),
            rejected_queue_full: AtomicU64::new(0),
            rejected_deadline: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            batches: Mutex::default(),
            metrics: Handles {
                compute_seconds: metrics::histogram!("ferrite_model_compute_seconds", &labels),
                batch_size: metrics::histogram!("ferrite_model_batch_size", &labels),
                queue_seconds: metrics::histogram!("ferrite_model_queue_seconds", &labels),
                requests_ok: metrics::counter!("ferrite_model_requests_total", &with_status("ok")),
                requests_error: metrics::counter!("ferrite_model_requests_total", &with_status("error")),
                rejected_queue_full: metrics::counter!(
                    "ferrite_model_rejected_total",
                    &with_reason("queue_full")
                ),
                rejected_deadline: metrics::counter!(
                    "ferrite_model_rejected_total",
                    &with_reason("deadline")
                ),
                panics: metrics::counter!("ferrite_model_panics_total", &labels),
                queue_depth: metrics::gauge!("ferrite_model_queue_depth", &labels),
            },
        }
    }

    /// One model execution of `batch` requests that took `compute`.
    pub fn record_execution(&self, batch: usize, compute: Duration) {
        self.compute.add(1, compute);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.inference_count.fetch_add(batch as u64, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.last_inference_ms.store(now, Ordering::Relaxed);
        {
            let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            let entry = batches.entry(batch).or_default();
            entry.0 += 1;
            entry.1 += compute.as_nanos() as u64;
        }
        self.metrics.compute_seconds.record(compute.as_secs_f64());
        self.metrics.batch_size.record(batch as f64);
    }

    /// A request's wait before its batch ran.
    pub fn record_queue(&self, waited: Duration) {
        self.queue.add(1, waited);
        self.metrics.queue_seconds.record(waited.as_secs_f64());
    }

    /// A request's outcome and its total time in the model layer.
    pub fn record_request(&self, ok: bool, took: Duration) {
        let (slot, counter) = if ok {
            (&self.success, &self.metrics.requests_ok)
        } else {
            (&self.fail, &self.metrics.requests_error)
        };
        slot.add(1, took);
        counter.increment(1);
    }

    /// A request refused without running.
    pub fn record_rejected(&self, why: Rejection) {
        let (count, counter) = match why {
            Rejection::QueueFull => (&self.rejected_queue_full, &self.metrics.rejected_queue_full),
            Rejection::Deadline => (&self.rejected_deadline, &self.metrics.rejected_deadline),
        };
        count.fetch_add(1, Ordering::Relaxed);
        counter.increment(1);
    }

    /// A panic caught in a model run or in the batching thread.
    pub fn record_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        self.metrics.panics.increment(1);
    }

    /// One more request accepted and not yet answered (`ferrite_model_queue_depth`).
    pub(crate) fn queue_entered(&self) {
        self.metrics.queue_depth.increment(1.0);
    }

    /// One request answered, refused or abandoned.
    pub(crate) fn queue_left(&self) {
        self.metrics.queue_depth.decrement(1.0);
    }

    /// Batch size -> (executions, compute nanoseconds), smallest batch first.
    pub fn batches(&self) -> Vec<(usize, u64, u64)> {
        let batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        batches
            .iter()
            .map(|(&size, &(count, ns))| (size, count, ns))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_and_requests_add_up() {
        let s = VersionStats::new("m", 1);
        s.record_execution(4, Duration::from_micros(10));
        s.record_execution(1, Duration::from_micros(5));
        s.record_execution(4, Duration::from_micros(20));
        s.record_request(true, Duration::from_micros(30));
        s.record_request(false, Duration::from_micros(1));
        assert_eq!(s.inference_count.load(Ordering::Relaxed), 9);
        assert_eq!(s.execution_count.load(Ordering::Relaxed), 3);
        assert_eq!(s.compute.get(), (3, 35_000));
        assert_eq!(s.success.get(), (1, 30_000));
        assert_eq!(s.fail.get(), (1, 1_000));
        assert_eq!(s.batches(), vec![(1, 1, 5_000), (4, 2, 30_000)]);
        assert!(s.last_inference_ms.load(Ordering::Relaxed) > 0);
    }
}
