//! The exposure log: one record per call that ran a variant, written to rotating Parquet files
//! by a background thread so that logging never waits on the disk.
//!
//! Files are `exposures-<start>-<seq>.parquet` in one directory, one per segment: a segment
//! closes after `rotate_rows` rows or `rotate_interval_secs` seconds (and at shutdown). While
//! a segment is open, each flush writes only the rows that arrived since the last one, as a
//! part `exposures-<start>-<seq>-part<k>.parquet`, and those rows leave memory; closing the
//! segment merges its parts into one file and removes them. Memory holds at most one flush
//! interval's rows, whatever the segment's size (a segment's 100,000 rows held until its
//! close are tens of MB). Every file is written to a hidden temporary name and renamed, so a
//! reader listing the directory only ever sees complete files; [`exposure_files`] skips
//! the parts of a segment whose whole file exists (a crash between the two leaves no double
//! count). A crash loses at most one flush interval, and each row is written twice at most:
//! the cost of logging does not grow with the segment (rewriting the open file whole at every
//! flush did: at 400 calls/s it cost the server about 60 µs of CPU per call).
//!
//! Records wait in a bounded queue that the writer drains every [`DRAIN_EVERY`]: a record
//! never wakes the writer (a wake-up per record cost two context switches per call, about 30
//! µs of the server's CPU per call at 400 calls/s). Flush and shutdown requests come on a
//! channel of their own, which does wake it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;

mod files;
mod redis_sink;

pub use files::{
    civil_from_days, exposure_files, file_name, now_micros, part_name, read_records, to_frame, utc_stamp,
};
use files::{merge_parts, write_file};
pub use redis_sink::{RedisStreamConfig, STREAM_ERRORS_METRIC, fields as stream_fields};

/// The counter of records dropped because the queue was full.
pub const DROPPED_METRIC: &str = "ferrite_experiment_exposures_dropped_total";
/// The counter of failed file writes (the rows stay queued for the next flush).
pub const WRITE_ERRORS_METRIC: &str = "ferrite_experiment_exposure_write_errors_total";

/// One exposure: a unit saw a variant of an experiment in one call.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposureRecord {
    /// When the call was served, microseconds since the Unix epoch (UTC).
    pub time: i64,
    pub experiment: String,
    pub variant: String,
    /// The unit the split is sticky on (user, visit, transaction).
    pub unit_id: String,
    pub request_id: String,
    pub model: String,
    pub model_version: String,
    pub score: Option<f64>,
    pub decision: Option<String>,
    pub latency_us: i64,
    /// The call fell back (store or model down or slow).
    pub fallback: bool,
    /// The variant was forced (an override), not drawn by the split.
    pub forced: bool,
}

/// Where and how the exposure log writes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExposureLogConfig {
    /// The directory the Parquet files go to (created if missing).
    pub dir: PathBuf,
    /// Records waiting for the writer; when full, new records are dropped and counted.
    pub queue_capacity: usize,
    /// How often the file being filled is written out: the most a crash loses.
    pub flush_interval_ms: u64,
    /// A file is closed after this many rows.
    pub rotate_rows: usize,
    /// A file is closed this long after its first row.
    pub rotate_interval_secs: u64,
    /// Also add every exposure to a Redis Stream (off by default).
    pub redis: Option<RedisStreamConfig>,
}

impl Default for ExposureLogConfig {
    fn default() -> Self {
        ExposureLogConfig {
            dir: PathBuf::from("exposures"),
            queue_capacity: 65_536,
            flush_interval_ms: 1_000,
            rotate_rows: 100_000,
            rotate_interval_secs: 600,
            redis: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExposureError {
    #[error("exposure log: {field} = {value}: expected {expected}")]
    Config {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("exposure log: {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("exposure log: the writer thread panicked")]
    WriterPanicked,
}

/// How often the writer takes the queued records (the queue holds `queue_capacity` of them:
/// 65,536 by default, a second and more at 50,000 calls/s).
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// What wakes the writer.
enum Control {
    /// Write out everything queued before the request, then answer.
    Flush(SyncSender<()>),
    Shutdown,
}

/// A cheap, cloneable handle to the exposure log. The last clone to go flushes and stops the
/// writer; [`ExposureLog::shutdown`] does so explicitly and reports a failed final write.
#[derive(Clone)]
pub struct ExposureLog {
    shared: Arc<Shared>,
}

struct Shared {
    records: SyncSender<Box<ExposureRecord>>,
    control: Sender<Control>,
    dropped: AtomicU64,
    writer: Mutex<Option<JoinHandle<Result<(), ExposureError>>>>,
}

/// The background half of a log made by [`ExposureLog::new`], not yet running.
pub struct ExposureWriter {
    records: Receiver<Box<ExposureRecord>>,
    control: Receiver<Control>,
    state: WriterState,
}

impl ExposureLog {
    /// Starts the log and its writer thread.
    pub fn start(config: ExposureLogConfig) -> Result<ExposureLog, ExposureError> {
        let (log, writer) = ExposureLog::new(config)?;
        log.run(writer)?;
        Ok(log)
    }

    /// The log and its writer, not yet started: records queue up (and overflow) until
    /// [`ExposureLog::run`] starts the writer.
    pub fn new(config: ExposureLogConfig) -> Result<(ExposureLog, ExposureWriter), ExposureError> {
        validate(&config)?;
        std::fs::create_dir_all(&config.dir).map_err(|e| io_error(&config.dir, e))?;
        let (records, queued) = std::sync::mpsc::sync_channel(config.queue_capacity);
        let (control, requests) = std::sync::mpsc::channel();
        let log = ExposureLog {
            shared: Arc::new(Shared {
                records,
                control,
                dropped: AtomicU64::new(0),
                writer: Mutex::new(None),
            }),
        };
        let writer = ExposureWriter {
            records: queued,
            control: requests,
            state: WriterState::new(config),
        };
        Ok((log, writer))
    }

    /// Starts `writer` (from [`ExposureLog::new`]) on its own thread.
    pub fn run(&self, writer: ExposureWriter) -> Result<(), ExposureError> {
        let handle = std::thread::Builder::new()
            .name("exposure-log".into())
            .spawn(move || writer.run())
            .map_err(|e| io_error(Path::new("exposure-log thread"), e))?;
        *lock(&self.shared.writer) = Some(handle);
        Ok(())
    }

    /// Queues a record; never blocks. When the queue is full the record is dropped and counted.
    pub fn log(&self, record: ExposureRecord) {
        match self.shared.records.try_send(Box::new(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(DROPPED_METRIC).increment(1);
            }
        }
    }

    /// Records dropped so far because the queue was full (or the writer had stopped).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes out every record queued before this call, and waits until it is on disk.
    /// Returns at once if the writer is not running.
    pub fn flush(&self) {
        if lock(&self.shared.writer).is_none() {
            return;
        }
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.shared.control.send(Control::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Flushes everything queued and stops the writer. Later records are dropped and counted.
    pub fn shutdown(&self) -> Result<(), ExposureError> {
        self.shared.shutdown()
    }
}

impl Shared {
    fn shutdown(&self) -> Result<(), ExposureError> {
        let Some(handle) = lock(&self.writer).take() else {
            return Ok(());
        };
        let _ = self.control.send(Control::Shutdown);
        handle.join().map_err(|_| ExposureError::WriterPanicked)?
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "exposure log: final flush failed");
        }
    }
}

impl ExposureWriter {
    fn drain(&mut self) {
        while let Ok(record) = self.records.try_recv() {
            self.state.push(*record);
        }
    }

    fn run(mut self) -> Result<(), ExposureError> {
        let interval = Duration::from_millis(self.state.config.flush_interval_ms);
        let mut next_flush = Instant::now() + interval;
        loop {
            let wait = next_flush
                .saturating_duration_since(Instant::now())
                .min(DRAIN_EVERY);
            let request = self.control.recv_timeout(wait);
            // Every record queued before a flush or shutdown request is taken before it.
            self.drain();
            match request {
                Ok(Control::Flush(done)) => {
                    self.state.flush_logged();
                    let _ = done.send(());
                }
                Ok(Control::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_flush {
                self.state.flush_logged();
                next_flush = Instant::now() + interval;
            }
        }
        self.drain();
        self.state.flush()?;
        self.state.close_segment()
    }
}

/// The segment being filled and its rows not yet in a part.
struct WriterState {
    config: ExposureLogConfig,
    /// Start time of this writer (µs), in every file name it writes.
    started: i64,
    seq: u64,
    /// Rows not yet written to a part (a flush with none writes nothing).
    rows: Vec<ExposureRecord>,
    /// Rows in this segment, in its parts and in `rows`.
    segment_rows: usize,
    /// Parts written in this segment.
    parts: u64,
    sink: Option<redis_sink::RedisSink>,
    /// Rows of `rows` already sent to the Redis Stream.
    streamed: usize,
    file_opened: Option<Instant>,
}

impl WriterState {
    fn new(config: ExposureLogConfig) -> WriterState {
        WriterState {
            sink: config.redis.clone().map(redis_sink::RedisSink::new),
            config,
            started: now_micros(),
            seq: 0,
            rows: Vec::new(),
            segment_rows: 0,
            parts: 0,
            streamed: 0,
            file_opened: None,
        }
    }

    fn push(&mut self, record: ExposureRecord) {
        if self.file_opened.is_none() {
            self.file_opened = Some(Instant::now());
        }
        self.rows.push(record);
        self.segment_rows += 1;
        let age = self.file_opened.map_or(Duration::ZERO, |t| t.elapsed());
        if self.segment_rows >= self.config.rotate_rows
            || age >= Duration::from_secs(self.config.rotate_interval_secs)
        {
            self.flush_logged();
            if self.rows.is_empty() {
                self.close_segment_logged();
            }
        }
    }

    fn close_segment_logged(&mut self) {
        if let Err(e) = self.close_segment() {
            metrics::counter!(WRITE_ERRORS_METRIC).increment(1);
            tracing::warn!(error = %e, rows = self.segment_rows, "exposure log: closing a file failed; its parts stay");
        }
    }

    /// Merges the segment's parts into one file, removes them and begins the next segment
    /// (called once every row is in a part). When the whole file cannot be written the parts
    /// stay (they hold the same rows).
    fn close_segment(&mut self) -> Result<(), ExposureError> {
        let result = if self.parts > 1 {
            let parts: Vec<PathBuf> = (0..self.parts)
                .map(|k| self.config.dir.join(part_name(self.started, self.seq, k)))
                .collect();
            let whole = merge_parts(&self.config.dir, &file_name(self.started, self.seq), &parts);
            if whole.is_ok() {
                for part in parts {
                    let _ = std::fs::remove_file(part);
                }
            }
            whole
        } else if self.parts == 1 {
            // One part holds every row already: renamed, not rewritten.
            let part = self.config.dir.join(part_name(self.started, self.seq, 0));
            let whole = self.config.dir.join(file_name(self.started, self.seq));
            std::fs::rename(&part, &whole).map_err(|e| io_error(&whole, e))
        } else {
            Ok(())
        };
        self.seq += 1;
        self.segment_rows = 0;
        self.parts = 0;
        self.streamed = 0;
        self.file_opened = None;
        result
    }

    fn flush_logged(&mut self) {
        if let Err(e) = self.flush() {
            metrics::counter!(WRITE_ERRORS_METRIC).increment(1);
            tracing::warn!(error = %e, rows = self.rows.len(), "exposure log: write failed; retrying at the next flush");
        }
    }

    /// Sends new rows to the Redis Stream (when set), then writes the rows not yet on disk as
    /// the segment's next part and lets them go.
    fn flush(&mut self) -> Result<(), ExposureError> {
        if let Some(sink) = self.sink.as_mut() {
            sink.send(&self.rows[self.streamed..]);
            self.streamed = self.rows.len();
        }
        if self.rows.is_empty() {
            return Ok(());
        }
        let name = part_name(self.started, self.seq, self.parts);
        write_file(&self.config.dir, &name, &self.rows)?;
        self.parts += 1;
        self.rows.clear();
        self.streamed = 0;
        Ok(())
    }
}

fn validate(config: &ExposureLogConfig) -> Result<(), ExposureError> {
    let positive = |field, value: u64| {
        if value == 0 {
            Err(ExposureError::Config {
                field,
                value: value.to_string(),
                expected: "a number above 0",
            })
        } else {
            Ok(())
        }
    };
    positive("queue_capacity", config.queue_capacity as u64)?;
    positive("flush_interval_ms", config.flush_interval_ms)?;
    positive("rotate_rows", config.rotate_rows as u64)?;
    positive("rotate_interval_secs", config.rotate_interval_secs)
}

pub(crate) fn io_error(path: &Path, e: impl std::fmt::Display) -> ExposureError {
    ExposureError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_settings_are_refused_by_name() {
        let config = ExposureLogConfig {
            rotate_rows: 0,
            ..ExposureLogConfig::default()
        };
        let e = validate(&config).unwrap_err().to_string();
        assert!(e.contains("rotate_rows = 0"), "{e}");
    }

    fn record(i: usize) -> ExposureRecord {
        ExposureRecord {
            time: 1_700_000_000_000_000 + i as i64,
            experiment: "e".into(),
            variant: if i.is_multiple_of(2) { "a" } else { "b" }.into(),
            unit_id: format!("u{i}"),
            request_id: format!("r{i}"),
            model: "m".into(),
            model_version: "1".into(),
            score: Some(i as f64 / 10.0),
            decision: None,
            latency_us: i as i64,
            fallback: false,
            forced: i.is_multiple_of(3),
        }
    }

    #[test]
    fn a_flushed_part_leaves_memory_and_the_close_merges_the_parts_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = WriterState::new(ExposureLogConfig {
            dir: dir.path().to_path_buf(),
            ..ExposureLogConfig::default()
        });
        for chunk in [0..7, 7..8, 8..20] {
            for i in chunk {
                state.push(record(i));
            }
            state.flush().unwrap();
            assert!(state.rows.is_empty(), "rows in a part stay in memory");
        }
        assert_eq!((state.parts, state.segment_rows), (3, 20));
        state.close_segment().unwrap();
        let files = exposure_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        let parts_left = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("-part")
            })
            .count();
        assert_eq!(parts_left, 0);
        assert_eq!(
            read_records(&files[0]).unwrap(),
            (0..20).map(record).collect::<Vec<_>>()
        );
        assert_eq!((state.parts, state.segment_rows, state.seq), (0, 0, 1));
    }
}
