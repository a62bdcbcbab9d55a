//! The server as a client sees it: health, reflection, KServe server endpoints, admin,
//! Prometheus metrics, and a shutdown that lets in-flight calls finish.

mod common;

use common::{python_json, scrape, start};
use ferrite_proto::ferrite::v1::GetServerInfoRequest;
use ferrite_proto::ferrite::v1::admin_service_client::AdminServiceClient;
use ferrite_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferrite_proto::inference::{ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn health_kserve_server_endpoints_and_admin_answer() {
    let (server, channel) = start().await;
    assert_ne!(server.grpc_addr().port(), 0, "the real port is reported, not 0");

    for service in ["", "inference.GRPCInferenceService", "ferrite.v1.AdminService"] {
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            health.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let err = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let mut kserve = GrpcInferenceServiceClient::new(channel.clone());
    assert!(
        kserve
            .server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        kserve
            .server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = kserve
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "ferrite");
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));

    let info = AdminServiceClient::new(channel.clone())
        .get_server_info(GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.model_repository.ends_with("models"),
        "{}",
        info.model_repository
    );
    assert_eq!(info.online_store, "embedded");
    assert!(
        info.feature_repository.ends_with("features"),
        "{}",
        info.feature_repository
    );

    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_status() {
    let (server, channel) = start().await;
    let mut kserve = GrpcInferenceServiceClient::new(channel.clone());
    for _ in 0..3 {
        kserve.server_live(ServerLiveRequest {}).await.unwrap();
    }
    // A method nobody serves: UNIMPLEMENTED, counted under one "unknown" method label.
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let err = raw
        .unary(
            tonic::Request::new(GetServerInfoRequest::default()),
            http::uri::PathAndQuery::from_static("/ferrite.v1.NoSuchService/NoSuchMethod"),
            ferrite_proto::codec::SliceCodec::<GetServerInfoRequest, GetServerInfoRequest>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    let text = scrape(&server).await;
    let live = text
        .lines()
        .find(|l| {
            l.starts_with("ferrite_grpc_requests_total")
                && l.contains("method=\"/inference.GRPCInferenceService/ServerLive\"")
                && l.contains("status=\"Ok\"")
        })
        .unwrap_or_else(|| panic!("no ServerLive counter in:\n{text}"));
    // Tests share the process-wide recorder, so other tests' calls may add to the count.
    let count: f64 = live.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{live}");
    assert!(
        text.lines().any(|l| l.starts_with("ferrite_grpc_requests_total")
            && l.contains("method=\"unknown\"")
            && l.contains("status=\"Unimplemented\"")),
        "{text}"
    );
    assert!(
        text.contains("ferrite_grpc_request_duration_seconds_bucket"),
        "{text}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_python_client_discovers_and_calls_services_through_reflection_alone() {
    let (server, _channel) = start().await;
    let addr = server.grpc_addr().to_string();
    let probe = python_json("grpc_probe.py", vec!["--addr".into(), addr]).await;

    assert_eq!(probe["health"], "SERVING");
    assert_eq!(probe["server_live"], true);
    let services = probe["services"].as_object().unwrap();
    for service in [
        "grpc.health.v1.Health",
        "inference.GRPCInferenceService",
        "ferrite.v1.FeatureService",
        "ferrite.v1.ScoringService",
        "ferrite.v1.SearchService",
        "ferrite.v1.ExperimentService",
        "ferrite.v1.AdminService",
    ] {
        assert!(
            services.contains_key(service),
            "{service} not listed: {services:?}"
        );
    }
    let kserve: Vec<&str> = services["inference.GRPCInferenceService"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for method in [
        "ServerLive",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "RepositoryIndex",
    ] {
        assert!(kserve.contains(&method), "{method} not in {kserve:?}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish_and_refuses_new_connections() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (server, channel) = start().await;
    let addr = server.grpc_addr();
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };

    // An in-flight bidirectional stream: one exchange before the shutdown starts...
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(list()).await.unwrap();
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(responses.message().await.unwrap().is_some());

    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !shutdown.is_finished(),
        "the server exited with a stream still open"
    );

    // ...and one after: the stream is still served while the server drains.
    tx.send(list()).await.unwrap();
    let answer = responses
        .message()
        .await
        .unwrap()
        .expect("an answer during the drain");
    assert!(matches!(
        answer.message_response,
        Some(MessageResponse::ListServicesResponse(_))
    ));

    drop(tx);
    assert!(responses.message().await.unwrap().is_none());
    let stopped = shutdown.await.unwrap().unwrap();
    assert_eq!(
        stopped.cut_calls, 0,
        "every call finished within the grace period"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn a_bad_config_is_refused_before_anything_listens() {
    let mut config = common::test_config();
    config.models.poll_interval_s = -1.0;
    let err = ferrite_server::start(config)
        .await
        .err()
        .expect("negative poll interval");
    assert!(err.to_string().contains("models.poll_interval_s"), "{err}");
    let mut config = common::test_config();
    config.models.repository = "/nonexistent/models".into();
    let err = ferrite_server::start(config)
        .await
        .err()
        .expect("missing repository");
    assert!(err.to_string().contains("/nonexistent/models"), "{err}");
}

/// A value of an unlabelled series in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn process_metrics_are_exported_and_cpu_time_grows() {
    let (server, _channel) = start().await;
    let text = scrape(&server).await;
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    let rss = sample(&text, "process_resident_memory_bytes").expect("resident memory");
    assert!(rss > 1e6, "a server holds more than 1 MB: {rss}");
    let started = sample(&text, "process_start_time_seconds").expect("start time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started > 1.6e9 && started <= now + 1.0, "{started} vs now {now}");
    let before = sample(&text, "process_cpu_seconds_total").expect("CPU seconds");

    // Burn CPU until the counter moves (it counts in 10 ms ticks); bounded in rounds.
    let mut after = before;
    for _ in 0..200 {
        tokio::task::spawn_blocking(|| {
            let mut x = 0u64;
            for i in 0..2_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            x
        })
        .await
        .unwrap();
        after = sample(&scrape(&server).await, "process_cpu_seconds_total").unwrap();
        if after > before {
            break;
        }
    }
    assert!(after > before, "CPU seconds stayed at {before}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_service_at_its_in_flight_limit_refuses_at_once_until_a_call_ends() {
    use ferrite_proto::inference::ModelInferRequest;
    let mut config = common::test_config();
    config.server.max_in_flight_by_service.insert(
        "inference.GRPCInferenceService".into(),
        std::num::NonZeroUsize::MIN,
    );
    let (server, channel) = common::start_with(config).await;
    let mut kserve = GrpcInferenceServiceClient::new(channel.clone());

    // An open ModelStreamInfer stream holds the service's one slot while it is open.
    let (tx, rx) = tokio::sync::mpsc::channel::<ModelInferRequest>(1);
    let mut held = kserve
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    let err = kserve.server_live(ServerLiveRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("server.max_in_flight_by_service")
            && err.message().contains("inference.GRPCInferenceService")
            && err.message().contains("= 1"),
        "{}",
        err.message()
    );
    // Other services, and health, are not held back by it.
    AdminServiceClient::new(channel.clone())
        .get_server_info(GetServerInfoRequest {})
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "inference.GRPCInferenceService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let text = scrape(&server).await;
    let value = |prefix: &str, labels: &[&str]| {
        text.lines()
            .find(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix} {labels:?} in:\n{text}"))
    };
    let service = "service=\"inference.GRPCInferenceService\"";
    assert!(value("ferrite_grpc_rejected_total", &[service, "reason=\"in_flight\""]) >= 1.0);
    // Tests share the process-wide recorder: other servers' calls may add to the gauge.
    assert!(value("ferrite_grpc_in_flight", &[service]) >= 1.0);

    // The held call ends: its slot is free again (the server drops the finished stream just
    // after the client sees its end, so a few tries, bounded).
    drop(tx);
    assert!(held.message().await.unwrap().is_none());
    let mut answer = Err(tonic::Status::unknown("not tried"));
    for _ in 0..100 {
        answer = kserve.server_live(ServerLiveRequest {}).await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(answer.unwrap().into_inner().live);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversize_request_is_resource_exhausted_naming_the_limit() {
    use ferrite_proto::inference::ModelInferRequest;
    let mut config = common::test_config();
    config.server.max_message_bytes = std::num::NonZeroUsize::new(1024).unwrap();
    let (server, channel) = common::start_with(config).await;
    let mut kserve = GrpcInferenceServiceClient::new(channel.clone());
    let oversize = || ModelInferRequest {
        model_name: "fraud_txn_gbdt".into(),
        raw_input_contents: vec![vec![0u8; 4096]],
        ..Default::default()
    };
    let named = |s: &tonic::Status| {
        s.code() == tonic::Code::ResourceExhausted
            && s.message().contains("server.max_message_bytes")
            && s.message().contains("1024 bytes")
    };

    // Unary: the status comes in the answer's headers.
    let err = kserve.model_infer(oversize()).await.unwrap_err();
    assert!(named(&err), "{err:?}");

    // A stream: the status comes in its trailers.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(oversize()).await.unwrap();
    let mut answers = kserve
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let err = answers.message().await.unwrap_err();
    assert!(named(&err), "{err:?}");

    // Under the limit, calls are served.
    assert!(
        kserve
            .server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_shutdown_that_cuts_calls_says_how_many() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let mut config = common::test_config();
    config.server.shutdown_grace_s = 0;
    let (server, channel) = common::start_with(config).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    })
    .await
    .unwrap();
    let mut open = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(open.message().await.unwrap().is_some());

    let stopped = server.shutdown().await.unwrap();
    assert_eq!(stopped.cut_calls, 1, "the open stream is cut");
    drop(tx);
}

/// The gRPC health of `service`.
async fn health_status(channel: &tonic::transport::Channel, service: &str) -> i32 {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Waits (bounded: 6 s) for the feature service's gRPC health to become `want`.
async fn wait_for_feature_health(channel: &tonic::transport::Channel, want: ServingStatus) {
    for _ in 0..300 {
        if health_status(channel, "ferrite.v1.FeatureService").await == want as i32 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the feature service's health never became {want:?}");
}

#[tokio::test]
async fn a_pipeline_call_that_finds_the_store_down_starts_a_health_check_at_once() {
    use ferrite_proto::ferrite::v1::scoring_service_client::ScoringServiceClient;
    use ferrite_server::config::OnlineStoreKind;
    let mut redis = ferrite_test_support::RedisServer::start();
    let mut config = common::test_config();
    config.features.online_store = OnlineStoreKind::Redis;
    config.features.redis_url = redis.url();
    // No periodic check within the test: only a call's failure can start one.
    config.features.health_interval_ms = std::num::NonZeroU64::new(600_000).unwrap();
    let (server, channel) = common::start_with(config).await;

    redis.stop();
    let answer = ScoringServiceClient::new(channel.clone())
        .score_fraud(common::transaction(1))
        .await
        .expect("a store outage is answered by the pipeline's fallback")
        .into_inner();
    let meta = answer.meta.expect("meta");
    assert!(meta.fallback, "{meta:?}");
    wait_for_feature_health(&channel, ServingStatus::NotServing).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn feature_service_health_follows_the_online_store() {
    use ferrite_server::config::OnlineStoreKind;
    let mut redis = ferrite_test_support::RedisServer::start();
    let mut config = common::test_config();
    config.features.online_store = OnlineStoreKind::Redis;
    config.features.redis_url = redis.url();
    config.features.health_interval_ms = std::num::NonZeroU64::new(100).unwrap();
    let (server, channel) = common::start_with(config).await;

    let status = |service: &'static str| health_status(&channel, service);
    let ready = || {
        let channel = channel.clone();
        async move {
            GrpcInferenceServiceClient::new(channel)
                .server_ready(ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready
        }
    };
    let store_up = || async { sample(&scrape(&server).await, "ferrite_online_store_up{store=\"redis\"}") };
    let wait_for = |want: ServingStatus| wait_for_feature_health(&channel, want);
    let serving = ServingStatus::Serving as i32;

    assert_eq!(status("ferrite.v1.FeatureService").await, serving);
    assert!(ready().await);
    assert_eq!(store_up().await, Some(1.0));

    redis.stop();
    wait_for(ServingStatus::NotServing).await;
    assert!(!ready().await, "ServerReady while the online store is down");
    assert_eq!(store_up().await, Some(0.0));
    // Scoring answers its flagged fallbacks without features: it stays SERVING.
    assert_eq!(status("ferrite.v1.ScoringService").await, serving);
    assert_eq!(status("inference.GRPCInferenceService").await, serving);

    redis.restart();
    wait_for(ServingStatus::Serving).await;
    assert!(ready().await);
    assert_eq!(store_up().await, Some(1.0));
    server.shutdown().await.unwrap();
}

/// A unary call of `method` to the server at `addr` with `grpc-timeout: timeout`, sent by a
/// plain HTTP/2 client that does not enforce the deadline itself (tonic's Channel does, and
/// answers CANCELLED first), so the status is the server's.
async fn call_with_timeout(addr: std::net::SocketAddr, method: &'static str, timeout: &str) -> tonic::Code {
    let http2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<tonic::body::Body>();
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    let mut raw = tonic::client::Grpc::with_origin(http2, origin);
    raw.ready().await.unwrap();
    let mut request = tonic::Request::new(GetServerInfoRequest::default());
    request
        .metadata_mut()
        .insert("grpc-timeout", timeout.parse().unwrap());
    raw.unary(
        request,
        http::uri::PathAndQuery::from_static(method),
        ferrite_proto::codec::SliceCodec::<GetServerInfoRequest, GetServerInfoRequest>::default(),
    )
    .await
    .map_or_else(|s| s.code(), |_| tonic::Code::Ok)
}

#[tokio::test]
async fn every_rpc_past_its_grpc_timeout_is_answered_deadline_exceeded_and_not_run() {
    let (server, _) = start().await;
    // Empty requests that these RPCs answer OK in time.
    let methods = [
        "/inference.GRPCInferenceService/ServerLive",
        "/ferrite.v1.AdminService/GetServerInfo",
        "/ferrite.v1.ExperimentService/ListExperiments",
    ];
    for method in methods {
        assert_eq!(
            call_with_timeout(server.grpc_addr(), method, "10S").await,
            tonic::Code::Ok,
            "{method}"
        );
        // One nanosecond has passed by the time the call reaches a service.
        assert_eq!(
            call_with_timeout(server.grpc_addr(), method, "1n").await,
            tonic::Code::DeadlineExceeded,
            "{method}"
        );
    }
    let text = scrape(&server).await;
    assert!(
        text.lines().any(|l| l.starts_with("ferrite_grpc_requests_total")
            && l.contains("method=\"/ferrite.v1.AdminService/GetServerInfo\"")
            && l.contains("status=\"DeadlineExceeded\"")),
        "{text}"
    );
    server.shutdown().await.unwrap();
}
