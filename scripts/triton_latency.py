"""Sequential tritonclient ModelInfer calls against a running server, as a Python service
would make them; prints p50/p99 latency and calls/s. Bounded by --requests.

    .venv/bin/python scripts/triton_latency.py --addr 127.0.0.1:50051 --model fraud_gbdt --requests 5000
"""

import argparse
import time

import numpy as np
import tritonclient.grpc as grpcclient


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--model", default="fraud_gbdt")
    parser.add_argument("--input", default="X")
    parser.add_argument("--width", type=int, default=40)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args()

    client = grpcclient.InferenceServerClient(url=args.addr)
    rng = np.random.default_rng(1)
    inputs = []
    for _ in range(64):
        inp = grpcclient.InferInput(args.input, [1, args.width], "FP32")
        inp.set_data_from_numpy(rng.normal(size=(1, args.width)).astype(np.float32))
        inputs.append(inp)
    for i in range(args.warmup):
        client.infer(args.model, [inputs[i % 64]])
    latencies = []
    start = time.perf_counter()
    for i in range(args.requests):
        t0 = time.perf_counter()
        client.infer(args.model, [inputs[i % 64]])
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    print(
        f"tritonclient {args.model}: {args.requests} sequential calls, {args.requests / elapsed:.0f} calls/s, "
        f"p50={np.percentile(ms, 50):.3f} ms p99={np.percentile(ms, 99):.3f} ms"
    )


if __name__ == "__main__":
    main()
