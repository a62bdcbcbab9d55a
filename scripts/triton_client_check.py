"""Drives Ferrite's KServe v2 endpoint with NVIDIA's own tritonclient, unchanged.

Checks server and model readiness, metadata, config, the repository index, inference with
raw tensors on each version, a bad request, and unload/load through the repository
extension. Prints one JSON object with what it saw; the Rust test asserts on it.

    .venv/bin/python scripts/triton_client_check.py --addr 127.0.0.1:50051 \
        --expected crates/ferrite-server/tests/data/fraud_logreg.expected.json
"""

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MODEL = "fraud_logreg"


def infer(client, features, version=""):
    inp = grpcclient.InferInput("features", list(features.shape), "FP32")
    inp.set_data_from_numpy(features)
    out = grpcclient.InferRequestedOutput("probabilities")
    result = client.infer(MODEL, [inp], model_version=version, outputs=[out])
    return result.as_numpy("probabilities"), result.get_response().model_version


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--expected", required=True)
    args = parser.parse_args()
    expected = json.load(open(args.expected))
    features = np.array(expected["features"], dtype=np.float32)

    client = grpcclient.InferenceServerClient(url=args.addr)
    seen = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(MODEL),
        "missing_model_ready": client.is_model_ready("no_such_model"),
        "server_name": client.get_server_metadata().name,
    }
    meta = client.get_model_metadata(MODEL)
    seen["versions"] = list(meta.versions)
    seen["inputs"] = [[t.name, t.datatype, list(t.shape)] for t in meta.inputs]
    config = client.get_model_config(MODEL).config
    seen["config"] = {"max_batch_size": config.max_batch_size, "platform": config.platform}
    seen["index"] = sorted([m.name, m.version, m.state] for m in client.get_model_repository_index().models)

    errors = {}
    for version in ("1", "2", "", "canary"):
        probabilities, ran = infer(client, features, version)
        key = f"version_{ran}"
        errors[version or "default"] = {
            "ran": ran,
            "max_abs_error": float(np.max(np.abs(probabilities - np.array(expected[key], dtype=np.float32)))),
            "shape": list(probabilities.shape),
        }
    seen["infer"] = errors

    try:
        infer(client, np.zeros((2, 5), dtype=np.float32))
        seen["bad_shape"] = "accepted"
    except InferenceServerException as e:
        seen["bad_shape"] = {"status": e.status(), "message": e.message()}

    client.unload_model(MODEL)
    seen["ready_after_unload"] = client.is_model_ready(MODEL)
    client.load_model(MODEL)
    seen["ready_after_load"] = client.is_model_ready(MODEL)

    print(json.dumps(seen, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
