//! Dynamic batching: one queue and one worker thread per model version.
//!
//! Callers send their checked inputs with a oneshot for the answer. The worker takes the
//! first waiting request, gathers more until the batch holds `max_batch_size` rows, reaches a
//! preferred size, or the first request has waited `max_queue_delay_us`; joins the inputs
//! along the batch dimension, runs the model once, and hands each caller its own rows.
//! Requests whose caller has gone away are dropped before the run and counted.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::DynamicBatching;
use crate::stats::VersionStats;
use crate::{ModelBackend, ModelError, Tensor, TensorData};

type Answer = Result<Vec<Tensor>, ModelError>;

struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Answer>,
}

/// The sending side of a version's queue; the worker stops when it is dropped.
pub struct BatchQueue {
    tx: mpsc::Sender<Job>,
}

struct Limits {
    max_rows: usize,
    max_delay: Duration,
    preferred: Vec<usize>,
}

impl BatchQueue {
    pub fn start(
        label: String,
        backend: Arc<dyn ModelBackend>,
        stats: Arc<VersionStats>,
        max_batch_size: usize,
        config: &DynamicBatching,
    ) -> Result<BatchQueue, ModelError> {
        let (tx, rx) = mpsc::channel();
        let limits = Limits {
            max_rows: max_batch_size,
            max_delay: Duration::from_micros(config.max_queue_delay_us),
            preferred: config.preferred_batch_sizes.clone(),
        };
        std::thread::Builder::new()
            .name(format!("batch-{label}"))
            .spawn(move || worker(rx, backend.as_ref(), &stats, &limits))
            .map_err(|e| ModelError::Inference(format!("cannot start the batching thread: {e}")))?;
        Ok(BatchQueue { tx })
    }

    /// Queues checked inputs (batch dimension first) and waits for this request's outputs.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Answer {
        let rows = inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1);
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            enqueued: Instant::now(),
            reply,
        };
        self.tx
            .send(job)
            .map_err(|_| ModelError::Inference("the batching thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| ModelError::Inference("the batching thread dropped the request".into()))?
    }
}

fn worker(rx: mpsc::Receiver<Job>, backend: &dyn ModelBackend, stats: &VersionStats, limits: &Limits) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let deadline = first.enqueued + limits.max_delay;
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < limits.max_rows && !limits.preferred.contains(&rows) {
            let wait = deadline.saturating_duration_since(Instant::now());
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
        let before = jobs.len();
        jobs.retain(|j| !j.reply.is_closed());
        let dropped = before - jobs.len();
        if dropped > 0 {
            metrics::counter!("ferrite_batch_dropped_total").increment(dropped as u64);
        }
        for group in by_shape(jobs) {
            run(group, backend, stats);
        }
    }
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

fn run(jobs: Vec<Job>, backend: &dyn ModelBackend, stats: &VersionStats) {
    let started = Instant::now();
    for job in &jobs {
        stats.record_queue(started - job.enqueued);
    }
    let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
    let total: usize = rows.iter().sum();
    let result = join_inputs(&jobs).and_then(|inputs| backend.infer(&inputs));
    stats.record_execution(total, started.elapsed());
    match result.and_then(|outputs| split_outputs(outputs, &rows)) {
        Ok(per_job) => {
            for (job, outputs) in jobs.into_iter().zip(per_job) {
                let _ = job.reply.send(Ok(outputs));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for job in jobs {
                let _ = job.reply.send(Err(ModelError::Inference(message.clone())));
            }
        }
    }
}

fn join_inputs(jobs: &[Job]) -> Result<Vec<Tensor>, ModelError> {
    if jobs.len() == 1 {
        return Ok(jobs[0].inputs.clone());
    }
    jobs[0]
        .inputs
        .iter()
        .map(|first| {
            let parts = jobs
                .iter()
                .map(|j| j.inputs.iter().find(|t| t.name == first.name).map(|t| &t.data))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ModelError::Inference(format!("input {:?} missing from a batched request", first.name))
                })?;
            let mut shape = first.shape.clone();
            shape[0] = jobs.iter().map(|j| j.rows).sum();
            Tensor::new(first.name.clone(), shape, TensorData::concat(&parts)?)
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
