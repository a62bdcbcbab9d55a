//! Shadow variants: a bounded queue that hands copies of requests to a shadow runner and
//! drops (and counts) what does not fit, and the comparisons of a shadow's answer with the
//! served one.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

/// A bounded queue of shadow work; the request path never waits on it.
pub struct ShadowQueue<T> {
    name: String,
    tx: mpsc::Sender<T>,
    dropped: AtomicU64,
}

impl<T> ShadowQueue<T> {
    /// A queue named `name` (in metrics) holding at most `capacity` items, and its receiver.
    pub fn new(name: &str, capacity: usize) -> (Self, mpsc::Receiver<T>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let queue = ShadowQueue {
            name: name.to_string(),
            tx,
            dropped: AtomicU64::new(0),
        };
        (queue, rx)
    }

    /// Queues `item`; when the queue is full (or its runner is gone) the item is dropped and
    /// counted, and `false` is returned.
    pub fn offer(&self, item: T) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("ferrite_shadow_dropped_total", "queue" => self.name.clone()).increment(1);
                false
            }
        }
    }

    /// Items dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The shadow's score minus the served one.
pub fn score_diff(served: f64, shadow: f64) -> f64 {
    shadow - served
}

/// Whether the two scores fall on different sides of `threshold` (a score at the threshold
/// counts as above, as the decision rules do).
pub fn decision_flip(served: f64, shadow: f64, threshold: f64) -> bool {
    (served >= threshold) != (shadow >= threshold)
}

/// Share of the served list's top `k` that the shadow's top `k` also holds, in [0, 1]; lists
/// shorter than `k` count their missing places as misses. `k = 0` gives 1.
pub fn overlap_at_k<T: Eq + Hash>(served: &[T], shadow: &[T], k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    let top: HashSet<&T> = shadow.iter().take(k).collect();
    let common = served
        .iter()
        .take(k)
        .collect::<HashSet<_>>()
        .into_iter()
        .filter(|x| top.contains(x))
        .count();
    common as f64 / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons() {
        assert!((score_diff(0.25, 0.75) - 0.5).abs() < 1e-12);
        assert!(decision_flip(0.49, 0.5, 0.5));
        assert!(!decision_flip(0.5, 0.9, 0.5));
        assert!(!decision_flip(0.1, 0.2, 0.5));
        assert_eq!(overlap_at_k(&[1, 2, 3, 4], &[4, 3, 9, 1], 2), 0.0);
        assert_eq!(overlap_at_k(&[1, 2, 3, 4], &[4, 3, 2, 1], 4), 1.0);
        assert_eq!(overlap_at_k(&[1, 2, 3], &[3, 2, 7], 3), 2.0 / 3.0);
        assert_eq!(overlap_at_k(&[1], &[1], 2), 0.5);
        assert_eq!(overlap_at_k::<u32>(&[], &[], 0), 1.0);
        // Duplicates in a list are counted once.
        assert_eq!(overlap_at_k(&[1, 1], &[1, 2], 2), 0.5);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let (q, mut rx) = ShadowQueue::new("test", 2);
        assert!(q.offer(1));
        assert!(q.offer(2));
        assert!(!q.offer(3));
        assert!(!q.offer(4));
        assert_eq!(q.dropped(), 2);
        assert_eq!(rx.recv().await, Some(1));
        assert!(q.offer(5));
        assert_eq!(q.dropped(), 2);
    }
}
