//! An optional second copy of the exposures in a Redis Stream, for consumers that want them
//! live. The Parquet files stay the record: a Redis failure drops that batch from the stream
//! (counted) and reconnects at the next flush, and never holds up the files.

use std::time::Duration;

use serde::Deserialize;

use super::ExposureRecord;

/// The counter of exposures that could not be added to the Redis Stream.
pub const STREAM_ERRORS_METRIC: &str = "ferrite_experiment_exposure_stream_errors_total";

/// `[exposures.redis]`: where the stream is and how long it may grow.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisStreamConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// The stream's key.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Trim to about this many entries (`XADD … MAXLEN ~`).
    #[serde(default = "default_max_len")]
    pub max_len: u64,
    /// Connect, read and write timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_stream() -> String {
    "ferrite:exposures".into()
}

fn default_max_len() -> u64 {
    1_000_000
}

fn default_timeout_ms() -> u64 {
    500
}

pub(super) struct RedisSink {
    config: RedisStreamConfig,
    connection: Option<redis::Connection>,
}

impl RedisSink {
    pub(super) fn new(config: RedisStreamConfig) -> RedisSink {
        RedisSink {
            config,
            connection: None,
        }
    }

    /// Adds `records` to the stream in one pipeline; on failure they are dropped and counted.
    pub(super) fn send(&mut self, records: &[ExposureRecord]) {
        if records.is_empty() {
            return;
        }
        if let Err(e) = self.try_send(records) {
            self.connection = None;
            metrics::counter!(STREAM_ERRORS_METRIC).increment(records.len() as u64);
            tracing::warn!(error = %e, stream = %self.config.stream, dropped = records.len(), "exposure log: Redis Stream write failed");
        }
    }

    fn try_send(&mut self, records: &[ExposureRecord]) -> redis::RedisResult<()> {
        if self.connection.is_none() {
            let timeout = Duration::from_millis(self.config.timeout_ms);
            let connection =
                redis::Client::open(self.config.url.as_str())?.get_connection_with_timeout(timeout)?;
            connection.set_read_timeout(Some(timeout))?;
            connection.set_write_timeout(Some(timeout))?;
            self.connection = Some(connection);
        }
        let mut pipe = redis::pipe();
        for r in records {
            let cmd = pipe
                .cmd("XADD")
                .arg(&self.config.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.max_len)
                .arg("*");
            for (field, value) in fields(r) {
                cmd.arg(field).arg(value);
            }
            cmd.ignore();
        }
        match self.connection.as_mut() {
            Some(c) => pipe.exec(c),
            None => Ok(()),
        }
    }
}

/// A record as stream fields; null score and decision are left out.
pub fn fields(r: &ExposureRecord) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("time", r.time.to_string()),
        ("experiment", r.experiment.clone()),
        ("variant", r.variant.clone()),
        ("unit_id", r.unit_id.clone()),
        ("request_id", r.request_id.clone()),
        ("model", r.model.clone()),
        ("model_version", r.model_version.clone()),
        ("latency_us", r.latency_us.to_string()),
        ("fallback", u8::from(r.fallback).to_string()),
        ("forced", u8::from(r.forced).to_string()),
    ];
    if let Some(s) = r.score {
        f.push(("score", s.to_string()));
    }
    if let Some(d) = &r.decision {
        f.push(("decision", d.clone()));
    }
    f
}
