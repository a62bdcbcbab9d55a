"""Builds the example models in models/ and the expected outputs the tests compare against.

fraud_logreg: a logistic-regression fraud scorer over 8 transaction features, trained with
NumPy on seeded synthetic data and exported as an ONNX graph. Version 1 and version 2 differ
in their training (version 2 saw more data); config.toml labels them stable and canary.

Deterministic (fixed seeds). Run with the project virtualenv:
    .venv/bin/python scripts/make_example_models.py
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 8


def synthetic_transactions(rng, n):
    """Features: amount z-score, amount / user's 30-day mean, account age (years), foreign card,
    night-time, transactions in the last hour, merchant fraud rate, new device."""
    x = np.column_stack(
        [
            rng.normal(0, 1, n),
            rng.lognormal(0, 0.6, n),
            rng.exponential(2.0, n),
            rng.random(n) < 0.1,
            rng.random(n) < 0.2,
            rng.poisson(1.0, n),
            rng.beta(1, 60, n),
            rng.random(n) < 0.05,
        ]
    ).astype(np.float32)
    logit = -4.0 + 0.8 * x[:, 0] + 0.9 * x[:, 1] - 0.4 * x[:, 2] + 1.5 * x[:, 3] + 0.7 * x[:, 4]
    logit += 0.5 * x[:, 5] + 25.0 * x[:, 6] + 2.0 * x[:, 7]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return x, y


def train(x, y, steps=400, lr=0.5):
    w = np.zeros(FEATURES, dtype=np.float64)
    b = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        w -= lr * (x.T @ (p - y) / len(y) + 1e-3 * w)
        b -= lr * float(np.mean(p - y))
    return w.astype(np.float32), np.float32(b)


def export(w, b, path):
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["p_fraud"]),
            helper.make_node("Sub", ["one", "p_fraud"], ["p_legit"]),
            helper.make_node("Concat", ["p_legit", "p_fraud"], ["probabilities"], axis=1),
        ],
        "fraud_logreg",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            numpy_helper.from_array(w.reshape(FEATURES, 1), "W"),
            numpy_helper.from_array(np.array([b], dtype=np.float32), "b"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def save_safetensors(tensors, path):
    """The safetensors format, written directly: an 8-byte little-endian header length, a JSON
    header (dtype, shape, byte offsets per tensor), then the raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs))


def ranker_wide_deep():
    """A Wide & Deep click ranker for recommendations: 16 user x item features, deep widths
    16 -> 32 -> 16 -> 1, a wide linear 16 -> 1, summed, sigmoid. Weights are seeded, not
    trained: the example shows serving, and the reference output below is computed with NumPy
    from the same weights."""
    rng = np.random.default_rng(42)
    dims = [16, 32, 16, 1]
    weights = {"wide.weight": rng.normal(0, 0.2, (1, 16)), "wide.bias": rng.normal(0, 0.1, (1,))}
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        weights[f"deep.layers.{i}.weight"] = rng.normal(0, 1 / np.sqrt(a), (b, a))
        weights[f"deep.layers.{i}.bias"] = rng.normal(0, 0.1, (b,))
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    model_dir = ROOT / "models/ranker_wide_deep"
    save_safetensors(weights, model_dir / "1/model.safetensors")

    x = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
    h = x
    for i in range(len(dims) - 1):
        h = h @ weights[f"deep.layers.{i}.weight"].T + weights[f"deep.layers.{i}.bias"]
        if i < len(dims) - 2:
            h = np.maximum(h, 0)
    logits = h + x @ weights["wide.weight"].T + weights["wide.bias"]
    y = 1 / (1 + np.exp(-logits.astype(np.float64)))
    out = ROOT / "crates/ferrite-server/tests/data/ranker_wide_deep.expected.json"
    out.write_text(json.dumps({"features": x.tolist(), "scores": y.tolist()}, indent=1) + "\n")
    print(f"wrote {model_dir} (version 1) and {out.relative_to(ROOT)}")


def main():
    model_dir = ROOT / "models/fraud_logreg"
    rng = np.random.default_rng(20261126)
    x, y = synthetic_transactions(rng, 40_000)
    for version, n in [(1, 10_000), (2, 40_000)]:
        w, b = train(x[:n].astype(np.float64), y[:n])
        export(w, b, model_dir / str(version) / "model.onnx")

    probe = synthetic_transactions(np.random.default_rng(7), 5)[0]
    expected = {"features": probe.tolist(), "onnxruntime": ort.__version__}
    for version in (1, 2):
        session = ort.InferenceSession(str(model_dir / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
        expected[f"version_{version}"] = session.run(None, {"features": probe})[0].tolist()
    out = ROOT / "crates/ferrite-server/tests/data/fraud_logreg.expected.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {model_dir} (versions 1, 2) and {out.relative_to(ROOT)}")
    ranker_wide_deep()


if __name__ == "__main__":
    main()
