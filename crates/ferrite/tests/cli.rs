//! The `ferrite` binary and the load generator, against real servers on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrite::bench::{self, BenchArgs, Rpc};
use ferrite_server::Config;
use ferrite_test_support::{ChildGuard, repo_root};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn args(addr: std::net::SocketAddr) -> BenchArgs {
    BenchArgs {
        addr,
        rpc: Rpc::Health,
        rate: None,
        concurrency: 4,
        requests: 300,
        duration_s: 60.0,
        warmup: 10,
        connections: 2,
        keys: 1000,
        zipf_s: 1.0,
        seed: 7,
        with_floor: false,
        floor_addr: None,
        floor_pid: Vec::new(),
        rounds: 1,
        with_raw: false,
        server_config: None,
        client_threads: 0,
        max_frame_size: 16_384,
        batch: 1,
        models: repo_root().join("models"),
        model: None,
        transactions: repo_root().join("features/data/transactions.parquet"),
        images: repo_root().join("data/photos"),
        feature_repo: repo_root().join("features"),
        queries: None,
        top_k: 10,
        filter_category: Vec::new(),
        server_pid: Vec::new(),
        json: None,
    }
}

async fn start_server() -> ferrite_server::RunningServer {
    start_server_on(tempfile::tempdir().unwrap().keep()).await
}

/// The shipped config on loopback, its embedded online store in `store`.
async fn start_server_on(store: std::path::PathBuf) -> ferrite_server::RunningServer {
    let mut config = Config::from_file(&repo_root().join("ferrite.toml")).unwrap();
    config.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.server.metrics_addr = "127.0.0.1:0".parse().unwrap();
    config.features.embedded_path = store;
    ferrite_server::start(config).await.unwrap()
}

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// `ferrite serve ARGS`, up to its "ferrite listening" log line: the process, the rest of its
/// log, and that line.
fn serve(args: &[&std::ffi::OsStr]) -> (ChildGuard, Lines, String) {
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .arg("serve")
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("TOKIO_WORKER_THREADS")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.contains("ferrite listening"))
        .expect("a 'ferrite listening' log line");
    (child, lines, listening)
}

#[test]
fn serve_logs_the_real_addresses_answers_and_exits_cleanly_on_sigterm() {
    let config = repo_root().join("ferrite.toml");
    let (mut child, lines, listening) = serve(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--grpc-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--metrics-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
    ]);
    let grpc_addr: std::net::SocketAddr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .unwrap_or_else(|| panic!("no grpc= in {listening:?}"))
        .parse()
        .unwrap();
    assert_ne!(grpc_addr.port(), 0);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(listening.contains(&format!(" workers={cores} ")), "{listening}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}")).unwrap();
        let mut health = HealthClient::new(channel.connect().await.unwrap());
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    });

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(rest.iter().any(|l| l.contains("server stopped")), "{rest:?}");
}

#[test]
fn serve_runs_the_configured_number_of_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    let config = dir.path().join("ferrite.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\nworker_threads = 1\n\
             [models]\nrepository = {:?}\npoll_interval_s = 0\n\
             [features]\nrepository = {:?}\nembedded_path = {:?}\n",
            root.join("models"),
            root.join("features"),
            dir.path().join("online"),
        ),
    )
    .unwrap();
    let (_child, _, listening) = serve(&["--config".as_ref(), config.as_os_str()]);
    assert!(listening.contains(" workers=1 "), "{listening}");
}

#[test]
fn serve_refuses_a_config_with_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nport = 1\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown field") && stderr.contains("port"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_sends_exactly_the_requested_calls() {
    let server = start_server().await;
    let report = bench::run(&args(server.grpc_addr())).await.unwrap();
    let run = &report.run;
    assert_eq!((run.sent, run.ok, run.errors, run.skipped), (300, 300, 0, 0));
    assert_eq!(run.mode, "closed");
    assert!(report.floor.is_none());
    let l = &run.latency_us;
    assert!(
        0.0 < l.p50 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
        "{l:?}"
    );
    assert!(
        report.to_text().contains("sent=300 ok=300 err=0"),
        "{}",
        report.to_text()
    );
    // The host's share of the CPU over the run, from /proc/stat (Linux, where CI runs); a
    // short run may see no busy tick at 100 Hz, so only the bounds are certain.
    let cpu = report.host.cpu.expect("CPU time read from /proc/stat");
    assert!(
        (0.0..=100.0).contains(&cpu.busy_pct)
            && (0.0..=100.0).contains(&cpu.steal_pct)
            && cpu.busy_pct + cpu.steal_pct <= 100.0 + 1e-9,
        "{cpu:?}"
    );
    assert!(
        report.to_text().contains("\nhost   steal "),
        "{}",
        report.to_text()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_accounts_for_every_scheduled_call_and_measures_the_floor() {
    let server = start_server().await;
    let mut a = args(server.grpc_addr());
    a.rate = Some(2000.0);
    a.requests = 200;
    a.concurrency = 64;
    a.rpc = Rpc::ServerLive;
    a.with_floor = true;
    let report = bench::run(&a).await.unwrap();
    for run in [report.floor.as_ref().expect("floor measured"), &report.run] {
        assert_eq!(run.mode, "open");
        assert_eq!(run.sent + run.skipped, 200, "{run:?}");
        assert_eq!(run.ok + run.errors, run.sent, "{run:?}");
        assert_eq!(run.errors, 0, "{run:?}");
    }
    assert_eq!(report.floor.as_ref().unwrap().rpc, "health");
    assert_eq!(report.run.rpc, "server-live");
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["run"]["latency_us"]["p99"].as_f64().unwrap() > 0.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternated_rounds_pool_every_leg_and_report_each_rounds_gap() {
    let server = start_server().await;
    let mut a = args(server.grpc_addr());
    a.rpc = Rpc::ServerLive;
    a.with_floor = true;
    a.rounds = 3;
    // 3 legs of 33 and a last one of 34: every requested call is sent, none twice.
    a.requests = 100;
    let report = bench::run(&a).await.unwrap();
    let floor = report.floor.as_ref().expect("floor measured");
    assert_eq!((floor.rpc.as_str(), floor.sent, floor.ok), ("health", 100, 100));
    assert_eq!(
        (report.run.rpc.as_str(), report.run.sent, report.run.ok),
        ("server-live", 100, 100)
    );
    assert_eq!(report.rounds.len(), 3);
    // The pooled percentiles lie within the rounds' own.
    let p50s: Vec<f64> = report.rounds.iter().map(|r| r.run_us.p50).collect();
    let (lo, hi) = p50s
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    assert!(
        lo <= report.run.latency_us.p50 && report.run.latency_us.p50 <= hi,
        "{p50s:?}"
    );
    let text = report.to_text();
    for line in ["round 1", "round 3", "vs floor"] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    a.requests = 2;
    let err = bench::run(&a).await.unwrap_err();
    assert!(err.to_string().contains("--rounds"), "{err}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_calls_to_a_batched_model_are_reported_beside_the_raw_model() {
    let server = start_server().await;
    let mut a = args(server.grpc_addr());
    a.rpc = Rpc::ModelStreamInferGbdt;
    a.model = Some("fraud_gbdt_batched".into());
    a.concurrency = 16;
    a.connections = 1;
    a.with_raw = true;
    let report = bench::run(&a).await.unwrap();
    let run = &report.run;
    assert_eq!((run.sent, run.ok, run.errors), (300, 300, 0), "{run:?}");
    // ONNX Runtime at batch 1 and 64, then (a tree ensemble) its trees walked in Rust.
    let raw: Vec<(bool, usize, u64)> = report.raw.iter().map(|r| (r.trees, r.batch, r.calls)).collect();
    assert_eq!(raw, [(false, 1, 300), (false, 64, 100), (true, 1, 300)]);
    assert!(
        report
            .raw
            .iter()
            .all(|r| r.model == "fraud_gbdt_batched" && r.rows_per_s > 0.0)
    );
    assert!(
        report
            .to_text()
            .contains("fraud_gbdt_batched (trees in Rust) batch=1"),
        "{}",
        report.to_text()
    );
    assert!(
        report.to_text().contains("of raw batch-1 calls/s"),
        "{}",
        report.to_text()
    );

    // Batch 64 per request: compared with the raw model at batch 64.
    a.rpc = Rpc::ModelInferGbdt;
    a.model = None;
    a.batch = 64;
    a.requests = 50;
    let report = bench::run(&a).await.unwrap();
    assert_eq!((report.run.ok, report.run.errors), (50, 0), "{:?}", report.run);
    let raw: Vec<(usize, u64)> = report
        .raw
        .iter()
        .filter(|r| !r.trees)
        .map(|r| (r.batch, r.calls))
        .collect();
    assert_eq!(raw, [(1, 50), (64, 100)]);
    assert!(
        report.to_text().contains("of raw batch-64 calls/s"),
        "{}",
        report.to_text()
    );
    a.rpc = Rpc::ModelStreamInferGbdt;
    a.batch = 1;
    a.requests = 300;

    // With a rate and a floor, batch 1 is also called on the run's schedule, bounded by the
    // count, and the gap is shown less the model's own run.
    a.rpc = Rpc::ModelInferGbdt;
    a.rate = Some(500.0);
    a.requests = 40;
    a.with_floor = true;
    let report = bench::run(&a).await.unwrap();
    // Every scheduled call is sent or, when the generator falls behind on a busy machine,
    // counted as skipped: never lost, never an error.
    assert_eq!(
        (report.run.ok + report.run.skipped, report.run.errors),
        (40, 0),
        "{:?}",
        report.run
    );
    assert!(report.run.ok > 0, "{:?}", report.run);
    let raw: Vec<(bool, usize, u64, Option<f64>)> = report
        .raw
        .iter()
        .map(|r| (r.trees, r.batch, r.calls, r.rate))
        .collect();
    assert_eq!(
        raw,
        [
            (false, 1, 40, None),
            (false, 64, 100, None),
            (false, 1, 40, Some(500.0)),
            (true, 1, 40, None),
            (true, 1, 40, Some(500.0))
        ]
    );
    let text = report.to_text();
    for line in [
        "batch=1   at 500/s calls=40",
        "less model",
        "of raw batch-1 calls/s",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    // The duration bounds the paced calls too: 500/s for 0.05 s schedules 25.
    a.with_floor = false;
    a.duration_s = 0.05;
    let report = bench::run(&a).await.unwrap();
    let paced: Vec<(bool, u64)> = report
        .raw
        .iter()
        .filter(|r| r.rate.is_some())
        .map(|r| (r.trees, r.calls))
        .collect();
    assert_eq!(paced, [(false, 25), (true, 25)]);
    a.rpc = Rpc::ModelStreamInferGbdt;
    a.rate = None;
    a.duration_s = 60.0;
    a.requests = 300;

    // A stream call the server refuses is counted as an error, not waited for forever.
    a.model = Some("no_such_model".into());
    a.with_raw = false;
    let report = bench::run(&a).await.unwrap();
    assert_eq!((report.run.ok, report.run.errors), (0, 300), "{:?}", report.run);
    assert_eq!(report.run.errors_by_code.get("Unknown"), Some(&300));
    // So is a unary one, with its status code; the logistic model answers.
    a.rpc = Rpc::ModelInfer;
    a.requests = 20;
    let report = bench::run(&a).await.unwrap();
    assert_eq!((report.run.ok, report.run.errors), (0, 20), "{:?}", report.run);
    assert_eq!(report.run.errors_by_code.get("NotFound"), Some(&20));
    a.model = None;
    let report = bench::run(&a).await.unwrap();
    assert_eq!((report.run.ok, report.run.errors), (20, 0), "{:?}", report.run);
    server.shutdown().await.unwrap();
}

/// Feature reads report the share of values answered present: none from an empty store,
/// most once the sample data is materialized (so a benchmark of an empty store shows it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_reads_report_the_share_of_values_present() {
    let dir = tempfile::tempdir().unwrap();
    let config = feature_config(dir.path(), "");
    let mut a = args(([127, 0, 0, 1], 0).into());
    a.rpc = Rpc::Features100;
    a.keys = 500;
    a.requests = 20;
    a.warmup = 0;

    let empty = start_server_on(dir.path().join("empty")).await;
    a.addr = empty.grpc_addr();
    let report = bench::run(&a).await.unwrap();
    assert_eq!(report.run.ok, 20);
    assert_eq!(report.run.present_pct, Some(0.0));
    assert!(
        report.to_text().contains("values present 0.0 %"),
        "{}",
        report.to_text()
    );
    a.rpc = Rpc::Health;
    assert_eq!(bench::run(&a).await.unwrap().run.present_pct, None);

    materialize_sample(&config);
    let filled = start_server_on(dir.path().join("online")).await;
    a.addr = filled.grpc_addr();
    // features-fraud: the fraud pipeline's read of each sample transaction (user, merchant and
    // request context), 130 values a call.
    a.transactions = repo_root().join("features/data/transactions.parquet");
    for rpc in [
        Rpc::Features,
        Rpc::Features100,
        Rpc::Features100Columnar,
        Rpc::FeaturesFraud,
    ] {
        a.rpc = rpc;
        let report = bench::run(&a).await.unwrap();
        assert_eq!(report.run.ok, 20, "{}", rpc.name());
        let present = report.run.present_pct.unwrap();
        assert!(present > 50.0 && present <= 100.0, "{}: {present} %", rpc.name());
    }
}

/// `ferrite bench` of `a`, every call answered by the pipeline's models (no fallback).
async fn answered_by_models(a: &BenchArgs) -> bench::Report {
    let report = bench::run(a).await.unwrap();
    let run = &report.run;
    assert_eq!((run.ok, run.fallbacks), (a.requests, 0), "{}", report.to_text());
    report
}

/// The pipeline RPCs beside the work no server can avoid: each online read a Price or
/// Recommend call makes finds the sample's values, and `--with-raw` runs each model of the
/// call at the rows one call gives it (and Recommend's search of its candidates), back to back
/// and on the run's schedule, their p50s added up in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_calls_are_reported_beside_their_reads_and_raw_work() {
    let dir = tempfile::tempdir().unwrap();
    let config = feature_config(dir.path(), "");
    materialize_sample(&config);
    let server = start_server_on(dir.path().join("online")).await;
    let mut a = args(server.grpc_addr());
    a.keys = 500;
    a.requests = 20;
    a.warmup = 0;
    for rpc in [Rpc::FeaturesPrice, Rpc::FeaturesRecs, Rpc::FeaturesRecsItems] {
        a.rpc = rpc;
        let report = bench::run(&a).await.unwrap();
        assert_eq!((report.run.ok, report.run.errors), (20, 0), "{}", rpc.name());
        let present = report.run.present_pct.unwrap();
        assert!(present > 50.0 && present <= 100.0, "{}: {present} %", rpc.name());
    }

    a.with_raw = true;
    a.rate = Some(200.0);
    a.requests = 40;
    // Open loop: as many calls may be in flight as there are calls, so a stall of the host
    // (a dev build's Recommend took 26 ms once) cannot make the generator skip one.
    a.concurrency = 40;
    let legs = |report: &bench::Report| -> Vec<(String, usize, Option<f64>, u64, bool)> {
        report
            .raw
            .iter()
            .map(|r| (r.model.clone(), r.batch, r.rate, r.calls, r.stage))
            .collect()
    };
    a.rpc = Rpc::Price;
    let report = answered_by_models(&a).await;
    let demand = |rate| ("pricing_demand".to_string(), 50, rate, 40, true);
    assert_eq!(legs(&report), [demand(None), demand(Some(200.0))]);
    let text = report.to_text();
    assert!(
        text.contains("one call's model runs and search, p50s added: "),
        "{text}"
    );
    // Not one model's run against the whole call.
    assert!(!text.contains("vs raw"), "{text}");

    a.rpc = Rpc::Recommend;
    a.with_floor = true;
    let report = answered_by_models(&a).await;
    let leg = |model: &str, rows, rate| (model.to_string(), rows, rate, 40, true);
    assert_eq!(
        legs(&report),
        [
            leg("recs_user_tower", 1, None),
            leg("recs_user_tower", 1, Some(200.0)),
            leg("recs_ranker", 200, None),
            leg("recs_ranker", 200, Some(200.0)),
            leg("faiss Flat top-200 of 500", 1, None),
            leg("faiss Flat top-200 of 500", 1, Some(200.0)),
        ]
    );
    let paced: f64 = report
        .raw
        .iter()
        .filter(|r| r.rate.is_some())
        .map(|r| r.latency_us.p50)
        .sum();
    assert_eq!(report.raw_stages_p50(true), Some(paced));
    assert!(paced > 0.0);
    let text = report.to_text();
    assert!(
        text.contains(&format!("raw at the run's rate p50 {paced:.1}µs")),
        "{text}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_duration_bound_stops_a_run_before_its_count() {
    let server = start_server().await;
    let mut a = args(server.grpc_addr());
    a.rate = Some(100.0);
    a.requests = 1_000_000;
    a.duration_s = 0.5;
    let report = bench::run(&a).await.unwrap();
    // 100 calls/s for 0.5 s schedules 50 calls.
    assert_eq!(report.run.sent + report.run.skipped, 50, "{:?}", report.run);

    // Closed loop: 16 callers are almost always mid-call when the bound ends the run; those
    // calls are counted as cut, never as errors the server did not make.
    a.rate = None;
    a.concurrency = 16;
    a.duration_s = 0.3;
    let report = bench::run(&a).await.unwrap();
    let run = &report.run;
    assert_eq!(run.errors, 0, "{run:?}");
    assert!(run.errors_by_code.is_empty(), "{run:?}");
    assert_eq!(run.ok + run.cut, run.sent, "{run:?}");
    assert!(run.cut <= 16, "at most one cut call per caller: {run:?}");
    assert!(report.to_text().contains(&format!(" cut={} ", run.cut)));
    server.shutdown().await.unwrap();
}

/// A stand-in for Feast's feature server (`feast serve`) on loopback: `GET /health`, and
/// `POST /get-online-features` answering Feast's JSON for one user (the entity key column, then
/// 30 features of which 27 present: two not found, and one `PRESENT` but null, as Feast
/// answers a user it has no row for), except every tenth call, answered 500, and a request that
/// is not the one `--rpc features` makes (as JSON), answered 400.
async fn fake_feast() -> std::net::SocketAddr {
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicU64, Ordering};
    let calls = std::sync::Arc::new(AtomicU64::new(0));
    let features = move |headers: axum::http::HeaderMap, body: String| {
        let calls = calls.clone();
        async move {
            let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let names: Vec<&str> = request["features"]
                .as_array()
                .map(|f| f.iter().filter_map(|f| f.as_str()).collect())
                .unwrap_or_default();
            let users = request["entities"]["user_id"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // FastAPI refuses a body it is not told is JSON.
            let expected = headers
                .get("content-type")
                .is_some_and(|t| t == "application/json")
                && names.len() == 30
                && names[..24].iter().all(|n| n.starts_with("user_stats:"))
                && names[24..].iter().all(|n| n.starts_with("user_profile:"))
                && names.contains(&"user_stats:txn_count_1h")
                && users.len() == 1
                && users[0]
                    .as_i64()
                    .is_some_and(|id| id > 1_000_000 && id <= 1_001_000);
            if !expected {
                return (StatusCode::BAD_REQUEST, format!("unexpected request {body}"));
            }
            if calls.fetch_add(1, Ordering::Relaxed) % 10 == 9 {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error".to_string(),
                );
            }
            let mut feature_names = vec![serde_json::json!("user_id")];
            let mut results = vec![
                serde_json::json!({"values": [users[0]], "statuses": ["PRESENT"], "event_timestamps": ["1970-01-01T00:00:00Z"]}),
            ];
            for (i, name) in names.iter().enumerate() {
                feature_names.push(name.split(':').nth(1).unwrap().into());
                let (value, status) = match i {
                    0 | 1 => (serde_json::Value::Null, "NOT_FOUND"),
                    2 => (serde_json::Value::Null, "PRESENT"),
                    _ => (serde_json::json!(1.5), "PRESENT"),
                };
                results.push(serde_json::json!({"values": [value], "statuses": [status], "event_timestamps": ["2026-08-01T00:00:00Z"]}));
            }
            let answer =
                serde_json::json!({"metadata": {"feature_names": feature_names}, "results": results});
            (StatusCode::OK, answer.to_string())
        }
    };
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { StatusCode::OK }))
        .route("/get-online-features", axum::routing::post(features));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `--rpc feast-features` drives Feast's HTTP feature server with the call `--rpc features`
/// makes: answers other than 200 are errors, the share of values present is read from the
/// statuses and values (the entity key not counted), and the floor is Feast's own `GET /health`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feast_features_calls_feasts_http_server_and_counts_its_errors() {
    let mut a = args(fake_feast().await);
    a.rpc = Rpc::FeastFeatures;
    a.concurrency = 8;
    a.requests = 200;
    // Warm-up calls would take some of the server's every-tenth 500s.
    a.warmup = 0;
    let report = bench::run(&a).await.unwrap();
    let run = &report.run;
    assert_eq!(
        (run.ok, run.errors, run.sent, run.cut),
        (180, 20, 200, 0),
        "{run:?}"
    );
    // gRPC's name for an HTTP 500.
    assert_eq!(run.errors_by_code.get("Unknown"), Some(&20), "{run:?}");
    assert_eq!(run.present_pct, Some(90.0), "{run:?}");
    let text = report.to_text();
    assert!(
        text.contains("feast-features") && text.contains("values present 90.0 %"),
        "{text}"
    );

    // Open loop and the floor: Feast's GET /health, alternated with the reads.
    a.rate = Some(200.0);
    a.requests = 40;
    // As many in flight as a leg sends: none skipped, however slow the machine.
    a.concurrency = 64;
    a.with_floor = true;
    a.rounds = 2;
    let report = bench::run(&a).await.unwrap();
    let floor = report.floor.as_ref().unwrap();
    assert_eq!(floor.rpc, "feast-health");
    assert_eq!((floor.ok, floor.errors), (40, 0), "{floor:?}");
    assert_eq!(report.run.ok + report.run.errors, 40, "{:?}", report.run);
    assert_eq!(report.run.errors, 4, "{:?}", report.run);

    // Nothing listening: the same clear error as a gRPC target's.
    a.addr = format!("127.0.0.1:{}", ferrite_test_support::free_port())
        .parse()
        .unwrap();
    let err = bench::run(&a).await.unwrap_err();
    assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
}

#[tokio::test]
async fn nothing_listening_is_a_clear_error() {
    let port = ferrite_test_support::free_port();
    let a = args(format!("127.0.0.1:{port}").parse().unwrap());
    let err = tokio::time::timeout(Duration::from_secs(10), bench::run(&a))
        .await
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
}

/// A config in `dir` for the shipped feature definitions and an embedded store in `dir`,
/// after the `extra` TOML.
/// `ferrite materialize` of all the sample data (2020–2030) into the store `config` names.
fn materialize_sample(config: &std::path::Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args([
            "materialize",
            "--quiet",
            "--start",
            "2020-01-01",
            "--end",
            "2030-01-01",
            "--config",
        ])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn feature_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("ferrite.toml");
    std::fs::write(
        &config,
        format!(
            "{extra}[features]\nrepository = {:?}\nembedded_path = {:?}\n",
            repo_root().join("features"),
            dir.join("online")
        ),
    )
    .unwrap();
    config
}

/// `training-set` runs with mimalloc's large OS pages and no purging unless
/// `MIMALLOC_ALLOW_LARGE_OS_PAGES` was given.
#[test]
fn training_set_asks_for_huge_pages_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let config = feature_config(dir.path(), "[log]\nlevel = \"debug\"\n");
    let entities = repo_root().join("features/data/transactions.parquet");
    let run = |large_pages: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferrite"));
        cmd.args(["training-set", "--feature", "user_profile:country", "--entities"])
            .arg(&entities)
            .arg("--out")
            .arg(dir.path().join("train.parquet"))
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG");
        cmd.env_remove("MIMALLOC_PURGE_DELAY");
        match large_pages {
            Some(t) => cmd.env("MIMALLOC_ALLOW_LARGE_OS_PAGES", t),
            None => cmd.env_remove("MIMALLOC_ALLOW_LARGE_OS_PAGES"),
        };
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("training set: 30000 rows"),
            "{stderr}"
        );
        stderr
    };
    let stderr = run(None);
    assert!(
        stderr.contains("large_os_pages=\"1\" purge_delay=\"-1\""),
        "{stderr}"
    );
    let stderr = run(Some("0"));
    assert!(
        stderr.contains("large_os_pages=\"0\" purge_delay=\"\""),
        "{stderr}"
    );
}

/// `ferrite validate`, `materialize`, `materialize-incremental` and `training-set` on the
/// shipped definitions and sample data, into a scratch embedded store.
#[test]
fn feature_store_commands_run_end_to_end_on_the_sample_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = feature_config(dir.path(), "");
    let ferrite = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = ferrite(&["validate"]);
    assert!(
        ok && stdout.contains("ok: 3 entities, 10 sources, 10 feature views"),
        "{stdout}{stderr}"
    );

    let (ok, stdout, stderr) = ferrite(&[
        "materialize",
        "--start",
        "2026-08-01",
        "--end",
        "2026-10-01",
        "--view",
        "user_stats",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("user_stats: 26077 rows"), "{stdout}");
    assert!(stdout.contains("materialized 1 view(s)"), "{stdout}");
    // The watermark makes the next incremental run start at 2026-10-01: nothing new there.
    let (ok, stdout, stderr) = ferrite(&[
        "materialize-incremental",
        "--end",
        "2026-10-02",
        "--view",
        "user_stats",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("user_stats: 0 rows in [2026-10-01"), "{stdout}");

    let out = dir.path().join("train.parquet");
    let entities = repo_root().join("features/data/transactions.parquet");
    let (ok, stdout, stderr) = ferrite(&[
        "training-set",
        "--entities",
        entities.to_str().unwrap(),
        "--feature",
        "user_stats:*",
        "--feature",
        "user_profile:country",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    // 8 columns of transactions + 25 features, one row per transaction.
    assert!(
        stdout.contains("training set: 30000 rows x 33 columns"),
        "{stdout}"
    );
    assert!(std::fs::metadata(&out).unwrap().len() > 10_000);

    // A broken definition: every problem with file and line, exit code 1, nothing else.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("x.toml"), "[[entity]]\nname = \"u\"\njoin_keys = [\"id\"]\nkey_type = \"int\"\n\n[[feature_view]]\nname = \"v\"\nentities = [\"nobody\"]\nsource = \"s\"\nfeatures = [{ name = \"a\", dtype = \"int\" }]\n").unwrap();
    let (ok, _, stderr) = ferrite(&["validate", "--features", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("x.toml:6: feature view \"v\": unknown entity \"nobody\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("x.toml:6: feature view \"v\": unknown source \"s\""),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s)"), "{stderr}");
}

/// A ScoringService that checks each transaction is complete, answers the USD ones as
/// fallbacks and counts them, so a report's fallbacks can be compared with what it answered.
#[derive(Clone, Default)]
struct FakeScoring {
    usd: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FakeScoring {
    fn answer(
        &self,
        t: ferrite_proto::ferrite::v1::ScoreFraudRequest,
    ) -> Result<ferrite_proto::ferrite::v1::ScoreFraudResponse, tonic::Status> {
        use ferrite_proto::ferrite::v1::score_fraud_request::{Merchant, User};
        let complete = t.amount > 0.0
            && !t.currency.is_empty()
            && !t.device_type.is_empty()
            && t.event_time_us > 0
            && !t.transaction_id.is_empty()
            && matches!(t.user, Some(User::UserIdInt(_)))
            && matches!(t.merchant, Some(Merchant::MerchantIdInt(_)));
        if !complete {
            return Err(tonic::Status::invalid_argument(format!("incomplete: {t:?}")));
        }
        let fallback = t.currency == "USD";
        if fallback {
            self.usd.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(ferrite_proto::ferrite::v1::ScoreFraudResponse {
            score: 0.5,
            meta: Some(ferrite_proto::ferrite::v1::ResponseMeta {
                fallback,
                ..Default::default()
            }),
            transaction_id: t.transaction_id,
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl ferrite_proto::ferrite::v1::scoring_service_server::ScoringService for FakeScoring {
    async fn score_fraud(
        &self,
        request: tonic::Request<ferrite_proto::ferrite::v1::ScoreFraudRequest>,
    ) -> Result<tonic::Response<ferrite_proto::ferrite::v1::ScoreFraudResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.answer(request.into_inner())?))
    }

    async fn score_fraud_batch(
        &self,
        request: tonic::Request<ferrite_proto::ferrite::v1::ScoreFraudBatchRequest>,
    ) -> Result<tonic::Response<ferrite_proto::ferrite::v1::ScoreFraudBatchResponse>, tonic::Status> {
        let results = request
            .into_inner()
            .transactions
            .into_iter()
            .map(|t| self.answer(t))
            .collect::<Result<_, _>>()?;
        Ok(tonic::Response::new(
            ferrite_proto::ferrite::v1::ScoreFraudBatchResponse { results },
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_calls_send_sample_transactions_and_count_fallbacks_and_server_cpu() {
    let fake = FakeScoring::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = ferrite_proto::ferrite::v1::scoring_service_server::ScoringServiceServer::new(fake.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut a = args(addr);
    a.rpc = Rpc::ScoreFraud;
    a.warmup = 0;
    // The server is this process: its CPU time over the run is read from /proc.
    a.server_pid = vec![std::process::id()];
    let report = bench::run(&a).await.unwrap();
    let run = &report.run;
    assert_eq!((run.ok, run.errors), (300, 0), "{run:?}");
    let usd = fake.usd.swap(0, std::sync::atomic::Ordering::Relaxed);
    // The sample's first 1,000 transactions include USD ones, and not only those.
    assert!(0 < usd && usd < 300, "{usd}");
    assert_eq!(run.fallbacks, usd);
    let cpu = run.server_cpu.as_ref().expect("server CPU read");
    assert!(cpu.cpu_s > 0.0 && cpu.us_per_call > 0.0, "{cpu:?}");
    assert_eq!(cpu.processes.len(), 1);
    let text = report.to_text();
    assert!(text.contains("server CPU per call: "), "{text}");

    // Batches: every transaction of a call is answered and counted.
    a.rpc = Rpc::ScoreFraudBatch;
    a.batch = 8;
    a.requests = 40;
    a.server_pid = Vec::new();
    let report = bench::run(&a).await.unwrap();
    assert_eq!((report.run.ok, report.run.errors), (40, 0), "{:?}", report.run);
    assert_eq!(
        report.run.fallbacks,
        fake.usd.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(report.run.server_cpu.is_none());

    // One transaction per score-fraud call; a pid that does not exist is refused up front.
    a.rpc = Rpc::ScoreFraud;
    let err = bench::run(&a).await.unwrap_err();
    assert!(err.to_string().contains("score-fraud-batch"), "{err}");
    a.batch = 1;
    a.server_pid = vec![u32::MAX];
    let err = bench::run(&a).await.unwrap_err();
    assert!(err.to_string().contains("--server-pid"), "{err}");
}

/// The address in a "ferrite listening" line.
fn grpc_of(listening: &str) -> std::net::SocketAddr {
    listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .unwrap_or_else(|| panic!("no grpc= in {listening:?}"))
        .parse()
        .unwrap()
}

/// A canary experiment's state and its canary's own error count, as a replica lists them.
async fn canary_state(channel: &tonic::transport::Channel) -> (String, u64) {
    use ferrite_proto::ferrite::v1 as pb;
    let all = pb::experiment_service_client::ExperimentServiceClient::new(channel.clone())
        .list_experiments(pb::ListExperimentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .experiments;
    let e = all
        .into_iter()
        .find(|e| e.name == "fraud-canary")
        .expect("listed");
    (e.state, e.canary.expect("a canary").canary_errors)
}

#[test]
fn two_serve_processes_on_one_redis_agree_on_a_canary_rollback() {
    use ferrite_proto::ferrite::v1 as pb;
    let redis = ferrite_test_support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    // fraud_txn_gbdt 1 (stable) and 3 (NaN when amount_eur > 900,000: the failing canary).
    let models = dir.path().join("models/fraud_txn_gbdt");
    for v in ["1", "3"] {
        std::fs::create_dir_all(models.join(v)).unwrap();
        std::fs::copy(
            root.join("models/fraud_txn_gbdt/1/features.json"),
            models.join(v).join("features.json"),
        )
        .unwrap();
    }
    std::fs::copy(
        root.join("models/fraud_txn_gbdt/1/model.onnx"),
        models.join("1/model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        root.join("crates/ferrite-server/tests/data/fraud_canary_nan.onnx"),
        models.join("3/model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        root.join("models/fraud_txn_gbdt/config.toml"),
        models.join("config.toml"),
    )
    .unwrap();
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    ferrite_test_support::copy_pipeline(&pipelines, "fraud", 10_000);
    let experiments = dir.path().join("experiments");
    std::fs::create_dir_all(&experiments).unwrap();
    std::fs::write(
        experiments.join("canary.toml"),
        "name = \"fraud-canary\"\ntarget = \"fraud\"\nunit = \"user_id\"\n\
         [[variants]]\nname = \"stable\"\nmodel_version = 1\nweight = 0.5\n\
         [[variants]]\nname = \"canary\"\nmodel_version = 3\nweight = 0.5\n\
         [canary]\nvariant = \"canary\"\nstable = \"stable\"\nmin_requests = 100\n",
    )
    .unwrap();
    let config = dir.path().join("ferrite.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_addr = \"127.0.0.1:0\"\nmetrics_addr = \"127.0.0.1:0\"\n\
             [models]\nrepository = {:?}\n\
             [features]\nrepository = {:?}\nonline_store = \"redis\"\nredis_url = {:?}\n\
             redis_response_timeout_ms = 5000\n\
             [pipelines]\ndirectory = {:?}\n\
             [experiments]\ndirectory = {:?}\nsync_interval_ms = 100\nexposures_dir = \"\"\n",
            dir.path().join("models"),
            root.join("features"),
            redis.url(),
            pipelines,
            experiments,
        ),
    )
    .unwrap();
    let (_a, _, listening_a) = serve(&["--config".as_ref(), config.as_os_str()]);
    let (_b, _, listening_b) = serve(&["--config".as_ref(), config.as_os_str()]);
    let connect = |addr: std::net::SocketAddr| {
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (a, b) = (connect(grpc_of(&listening_a)), connect(grpc_of(&listening_b)));
        assert_eq!(canary_state(&b).await.0, "running");
        // Process A alone sees the canary fail (3 % of its calls) and rolls it back.
        let mut scoring = pb::scoring_service_client::ScoringServiceClient::new(a.clone());
        let mut rolled_back = false;
        for i in 0..6_000i64 {
            let amount = if i % 33 == 0 { 950_000.0 } else { 42.5 };
            let answer = scoring
                .score_fraud(pb::ScoreFraudRequest {
                    transaction_id: format!("t-{i}"),
                    user: Some(pb::score_fraud_request::User::UserIdInt(1_000_000 + i)),
                    merchant: Some(pb::score_fraud_request::Merchant::MerchantId("2000007".into())),
                    amount,
                    currency: "EUR".into(),
                    device_type: "ios".into(),
                    event_time_us: 1_790_000_000_000_000,
                    ..Default::default()
                })
                .await
                .expect("a failing canary never fails a caller")
                .into_inner();
            let meta = answer.meta.unwrap();
            assert!(!meta.fallback, "{}", meta.fallback_reason);
            if i % 50 == 49 && canary_state(&a).await.0 == "rolled_back" {
                rolled_back = true;
                break;
            }
        }
        assert!(rolled_back, "process A did not roll the canary back");
        // Process B served nothing; it adopts A's verdict through Redis.
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (state, errors) = canary_state(&b).await;
            if state == "rolled_back" {
                assert_eq!(errors, 0, "B judged nothing itself");
                break;
            }
            assert!(
                std::time::Instant::now() < until,
                "process B did not adopt the rollback"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// `ferrite floor-server ...` on a loopback port: the process and its address.
fn floor_server() -> (ChildGuard, std::net::SocketAddr) {
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .args([
                "floor-server",
                "--grpc-addr",
                "127.0.0.1:0",
                "--worker-threads",
                "1",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("floor listening grpc=")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// `--floor-addr`: the floor's legs go to their own server (here a bare floor server, which
/// answers nothing but the health check), alternated with the run's, and their CPU time is
/// read from `--floor-pid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_on_its_own_server_alternates_with_the_run() {
    let server = start_server().await;
    let (floor, floor_addr) = floor_server();
    let mut a = args(server.grpc_addr());
    a.rpc = Rpc::ServerLive;
    a.with_floor = true;
    a.floor_addr = Some(floor_addr);
    a.floor_pid = vec![floor.0.id()];
    a.server_pid = vec![std::process::id()];
    a.rounds = 2;
    a.requests = 2000;
    let report = bench::run(&a).await.unwrap();
    let floor_leg = report.floor.as_ref().expect("floor measured");
    assert_eq!((floor_leg.rpc.as_str(), floor_leg.ok), ("health", 2000));
    assert_eq!((report.run.rpc.as_str(), report.run.ok), ("server-live", 2000));
    assert_eq!(report.rounds.len(), 2);
    let cpu = floor_leg
        .server_cpu
        .as_ref()
        .expect("the floor server's CPU read");
    assert_eq!(cpu.processes.len(), 1);
    assert_eq!(cpu.processes[0].pid, floor.0.id());
    // 2,000 health checks answered there cost it CPU time; the run's are read from this process.
    assert!(cpu.cpu_s > 0.0, "{cpu:?}");
    let run_cpu = report.run.server_cpu.as_ref().expect("the run's CPU read");
    assert_eq!(run_cpu.processes[0].pid, std::process::id());
    assert!(
        report
            .rounds
            .iter()
            .all(|r| r.floor_cpu_us.is_some() && r.run_cpu_us.is_some()),
        "{:?}",
        report.rounds
    );
    assert_eq!(report.floor_addr, Some(floor_addr.to_string()));
    assert!(
        report.to_text().contains(&format!("(floor: {floor_addr})")),
        "{}",
        report.to_text()
    );
    // With the floor server gone, the run fails naming its process, then its address.
    drop(floor);
    let err = bench::run(&a).await.unwrap_err();
    assert!(format!("{err:#}").contains("--floor-pid"), "{err:#}");
    a.floor_pid.clear();
    let err = bench::run(&a).await.unwrap_err();
    assert!(format!("{err:#}").contains(&floor_addr.to_string()), "{err:#}");
    server.shutdown().await.unwrap();
}

/// `ferrite floor-server`: a bare tonic server on a loopback port that answers the health
/// check, and stops on SIGTERM with a clean exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_server_answers_the_health_check_and_stops_on_sigterm() {
    let (mut child, addr) = floor_server();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Waited for off the runtime, whose tasks close this client's connection when the server
    // says it is going away (a graceful stop waits for that); bounded at 20 s.
    let exit = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::task::spawn_blocking(move || child.0.wait()),
    )
    .await
    .expect("the floor server did not stop within 20 s of SIGTERM")
    .unwrap()
    .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// A float32 `.npy` file of `rows` (NumPy's format 1.0: magic, header, little-endian data).
fn write_npy(path: &std::path::Path, rows: &[Vec<f32>]) {
    let matrix = ferrite::npy::Matrix {
        rows: rows.len(),
        dim: rows.first().map_or(0, Vec::len),
        values: rows.concat(),
    };
    std::fs::write(path, ferrite::npy::f32_matrix_bytes(&matrix)).unwrap();
}

/// `visual-search-embedding --with-raw`: the server's index is loaded in the load generator
/// from `--server-config` and searched back to back and, with `--rate`, on the run's schedule;
/// the report sets both beside the RPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_search_runs_back_to_back_and_at_the_runs_rate() {
    let dir = tempfile::tempdir().unwrap();
    // 300 unit vectors of the embedding model's width, spread by a seeded generator.
    let mut state = 7u64;
    let mut next = || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let rows: Vec<Vec<f32>> = (0..300)
        .map(|_| {
            let v: Vec<f32> = (0..1280).map(|_| next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect();
    write_npy(&dir.path().join("vectors.npy"), &rows);
    write_npy(&dir.path().join("queries.npy"), &rows[..20]);
    let items: String = (0..rows.len())
        .map(|i| {
            format!(
                "{{\"item_id\": \"item-{i}\", \"category\": \"c{}\", \"in_stock\": true, \"price\": 1.0}}\n",
                i % 3
            )
        })
        .collect();
    std::fs::write(dir.path().join("items.jsonl"), items).unwrap();
    let index = dir.path().join("index");
    let built = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .arg("build-index")
        .arg("--models")
        .arg(repo_root().join("models"))
        .args([
            "--model",
            "image_embedder_onnx",
            "--factory",
            "HNSW32",
            "--embeddings",
        ])
        .arg(dir.path().join("vectors.npy"))
        .arg("--catalog")
        .arg(dir.path().join("items.jsonl"))
        .arg("--out")
        .arg(&index)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let config_path = dir.path().join("ferrite.toml");
    std::fs::write(
        &config_path,
        format!(
            "[models]\nrepository = {:?}\npoll_interval_s = 0\n[features]\nrepository = {:?}\nembedded_path = {:?}\n\
             [search]\nindex_dir = {:?}\nmodel = \"image_embedder_onnx\"\nlive_recall_sample = 0\n",
            repo_root().join("models"),
            repo_root().join("features"),
            dir.path().join("store"),
            index
        ),
    )
    .unwrap();
    let mut config = Config::from_file(&config_path).unwrap();
    config.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.server.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let server = ferrite_server::start(config).await.unwrap();
    let mut a = args(server.grpc_addr());
    a.rpc = Rpc::VisualSearchEmbedding;
    a.queries = Some(dir.path().join("queries.npy"));
    a.with_raw = true;
    a.server_config = Some(config_path);
    a.rate = Some(200.0);
    // As many in flight as the run sends: none skipped, however slow the machine.
    a.concurrency = 60;
    a.requests = 60;
    let report = bench::run(&a).await.unwrap();
    assert_eq!(
        (report.run.ok, report.run.errors),
        (60, 0),
        "{}",
        report.to_text()
    );
    let legs: Vec<(Option<f64>, u64)> = report.raw.iter().map(|r| (r.rate, r.calls)).collect();
    assert_eq!(legs, vec![(None, 60), (Some(200.0), 60)]);
    assert!(
        report
            .raw
            .iter()
            .all(|r| r.model == "faiss HNSW32" && r.latency_us.p50 > 0.0)
    );
    let text = report.to_text();
    assert!(text.contains("vs raw at the run's rate  p50 "), "{text}");
    // Without --rate, the raw search runs back to back only.
    a.rate = None;
    let report = bench::run(&a).await.unwrap();
    assert_eq!(report.raw.len(), 1);
    assert_eq!(report.raw[0].rate, None);
    server.shutdown().await.unwrap();
}
