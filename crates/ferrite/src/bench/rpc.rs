//! The RPCs `ferrite bench` can drive. Each later capability adds its own.

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use ferrite_proto::inference::ServerLiveRequest;
use ferrite_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rpc {
    /// grpc.health.v1.Health/Check: the empty-RPC floor every result is reported beside.
    Health,
    /// inference.GRPCInferenceService/ServerLive.
    ServerLive,
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
        }
    }

    /// One call. `key` is the entity id for RPCs that take one.
    pub async fn call(self, channel: Channel, _key: u64) -> Result<Outcome, tonic::Status> {
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
        }
        Ok(Outcome::default())
    }
}
