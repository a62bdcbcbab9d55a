"""Talks to a running Ferrite server the way a client without our proto files would.

Uses server reflection (grpcio-reflection) to list every service and method, calls
inference.GRPCInferenceService/ServerLive with message types found by reflection alone,
and asks the standard health service. Prints one JSON object.

    .venv/bin/python scripts/grpc_probe.py --addr 127.0.0.1:50051
"""

import argparse
import json
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True, help="host:port of the Ferrite gRPC server")
    args = parser.parse_args()

    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=10)

    reflection_db = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(reflection_db)
    services = {}
    for name in reflection_db.get_services():
        service = pool.FindServiceByName(name)
        services[name] = [m.name for m in service.methods]

    # Call an RPC knowing only its name: types come from reflection.
    method = pool.FindServiceByName("inference.GRPCInferenceService").methods_by_name["ServerLive"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/inference.GRPCInferenceService/ServerLive",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    live = call(request_cls(), timeout=5)

    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)

    print(
        json.dumps(
            {
                "services": services,
                "server_live": live.live,
                "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
            },
            sort_keys=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
