//! The exposure log's optional Redis Stream copy, against a real redis-server.

mod report_support;

use ferrite_experiments::exposure::{
    ExposureLog, ExposureLogConfig, RedisStreamConfig, exposure_files, read_records, stream_fields,
};
use ferrite_test_support::{RedisServer, free_port};
use report_support::{BASE, record};

fn config(dir: &std::path::Path, url: String) -> ExposureLogConfig {
    ExposureLogConfig {
        dir: dir.to_path_buf(),
        flush_interval_ms: 3_600_000,
        redis: Some(RedisStreamConfig {
            url,
            stream: "exposures:test".into(),
            max_len: 1_000,
            timeout_ms: 2_000,
        }),
        ..ExposureLogConfig::default()
    }
}

#[test]
fn every_exposure_is_added_to_the_stream_as_well_as_the_files() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let log = ExposureLog::start(config(dir.path(), redis.url())).unwrap();
    let sent: Vec<_> = (0..50)
        .map(|i| record("checkout", "treatment", &format!("u{i}"), BASE + i * 1_003))
        .collect();
    for r in &sent {
        log.log(r.clone());
    }
    log.shutdown().unwrap();

    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("exposures:test")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    assert_eq!(entries.len(), sent.len());
    for ((_, got), r) in entries.iter().zip(&sent) {
        let want: Vec<(String, String)> = stream_fields(r)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(got, &want);
    }
    let files: Vec<_> = exposure_files(dir.path()).unwrap();
    let rows: Vec<_> = files.iter().flat_map(|f| read_records(f).unwrap()).collect();
    assert_eq!(rows, sent);
}

#[test]
fn without_redis_the_files_are_still_written() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let log = ExposureLog::start(config(dir.path(), format!("redis://127.0.0.1:{}/", free_port()))).unwrap();
    let sent: Vec<_> = (0..20)
        .map(|i| record("checkout", "control", &format!("u{i}"), BASE + i))
        .collect();
    for r in &sent[..10] {
        log.log(r.clone());
    }
    log.flush();
    for r in &sent[10..] {
        log.log(r.clone());
    }
    log.shutdown().unwrap();
    let rows: Vec<_> = exposure_files(dir.path())
        .unwrap()
        .iter()
        .flat_map(|f| read_records(f).unwrap())
        .collect();
    assert_eq!(rows, sent);
}
