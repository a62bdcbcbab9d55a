//! Helpers shared by this crate's integration tests.

use std::process::Command;

use ferrite_server::{Config, RunningServer};
use ferrite_test_support::{repo_root, venv_python};
use tonic::transport::Channel;

/// The repository's own models and features, on free loopback ports.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.server.metrics_addr = "127.0.0.1:0".parse().unwrap();
    config.models.repository = repo_root().join("models");
    config.features.repository = repo_root().join("features");
    config.features.embedded_path = scratch_dir("online");
    config.pipelines.directory = repo_root().join("pipelines");
    config
}

/// The end of the sample data's last day (µs): what the tests materialize up to.
#[allow(dead_code)]
pub const SAMPLE_END_US: i64 = 1_790_812_800_000_000;

/// Materializes every view of the sample data into `config`'s online store, to its last day.
#[allow(dead_code)]
pub async fn materialize_sample(config: &Config) {
    let registry = config.features.registry().unwrap();
    let store = ferrite_features::online::open(&config.features.store_config())
        .await
        .unwrap();
    ferrite_features::materialize::materialize(&registry, store.as_ref(), &[], 0, SAMPLE_END_US, false)
        .await
        .unwrap();
}

/// A sample transaction of user `user` (a known merchant, in EUR, inside the sample data's
/// time range) for ScoreFraud.
#[allow(dead_code)]
pub fn transaction(user: i64) -> ferrite_proto::ferrite::v1::ScoreFraudRequest {
    use ferrite_proto::ferrite::v1::score_fraud_request::{Merchant, User};
    ferrite_proto::ferrite::v1::ScoreFraudRequest {
        transaction_id: format!("t-{user}"),
        user: Some(User::UserIdInt(user)),
        merchant: Some(Merchant::MerchantId("2000007".into())),
        amount: 42.5,
        currency: "EUR".into(),
        device_type: "ios".into(),
        event_time_us: 1_790_000_000_000_000,
        ..Default::default()
    }
}

/// A fresh directory that outlives the test (servers may still hold files in it at exit).
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix(&format!("ferrite-{prefix}-"))
        .tempdir()
        .unwrap()
        .keep()
}

pub async fn start_with(config: Config) -> (RunningServer, Channel) {
    let server = ferrite_server::start(config).await.expect("server starts");
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (server, channel)
}

#[allow(dead_code)]
pub async fn start() -> (RunningServer, Channel) {
    start_with(test_config()).await
}

/// Runs `scripts/<script>` in the project virtualenv and parses the JSON it prints.
#[allow(dead_code)]
pub async fn python_json(script: &str, args: Vec<String>) -> serde_json::Value {
    let python = venv_python();
    let script = repo_root().join("scripts").join(script);
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(&script).args(&args).output().unwrap())
            .await
            .unwrap();
    assert!(
        output.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The Prometheus text the server's metrics endpoint serves.
#[allow(dead_code)]
pub async fn scrape(server: &RunningServer) -> String {
    // A plain HTTP/1.0 GET: the endpoint is for Prometheus, which needs nothing more.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.metrics_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    body
}

/// Copies a directory tree (a model into a scratch repository).
#[allow(dead_code)]
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
