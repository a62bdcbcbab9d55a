"""Drives a Ferrite scoring pipeline as a KServe v2 model with NVIDIA's tritonclient, unchanged.

Reads the pipeline's readiness, metadata and config, builds every input from the metadata
alone (datatype and shape [-1, 1]: one value per row), infers the given rows with a plain
call and on a stream, sends a request that leaves out an input, and reads the statistics.
Prints one JSON object with what it saw; the Rust test asserts on it.

    .venv/bin/python scripts/triton_pipeline_check.py --addr 127.0.0.1:50051 --pipeline fraud \
        --rows '[{"user_id": "1000042", "merchant_id": "2000007", "amount": 42.5,
                  "currency": "EUR", "device_type": "ios", "event_timestamp": 1790000000000000}]'
"""

import argparse
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

NUMPY = {"BYTES": np.object_, "FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}


def inputs_for(meta, rows, leave_out=None):
    inputs = []
    for t in meta.inputs:
        if t.name == leave_out:
            continue
        column = [row[t.name] for row in rows]
        if t.datatype == "BYTES":
            column = [str(v).encode() for v in column]
        array = np.array(column, dtype=NUMPY[t.datatype]).reshape(len(rows), 1)
        tensor = grpcclient.InferInput(t.name, list(array.shape), t.datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def answer(result):
    score = result.as_numpy("score")
    return {
        "score": score.reshape(-1).tolist(),
        "score_shape": list(score.shape),
        "decision": [d.decode() for d in result.as_numpy("decision").reshape(-1)],
        "fallback": result.as_numpy("fallback").reshape(-1).tolist(),
        "model_version": [v.decode() for v in result.as_numpy("model_version").reshape(-1)],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--pipeline", default="fraud")
    parser.add_argument("--rows", required=True, help="JSON list of rows: input name -> value")
    args = parser.parse_args()
    rows = json.loads(args.rows)
    name = args.pipeline

    client = grpcclient.InferenceServerClient(url=args.addr)
    seen = {"ready": client.is_model_ready(name)}
    meta = client.get_model_metadata(name)
    seen["platform"] = meta.platform
    seen["versions"] = list(meta.versions)
    seen["inputs"] = [[t.name, t.datatype, list(t.shape)] for t in meta.inputs]
    seen["outputs"] = [[t.name, t.datatype, list(t.shape)] for t in meta.outputs]
    config = client.get_model_config(name).config
    seen["config"] = {"max_batch_size": config.max_batch_size, "platform": config.platform}

    outputs = [grpcclient.InferRequestedOutput(t.name) for t in meta.outputs]
    seen["infer"] = answer(client.infer(name, inputs_for(meta, rows), outputs=outputs))

    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(name, inputs_for(meta, rows), outputs=outputs)
    result, error = results.get(timeout=30)
    client.stop_stream()
    seen["stream"] = {"error": str(error)} if error else answer(result)

    try:
        client.infer(name, inputs_for(meta, rows, leave_out="currency"))
        seen["missing_input"] = "accepted"
    except InferenceServerException as e:
        seen["missing_input"] = {"status": e.status(), "message": e.message()}

    stats = client.get_inference_statistics(name).model_stats
    seen["inference_count"] = stats[0].inference_count if stats else None
    seen["index_has_pipeline"] = any(
        m.name == name and m.state == "READY" for m in client.get_model_repository_index().models
    )

    print(json.dumps(seen, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
