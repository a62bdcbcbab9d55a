//! The RPCs `ferrite bench` can drive. Each later capability adds its own.

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

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
        }
        Ok(Outcome::default())
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
