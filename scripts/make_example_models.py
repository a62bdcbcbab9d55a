"""Builds the example models in models/ and the expected outputs the tests compare against.

fraud_logreg: a logistic-regression fraud scorer over 8 transaction features, trained with
NumPy on seeded synthetic data and exported as an ONNX graph. Version 1 and version 2 differ
in their training (version 2 saw more data); config.toml labels them stable and canary.

ranker_wide_deep: a candle Wide & Deep ranker, weights in safetensors. The same weights are
also written as a PyTorch checkpoint (crates/ferrite-models/tests/data/ranker_wide_deep.pth)
for the test that loads candle weights from .pth.

Deterministic (fixed seeds). Run with the project virtualenv:
    .venv/bin/python scripts/make_example_models.py
"""

import collections
import json
import pickle
import zipfile
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


class _PickleWriter:
    """Just the pickle opcodes (protocol 2) that torch.save uses for a state_dict."""

    def __init__(self):
        self.out = bytearray(pickle.PROTO + bytes([2]))

    def op(self, code, payload=b""):
        self.out += code + payload
        return self

    def global_(self, module, name):
        return self.op(pickle.GLOBAL, f"{module}\n{name}\n".encode())

    def text(self, s):
        data = s.encode()
        return self.op(pickle.BINUNICODE, len(data).to_bytes(4, "little") + data)

    def int(self, n):
        assert 0 <= n < 2**31
        if n < 256:
            return self.op(pickle.BININT1, bytes([n]))
        if n < 65536:
            return self.op(pickle.BININT2, n.to_bytes(2, "little"))
        return self.op(pickle.BININT, n.to_bytes(4, "little"))

    def int_tuple(self, values):
        self.op(pickle.MARK)
        for v in values:
            self.int(v)
        return self.op(pickle.TUPLE)

    def ordered_dict(self):
        return self.global_("collections", "OrderedDict").op(pickle.EMPTY_TUPLE).op(pickle.REDUCE)


def save_pth(tensors, path, archive="archive"):
    """A PyTorch checkpoint as `torch.save(model.state_dict(), path)` writes it, without torch:
    a zip archive (entries stored, data aligned to 64 bytes) holding `archive/data.pkl`, a
    pickle of an OrderedDict whose tensors are `torch._utils._rebuild_tensor_v2(storage, 0,
    size, stride, False, OrderedDict())` with each storage a persistent id `("storage",
    torch.FloatStorage, key, "cpu", numel)` naming `archive/data/<key>`; `archive/byteorder`
    and `archive/version` as torch writes them. The state dict's `_metadata` attribute comes
    last, set by BUILD, as for a module's state_dict."""
    w = _PickleWriter().ordered_dict().op(pickle.MARK)
    storages = []
    for key, (name, array) in enumerate(tensors.items()):
        array = np.ascontiguousarray(array, dtype="<f4")
        strides = [s // array.itemsize for s in array.strides]
        w.text(name).global_("torch._utils", "_rebuild_tensor_v2").op(pickle.MARK)
        w.op(pickle.MARK).text("storage").global_("torch", "FloatStorage").text(str(key)).text("cpu")
        w.int(array.size).op(pickle.TUPLE).op(pickle.BINPERSID)
        w.int(0).int_tuple(array.shape).int_tuple(strides).op(pickle.NEWFALSE)
        w.ordered_dict().op(pickle.TUPLE).op(pickle.REDUCE)
        storages.append((f"{archive}/data/{key}", array.tobytes()))
    w.op(pickle.SETITEMS)
    w.op(pickle.EMPTY_DICT).text("_metadata").ordered_dict().text("").op(pickle.EMPTY_DICT)
    w.text("version").int(1).op(pickle.SETITEM).op(pickle.SETITEM).op(pickle.SETITEM)
    w.op(pickle.BUILD).op(pickle.STOP)

    records = [(f"{archive}/data.pkl", bytes(w.out)), (f"{archive}/byteorder", b"little")]
    records += storages + [(f"{archive}/version", b"3\n")]
    write_archive(path, records)
    check_pth(path, tensors)


def write_archive(path, records):
    """Entries stored (not compressed) with fixed dates, in the given order: the same bytes on
    every run. Each entry's data starts on a multiple of 64 bytes, padded in the local header's
    extra field ("FB"), as torch does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            start = z.fp.tell() + 30 + len(name.encode()) + 4
            pad = -start % 64
            info.extra = b"FB" + pad.to_bytes(2, "little") + b"Z" * pad
            z.writestr(info, data)


def save_malformed_pth(path):
    """A checkpoint whose tensor is rebuilt from two arguments instead of six: a file Ferrite
    must refuse with an error, not crash on."""
    w = _PickleWriter().ordered_dict().op(pickle.MARK)
    w.text("layers.0.weight").global_("torch._utils", "_rebuild_tensor_v2").op(pickle.MARK)
    w.op(pickle.MARK).text("storage").global_("torch", "FloatStorage").text("0").text("cpu")
    w.int(1).op(pickle.TUPLE).op(pickle.BINPERSID).int(0).op(pickle.TUPLE).op(pickle.REDUCE)
    w.op(pickle.SETITEMS).op(pickle.STOP)
    write_archive(path, [("archive/data.pkl", bytes(w.out)), ("archive/data/0", bytes(4))])


def check_pth(path, tensors):
    """Reads the checkpoint back with Python's own unpickler (torch's classes stood in for)
    and checks every tensor, so the file is a valid pickle and not only what Rust accepts."""

    class Storage:
        pass

    def rebuild(storage, offset, size, stride, requires_grad, hooks):
        data = np.frombuffer(storage, dtype="<f4")
        assert offset == 0 and list(stride) == [s // 4 for s in np.empty(size, "<f4").strides]
        return data.reshape(size)

    stand_ins = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild,
        ("torch", "FloatStorage"): Storage,
    }

    with zipfile.ZipFile(path) as z:

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                return stand_ins[(module, name)]

            def persistent_load(self, pid):
                kind, storage_type, key, location, numel = pid
                assert (kind, storage_type, location) == ("storage", Storage, "cpu")
                data = z.read(f"archive/data/{key}")
                assert len(data) == 4 * numel
                return data

        for info in z.infolist():
            assert (info.header_offset + 30 + len(info.filename) + len(info.extra)) % 64 == 0
        loaded = Unpickler(z.open("archive/data.pkl")).load()
    assert list(loaded) == list(tensors), list(loaded)
    for name, array in tensors.items():
        assert np.array_equal(loaded[name], array), name


def wide_deep_forward(weights, dims, x):
    h = x
    for i in range(len(dims) - 1):
        h = h @ weights[f"deep.layers.{i}.weight"].T + weights[f"deep.layers.{i}.bias"]
        if i < len(dims) - 2:
            h = np.maximum(h, 0)
    logits = h + x @ weights["wide.weight"].T + weights["wide.bias"]
    return 1 / (1 + np.exp(-logits.astype(np.float64)))


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
    y = wide_deep_forward(weights, dims, x)
    out = ROOT / "crates/ferrite-server/tests/data/ranker_wide_deep.expected.json"
    out.write_text(json.dumps({"features": x.tolist(), "scores": y.tolist()}, indent=1) + "\n")
    print(f"wrote {model_dir} (version 1) and {out.relative_to(ROOT)}")

    data = ROOT / "crates/ferrite-models/tests/data"
    save_pth(weights, data / "ranker_wide_deep.pth")
    save_malformed_pth(data / "malformed.pth")
    x = np.random.default_rng(5).normal(size=(6, 16)).astype(np.float32)
    y = wide_deep_forward(weights, dims, x)
    out = data / "ranker_wide_deep.expected.json"
    out.write_text(json.dumps({"features": x.tolist(), "scores": y.tolist()}, indent=1) + "\n")
    print(f"wrote {(data / 'ranker_wide_deep.pth').relative_to(ROOT)} (the same weights) and {out.relative_to(ROOT)}")


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
