//! Scoring pipelines served as KServe v2 models: entity ids as BYTES, request fields as typed
//! inputs, the rows' scores and decisions out; the same answers as ScoringService gives, bad
//! inputs refused naming the input, and NVIDIA's tritonclient driving a pipeline unchanged.

mod common;

use common::{python_json, start};
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::scoring_service_client::ScoringServiceClient;
use ferrite_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferrite_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use ferrite_proto::inference::*;
use ferrite_test_support::repo_root;
use pb::score_fraud_request::{Merchant, User};
use tonic::Code;
use tonic::transport::Channel;

/// A card transaction, as both faces take it.
struct Txn {
    user: i64,
    merchant: &'static str,
    amount: f64,
    currency: &'static str,
    device: &'static str,
}

const EVENT_TIME_US: i64 = 1_790_000_000_000_000;

const TXNS: [Txn; 3] = [
    Txn {
        user: 1_000_042,
        merchant: "2000007",
        amount: 42.5,
        currency: "EUR",
        device: "ios",
    },
    Txn {
        user: 1_000_043,
        merchant: "2000011",
        amount: 6_000.0,
        currency: "USD",
        device: "web",
    },
    Txn {
        user: 1_000_044,
        merchant: "2000007",
        amount: 310.25,
        currency: "GBP",
        device: "android",
    },
];

fn score_fraud_request(t: &Txn) -> pb::ScoreFraudRequest {
    pb::ScoreFraudRequest {
        transaction_id: format!("t-{}", t.user),
        user: Some(User::UserIdInt(t.user)),
        merchant: Some(Merchant::MerchantId(t.merchant.into())),
        amount: t.amount,
        currency: t.currency.into(),
        device_type: t.device.into(),
        event_time_us: EVENT_TIME_US,
        ..Default::default()
    }
}

fn bytes_input(name: &str, values: Vec<String>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "BYTES".into(),
        shape: vec![values.len() as i64, 1],
        contents: Some(InferTensorContents {
            bytes_contents: values.into_iter().map(String::into_bytes).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The transactions as a KServe request to pipeline `fraud`: ids as decimal strings, typed
/// contents, `[rows, 1]` as the metadata says (the amount as `[rows]`, which is accepted too).
fn pipeline_request(txns: &[Txn]) -> ModelInferRequest {
    let n = txns.len() as i64;
    ModelInferRequest {
        model_name: "fraud".into(),
        id: "call-1".into(),
        inputs: vec![
            bytes_input("user_id", txns.iter().map(|t| t.user.to_string()).collect()),
            bytes_input(
                "merchant_id",
                txns.iter().map(|t| t.merchant.to_string()).collect(),
            ),
            InferInputTensor {
                name: "amount".into(),
                datatype: "FP64".into(),
                shape: vec![n],
                contents: Some(InferTensorContents {
                    fp64_contents: txns.iter().map(|t| t.amount).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            bytes_input("currency", txns.iter().map(|t| t.currency.to_string()).collect()),
            bytes_input("device_type", txns.iter().map(|t| t.device.to_string()).collect()),
            InferInputTensor {
                name: "event_timestamp".into(),
                datatype: "INT64".into(),
                shape: vec![n, 1],
                contents: Some(InferTensorContents {
                    int64_contents: vec![EVENT_TIME_US; txns.len()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// An answer's output by name: its datatype, shape and raw bytes.
fn output<'a>(answer: &'a ModelInferResponse, name: &str) -> (&'a str, &'a [i64], &'a [u8]) {
    let at = answer
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name:?} in {:?}", answer.outputs));
    let o = &answer.outputs[at];
    (&o.datatype, &o.shape, &answer.raw_output_contents[at])
}

fn f64s(raw: &[u8]) -> Vec<f64> {
    raw.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Raw BYTES elements: each a 4-byte little-endian length, then the bytes.
fn strings(mut raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let len = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        out.push(String::from_utf8(raw[4..4 + len].to_vec()).unwrap());
        raw = &raw[4 + len..];
    }
    out
}

/// ScoreFraud's answer for each transaction, one call each.
async fn score_fraud(channel: &Channel, txns: &[Txn]) -> Vec<pb::ScoreFraudResponse> {
    let mut scoring = ScoringServiceClient::new(channel.clone());
    let mut answers = Vec::new();
    for t in txns {
        answers.push(
            scoring
                .score_fraud(score_fraud_request(t))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    answers
}

fn decision_name(d: i32) -> &'static str {
    match pb::FraudDecision::try_from(d).unwrap() {
        pb::FraudDecision::Approve => "approve",
        pb::FraudDecision::Review => "review",
        pb::FraudDecision::Decline => "decline",
        other => panic!("ScoreFraud answered {other:?}"),
    }
}

#[tokio::test]
async fn a_pipeline_infers_as_a_model_with_the_scores_score_fraud_gives() {
    let (server, channel) = start().await;
    let mut kserve = GrpcInferenceServiceClient::new(channel.clone());

    let answer = kserve
        .model_infer(pipeline_request(&TXNS))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            answer.model_name.as_str(),
            answer.model_version.as_str(),
            answer.id.as_str()
        ),
        ("fraud", "1", "call-1")
    );
    let names: Vec<&str> = answer.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["score", "decision", "fallback", "model_version"]);
    let (dtype, shape, raw) = output(&answer, "score");
    assert_eq!((dtype, shape), ("FP64", &[3, 1][..]));
    let scores = f64s(raw);
    let (dtype, shape, raw) = output(&answer, "decision");
    assert_eq!((dtype, shape), ("BYTES", &[3, 1][..]));
    let decisions = strings(raw);
    let (dtype, shape, raw) = output(&answer, "fallback");
    assert_eq!((dtype, shape), ("BOOL", &[3, 1][..]));
    assert_eq!(raw, [0, 0, 0], "the model answered every row");
    let (dtype, _, raw) = output(&answer, "model_version");
    assert_eq!(dtype, "BYTES");
    assert_eq!(strings(raw), ["1", "1", "1"]);

    let typed = score_fraud(&channel, &TXNS).await;
    for (i, want) in typed.iter().enumerate() {
        assert!(
            (scores[i] - want.score).abs() <= 1e-12,
            "row {i}: KServe {} vs ScoreFraud {}",
            scores[i],
            want.score
        );
        assert_eq!(decisions[i], decision_name(want.decision), "row {i}");
        assert!(!want.meta.as_ref().unwrap().fallback);
    }
    // Not every row scores alike: the rows are not mixed up or defaulted.
    assert!(scores.iter().any(|&s| s != scores[0]), "{scores:?}");

    // Raw contents, integer ids and a subset of outputs: the same scores, only what was asked.
    let mut req = pipeline_request(&TXNS);
    req.inputs[0] = InferInputTensor {
        name: "user_id".into(),
        datatype: "INT64".into(),
        shape: vec![3, 1],
        ..Default::default()
    };
    req.raw_input_contents = req
        .inputs
        .iter_mut()
        .enumerate()
        .map(|(i, input)| {
            let c = input.contents.take().unwrap_or_default();
            let mut raw = Vec::new();
            if i == 0 {
                TXNS.iter()
                    .for_each(|t| raw.extend_from_slice(&t.user.to_le_bytes()));
            }
            c.fp64_contents
                .iter()
                .for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
            c.int64_contents
                .iter()
                .for_each(|x| raw.extend_from_slice(&x.to_le_bytes()));
            for b in c.bytes_contents {
                raw.extend_from_slice(&(b.len() as u32).to_le_bytes());
                raw.extend_from_slice(&b);
            }
            raw
        })
        .collect();
    req.outputs = vec![InferRequestedOutputTensor {
        name: "score".into(),
        ..Default::default()
    }];
    let raw_answer = kserve.model_infer(req).await.unwrap().into_inner();
    assert_eq!(raw_answer.outputs.len(), 1);
    assert_eq!(f64s(output(&raw_answer, "score").2), scores);

    // The stream path serves pipelines too.
    let mut stream = kserve
        .model_stream_infer(tokio_stream::iter(vec![pipeline_request(&TXNS[..1])]))
        .await
        .unwrap()
        .into_inner();
    let streamed = stream.message().await.unwrap().unwrap();
    assert_eq!(streamed.error_message, "");
    assert_eq!(
        f64s(output(streamed.infer_response.as_ref().unwrap(), "score").2),
        scores[..1]
    );

    // Calls are counted as Triton's statistics count them.
    let stats = kserve
        .model_statistics(ModelStatisticsRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .model_stats;
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].name.as_str(), stats[0].version.as_str()),
        ("fraud", "1")
    );
    assert_eq!(stats[0].inference_count, 3 + 3 + 1);
    assert_eq!(stats[0].execution_count, 3);
    let success = stats[0].inference_stats.as_ref().unwrap().success.unwrap();
    assert_eq!(success.count, 3);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_pipeline_is_ready_and_described_as_a_batching_model() {
    let (server, channel) = start().await;
    let mut kserve = GrpcInferenceServiceClient::new(channel);
    let ready = |version: &str| ModelReadyRequest {
        name: "fraud".into(),
        version: version.into(),
    };
    for (version, want) in [("", true), ("1", true), ("2", false)] {
        let got = kserve
            .model_ready(ready(version))
            .await
            .unwrap()
            .into_inner()
            .ready;
        assert_eq!(got, want, "version {version:?}");
    }

    let meta = kserve
        .model_metadata(ModelMetadataRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.platform, "ferrite_pipeline");
    assert_eq!(meta.versions, ["1"]);
    let inputs: Vec<(&str, &str, &[i64])> = meta
        .inputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str(), &t.shape[..]))
        .collect();
    for want in [
        ("user_id", "BYTES", &[-1, 1][..]),
        ("merchant_id", "BYTES", &[-1, 1]),
        ("amount", "FP64", &[-1, 1]),
        ("currency", "BYTES", &[-1, 1]),
        ("device_type", "BYTES", &[-1, 1]),
        ("event_timestamp", "INT64", &[-1, 1]),
    ] {
        assert!(inputs.contains(&want), "{want:?} not in {inputs:?}");
    }
    let outputs: Vec<(&str, &str)> = meta
        .outputs
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str()))
        .collect();
    assert_eq!(
        outputs,
        [
            ("score", "FP64"),
            ("decision", "BYTES"),
            ("fallback", "BOOL"),
            ("model_version", "BYTES")
        ]
    );

    let config = kserve
        .model_config(ModelConfigRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.platform, "ferrite_pipeline");
    // pipelines/fraud.toml: max_batch = 256; dims leave the batch dimension out.
    assert_eq!(config.max_batch_size, 256);
    assert_eq!(config.input.len(), meta.inputs.len());
    let amount = config.input.iter().find(|i| i.name == "amount").unwrap();
    assert_eq!(
        (amount.data_type, &amount.dims[..]),
        (DataType::TypeFp64 as i32, &[1][..])
    );
    let user = config.input.iter().find(|i| i.name == "user_id").unwrap();
    assert_eq!(user.data_type, DataType::TypeString as i32);
    assert_eq!(config.output[0].dims, [1]);

    let index = kserve
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(
        index
            .iter()
            .any(|m| m.name == "fraud" && m.version == "1" && m.state == "READY"),
        "{index:?}"
    );
    // Another version of a pipeline does not exist.
    let status = kserve
        .model_metadata(ModelMetadataRequest {
            name: "fraud".into(),
            version: "2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_inputs_are_refused_naming_the_input() {
    let (server, channel) = start().await;
    let mut kserve = GrpcInferenceServiceClient::new(channel);
    let good = || pipeline_request(&TXNS);
    let with_input = |name: &str, f: &dyn Fn(&mut InferInputTensor)| {
        let mut r = good();
        f(r.inputs.iter_mut().find(|i| i.name == name).unwrap());
        r
    };
    let cases: Vec<(ModelInferRequest, Code, Vec<&str>)> = vec![
        (
            {
                let mut r = good();
                r.inputs.retain(|i| i.name != "currency");
                r
            },
            Code::InvalidArgument,
            vec!["\"currency\"", "missing"],
        ),
        (
            with_input("amount", &|i| {
                i.datatype = "BYTES".into();
                i.contents = Some(InferTensorContents {
                    bytes_contents: vec![b"1".to_vec(); 3],
                    ..Default::default()
                });
            }),
            Code::InvalidArgument,
            vec!["\"amount\"", "datatype BYTES, expected FP64"],
        ),
        (
            with_input("amount", &|i| {
                i.shape = vec![2];
                i.contents.as_mut().unwrap().fp64_contents.truncate(2);
            }),
            Code::InvalidArgument,
            vec!["\"amount\"", "2 rows"],
        ),
        (
            with_input("device_type", &|i| {
                i.shape = vec![1, 3];
            }),
            Code::InvalidArgument,
            vec!["\"device_type\"", "1 rows"],
        ),
        (
            {
                let mut r = good();
                r.inputs.push(bytes_input("colour", vec!["red".into(); 3]));
                r
            },
            Code::InvalidArgument,
            vec!["\"colour\"", "not an input of pipeline \"fraud\""],
        ),
        (
            with_input("user_id", &|i| {
                i.contents.as_mut().unwrap().bytes_contents[1] = b"not-an-id".to_vec();
            }),
            Code::InvalidArgument,
            vec!["user_id", "not-an-id"],
        ),
        (
            with_input("currency", &|i| {
                i.contents.as_mut().unwrap().bytes_contents[2] = b"JPY".to_vec();
            }),
            Code::InvalidArgument,
            vec!["currency", "JPY"],
        ),
        (
            {
                let mut r = good();
                r.outputs = vec![InferRequestedOutputTensor {
                    name: "probability".into(),
                    ..Default::default()
                }];
                r
            },
            Code::InvalidArgument,
            vec!["\"probability\""],
        ),
        (
            ModelInferRequest {
                model_version: "2".into(),
                ..good()
            },
            Code::NotFound,
            vec!["\"fraud\"", "version \"2\""],
        ),
    ];
    for (req, code, words) in cases {
        let status = kserve.model_infer(req).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        for w in words {
            assert!(
                status.message().contains(w),
                "{w:?} not in {:?}",
                status.message()
            );
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_loaded_model_of_the_same_name_wins_over_the_pipeline() {
    let repo = tempfile::tempdir().unwrap();
    common::copy_dir(
        &repo_root().join("models/fraud_txn_gbdt"),
        &repo.path().join("fraud_txn_gbdt"),
    );
    common::copy_dir(
        &repo_root().join("models/fraud_logreg"),
        &repo.path().join("fraud"),
    );
    let mut config = common::test_config();
    config.models.repository = repo.path().to_path_buf();
    let (server, channel) = common::start_with(config).await;
    let mut kserve = GrpcInferenceServiceClient::new(channel);
    let meta = kserve
        .model_metadata(ModelMetadataRequest {
            name: "fraud".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.platform, "onnxruntime_onnx");
    assert_eq!(meta.inputs[0].name, "features");
    let answer = kserve
        .model_infer(ModelInferRequest {
            model_name: "fraud".into(),
            inputs: vec![InferInputTensor {
                name: "features".into(),
                datatype: "FP32".into(),
                shape: vec![1, 8],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![0.0; 8],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outputs[0].name, "probabilities");
    // Listed once, as the model.
    let index = kserve
        .repository_index(RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(
        index.iter().filter(|m| m.name == "fraud").count(),
        2,
        "fraud_logreg's two versions: {index:?}"
    );

    // Unloaded, the name is the pipeline's again.
    kserve
        .repository_model_unload(RepositoryModelUnloadRequest {
            model_name: "fraud".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let answer = kserve
        .model_infer(pipeline_request(&TXNS[..1]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.model_version, "1");
    assert_eq!(output(&answer, "score").1, [1, 1]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tritonclient_drives_a_pipeline_unchanged() {
    let (server, channel) = start().await;
    let txns = &TXNS[..2];
    let rows: Vec<serde_json::Value> = txns
        .iter()
        .map(|t| {
            serde_json::json!({
                "user_id": t.user.to_string(),
                "merchant_id": t.merchant,
                "amount": t.amount,
                "currency": t.currency,
                "device_type": t.device,
                "event_timestamp": EVENT_TIME_US,
            })
        })
        .collect();
    let seen = python_json(
        "triton_pipeline_check.py",
        vec![
            "--addr".into(),
            server.grpc_addr().to_string(),
            "--pipeline".into(),
            "fraud".into(),
            "--rows".into(),
            serde_json::Value::from(rows).to_string(),
        ],
    )
    .await;
    assert_eq!(seen["ready"], true);
    assert_eq!(seen["platform"], "ferrite_pipeline");
    assert_eq!(seen["versions"], serde_json::json!(["1"]));
    assert_eq!(seen["config"]["max_batch_size"], 256);
    assert_eq!(seen["config"]["platform"], "ferrite_pipeline");
    let inputs = seen["inputs"].as_array().unwrap();
    assert!(
        inputs.contains(&serde_json::json!(["user_id", "BYTES", [-1, 1]])),
        "{inputs:?}"
    );
    assert!(
        inputs.contains(&serde_json::json!(["amount", "FP64", [-1, 1]])),
        "{inputs:?}"
    );

    let typed = score_fraud(&channel, txns).await;
    for key in ["infer", "stream"] {
        let r = &seen[key];
        assert_eq!(r["score_shape"], serde_json::json!([2, 1]), "{key}: {r}");
        assert_eq!(r["fallback"], serde_json::json!([false, false]), "{key}: {r}");
        assert_eq!(r["model_version"], serde_json::json!(["1", "1"]), "{key}: {r}");
        for (i, want) in typed.iter().enumerate() {
            let got = r["score"][i].as_f64().unwrap();
            assert!(
                (got - want.score).abs() <= 1e-12,
                "{key} row {i}: {got} vs {}",
                want.score
            );
            assert_eq!(r["decision"][i], decision_name(want.decision), "{key} row {i}");
        }
    }
    assert_eq!(
        seen["missing_input"]["status"], "StatusCode.INVALID_ARGUMENT",
        "{}",
        seen["missing_input"]
    );
    assert!(
        seen["missing_input"]["message"]
            .as_str()
            .unwrap()
            .contains("\"currency\""),
        "{}",
        seen["missing_input"]
    );
    assert!(seen["inference_count"].as_u64().unwrap() >= 4, "{seen}");
    assert_eq!(seen["index_has_pipeline"], true);
    server.shutdown().await.unwrap();
}
