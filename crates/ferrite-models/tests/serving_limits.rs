//! What a version does under pressure and faults: a bounded queue, callers' deadlines, and
//! panics in the model run, with a test backend that can be held, counted and made to panic.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ferrite_models::stats::VersionStats;
use ferrite_models::{
    ModelBackend, ModelConfig, ModelError, ModelRepository, OnnxRuntime, Tensor, TensorData,
};

/// `x` values that make the backend misbehave.
const PANIC: f32 = -1.0;
/// A panic whose payload panics again as it is dropped, twice: enough to end the batching
/// thread despite its own guard (see `PanicOnDrop`).
const KILL_WORKER: f32 = -2.0;

/// A panic payload that panics as it is dropped, `0` more times.
struct PanicOnDrop(u32);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if self.0 > 0 {
            std::panic::panic_any(PanicOnDrop(self.0 - 1));
        }
    }
}

/// Answers `y = x` row by row. While closed, runs wait at the gate.
#[derive(Default)]
struct TestBackend {
    open: Mutex<bool>,
    opened: Condvar,
    /// Runs that reached the backend (waiting at the gate or not).
    entered: AtomicUsize,
    /// Rows the backend ran.
    rows: AtomicUsize,
}

impl TestBackend {
    fn closed() -> Arc<TestBackend> {
        Arc::new(TestBackend::default())
    }

    fn opened() -> Arc<TestBackend> {
        let b = TestBackend::default();
        *b.open.lock().unwrap() = true;
        Arc::new(b)
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl ModelBackend for TestBackend {
    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        // Bounded: a test that forgets to open the gate fails instead of hanging.
        let started = Instant::now();
        while !*open && started.elapsed() < Duration::from_secs(60) {
            open = self
                .opened
                .wait_timeout(open, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        drop(open);
        let x = &inputs[0];
        let TensorData::Fp32(values) = &x.data else {
            panic!("the config declares FP32");
        };
        if values.contains(&PANIC) {
            panic!("test backend asked to panic");
        }
        if values.contains(&KILL_WORKER) {
            std::panic::panic_any(PanicOnDrop(2));
        }
        self.rows.fetch_add(x.shape[0], Ordering::SeqCst);
        Ok(vec![Tensor::new("y", x.shape.clone(), x.data.clone())?])
    }
}

fn config(batching: &str) -> ModelConfig {
    toml::from_str(&format!(
        r#"
backend = "onnx"
max_batch_size = 8
inputs = [{{ name = "x", dtype = "FP32", dims = [1] }}]
outputs = [{{ name = "y", dtype = "FP32", dims = [1] }}]
{batching}
"#
    ))
    .unwrap()
}

fn x(v: f32) -> Vec<Tensor> {
    vec![Tensor::new("x", vec![1, 1], TensorData::Fp32(vec![v])).unwrap()]
}

fn repository() -> Arc<ModelRepository> {
    let empty = tempfile::tempdir().unwrap().keep();
    Arc::new(ModelRepository::new(empty, OnnxRuntime::get(None).unwrap()))
}

fn serve(repo: &ModelRepository, name: &str, batching: &str, backend: Arc<TestBackend>) {
    repo.insert(
        name,
        config(batching),
        vec![(1, backend as Arc<dyn ModelBackend>)],
    )
    .unwrap();
}

fn stats(repo: &ModelRepository, name: &str) -> Arc<VersionStats> {
    repo.get(name).unwrap().version("1").unwrap().stats.clone()
}

fn depth(repo: &ModelRepository, name: &str) -> usize {
    repo.get(name).unwrap().version("1").unwrap().queue_depth()
}

fn ready(repo: &ModelRepository, name: &str) -> bool {
    repo.get(name).unwrap().version("1").unwrap().is_ready()
}

/// Waits (at most 10 s, in 10 ms steps) until `cond` holds; false if it never did.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

fn spawn_call(
    repo: &Arc<ModelRepository>,
    name: &str,
    v: f32,
    deadline: Option<Instant>,
) -> tokio::task::JoinHandle<Result<(u64, Vec<Tensor>), ModelError>> {
    let repo = repo.clone();
    let name = name.to_string();
    tokio::spawn(async move { repo.infer_until(&name, "", x(v), deadline).await })
}

fn y(answer: Result<(u64, Vec<Tensor>), ModelError>) -> Vec<f32> {
    match answer.unwrap().1.remove(0).data {
        TensorData::Fp32(v) => v,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_naming_the_model_and_the_limit() {
    let repo = repository();
    let backend = TestBackend::closed();
    serve(
        &repo,
        "held",
        "dynamic_batching = { max_queue_delay_us = 0, max_queue_size = 2 }",
        backend.clone(),
    );
    // The first request runs (and waits at the gate); the second waits in the queue.
    let first = spawn_call(&repo, "held", 1.0, None);
    assert!(eventually(|| backend.entered.load(Ordering::SeqCst) == 1).await);
    let second = spawn_call(&repo, "held", 2.0, None);
    assert!(eventually(|| depth(&repo, "held") == 2).await);

    let err = repo.infer("held", "", x(3.0)).await.unwrap_err();
    assert!(matches!(err, ModelError::Overloaded(_)), "{err}");
    let msg = err.to_string();
    for expected in ["model \"held\" version 1", "dynamic_batching.max_queue_size = 2"] {
        assert!(msg.contains(expected), "{expected:?} not in {msg}");
    }
    assert_eq!(stats(&repo, "held").rejected_queue_full.load(Ordering::SeqCst), 1);
    assert_eq!(depth(&repo, "held"), 2, "a refused request takes no place");

    backend.open();
    assert_eq!(y(first.await.unwrap()), [1.0]);
    assert_eq!(y(second.await.unwrap()), [2.0]);
    assert!(eventually(|| depth(&repo, "held") == 0).await);
    assert_eq!(y(repo.infer("held", "", x(4.0)).await), [4.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passes_in_the_queue_is_answered_and_never_run() {
    let repo = repository();
    let backend = TestBackend::closed();
    serve(
        &repo,
        "slow",
        "dynamic_batching = { max_queue_delay_us = 0 }",
        backend.clone(),
    );
    let first = spawn_call(&repo, "slow", 1.0, None);
    assert!(eventually(|| backend.entered.load(Ordering::SeqCst) == 1).await);
    // Queued behind a run that cannot finish before its deadline.
    let late = spawn_call(
        &repo,
        "slow",
        2.0,
        Some(Instant::now() + Duration::from_millis(50)),
    );
    let err = late.await.unwrap().unwrap_err();
    assert!(matches!(err, ModelError::DeadlineExceeded(_)), "{err}");
    assert!(err.to_string().contains("model \"slow\" version 1"), "{err}");

    backend.open();
    assert_eq!(y(first.await.unwrap()), [1.0]);
    assert!(eventually(|| depth(&repo, "slow") == 0).await);
    assert_eq!(
        backend.rows.load(Ordering::SeqCst),
        1,
        "only the first request ran"
    );
    // A deadline already past when the call is made: refused before the queue.
    let err = repo
        .infer_until("slow", "", x(3.0), Some(Instant::now()))
        .await
        .unwrap_err();
    assert!(matches!(err, ModelError::DeadlineExceeded(_)), "{err}");
    assert_eq!(backend.rows.load(Ordering::SeqCst), 1);
    assert_eq!(stats(&repo, "slow").rejected_deadline.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbatched_run_past_its_deadline_is_answered_at_the_deadline() {
    let repo = repository();
    let backend = TestBackend::closed();
    serve(&repo, "direct_slow", "", backend.clone());
    // The first run of a version goes to the blocking pool (its cost is unknown).
    let call = spawn_call(
        &repo,
        "direct_slow",
        1.0,
        Some(Instant::now() + Duration::from_millis(50)),
    );
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, ModelError::DeadlineExceeded(_)), "{err}");
    backend.open();
    assert!(eventually(|| depth(&repo, "direct_slow") == 0).await);
    assert_eq!(y(repo.infer("direct_slow", "", x(5.0)).await), [5.0]);
}

#[tokio::test]
async fn a_panicking_batched_run_fails_its_callers_and_the_next_call_succeeds() {
    let repo = repository();
    serve(
        &repo,
        "panicky",
        "dynamic_batching = { max_queue_delay_us = 0 }",
        TestBackend::opened(),
    );
    let err = repo.infer("panicky", "", x(PANIC)).await.unwrap_err();
    assert!(matches!(err, ModelError::Panicked(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("model \"panicky\" version 1") && msg.contains("test backend asked to panic"),
        "{msg}"
    );
    assert!(ready(&repo, "panicky"));
    assert_eq!(y(repo.infer("panicky", "", x(7.0)).await), [7.0]);
    assert_eq!(stats(&repo, "panicky").panics.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_panicking_unbatched_run_fails_its_caller_and_the_next_call_succeeds() {
    let repo = repository();
    serve(&repo, "panicky_direct", "", TestBackend::opened());
    // The first run goes to the blocking pool; after fast runs, they run inline on the
    // async worker: a panic is caught on either.
    let err = repo.infer("panicky_direct", "", x(PANIC)).await.unwrap_err();
    assert!(matches!(err, ModelError::Panicked(_)), "{err}");
    for _ in 0..5 {
        assert_eq!(y(repo.infer("panicky_direct", "", x(1.0)).await), [1.0]);
    }
    let err = repo.infer("panicky_direct", "", x(PANIC)).await.unwrap_err();
    assert!(matches!(err, ModelError::Panicked(_)), "{err}");
    assert_eq!(y(repo.infer("panicky_direct", "", x(2.0)).await), [2.0]);
    assert_eq!(stats(&repo, "panicky_direct").panics.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_version_whose_batching_thread_died_is_not_ready_until_a_call_restarts_it() {
    let repo = repository();
    serve(
        &repo,
        "fragile",
        "dynamic_batching = { max_queue_delay_us = 0 }",
        TestBackend::opened(),
    );
    let err = repo.infer("fragile", "", x(KILL_WORKER)).await.unwrap_err();
    assert!(matches!(err, ModelError::Panicked(_)), "{err}");
    assert!(eventually(|| !ready(&repo, "fragile")).await, "the thread ended");
    let entry = repo.index().into_iter().find(|e| e.name == "fragile").unwrap();
    assert_eq!(entry.state, "UNAVAILABLE");
    assert!(
        entry.reason.contains("batching thread stopped"),
        "{}",
        entry.reason
    );

    assert_eq!(y(repo.infer("fragile", "", x(3.0)).await), [3.0]);
    assert!(ready(&repo, "fragile"));
}
