//! The RPCs `ferrite bench` can drive. Each later capability adds its own.

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use ferrite_proto::ferrite::v1::feature_service_client::FeatureServiceClient;
use ferrite_proto::ferrite::v1::{
    FeatureList, GetOnlineFeaturesRequest, Value, ValueList, get_online_features_request, value,
};
use ferrite_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use ferrite_proto::inference::model_infer_request::InferInputTensor;
use ferrite_proto::inference::{ModelInferRequest, ServerLiveRequest};

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
            Rpc::Features => "features",
            Rpc::Features100 => "features-100",
            Rpc::Features100Columnar => "features-100-columnar",
        }
    }

    /// One call. `key` is the entity id for RPCs that take one.
    pub async fn call(self, channel: Channel, key: u64) -> Result<Outcome, tonic::Status> {
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
                let req = infer_request("fraud_logreg", "features", 8, key);
                GrpcInferenceServiceClient::new(channel).model_infer(req).await?;
            }
            Rpc::ModelInferGbdt => {
                let req = infer_request("fraud_gbdt", "X", 40, key);
                GrpcInferenceServiceClient::new(channel).model_infer(req).await?;
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

/// A batch-1 request of `width` FP32 features, varied by the key so that calls differ.
fn infer_request(model: &str, input: &str, width: u64, key: u64) -> ModelInferRequest {
    let features: Vec<f32> = (0..width)
        .map(|i| ((key.wrapping_mul(31).wrapping_add(i) % 97) as f32) / 97.0)
        .collect();
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: input.into(),
            datatype: "FP32".into(),
            shape: vec![1, width as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![features.iter().flat_map(|x| x.to_le_bytes()).collect()],
        ..Default::default()
    }
}
