"""Builds the small ONNX models that the ferrite-models tests run, and their expected outputs.

Deterministic: fixed seed, fixed opset. Writes crates/ferrite-models/tests/data/.
Run with the project virtualenv: .venv/bin/python scripts/make_test_models.py
"""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "crates/ferrite-models/tests/data"


def affine_sigmoid(rng: np.random.Generator) -> onnx.ModelProto:
    """y = sigmoid(x @ W + b) for x of shape [batch, 4] and W of shape [4, 2]."""
    w = rng.normal(size=(4, 2)).astype(np.float32)
    b = rng.normal(size=(2,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["y"]),
        ],
        "affine_sigmoid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def every_type() -> onnx.ModelProto:
    """One input and one output per element type Ferrite serves, two outputs computed:
    f64 -> x * 2, i64 -> x + 1, i32 -> identity, bool -> not, string -> identity."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["f64", "two"], ["f64_out"]),
            helper.make_node("Add", ["i64", "one"], ["i64_out"]),
            helper.make_node("Identity", ["i32"], ["i32_out"]),
            helper.make_node("Not", ["flag"], ["flag_out"]),
            helper.make_node("Identity", ["text"], ["text_out"]),
        ],
        "every_type",
        [
            helper.make_tensor_value_info("f64", TensorProto.DOUBLE, ["batch", 2]),
            helper.make_tensor_value_info("i64", TensorProto.INT64, ["batch", 2]),
            helper.make_tensor_value_info("i32", TensorProto.INT32, ["batch", 2]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["batch", 2]),
            helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("f64_out", TensorProto.DOUBLE, ["batch", 2]),
            helper.make_tensor_value_info("i64_out", TensorProto.INT64, ["batch", 2]),
            helper.make_tensor_value_info("i32_out", TensorProto.INT32, ["batch", 2]),
            helper.make_tensor_value_info("flag_out", TensorProto.BOOL, ["batch", 2]),
            helper.make_tensor_value_info("text_out", TensorProto.STRING, ["batch", 2]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([2.0], dtype=np.float64), "two"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def zipmap() -> onnx.ModelProto:
    """A classifier's tail as scikit-learn/LightGBM/XGBoost converters emit it with ZipMap:
    probabilities [batch, 2] -> label (argmax) and output_probability, a sequence of
    {class: probability} maps."""
    graph = helper.make_graph(
        [
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
            helper.make_node(
                "ZipMap", ["probabilities"], ["output_probability"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]
            ),
        ],
        "zipmap",
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_value_info(
                "output_probability",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
                ),
            ),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def positives() -> onnx.ModelProto:
    """Outputs whose shape depends on the input values: `where` lists the [row, column] of each
    positive element of x ([2, count], NonZero), `doubled` is x * 2."""
    graph = helper.make_graph(
        [
            helper.make_node("Greater", ["x", "zero"], ["positive"]),
            helper.make_node("NonZero", ["positive"], ["where"]),
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
        ],
        "positives",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("where", TensorProto.INT64, [2, "count"]),
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["batch", 4]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array([2.0], dtype=np.float32), "two"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def fraud_canary_nan(width: int = 130, amount_column: int = 59, nan_above: float = 900_000.0) -> onnx.ModelProto:
    """A stand-in fraud model version that fails on some inputs, for the experiments tests: the
    fraud pipeline's input and outputs (`features` [batch, 130] -> `label`, `probabilities`
    [batch, 2]); the score is sigmoid(amount_eur / 1000 - 3), and NaN (an error the pipeline
    must never serve) when amount_eur (column 59) is above `nan_above`."""
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["features", "column"], ["amount"], axis=1),
            helper.make_node("Mul", ["amount", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "shift"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["p_ok"]),
            # sqrt(nan_above - amount) * 0 is 0, or NaN where amount > nan_above.
            helper.make_node("Sub", ["limit", "amount"], ["room"]),
            helper.make_node("Sqrt", ["room"], ["root"]),
            helper.make_node("Mul", ["root", "zero"], ["poison"]),
            helper.make_node("Add", ["p_ok", "poison"], ["p"]),
            helper.make_node("Sub", ["one", "p"], ["q"]),
            helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
            helper.make_node("Greater", ["p", "half"], ["above"]),
            helper.make_node("Cast", ["above"], ["label2d"], to=TensorProto.INT64),
            helper.make_node("Squeeze", ["label2d", "axis1"], ["label"]),
        ],
        "fraud_canary_nan",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([amount_column], dtype=np.int64), "column"),
            numpy_helper.from_array(np.array([0.001], dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array([-3.0], dtype=np.float32), "shift"),
            numpy_helper.from_array(np.array([nan_above], dtype=np.float32), "limit"),
            numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
            numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261126)
    model = affine_sigmoid(rng)
    path = OUT / "affine_sigmoid.onnx"
    onnx.save(model, path)

    x = rng.normal(size=(3, 4)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(["y"], {"x": x})
    expected = {"x": x.tolist(), "y": y.tolist(), "onnxruntime": ort.__version__}
    (OUT / "affine_sigmoid.expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    onnx.save(every_type(), OUT / "every_type.onnx")
    onnx.save(zipmap(), OUT / "zipmap.onnx")
    onnx.save(positives(), OUT / "positives.onnx")
    print(f"wrote {path} and its expected outputs (onnxruntime {ort.__version__})")
    server_data = OUT.parent.parent.parent / "ferrite-server/tests/data"
    canary = fraud_canary_nan()
    onnx.save(canary, server_data / "fraud_canary_nan.onnx")
    session = ort.InferenceSession(str(server_data / "fraud_canary_nan.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 130), dtype=np.float32)
    x[0, 59], x[1, 59] = 42.5, 950_000.0
    _, probabilities = session.run(None, {"features": x})
    assert np.isfinite(probabilities[0]).all() and np.isnan(probabilities[1]).all(), probabilities
    print(f"wrote {server_data / 'fraud_canary_nan.onnx'}")


if __name__ == "__main__":
    main()
