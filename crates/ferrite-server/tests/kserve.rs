//! Model serving over the KServe v2 protocol, against the example models in `models/`.

mod common;

use common::{python_json, scrape, start};
use ferrite_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferrite_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use ferrite_proto::inference::*;
use ferrite_test_support::repo_root;
use tonic::Code;
use tonic::transport::Channel;

fn expected() -> serde_json::Value {
    let path = repo_root().join("crates/ferrite-server/tests/data/fraud_logreg.expected.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn rows(v: &serde_json::Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn features_input(rows: &[Vec<f32>]) -> InferInputTensor {
    InferInputTensor {
        name: "features".into(),
        datatype: "FP32".into(),
        shape: vec![rows.len() as i64, rows[0].len() as i64],
        contents: Some(InferTensorContents {
            fp32_contents: rows.concat(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn request(version: &str, rows: &[Vec<f32>]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "fraud_logreg".into(),
        model_version: version.into(),
        id: "req-1".into(),
        inputs: vec![features_input(rows)],
        ..Default::default()
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn assert_close(got: &[f32], want: &[Vec<f32>]) {
    let want = want.concat();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-6, "got {g}, Python onnxruntime gave {w}");
    }
}

/// ModelStatistics of one model version.
async fn statistics(
    kserve: &mut GrpcInferenceServiceClient<Channel>,
    name: &str,
    version: &str,
) -> Vec<ModelStatistics> {
    kserve
        .model_statistics(ModelStatisticsRequest {
            name: name.into(),
            version: version.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .model_stats
}

async fn client() -> (ferrite_server::RunningServer, GrpcInferenceServiceClient<Channel>) {
    let (server, channel) = start().await;
    (server, GrpcInferenceServiceClient::new(channel))
}

#[tokio::test]
async fn each_version_answers_what_python_onnxruntime_answers() {
    let (server, mut kserve) = client().await;
    let expected = expected();
    let features = rows(&expected["features"]);
    for (asked, ran) in [
        ("1", "1"),
        ("2", "2"),
        ("", "2"),
        ("stable", "1"),
        ("canary", "2"),
    ] {
        let answer = kserve
            .model_infer(request(asked, &features))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.model_version, ran, "asked for {asked:?}");
        assert_eq!(answer.id, "req-1");
        assert_eq!(answer.outputs.len(), 1);
        assert_eq!(answer.outputs[0].name, "probabilities");
        assert_eq!(answer.outputs[0].datatype, "FP32");
        assert_eq!(answer.outputs[0].shape, vec![features.len() as i64, 2]);
        assert_close(
            &f32s(&answer.raw_output_contents[0]),
            &rows(&expected[format!("version_{ran}")]),
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn raw_input_contents_give_the_same_answer_as_typed_contents() {
    let (server, mut kserve) = client().await;
    let expected = expected();
    let features = rows(&expected["features"]);
    let mut req = request("1", &features);
    let raw: Vec<u8> = features.concat().iter().flat_map(|x| x.to_le_bytes()).collect();
    req.inputs[0].contents = None;
    req.raw_input_contents = vec![raw];
    req.outputs = vec![InferRequestedOutputTensor {
        name: "probabilities".into(),
        ..Default::default()
    }];
    let answer = kserve.model_infer(req).await.unwrap().into_inner();
    assert_close(
        &f32s(&answer.raw_output_contents[0]),
        &rows(&expected["version_1"]),
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_a_status_that_says_what_was_expected() {
    let (server, mut kserve) = client().await;
    let good = rows(&expected()["features"]);
    let cases: Vec<(ModelInferRequest, Code, &str)> = vec![
        (
            ModelInferRequest {
                model_name: "no_such_model".into(),
                ..request("", &good)
            },
            Code::NotFound,
            "no_such_model",
        ),
        (
            ModelInferRequest {
                model_name: "../etc".into(),
                ..request("", &good)
            },
            Code::InvalidArgument,
            "../etc",
        ),
        (request("9", &good), Code::NotFound, "no ready version \"9\""),
        (
            {
                let mut r = request("", &good);
                r.inputs[0].name = "feats".into();
                r
            },
            Code::InvalidArgument,
            "unknown input \"feats\"",
        ),
        (
            {
                let mut r = request("", &good);
                r.inputs[0].datatype = "FP64".into();
                r.inputs[0].contents = Some(InferTensorContents {
                    fp64_contents: vec![0.0; 40],
                    ..Default::default()
                });
                r
            },
            Code::InvalidArgument,
            "datatype FP64, expected FP32",
        ),
        (
            request("", &[vec![0.0; 7]]),
            Code::InvalidArgument,
            "expected [-1, 8]",
        ),
        (
            {
                let mut r = request("", &good);
                r.inputs[0].shape = vec![6, 8];
                r
            },
            Code::InvalidArgument,
            "needs 48 elements, got 40",
        ),
        (
            {
                let mut r = request("", &good);
                r.inputs[0].contents = None;
                r.raw_input_contents = vec![vec![0; 41]];
                r
            },
            Code::InvalidArgument,
            "41 raw bytes",
        ),
        (request("", &[vec![f32::NAN; 8]]), Code::InvalidArgument, "NaN"),
        (
            {
                let mut r = request("", &good);
                r.inputs[0].datatype = "FP16".into();
                r
            },
            Code::InvalidArgument,
            "FP16",
        ),
        (
            {
                let mut r = request("", &good);
                r.outputs = vec![InferRequestedOutputTensor {
                    name: "score".into(),
                    ..Default::default()
                }];
                r
            },
            Code::InvalidArgument,
            "requested output \"score\"",
        ),
        (
            request("", &vec![vec![0.0; 8]; 257]),
            Code::InvalidArgument,
            "batch size 257, expected 1..=256",
        ),
    ];
    for (req, code, needle) in cases {
        let status = kserve.model_infer(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{needle:?} not in {:?}",
            status.message()
        );
    }
    // The server is still serving after all of that.
    kserve.model_infer(request("", &good)).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metadata_config_index_and_readiness_describe_the_repository() {
    let (server, mut kserve) = client().await;
    let meta = kserve
        .model_metadata(ModelMetadataRequest {
            name: "fraud_logreg".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.versions, vec!["1", "2"]);
    assert_eq!(meta.platform, "onnxruntime_onnx");
    assert_eq!(
        (meta.inputs[0].name.as_str(), meta.inputs[0].datatype.as_str()),
        ("features", "FP32")
    );
    assert_eq!(meta.inputs[0].shape, vec![-1, 8]);

    let config = kserve
        .model_config(ModelConfigRequest {
            name: "fraud_logreg".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.max_batch_size, 256);
    assert_eq!(config.input[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(config.input[0].dims, vec![8]);
    assert!(config.model_warmup.is_empty());

    // The XGBoost example declares two warm-up requests; ModelConfig shows them as Triton does.
    let xgb = kserve
        .model_config(ModelConfigRequest {
            name: "fraud_xgboost".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    let names: Vec<&str> = xgb.model_warmup.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["full batch", "zeros"]);
    assert_eq!(
        (xgb.model_warmup[0].batch_size, xgb.model_warmup[0].count),
        (256, 1)
    );
    let input = &xgb.model_warmup[0].inputs["features"];
    assert_eq!(input.data_type, DataType::TypeFp32 as i32);
    assert_eq!(input.dims, vec![40]);
    assert_eq!(
        input.input_data_type,
        Some(ferrite_proto::inference::model_warmup::input::InputDataType::RandomData(true))
    );
    assert_eq!(
        xgb.model_warmup[1].inputs["features"].input_data_type,
        Some(ferrite_proto::inference::model_warmup::input::InputDataType::ZeroData(true))
    );

    let ready = |name: &str, version: &str| ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        kserve
            .model_ready(ready("fraud_logreg", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        kserve
            .model_ready(ready("fraud_logreg", "canary"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !kserve
            .model_ready(ready("fraud_logreg", "3"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !kserve
            .model_ready(ready("nope", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    let index = kserve
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    let listed: Vec<(String, String, String)> =
        index.into_iter().map(|m| (m.name, m.version, m.state)).collect();
    assert!(
        listed.contains(&("fraud_logreg".into(), "1".into(), "READY".into())),
        "{listed:?}"
    );
    assert!(
        listed.contains(&("fraud_logreg".into(), "2".into(), "READY".into())),
        "{listed:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unload_and_load_through_the_repository_extension() {
    let (server, mut kserve) = client().await;
    let good = rows(&expected()["features"]);
    let unload = RepositoryModelUnloadRequest {
        model_name: "fraud_logreg".into(),
        ..Default::default()
    };
    kserve.repository_model_unload(unload.clone()).await.unwrap();
    let status = kserve.model_infer(request("", &good)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        kserve.repository_model_unload(unload).await.unwrap_err().code(),
        Code::NotFound
    );

    let load = RepositoryModelLoadRequest {
        model_name: "fraud_logreg".into(),
        ..Default::default()
    };
    kserve.repository_model_load(load).await.unwrap();
    kserve.model_infer(request("", &good)).await.unwrap();

    let missing = RepositoryModelLoadRequest {
        model_name: "no_such_model".into(),
        ..Default::default()
    };
    let status = kserve.repository_model_load(missing).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("no_such_model/config.toml"),
        "{}",
        status.message()
    );
    let escape = RepositoryModelLoadRequest {
        model_name: "..".into(),
        ..Default::default()
    };
    assert_eq!(
        kserve.repository_model_load(escape).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stream_answers_each_request_in_order_and_survives_a_bad_one() {
    let (server, mut kserve) = client().await;
    let good = rows(&expected()["features"]);
    let requests = vec![
        request("1", &good),
        ModelInferRequest {
            model_name: "no_such_model".into(),
            ..request("", &good)
        },
        request("2", &good),
    ];
    let mut answers = kserve
        .model_stream_infer(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().unwrap();
    assert_eq!(first.infer_response.unwrap().model_version, "1");
    let second = answers.message().await.unwrap().unwrap();
    assert!(second.infer_response.is_none());
    assert!(
        second.error_message.contains("no_such_model"),
        "{}",
        second.error_message
    );
    let third = answers.message().await.unwrap().unwrap();
    assert_eq!(third.infer_response.unwrap().model_version, "2");
    assert!(answers.message().await.unwrap().is_none());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_on_one_stream_are_batched_and_answered_in_order() {
    let (_repo, server, channel) = serve_batched_logreg(5).await;
    let expected = expected();
    let features = rows(&expected["features"]);
    let want = rows(&expected["version_2"]);
    // Five one-row requests sent at once on one stream; the batch runs when all five are
    // queued, which only happens if the server works on several requests of a stream at once.
    let requests: Vec<ModelInferRequest> = features
        .iter()
        .enumerate()
        .map(|(i, row)| ModelInferRequest {
            id: format!("row-{i}"),
            ..request("2", std::slice::from_ref(row))
        })
        .collect();
    let mut kserve = GrpcInferenceServiceClient::new(channel.clone());
    let mut answers = kserve
        .model_stream_infer(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    for (i, want_row) in want.iter().enumerate() {
        let answer = answers.message().await.unwrap().unwrap();
        assert_eq!(answer.error_message, "");
        let answer = answer.infer_response.unwrap();
        assert_eq!(answer.id, format!("row-{i}"), "answers come in request order");
        assert_close(
            &f32s(&answer.raw_output_contents[0]),
            std::slice::from_ref(want_row),
        );
    }
    assert!(answers.message().await.unwrap().is_none());
    let stats = statistics(&mut kserve, "fraud_logreg", "2").await;
    let batches: Vec<(u64, u64)> = stats[0]
        .batch_stats
        .iter()
        .map(|b| (b.batch_size, b.compute_infer.as_ref().unwrap().count))
        .collect();
    assert_eq!(batches, [(5, 1)], "five streamed requests ran as one batch");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tritonclient_works_unchanged() {
    let (server, _channel) = start().await;
    let expected = repo_root().join("crates/ferrite-server/tests/data/fraud_logreg.expected.json");
    let seen = python_json(
        "triton_client_check.py",
        vec![
            "--addr".into(),
            server.grpc_addr().to_string(),
            "--expected".into(),
            expected.display().to_string(),
        ],
    )
    .await;
    assert_eq!(seen["live"], true);
    assert_eq!(seen["ready"], true);
    assert_eq!(seen["model_ready"], true);
    assert_eq!(seen["missing_model_ready"], false);
    assert_eq!(seen["server_name"], "ferrite");
    assert_eq!(seen["versions"], serde_json::json!(["1", "2"]));
    assert_eq!(seen["inputs"], serde_json::json!([["features", "FP32", [-1, 8]]]));
    assert_eq!(seen["config"]["max_batch_size"], 256);
    for (asked, ran) in [("1", "1"), ("2", "2"), ("default", "2"), ("canary", "2")] {
        let r = &seen["infer"][asked];
        assert_eq!(r["ran"], ran, "{asked}");
        assert_eq!(r["shape"], serde_json::json!([5, 2]));
        assert!(r["max_abs_error"].as_f64().unwrap() <= 1e-6, "{asked}: {r}");
    }
    assert_eq!(
        seen["bad_shape"]["status"], "StatusCode.INVALID_ARGUMENT",
        "{}",
        seen["bad_shape"]
    );
    assert_eq!(seen["ready_after_unload"], false);
    assert_eq!(seen["ready_after_load"], true);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_broken_model_is_refused_and_the_working_versions_keep_serving() {
    let repo = tempfile::tempdir().unwrap();
    common::copy_dir(
        &repo_root().join("models/fraud_logreg"),
        &repo.path().join("fraud_logreg"),
    );
    // A model whose config promises an output the ONNX file does not have.
    common::copy_dir(
        &repo_root().join("models/fraud_logreg"),
        &repo.path().join("mismatched"),
    );
    let config = std::fs::read_to_string(repo.path().join("mismatched/config.toml")).unwrap();
    std::fs::write(
        repo.path().join("mismatched/config.toml"),
        config.replace("\"probabilities\"", "\"score\""),
    )
    .unwrap();

    let mut config = common::test_config();
    config.models.repository = repo.path().to_path_buf();
    let (server, channel) = common::start_with(config).await;
    let mut kserve = GrpcInferenceServiceClient::new(channel);

    let index = kserve
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    let broken = index
        .iter()
        .find(|m| m.name == "mismatched")
        .expect("the broken model is listed");
    assert_eq!(broken.state, "UNAVAILABLE");
    assert!(broken.reason.contains("no output \"score\""), "{}", broken.reason);
    let status = kserve
        .model_infer(ModelInferRequest {
            model_name: "mismatched".into(),
            ..request("", &[vec![0.0; 8]])
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("not ready"), "{}", status.message());

    // A new version that is not a model: the load fails, versions 1 and 2 keep serving.
    let v3 = repo.path().join("fraud_logreg/3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::write(v3.join("model.onnx"), b"not an onnx file").unwrap();
    let load = RepositoryModelLoadRequest {
        model_name: "fraud_logreg".into(),
        ..Default::default()
    };
    let status = kserve.repository_model_load(load).await.unwrap_err();
    assert!(status.message().contains("3/model.onnx"), "{}", status.message());
    let answer = kserve
        .model_infer(request("", &[vec![0.0; 8]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.model_version, "2");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_admin_service_lists_loads_and_unloads_models() {
    use ferrite_proto::ferrite::v1::admin_service_client::AdminServiceClient;
    use ferrite_proto::ferrite::v1::{ListModelsRequest, LoadModelRequest, UnloadModelRequest};

    let (server, channel) = start().await;
    let mut admin = AdminServiceClient::new(channel);
    let listed = admin
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    let versions: Vec<(&str, &str, &str)> = listed
        .iter()
        .map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str()))
        .collect();
    // Every example model in models/ is served; fraud_logreg and fraud_txn_gbdt (stable and
    // challenger) with both their versions.
    let examples = std::fs::read_dir(repo_root().join("models"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("config.toml").is_file())
        .count();
    assert_eq!(versions.len(), examples + 2, "{versions:?}");
    assert!(
        versions.iter().all(|(_, _, state)| *state == "READY"),
        "{versions:?}"
    );
    assert!(
        versions.contains(&("fraud_txn_gbdt", "1", "READY"))
            && versions.contains(&("fraud_txn_gbdt", "2", "READY"))
            && versions.contains(&("fraud_logreg", "1", "READY"))
            && versions.contains(&("fraud_logreg", "2", "READY"))
    );

    admin
        .unload_model(UnloadModelRequest {
            name: "fraud_logreg".into(),
        })
        .await
        .unwrap();
    let left = admin
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(left.iter().all(|m| m.name != "fraud_logreg"), "{left:?}");
    let loaded = admin
        .load_model(LoadModelRequest {
            name: "fraud_logreg".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(loaded.versions.len(), 2);
    let status = admin
        .load_model(LoadModelRequest {
            name: "../models".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn statistics_count_successes_failures_and_batch_sizes() {
    let (server, mut kserve) = client().await;
    let good = rows(&expected()["features"]);
    for _ in 0..3 {
        kserve.model_infer(request("1", &good)).await.unwrap();
    }
    kserve.model_infer(request("1", &[vec![0.0; 8]])).await.unwrap();
    kserve
        .model_infer(request("1", &[vec![f32::NAN; 8]]))
        .await
        .unwrap_err();

    let stats = statistics(&mut kserve, "fraud_logreg", "1").await;
    assert_eq!(stats.len(), 1);
    let s = &stats[0];
    assert_eq!((s.name.as_str(), s.version.as_str()), ("fraud_logreg", "1"));
    assert_eq!(s.inference_count, 3 * good.len() as u64 + 1);
    assert_eq!(s.execution_count, 4);
    let inference = s.inference_stats.as_ref().unwrap();
    assert_eq!(inference.success.as_ref().unwrap().count, 4);
    assert_eq!(inference.fail.as_ref().unwrap().count, 1);
    let batches: Vec<(u64, u64)> = s
        .batch_stats
        .iter()
        .map(|b| (b.batch_size, b.compute_infer.as_ref().unwrap().count))
        .collect();
    assert_eq!(batches, [(1, 1), (good.len() as u64, 3)]);
    assert!(s.last_inference > 0);

    let all = kserve
        .model_statistics(ModelStatisticsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ready = kserve
        .repository_index(RepositoryIndexRequest {
            repository_name: String::new(),
            ready: true,
        })
        .await
        .unwrap()
        .into_inner()
        .models
        .len();
    assert_eq!(all.model_stats.len(), ready, "one entry per served version");
    assert!(
        all.model_stats
            .iter()
            .any(|m| m.name == "fraud_logreg" && m.version == "2")
    );
    let status = kserve
        .model_statistics(ModelStatisticsRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // The same events as Prometheus series per model and version. Tests share the process's
    // recorder, so other tests' calls may add to these counts.
    let text = scrape(&server).await;
    let value = |series: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let v1 = r#"model="fraud_logreg",version="1""#;
    assert!(value(&format!("ferrite_model_requests_total{{{v1},status=\"ok\"}}")) >= 4.0);
    assert!(value(&format!("ferrite_model_requests_total{{{v1},status=\"error\"}}")) >= 1.0);
    assert!(value(&format!("ferrite_model_compute_seconds_count{{{v1}}}")) >= 4.0);
    assert!(value(&format!("ferrite_model_batch_size_sum{{{v1}}}")) >= 3.0 * good.len() as f64 + 1.0);
    // Batch sizes count rows (buckets 1, 2, 4, ...), not seconds: the one-row run is in "1",
    // all four runs are in the first bucket that holds the three larger ones.
    let bucket = |le: usize| value(&format!("ferrite_model_batch_size_bucket{{{v1},le=\"{le}\"}}"));
    assert!(bucket(1) >= 1.0);
    assert!(bucket(good.len().next_power_of_two()) >= 4.0);
    // Time buckets start at 5 µs, where small models run (the series must exist).
    value(&format!(
        "ferrite_model_compute_seconds_bucket{{{v1},le=\"0.000005\"}}"
    ));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_server_picks_up_a_new_version_dropped_into_the_repository() {
    let repo = tempfile::tempdir().unwrap();
    common::copy_dir(
        &repo_root().join("models/fraud_logreg"),
        &repo.path().join("fraud_logreg"),
    );
    let mut config = common::test_config();
    config.models.repository = repo.path().to_path_buf();
    config.models.poll_interval_s = 0.05;
    let (server, channel) = common::start_with(config).await;
    let mut kserve = GrpcInferenceServiceClient::new(channel);

    let v3 = repo.path().join("fraud_logreg/3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::copy(
        repo.path().join("fraud_logreg/2/model.onnx"),
        v3.join("model.onnx"),
    )
    .unwrap();
    let metadata = ModelMetadataRequest {
        name: "fraud_logreg".into(),
        version: String::new(),
    };
    let mut versions = Vec::new();
    // Bounded wait for the watcher (about 200 polling periods), not a timing assertion.
    for _ in 0..200 {
        versions = kserve
            .model_metadata(metadata.clone())
            .await
            .unwrap()
            .into_inner()
            .versions;
        if versions == ["2", "3"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(versions, ["2", "3"], "latest = 2 serves the two highest versions");
    let answer = kserve
        .model_infer(request("", &[vec![0.0; 8]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.model_version, "3");
    server.shutdown().await.unwrap();
}

/// A server on a copy of `fraud_logreg` whose config asks for dynamic batching with a long
/// queue delay (200 ms) and the given preferred batch size, so that concurrent requests surely
/// meet in one batch.
async fn serve_batched_logreg(
    preferred: usize,
) -> (tempfile::TempDir, ferrite_server::RunningServer, Channel) {
    let repo = tempfile::tempdir().unwrap();
    common::copy_dir(
        &repo_root().join("models/fraud_logreg"),
        &repo.path().join("fraud_logreg"),
    );
    let config_path = repo.path().join("fraud_logreg/config.toml");
    let mut model_config = std::fs::read_to_string(&config_path).unwrap();
    model_config.push_str(&format!(
        "dynamic_batching = {{ max_queue_delay_us = 200000, preferred_batch_sizes = [{preferred}] }}\n"
    ));
    std::fs::write(&config_path, model_config).unwrap();
    let mut config = common::test_config();
    config.models.repository = repo.path().to_path_buf();
    config.models.poll_interval_s = 0.0;
    let (server, channel) = common::start_with(config).await;
    (repo, server, channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_each_caller_gets_its_own_rows() {
    // A long queue delay so that the concurrent requests below surely meet in one batch.
    let (_repo, server, channel) = serve_batched_logreg(8).await;

    let expected = expected();
    let features = rows(&expected["features"]);
    let want = rows(&expected["version_2"]);
    // Five callers with one row each and one caller with all five rows: 10 rows, 6 requests.
    let mut calls = Vec::new();
    for (i, row) in features.iter().enumerate() {
        let mut kserve = GrpcInferenceServiceClient::new(channel.clone());
        let req = request("2", std::slice::from_ref(row));
        calls.push(tokio::spawn(
            async move { (vec![i], kserve.model_infer(req).await) },
        ));
    }
    let mut kserve = GrpcInferenceServiceClient::new(channel.clone());
    let all = request("2", &features);
    calls.push(tokio::spawn(async move {
        ((0..5).collect(), kserve.model_infer(all).await)
    }));
    for call in calls {
        let (which, answer) = call.await.unwrap();
        let answer = answer.unwrap().into_inner();
        let expected_rows: Vec<Vec<f32>> = which.iter().map(|&i| want[i].clone()).collect();
        assert_eq!(answer.outputs[0].shape, vec![which.len() as i64, 2]);
        assert_close(&f32s(&answer.raw_output_contents[0]), &expected_rows);
    }

    let stats = statistics(&mut GrpcInferenceServiceClient::new(channel), "fraud_logreg", "2").await;
    let s = &stats[0];
    assert_eq!(s.inference_count, 10);
    assert!(
        s.execution_count < 6,
        "6 requests ran in {} executions: no batching",
        s.execution_count
    );
    assert!(
        s.batch_stats.iter().any(|b| b.batch_size > 5),
        "{:?}",
        s.batch_stats
    );
    assert_eq!(
        s.inference_stats.as_ref().unwrap().queue.as_ref().unwrap().count,
        6
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_candle_wide_and_deep_model_matches_its_numpy_reference() {
    let (server, mut kserve) = client().await;
    let path = repo_root().join("crates/ferrite-server/tests/data/ranker_wide_deep.expected.json");
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let features = rows(&expected["features"]);
    let req = ModelInferRequest {
        model_name: "ranker_wide_deep".into(),
        inputs: vec![features_input(&features)],
        ..Default::default()
    };
    let answer = kserve.model_infer(req).await.unwrap().into_inner();
    assert_eq!(answer.outputs[0].name, "score");
    assert_eq!(answer.outputs[0].shape, vec![4, 1]);
    let scores: Vec<Vec<f64>> = serde_json::from_value(expected["scores"].clone()).unwrap();
    for (got, want) in f32s(&answer.raw_output_contents[0]).iter().zip(scores.concat()) {
        assert!(
            (f64::from(*got) - want).abs() <= 1e-5,
            "got {got}, NumPy gave {want}"
        );
    }
    let meta = kserve
        .model_config(ModelConfigRequest {
            name: "ranker_wide_deep".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(meta.backend, "candle");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_scikit_learn_gbdt_serves_its_scores_with_and_without_zipmap() {
    let (server, mut kserve) = client().await;
    let path = repo_root().join("crates/ferrite-server/tests/data/fraud_gbdt.expected.json");
    let expected: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let features = rows(&expected["features"]);
    let sklearn: Vec<Vec<f64>> = serde_json::from_value(expected["sklearn"].clone()).unwrap();
    for (model, output) in [
        ("fraud_gbdt", "probabilities"),
        ("fraud_gbdt_zipmap", "output_probability"),
        // The same file as fraud_gbdt, through the batching queue.
        ("fraud_gbdt_batched", "probabilities"),
    ] {
        let mut input = features_input(&features);
        input.name = "X".into();
        let req = ModelInferRequest {
            model_name: model.into(),
            inputs: vec![input],
            outputs: vec![InferRequestedOutputTensor {
                name: output.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let answer = kserve.model_infer(req).await.unwrap().into_inner();
        assert_eq!(answer.outputs[0].datatype, "FP32", "{model}");
        assert_eq!(answer.outputs[0].shape, vec![features.len() as i64, 2], "{model}");
        let got = f32s(&answer.raw_output_contents[0]);
        let reference = if model == "fraud_gbdt_batched" {
            "fraud_gbdt"
        } else {
            model
        };
        let onnxruntime: Vec<Vec<f64>> = serde_json::from_value(expected[reference].clone()).unwrap();
        for ((g, o), s) in got.iter().zip(onnxruntime.concat()).zip(sklearn.concat()) {
            assert!(
                (f64::from(*g) - o).abs() <= 1e-6,
                "{model}: got {g}, Python onnxruntime gave {o}"
            );
            assert!(
                (f64::from(*g) - s).abs() <= 1e-5,
                "{model}: got {g}, scikit-learn gave {s}"
            );
        }
    }
    server.shutdown().await.unwrap();
}

/// A repository holding a copy of `fraud_logreg` named `name`, its config edited by `edit`.
fn logreg_copy(name: &str, edit: impl FnOnce(String) -> String) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path().join(name);
    common::copy_dir(&repo_root().join("models/fraud_logreg"), &dir);
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    std::fs::write(dir.join("config.toml"), edit(config)).unwrap();
    repo
}

async fn serve_repo(
    repo: &std::path::Path,
    tweak: impl FnOnce(&mut ferrite_server::Config),
) -> (ferrite_server::RunningServer, GrpcInferenceServiceClient<Channel>) {
    let mut config = common::test_config();
    config.models.repository = repo.to_path_buf();
    config.models.poll_interval_s = 0.0;
    tweak(&mut config);
    let (server, channel) = common::start_with(config).await;
    (server, GrpcInferenceServiceClient::new(channel))
}

/// The value of the series `name` whose labels include every one of `labels`.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Scrapes until the series `name` with `labels` reads `want` (at most 10 s, in 20 ms steps).
async fn metric_reaches(
    server: &ferrite_server::RunningServer,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) {
    let mut last = None;
    for _ in 0..500 {
        last = series(&scrape(server).await, name, labels);
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{name}{labels:?} is {last:?}, expected {want}");
}

/// A request to model `name` with one row of 8 zeros.
fn one_row(name: &str, version: &str) -> ModelInferRequest {
    ModelInferRequest {
        model_name: name.into(),
        ..request(version, &[vec![0.0; 8]])
    }
}

#[tokio::test]
async fn a_request_still_queued_at_its_deadline_is_never_run() {
    // Batches wait up to 200 ms for 8 rows: a lone one-row request outlives a 50 ms deadline.
    let repo = logreg_copy("deadline_logreg", |c| {
        c + "dynamic_batching = { max_queue_delay_us = 200000, preferred_batch_sizes = [8] }\n"
    });
    let (server, mut kserve) = serve_repo(repo.path(), |_| {}).await;
    let mut req = tonic::Request::new(one_row("deadline_logreg", "2"));
    req.set_timeout(std::time::Duration::from_millis(50));
    let status = kserve.model_infer(req).await.unwrap_err();
    // tonic's client gives up at the deadline on its own (CANCELLED, "Timeout expired"),
    // before the server's answer (DEADLINE_EXCEEDED, naming the model) can reach it; other
    // clients see the server's.
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    // The request left the queue without running.
    let labels = [("model", "deadline_logreg"), ("version", "2")];
    metric_reaches(&server, "ferrite_model_queue_depth", &labels, 0.0).await;
    let stats = statistics(&mut kserve, "deadline_logreg", "2").await;
    assert_eq!(stats[0].execution_count, 0, "the expired request never ran");

    // Without a deadline, the same request is answered.
    kserve.model_infer(one_row("deadline_logreg", "2")).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted_naming_the_model_and_the_limit() {
    // One place: a request gathering its batch (200 ms) holds it.
    let repo = logreg_copy("bounded_logreg", |c| {
        c + "dynamic_batching = { max_queue_delay_us = 200000, preferred_batch_sizes = [8], max_queue_size = 1 }\n"
    });
    let (server, kserve) = serve_repo(repo.path(), |_| {}).await;
    let mut first_client = kserve.clone();
    let first = tokio::spawn(async move { first_client.model_infer(one_row("bounded_logreg", "2")).await });
    let labels = [("model", "bounded_logreg"), ("version", "2")];
    metric_reaches(&server, "ferrite_model_queue_depth", &labels, 1.0).await;

    let status = kserve
        .clone()
        .model_infer(one_row("bounded_logreg", "2"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    for expected in [
        "model \"bounded_logreg\" version 2",
        "dynamic_batching.max_queue_size = 1",
    ] {
        assert!(status.message().contains(expected), "{}", status.message());
    }
    let full = [
        ("model", "bounded_logreg"),
        ("version", "2"),
        ("reason", "queue_full"),
    ];
    assert_eq!(
        series(&scrape(&server).await, "ferrite_model_rejected_total", &full),
        Some(1.0)
    );
    first.await.unwrap().unwrap();
    kserve
        .clone()
        .model_infer(one_row("bounded_logreg", "2"))
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}

/// A test model `y = x` (FP32, one value per row) that panics on `x = -1`, and whose panic
/// on `x = -2` is one that ends its batching thread (the payload panics as it drops, twice).
struct Panicky;

struct PanicOnDrop(u32);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if self.0 > 0 {
            std::panic::panic_any(PanicOnDrop(self.0 - 1));
        }
    }
}

impl ferrite_models::ModelBackend for Panicky {
    fn infer(
        &self,
        inputs: &[ferrite_models::Tensor],
    ) -> Result<Vec<ferrite_models::Tensor>, ferrite_models::ModelError> {
        let x = &inputs[0];
        if let ferrite_models::TensorData::Fp32(v) = &x.data {
            if v.contains(&-1.0) {
                panic!("the test model panics on -1");
            }
            if v.contains(&-2.0) {
                std::panic::panic_any(PanicOnDrop(2));
            }
        }
        Ok(vec![ferrite_models::Tensor::new(
            "y",
            x.shape.clone(),
            x.data.clone(),
        )?])
    }
}

fn x_request(name: &str, x: f32) -> ModelInferRequest {
    ModelInferRequest {
        model_name: name.into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 1],
            contents: Some(InferTensorContents {
                fp32_contents: vec![x],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_panicking_model_answers_internal_and_keeps_serving() {
    let (server, mut kserve) = client().await;
    let config = |batching: &str| -> ferrite_models::ModelConfig {
        toml::from_str(&format!(
            "backend = \"onnx\"\nmax_batch_size = 4\n{batching}\n\
             inputs = [{{ name = \"x\", dtype = \"FP32\", dims = [1] }}]\n\
             outputs = [{{ name = \"y\", dtype = \"FP32\", dims = [1] }}]\n"
        ))
        .unwrap()
    };
    let models = &server.state().models;
    let backend = || {
        vec![(
            1,
            std::sync::Arc::new(Panicky) as std::sync::Arc<dyn ferrite_models::ModelBackend>,
        )]
    };
    models
        .insert(
            "panicky_batched",
            config("dynamic_batching = { max_queue_delay_us = 0 }"),
            backend(),
        )
        .unwrap();
    models.insert("panicky_direct", config(""), backend()).unwrap();
    let ready = |name: &str| ModelReadyRequest {
        name: name.into(),
        version: "1".into(),
    };

    for name in ["panicky_batched", "panicky_direct"] {
        let status = kserve.model_infer(x_request(name, -1.0)).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{name}: {status:?}");
        assert!(
            status.message().contains("panicked") && status.message().contains("the test model panics on -1"),
            "{}",
            status.message()
        );
        let answer = kserve
            .model_infer(x_request(name, 3.0))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(f32s(&answer.raw_output_contents[0]), [3.0], "{name}");
        assert!(kserve.model_ready(ready(name)).await.unwrap().into_inner().ready);
        assert_eq!(
            series(
                &scrape(&server).await,
                "ferrite_model_panics_total",
                &[("model", name), ("version", "1")]
            ),
            Some(1.0)
        );
    }

    // A batching thread that dies after all: not ready, until the next call starts another.
    let status = kserve
        .model_infer(x_request("panicky_batched", -2.0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let mut dead = false;
    for _ in 0..500 {
        dead = !kserve
            .model_ready(ready("panicky_batched"))
            .await
            .unwrap()
            .into_inner()
            .ready;
        if dead {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(dead, "ModelReady said true with its batching thread gone");
    let answer = kserve
        .model_infer(x_request("panicky_batched", 4.0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f32s(&answer.raw_output_contents[0]), [4.0]);
    assert!(
        kserve
            .model_ready(ready("panicky_batched"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_minus_one_dim_is_narrowed_to_the_onnx_file_and_wrong_widths_are_invalid_argument() {
    let repo = logreg_copy("any_width_logreg", |c| c.replacen("dims = [8]", "dims = [-1]", 1));
    let (server, mut kserve) = serve_repo(repo.path(), |_| {}).await;
    let metadata = kserve
        .model_metadata(ModelMetadataRequest {
            name: "any_width_logreg".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.inputs[0].shape, [-1, 8]);
    let narrow = ModelInferRequest {
        model_name: "any_width_logreg".into(),
        ..request("", &[vec![0.0; 5]])
    };
    let status = kserve.model_infer(narrow).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("input \"features\"") && status.message().contains("expected [-1, 8]"),
        "{}",
        status.message()
    );
    kserve.model_infer(one_row("any_width_logreg", "")).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_input_with_both_raw_and_typed_contents_is_refused_naming_it() {
    let (server, mut kserve) = client().await;
    let good = rows(&expected()["features"]);
    let mut req = request("1", &good);
    // Typed contents stay on the input, and the same data comes raw too.
    req.raw_input_contents = vec![good.concat().iter().flat_map(|x| x.to_le_bytes()).collect()];
    let status = kserve.model_infer(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("input \"features\"")
            && status.message().contains("raw_input_contents")
            && status.message().contains("contents"),
        "{}",
        status.message()
    );
    // An empty contents message beside raw data carries nothing: accepted.
    let mut req = request("1", &good);
    req.inputs[0].contents = Some(InferTensorContents::default());
    req.raw_input_contents = vec![good.concat().iter().flat_map(|x| x.to_le_bytes()).collect()];
    kserve.model_infer(req).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn load_and_unload_are_refused_unless_the_control_mode_allows_them() {
    use ferrite_proto::ferrite::v1::admin_service_client::AdminServiceClient;
    use ferrite_proto::ferrite::v1::{LoadModelRequest, UnloadModelRequest};
    use ferrite_server::config::ModelControlMode;

    let repo = logreg_copy("fraud_logreg", |c| c);
    let load = || RepositoryModelLoadRequest {
        model_name: "fraud_logreg".into(),
        ..Default::default()
    };
    let unload = || RepositoryModelUnloadRequest {
        model_name: "fraud_logreg".into(),
        ..Default::default()
    };
    for mode in [ModelControlMode::None, ModelControlMode::Poll] {
        let (server, mut kserve) = serve_repo(repo.path(), |c| {
            c.models.control_mode = mode;
            c.models.poll_interval_s = 60.0;
        })
        .await;
        let mut admin = AdminServiceClient::connect(format!("http://{}", server.grpc_addr()))
            .await
            .unwrap();
        let refusals = [
            kserve.repository_model_load(load()).await.unwrap_err(),
            kserve.repository_model_unload(unload()).await.unwrap_err(),
            admin
                .load_model(LoadModelRequest {
                    name: "fraud_logreg".into(),
                })
                .await
                .unwrap_err(),
            admin
                .unload_model(UnloadModelRequest {
                    name: "fraud_logreg".into(),
                })
                .await
                .unwrap_err(),
        ];
        for status in refusals {
            assert_eq!(status.code(), Code::FailedPrecondition, "{mode:?}: {status:?}");
            assert!(
                status
                    .message()
                    .contains(&format!("models.control_mode = \"{}\"", mode.as_str()))
                    && status
                        .message()
                        .contains("set models.control_mode = \"explicit\""),
                "{}",
                status.message()
            );
        }
        // Still served: the refused unload changed nothing.
        kserve.model_infer(request("", &[vec![0.0; 8]])).await.unwrap();
        server.shutdown().await.unwrap();
    }

    // explicit: the RPCs load what was dropped into the repository (it is not polled).
    let (server, mut kserve) = serve_repo(repo.path(), |c| {
        c.models.control_mode = ModelControlMode::Explicit;
    })
    .await;
    let v3 = repo.path().join("fraud_logreg/3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::copy(
        repo.path().join("fraud_logreg/2/model.onnx"),
        v3.join("model.onnx"),
    )
    .unwrap();
    kserve.repository_model_load(load()).await.unwrap();
    let answer = kserve
        .model_infer(request("", &[vec![0.0; 8]]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.model_version, "3");
    kserve.repository_model_unload(unload()).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_idle_stream_ends_when_the_server_stops_instead_of_holding_the_shutdown() {
    let (server, channel) = common::start_with({
        let mut config = common::test_config();
        // Far longer than the hang guard below: a stream holding the shutdown fails the test.
        config.server.shutdown_grace_s = 3600;
        config
    })
    .await;
    let mut kserve = GrpcInferenceServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(request("1", &rows(&expected()["features"])))
        .await
        .unwrap();
    let mut answers = kserve
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().unwrap();
    assert_eq!(first.error_message, "");
    // The stream now sits idle: the client keeps its sending side open.

    let guard = std::time::Duration::from_secs(60);
    let shutdown = tokio::spawn(server.shutdown());
    let end = tokio::time::timeout(guard, answers.message())
        .await
        .expect("the stream ended when the server stopped");
    let status = end.expect_err("the stream ends saying why");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{}", status.message());
    tokio::time::timeout(guard, shutdown)
        .await
        .expect("the shutdown completed without waiting out the grace period")
        .unwrap()
        .unwrap();
    drop(tx);
}
