//! The exposure log against real files: every record comes back, shutdown and drop flush,
//! a full queue drops and counts, files rotate by rows and never show half-written.

mod report_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferrite_experiments::exposure::{
    DROPPED_METRIC, ExposureLog, ExposureLogConfig, ExposureRecord, exposure_files, read_records,
};
use report_support::{BASE, record};

fn config(dir: &Path) -> ExposureLogConfig {
    ExposureLogConfig {
        dir: dir.to_path_buf(),
        // An hour: nothing reaches the disk by the timer during a test, only by flush/shutdown.
        flush_interval_ms: 3_600_000,
        ..ExposureLogConfig::default()
    }
}

fn records(n: usize) -> Vec<ExposureRecord> {
    (0..n)
        .map(|i| {
            let variant = if i % 2 == 0 { "control" } else { "treatment" };
            record("checkout", variant, &format!("user-{i}"), BASE + i as i64 * 1_003)
        })
        .collect()
}

fn read_all(dir: &Path) -> Vec<ExposureRecord> {
    exposure_files(dir)
        .unwrap()
        .iter()
        .flat_map(|f| read_records(f).unwrap())
        .collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_logged_record_reads_back_equal() {
    let dir = tempfile::tempdir().unwrap();
    let log = ExposureLog::start(config(dir.path())).unwrap();
    let sent = records(1_000);
    // Nulls in both nullable columns, and both flags, are among them.
    assert!(sent.iter().any(|r| r.score.is_none()) && sent.iter().any(|r| r.decision.is_none()));
    assert!(sent.iter().any(|r| r.forced) && sent.iter().any(|r| r.fallback));
    for r in &sent {
        log.log(r.clone());
    }
    log.shutdown().unwrap();
    assert_eq!(log.dropped(), 0);
    assert_eq!(read_all(dir.path()), sent);
}

#[test]
fn flush_writes_what_was_queued_while_the_log_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = ExposureLog::start(config(dir.path())).unwrap();
    let sent = records(10);
    for r in &sent[..4] {
        log.log(r.clone());
    }
    log.flush();
    assert_eq!(read_all(dir.path()), sent[..4]);
    for r in &sent[4..] {
        log.log(r.clone());
    }
    log.flush();
    // Each flush writes only the new rows, as a part of the open file.
    assert_eq!(exposure_files(dir.path()).unwrap().len(), 2);
    assert_eq!(read_all(dir.path()), sent);
    // Closing it (here at shutdown) leaves one file with every row, and no part.
    log.shutdown().unwrap();
    assert_eq!(names(dir.path()).len(), 1, "{:?}", names(dir.path()));
    assert_eq!(read_all(dir.path()), sent);
}

#[test]
fn a_part_is_not_read_twice_when_its_whole_file_exists() {
    // A crash after the whole file was renamed into place and before its parts were removed.
    let dir = tempfile::tempdir().unwrap();
    let log = ExposureLog::start(config(dir.path())).unwrap();
    let sent = records(6);
    for r in &sent[..3] {
        log.log(r.clone());
    }
    log.flush();
    for r in &sent[3..] {
        log.log(r.clone());
    }
    log.flush();
    let parts = names(dir.path());
    let kept: Vec<Vec<u8>> = parts
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect();
    log.shutdown().unwrap();
    for (n, bytes) in parts.iter().zip(kept) {
        std::fs::write(dir.path().join(n), bytes).unwrap();
    }
    assert_eq!(names(dir.path()).len(), 3);
    assert_eq!(read_all(dir.path()), sent);
}

#[test]
fn shutdown_and_drop_flush_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sent = records(300);
    let log = ExposureLog::start(config(dir.path())).unwrap();
    let clone = log.clone();
    for r in &sent[..150] {
        clone.log(r.clone());
    }
    drop(clone);
    // A clone going away stops nothing.
    for r in &sent[150..] {
        log.log(r.clone());
    }
    log.shutdown().unwrap();
    assert_eq!(read_all(dir.path()), sent);
    // After shutdown, records are refused and counted, never written.
    log.log(sent[0].clone());
    assert_eq!(log.dropped(), 1);
    assert_eq!(read_all(dir.path()).len(), 300);

    let dir = tempfile::tempdir().unwrap();
    let log = ExposureLog::start(config(dir.path())).unwrap();
    for r in &sent {
        log.log(r.clone());
    }
    drop(log);
    assert_eq!(read_all(dir.path()), sent);
}

/// Counts the dropped-exposures counter.
struct DropCounter(Arc<AtomicU64>);

impl metrics::Recorder for DropCounter {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == DROPPED_METRIC {
            metrics::Counter::from_arc(self.0.clone())
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let (log, writer) = ExposureLog::new(ExposureLogConfig {
        queue_capacity: 8,
        ..config(dir.path())
    })
    .unwrap();
    let sent = records(20);
    let counted = Arc::new(AtomicU64::new(0));
    let recorder = DropCounter(counted.clone());
    // The writer is not running yet, so the queue fills after 8 records; the other 12 must
    // return at once (this test would hang if `log` blocked).
    metrics::with_local_recorder(&recorder, || {
        for r in &sent {
            log.log(r.clone());
        }
    });
    assert_eq!(log.dropped(), 12);
    assert_eq!(counted.load(Ordering::Relaxed), 12);
    log.run(writer).unwrap();
    log.shutdown().unwrap();
    assert_eq!(read_all(dir.path()), sent[..8]);
}

#[test]
fn files_rotate_by_rows_and_no_half_file_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let log = ExposureLog::start(ExposureLogConfig {
        rotate_rows: 100,
        ..config(dir.path())
    })
    .unwrap();
    let sent = records(250);
    for r in &sent {
        log.log(r.clone());
    }
    log.shutdown().unwrap();
    let files = exposure_files(dir.path()).unwrap();
    let rows: Vec<usize> = files.iter().map(|f| read_records(f).unwrap().len()).collect();
    assert_eq!(rows, [100, 100, 50]);
    assert_eq!(read_all(dir.path()), sent);
    let names = names(dir.path());
    assert_eq!(names.len(), 3, "only the finished files: {names:?}");
    for (seq, name) in names.iter().enumerate() {
        assert!(
            name.starts_with("exposures-") && name.ends_with(&format!("-{seq:06}.parquet")),
            "{name}"
        );
    }
}

#[test]
fn a_zero_setting_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let e = ExposureLog::start(ExposureLogConfig {
        queue_capacity: 0,
        ..config(dir.path())
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("queue_capacity = 0"), "{e}");
}

#[test]
fn the_config_deserializes_with_defaults_and_refuses_unknown_keys() {
    let c: ExposureLogConfig = from_json(r#"{"dir": "/var/ferrite/exposures", "rotate_rows": 5000}"#);
    assert_eq!(c.dir, Path::new("/var/ferrite/exposures"));
    assert_eq!(
        (c.rotate_rows, c.flush_interval_ms, c.queue_capacity),
        (5000, 1000, 65_536)
    );
    let bad = serde_json::from_str::<ExposureLogConfig>(r#"{"rotate_row": 5}"#).unwrap_err();
    assert!(bad.to_string().contains("rotate_row"), "{bad}");
}

fn from_json(json: &str) -> ExposureLogConfig {
    serde_json::from_str(json).unwrap()
}
