//! Dynamic batching: one queue and one worker thread per model version.
//!
//! Callers send their checked inputs with a oneshot for the answer. The worker takes the
//! first waiting request, gathers more until the batch holds `max_batch_size` rows, reaches a
//! preferred size, or the first request has waited `max_queue_delay_us`; joins the inputs
//! along the batch dimension, runs the model once, and hands each caller its own rows.
//!
//! The queue is bounded: a version holds at most `max_queue_size` requests (queued, or in the
//! batch being formed or run), and one more is refused at once ([`Admission`]). A request
//! carries its caller's deadline: one whose deadline has passed, or whose caller has gone
//! away, is dropped before the run. A panic in a model run is caught: the callers of that
//! batch get an error and the worker goes on with the next batch. Should the worker thread
//! still die, the version reports not ready and the next call starts a new worker.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::config::DynamicBatching;
use crate::stats::{Rejection, VersionStats};
use crate::{ModelBackend, ModelError, Tensor, TensorData};

type Answer = Result<Vec<Tensor>, ModelError>;

/// Counts the requests a version has accepted and not yet answered, against a limit. Shared
/// by the batching queue and by unbatched runs that wait for the blocking pool.
pub(crate) struct Admission {
    /// `model "name" version N`, for messages.
    label: String,
    limit: usize,
    /// Where the limit comes from, for the refusal's message.
    source: &'static str,
    held: AtomicUsize,
    stats: Arc<VersionStats>,
}

impl Admission {
    pub(crate) fn new(label: String, limit: usize, source: &'static str, stats: Arc<VersionStats>) -> Self {
        Admission {
            label,
            limit,
            source,
            held: AtomicUsize::new(0),
            stats,
        }
    }

    /// A place for one more request, or `Overloaded` (counted) when the version holds its limit.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Ticket, ModelError> {
        let before = self.held.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit {
            self.held.fetch_sub(1, Ordering::AcqRel);
            self.stats.record_rejected(Rejection::QueueFull);
            return Err(ModelError::Overloaded(format!(
                "{} already holds {before} requests, its limit ({} = {}); retry later or slow down",
                self.label, self.source, self.limit
            )));
        }
        self.stats.queue_entered();
        Ok(Ticket(self.clone()))
    }

    /// Requests accepted and not yet answered.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One admitted request's place; given back when dropped (answered, refused, or abandoned
/// by a thread that died), so the count cannot leak.
pub(crate) struct Ticket(Arc<Admission>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        self.0.stats.queue_left();
    }
}

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Answer>,
    ticket: Ticket,
}

/// What a worker thread needs; kept to start a new one.
struct Shared {
    label: String,
    backend: Arc<dyn ModelBackend>,
    stats: Arc<VersionStats>,
    limits: Limits,
}

struct Limits {
    max_rows: usize,
    max_delay: Duration,
    preferred: Vec<usize>,
}

/// One worker thread and the sending side of its channel.
struct Worker {
    tx: mpsc::Sender<Job>,
    /// Cleared when the thread exits, however it exits.
    alive: Arc<AtomicBool>,
}

/// A version's queue; its worker stops when it is dropped.
pub struct BatchQueue {
    worker: ArcSwap<Worker>,
    /// Serialises restarts, so that two callers finding the worker dead start one.
    restarting: Mutex<()>,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
}

impl BatchQueue {
    /// `label` names the version in messages and the thread name (`model "x" version 1`).
    pub fn start(
        label: String,
        backend: Arc<dyn ModelBackend>,
        stats: Arc<VersionStats>,
        max_batch_size: usize,
        config: &DynamicBatching,
    ) -> Result<BatchQueue, ModelError> {
        let shared = Arc::new(Shared {
            label: label.clone(),
            backend,
            stats: stats.clone(),
            limits: Limits {
                max_rows: max_batch_size,
                max_delay: Duration::from_micros(config.max_queue_delay_us),
                preferred: config.preferred_batch_sizes.clone(),
            },
        });
        let worker = spawn(&shared)?;
        Ok(BatchQueue {
            worker: ArcSwap::from_pointee(worker),
            restarting: Mutex::new(()),
            shared,
            admission: Arc::new(Admission::new(
                label,
                config.max_queue_size,
                "dynamic_batching.max_queue_size",
                stats,
            )),
        })
    }

    /// Whether the worker thread is running. A version whose worker died is not ready until
    /// the next call starts a new one.
    pub fn is_alive(&self) -> bool {
        self.worker.load().alive.load(Ordering::Acquire)
    }

    /// Requests accepted and not yet answered.
    pub fn depth(&self) -> usize {
        self.admission.held()
    }

    /// Queues checked inputs (batch dimension first) and waits for this request's outputs,
    /// until `deadline` at the latest.
    pub async fn infer(&self, inputs: Vec<Tensor>, deadline: Option<Instant>) -> Answer {
        let ticket = self.admission.admit()?;
        let rows = inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1);
        let (reply, answer) = oneshot::channel();
        let mut job = Job {
            inputs,
            rows,
            enqueued: Instant::now(),
            deadline,
            reply,
            ticket,
        };
        // A worker that died is replaced, once per call: a second failure is reported.
        for attempt in 0..2 {
            let worker = self.live_worker()?;
            match worker.tx.send(job) {
                Ok(()) => break,
                Err(mpsc::SendError(back)) if attempt == 0 => {
                    worker.alive.store(false, Ordering::Release);
                    job = back;
                }
                Err(_) => {
                    return Err(ModelError::Inference(format!(
                        "the batching thread of {} stopped twice in a row",
                        self.shared.label
                    )));
                }
            }
        }
        let answer = match deadline {
            None => answer.await,
            Some(at) => match tokio::time::timeout_at(at.into(), answer).await {
                Ok(answer) => answer,
                // The worker sees the dropped receiver and does not run the request.
                Err(_) => return Err(deadline_passed(&self.shared.label, "waiting for its batch")),
            },
        };
        answer.map_err(|_| {
            ModelError::Panicked(format!(
                "the batching thread of {} dropped the request (it panicked; see the server log); the next call gets a working thread",
                self.shared.label
            ))
        })?
    }

    /// The running worker, after starting a new one if it died.
    fn live_worker(&self) -> Result<Arc<Worker>, ModelError> {
        let worker = self.worker.load_full();
        if worker.alive.load(Ordering::Acquire) {
            return Ok(worker);
        }
        let _one = self.restarting.lock().unwrap_or_else(|p| p.into_inner());
        let worker = self.worker.load_full();
        if worker.alive.load(Ordering::Acquire) {
            return Ok(worker);
        }
        tracing::warn!(version = %self.shared.label, "the batching thread had stopped: starting a new one");
        let fresh = Arc::new(spawn(&self.shared)?);
        self.worker.store(fresh.clone());
        Ok(fresh)
    }
}

pub(crate) fn deadline_passed(label: &str, while_: &str) -> ModelError {
    ModelError::DeadlineExceeded(format!(
        "{label}: the caller's deadline passed while the request was {while_}"
    ))
}

/// Clears `alive` when the worker thread ends, whether it returns or unwinds.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn spawn(shared: &Arc<Shared>) -> Result<Worker, ModelError> {
    let (tx, rx) = mpsc::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let guard = AliveGuard(alive.clone());
    let thread_shared = shared.clone();
    std::thread::Builder::new()
        .name(format!("batch-{}", thread_name(&shared.label)))
        .spawn(move || {
            let _guard = guard;
            serve(&rx, &thread_shared)
        })
        .map_err(|e| ModelError::Inference(format!("cannot start the batching thread: {e}")))?;
    Ok(Worker { tx, alive })
}

/// `model "fraud" version 2` -> `fraud-2`.
fn thread_name(label: &str) -> String {
    label
        .trim_start_matches("model ")
        .replace(" version ", "-")
        .replace('"', "")
}

/// The worker thread: batches until every sender is gone. A panic outside a model run (those
/// are caught in [`run`]) loses the requests in hand, which are answered by their dropped
/// oneshot, and the thread goes on.
fn serve(rx: &mpsc::Receiver<Job>, shared: &Shared) {
    loop {
        match catch_unwind(AssertUnwindSafe(|| batches(rx, shared))) {
            Ok(()) => return,
            Err(payload) => {
                shared.stats.record_panic();
                tracing::error!(
                    version = %shared.label,
                    panic = %panic_message(payload.as_ref()),
                    "the batching thread panicked; its requests in hand failed, it goes on"
                );
                // Dropped here: a payload that panics again as it drops ends the thread, and
                // the version then reports not ready until a call starts a new one.
                drop(payload);
            }
        }
    }
}

fn batches(rx: &mpsc::Receiver<Job>, shared: &Shared) {
    let limits = &shared.limits;
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let gather_until = first.enqueued + limits.max_delay;
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < limits.max_rows && !limits.preferred.contains(&rows) {
            let wait = gather_until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(job) if rows + job.rows > limits.max_rows => {
                    carried = Some(job);
                    break;
                }
                Ok(job) => {
                    rows += job.rows;
                    jobs.push(job);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let jobs = still_wanted(jobs, &shared.label);
        for group in by_shape(jobs) {
            run(group, shared);
        }
    }
}

/// Drops the requests whose caller has gone away (counted in `ferrite_batch_dropped_total`)
/// and answers those whose deadline has passed, without running either.
fn still_wanted(jobs: Vec<Job>, label: &str) -> Vec<Job> {
    let now = Instant::now();
    let mut dropped = 0u64;
    let mut kept = Vec::with_capacity(jobs.len());
    for job in jobs {
        if job.reply.is_closed() {
            dropped += 1;
        } else if job.deadline.is_some_and(|d| d <= now) {
            // The caller's own timer answers (and counts) it if it fires first. Its place is
            // given back before the answer, so that a caller who hears it finds the place free.
            let Job { reply, ticket, .. } = job;
            drop(ticket);
            let _ = reply.send(Err(deadline_passed(label, "queued; it was not run")));
        } else {
            kept.push(job);
        }
    }
    if dropped > 0 {
        metrics::counter!("ferrite_batch_dropped_total").increment(dropped);
    }
    kept
}

/// Requests can share a run only if every input has the same shape past the batch dimension.
fn by_shape(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut groups: Vec<(Vec<Vec<usize>>, Vec<Job>)> = Vec::new();
    for job in jobs {
        let key: Vec<Vec<usize>> = job
            .inputs
            .iter()
            .map(|t| t.shape.get(1..).unwrap_or(&[]).to_vec())
            .collect();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(job),
            None => groups.push((key, vec![job])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Runs one batch and answers its callers. The run is isolated: a panic in the backend (or in
/// joining and splitting rows) becomes an error for this batch's callers, counted in
/// `ferrite_model_panics_total`; the replies are held outside it so that each caller hears why.
fn run(jobs: Vec<Job>, shared: &Shared) {
    let started = Instant::now();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut parts = Vec::with_capacity(jobs.len());
    for job in jobs {
        shared.stats.record_queue(started - job.enqueued);
        parts.push((job.inputs, job.rows));
        replies.push((job.reply, job.ticket));
    }
    let rows: Vec<usize> = parts.iter().map(|(_, n)| *n).collect();
    let total: usize = rows.iter().sum();
    let backend = shared.backend.as_ref();
    let ran = catch_unwind(AssertUnwindSafe(move || {
        join_inputs(parts)
            .and_then(|inputs| backend.infer(&inputs))
            .and_then(|outputs| split_outputs(outputs, &rows))
    }));
    shared.stats.record_execution(total, started.elapsed());
    let result = ran.unwrap_or_else(|payload| Err(panicked(&shared.label, &shared.stats, payload.as_ref())));
    // Each place is given back before its answer goes out: a caller that has its answer may
    // send the next request at once and must find the place free (a ticket dropped after the
    // send raced it: RESOURCE_EXHAUSTED with the queue empty).
    match result {
        Ok(per_job) => {
            for ((reply, ticket), outputs) in replies.into_iter().zip(per_job) {
                drop(ticket);
                let _ = reply.send(Ok(outputs));
            }
        }
        Err(e) => {
            for (reply, ticket) in replies {
                drop(ticket);
                let _ = reply.send(Err(copy_error(&e)));
            }
        }
    }
}

/// The error a caught panic in `label`'s model run answers; logged and counted.
pub(crate) fn panicked(label: &str, stats: &VersionStats, payload: &(dyn Any + Send)) -> ModelError {
    stats.record_panic();
    let message = panic_message(payload);
    tracing::error!(version = %label, panic = %message, "a model run panicked; the version keeps serving");
    ModelError::Panicked(format!(
        "the model run of {label} panicked ({message}); the version keeps serving"
    ))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// The same error for each caller of a failed batch.
fn copy_error(e: &ModelError) -> ModelError {
    match e {
        ModelError::InvalidInput(m) => ModelError::InvalidInput(m.clone()),
        ModelError::Inference(m) => ModelError::Inference(m.clone()),
        ModelError::Panicked(m) => ModelError::Panicked(m.clone()),
        other => ModelError::Inference(other.to_string()),
    }
}

fn join_inputs(mut parts: Vec<(Vec<Tensor>, usize)>) -> Result<Vec<Tensor>, ModelError> {
    if parts.len() == 1 {
        return Ok(parts.pop().map(|(inputs, _)| inputs).unwrap_or_default());
    }
    parts[0]
        .0
        .iter()
        .map(|first| {
            let data = parts
                .iter()
                .map(|(inputs, _)| inputs.iter().find(|t| t.name == first.name).map(|t| &t.data))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ModelError::Inference(format!("input {:?} missing from a batched request", first.name))
                })?;
            let mut shape = first.shape.clone();
            shape[0] = parts.iter().map(|(_, n)| n).sum();
            Tensor::new(first.name.clone(), shape, TensorData::concat(&data)?)
        })
        .collect()
}

/// Each caller's rows of every output, in caller order.
fn split_outputs(outputs: Vec<Tensor>, rows: &[usize]) -> Result<Vec<Vec<Tensor>>, ModelError> {
    let total: usize = rows.iter().sum();
    let mut per_job: Vec<Vec<Tensor>> = vec![Vec::with_capacity(outputs.len()); rows.len()];
    for out in outputs {
        if out.shape.first() != Some(&total) {
            return Err(ModelError::Inference(format!(
                "output {:?} has shape {:?}; batching needs {total} rows first",
                out.name, out.shape
            )));
        }
        let stride: usize = out.shape[1..].iter().product();
        let mut start = 0;
        for (job, &n) in per_job.iter_mut().zip(rows) {
            let mut shape = out.shape.clone();
            shape[0] = n;
            job.push(Tensor {
                name: out.name.clone(),
                shape,
                data: out.data.slice(start * stride, (start + n) * stride),
            });
            start += n;
        }
    }
    Ok(per_job)
}
