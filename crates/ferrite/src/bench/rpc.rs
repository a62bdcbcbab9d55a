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
                GrpcInferenceServiceClient::new(channel)
                    .model_infer(fraud_request(key))
                    .await?;
            }
        }
        Ok(Outcome::default())
    }
}

/// A batch-1 request for `fraud_logreg`: 8 features, varied by the key so that calls differ.
fn fraud_request(key: u64) -> ModelInferRequest {
    let features: Vec<f32> = (0..8)
        .map(|i| ((key.wrapping_mul(31).wrapping_add(i) % 97) as f32) / 97.0)
        .collect();
    ModelInferRequest {
        model_name: "fraud_logreg".into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![1, 8],
            ..Default::default()
        }],
        raw_input_contents: vec![features.iter().flat_map(|x| x.to_le_bytes()).collect()],
        ..Default::default()
    }
}
