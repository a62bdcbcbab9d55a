//! The RPCs `ferrite bench` can drive. Each later capability adds its own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, mpsc, oneshot};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use ferrite_proto::ferrite::v1::feature_service_client::FeatureServiceClient;
use ferrite_proto::ferrite::v1::{
    FeatureList, GetOnlineFeaturesRequest, Value, ValueList, get_online_features_request, value,
};
use ferrite_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferrite_proto::inference::model_infer_request::InferInputTensor;
use ferrite_proto::inference::{ModelInferRequest, ModelStreamInferResponse, ServerLiveRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rpc {
    /// grpc.health.v1.Health/Check: the empty-RPC floor every result is reported beside.
    Health,
    /// inference.GRPCInferenceService/ServerLive.
    ServerLive,
    /// inference.GRPCInferenceService/ModelInfer on the example `fraud_logreg` model, batch 1,
    /// raw little-endian input (as tritonclient sends it), features derived from the key.
    ModelInfer,
    /// ModelInfer on the example `fraud_gbdt` (200 trees, 40 features), batch 1, raw input.
    ModelInferGbdt,
    /// The same requests on ModelStreamInfer: one bidirectional stream per connection that
    /// all callers pipeline their requests on (as tritonclient's streaming API does), each
    /// caller with one request in flight.
    ModelStreamInferGbdt,
    /// ferrite.v1.FeatureService/GetOnlineFeatures: 1 user × 30 features (`user_stats:*` and
    /// `user_profile:*`), user id 1,000,000 + key (the sample data's ids).
    Features,
    /// GetOnlineFeatures: 100 users (ids from 1,000,000 + key) × the same 30 features.
    #[value(name = "features-100")]
    Features100,
    /// The same 100 × 30 call answered feature-major (`columnar`: packed arrays).
    #[value(name = "features-100-columnar")]
    Features100Columnar,
}

/// What the load generator reads from an answer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub fallback: bool,
}

impl Rpc {
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Health => "health",
            Rpc::ServerLive => "server-live",
            Rpc::ModelInfer => "model-infer",
            Rpc::ModelInferGbdt => "model-infer-gbdt",
            Rpc::ModelStreamInferGbdt => "model-stream-infer-gbdt",
            Rpc::Features => "features",
            Rpc::Features100 => "features-100",
            Rpc::Features100Columnar => "features-100-columnar",
        }
    }

    /// For the model RPCs: the example model they call, its input's name and its width.
    pub fn model_input(self) -> Option<(&'static str, &'static str, usize)> {
        match self {
            Rpc::ModelInfer => Some(("fraud_logreg", "features", 8)),
            Rpc::ModelInferGbdt | Rpc::ModelStreamInferGbdt => Some(("fraud_gbdt", "X", 40)),
            _ => None,
        }
    }

    /// One call. `key` is the entity id for RPCs that take one.
    pub async fn call(self, target: &Target, key: u64) -> Result<Outcome, tonic::Status> {
        let channel = target.channel.clone();
        let model = |default: &'static str| target.model.as_deref().unwrap_or(default);
        match self {
            Rpc::Health => {
                HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
            }
            Rpc::ServerLive => {
                GrpcInferenceServiceClient::new(channel)
                    .server_live(ServerLiveRequest {})
                    .await?;
            }
            Rpc::ModelInfer => {
                let req = infer_request(model("fraud_logreg"), "features", 8, key, target.batch);
                GrpcInferenceServiceClient::new(channel).model_infer(req).await?;
            }
            Rpc::ModelInferGbdt => {
                let req = infer_request(model("fraud_gbdt"), "X", 40, key, target.batch);
                GrpcInferenceServiceClient::new(channel).model_infer(req).await?;
            }
            Rpc::ModelStreamInferGbdt => {
                let req = infer_request(model("fraud_gbdt"), "X", 40, key, target.batch);
                let stream = target
                    .stream
                    .get_or_try_init(|| InferStream::open(channel))
                    .await?;
                stream.call(req).await?;
            }
            Rpc::Features => {
                FeatureServiceClient::new(channel)
                    .get_online_features(features_request(key, 1, false))
                    .await?;
            }
            Rpc::Features100 => {
                FeatureServiceClient::new(channel)
                    .get_online_features(features_request(key, 100, false))
                    .await?;
            }
            Rpc::Features100Columnar => {
                FeatureServiceClient::new(channel)
                    .get_online_features(features_request(key, 100, true))
                    .await?;
            }
        }
        Ok(Outcome::default())
    }
}

/// 30 user features for `n` users with consecutive ids from 1,000,000 + key.
fn features_request(key: u64, n: u64, columnar: bool) -> GetOnlineFeaturesRequest {
    let ids = (0..n)
        .map(|i| Value {
            kind: Some(value::Kind::IntValue(1_000_000 + (key + i) as i64)),
        })
        .collect();
    GetOnlineFeaturesRequest {
        selection: Some(get_online_features_request::Selection::Features(FeatureList {
            features: vec!["user_stats:*".into(), "user_profile:*".into()],
        })),
        entities: [("user_id".to_string(), ValueList { values: ids })].into(),
        request_context: Default::default(),
        columnar,
    }
}

/// `width` FP32 features in [0, 1), varied by the key so that calls differ.
pub fn features(width: u64, key: u64) -> Vec<f32> {
    (0..width)
        .map(|i| ((key.wrapping_mul(31).wrapping_add(i) % 97) as f32) / 97.0)
        .collect()
}

/// The rows of one request: `batch` rows of `width` FP32 features, varied by the key so that
/// calls differ (the same rows `--with-raw` gives the model).
pub fn rows(width: u64, key: u64, batch: usize) -> Vec<f32> {
    (0..batch as u64)
        .flat_map(|r| features(width, key.wrapping_mul(64).wrapping_add(r)))
        .collect()
}

/// A request of `batch` rows of `width` FP32 features, raw little-endian input.
fn infer_request(model: &str, input: &str, width: u64, key: u64, batch: usize) -> ModelInferRequest {
    let features = rows(width, key, batch);
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape: vec![batch as i64, width as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![features.iter().flat_map(|x| x.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// Where calls go: one HTTP/2 connection, the model to call (for the model RPCs, instead of
/// the RPC's default) and the rows per model request, and the connection's inference stream
/// once a streaming RPC opened it.
pub struct Target {
    channel: Channel,
    model: Option<String>,
    batch: usize,
    stream: OnceCell<InferStream>,
}

impl Target {
    pub fn new(channel: Channel, model: Option<String>, batch: usize) -> Self {
        Target {
            channel,
            model,
            batch,
            stream: OnceCell::new(),
        }
    }
}

type StreamAnswer = Result<ModelStreamInferResponse, tonic::Status>;

/// A ModelStreamInfer stream shared by many callers. The server answers a stream's requests
/// in order, so each answer goes to the oldest caller still waiting.
struct InferStream {
    /// Requests and their callers, queued under one lock so both orders agree.
    sender: Mutex<(mpsc::UnboundedSender<ModelInferRequest>, Arc<Mutex<Waiting>>)>,
}

type Waiting = VecDeque<oneshot::Sender<StreamAnswer>>;

impl InferStream {
    async fn open(channel: Channel) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut answers = GrpcInferenceServiceClient::new(channel)
            .model_stream_infer(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        let waiting: Arc<Mutex<Waiting>> = Arc::default();
        let readers = waiting.clone();
        tokio::spawn(async move {
            let failure = loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        let caller = readers.lock().expect("stream callers").pop_front();
                        if let Some(caller) = caller {
                            let _ = caller.send(Ok(answer));
                        }
                    }
                    Ok(None) => break tonic::Status::unavailable("the server ended the stream"),
                    Err(status) => break status,
                }
            };
            for caller in readers.lock().expect("stream callers").drain(..) {
                let _ = caller.send(Err(failure.clone()));
            }
        });
        Ok(InferStream {
            sender: Mutex::new((tx, waiting)),
        })
    }

    async fn call(&self, req: ModelInferRequest) -> Result<(), tonic::Status> {
        let (reply, answer) = oneshot::channel();
        {
            let sender = self.sender.lock().expect("stream sender");
            sender.1.lock().expect("stream callers").push_back(reply);
            sender
                .0
                .send(req)
                .map_err(|_| tonic::Status::unavailable("the stream is closed"))?;
        }
        let answer = answer
            .await
            .map_err(|_| tonic::Status::unavailable("the stream closed before the answer"))??;
        if answer.error_message.is_empty() {
            Ok(())
        } else {
            Err(tonic::Status::unknown(answer.error_message))
        }
    }
}
