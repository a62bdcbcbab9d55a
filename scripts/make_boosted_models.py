"""Trains LightGBM and XGBoost fraud classifiers and exports them to ONNX with onnxmltools, as
teams that train with those libraries export them.

Both learn the same seeded synthetic data as scripts/make_fraud_gbdt.py (40 transaction
features), 150 trees each, single-threaded and seeded so that every run writes the same bytes:

  models/fraud_lightgbm/1/model.onnx  LightGBM, exported with ZipMap (the converter's default):
                                       probabilities are a {class: probability} map per row
  models/fraud_xgboost/1/model.onnx   XGBoost, plain tensor outputs

and the test fixture crates/ferrite-models/tests/data/fraud_boosted.expected.json: probe
inputs, the labels and probabilities Python onnxruntime gives for them, and the probabilities
of the libraries' own predict_proba. The tests use the committed files; this script is only
needed to re-make them:

    .venv/bin/pip install -r scripts/requirements-models.txt
    .venv/bin/python scripts/make_boosted_models.py
"""

import hashlib
import json
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxruntime as ort
import xgboost
from make_fraud_gbdt import FEATURES, data
from onnxmltools import convert_lightgbm, convert_xgboost
from onnxmltools.convert.common.data_types import FloatTensorType

ROOT = Path(__file__).resolve().parent.parent
TREES = 150
# onnxmltools 1.16 converts these libraries up to opset 15.
OPSET = 15


def tidy(model):
    """Two fixes to what onnxmltools writes. It declares LightGBM's label output as shape [1]
    when it is [batch] (ONNX Runtime then warns on every run of more than one row). And it
    lists the opsets in set order, which changes from run to run; sorted, the bytes do not."""
    for output in model.graph.output:
        if output.type.HasField("tensor_type"):
            dim = output.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = "N"
    opsets = sorted(model.opset_import, key=lambda o: o.domain)
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


def export(model, name, convert, **options):
    inputs = [("features", FloatTensorType([None, FEATURES]))]
    # A fixed graph name: onnxmltools otherwise names the graph with a random UUID.
    onx = tidy(convert(model, name=name, initial_types=inputs, target_opset=OPSET, **options))
    onnx.checker.check_model(onx)
    path = ROOT / "models" / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onx, path)
    return path


def run_onnx(path, probe):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"features": probe})
    if isinstance(probabilities, list):  # ZipMap: a {class: probability} map per row
        probabilities = [[row[c] for c in sorted(row)] for row in probabilities]
    signature = [(v.name, v.type, v.shape) for v in session.get_inputs() + session.get_outputs()]
    return np.asarray(label), np.asarray(probabilities, dtype=np.float64), signature


def main():
    x, y = data(np.random.default_rng(20261126), 20_000)
    models = {
        "fraud_lightgbm": (
            lightgbm.LGBMClassifier(
                n_estimators=TREES,
                num_leaves=8,
                learning_rate=0.05,
                random_state=0,
                n_jobs=1,
                deterministic=True,
                force_row_wise=True,
                verbose=-1,
            ),
            convert_lightgbm,
            {"zipmap": True},
        ),
        "fraud_xgboost": (
            xgboost.XGBClassifier(
                n_estimators=TREES,
                max_depth=3,
                learning_rate=0.1,
                random_state=0,
                n_jobs=1,
                tree_method="hist",
            ),
            convert_xgboost,
            {},
        ),
    }
    probe = data(np.random.default_rng(12), 8)[0]
    expected = {
        "features": probe.tolist(),
        "versions": {
            "lightgbm": lightgbm.__version__,
            "xgboost": xgboost.__version__,
            "onnxruntime": ort.__version__,
        },
    }
    for name, (model, convert, options) in models.items():
        model.fit(x, y)
        path = export(model, name, convert, **options)
        label, probabilities, signature = run_onnx(path, probe)
        native = model.predict_proba(probe).astype(np.float64)
        gap = float(np.abs(probabilities - native).max())
        assert gap <= 1e-5, f"{name}: onnxruntime and {type(model).__name__} differ by {gap}"
        assert (label == native.argmax(axis=1)).all(), f"{name}: labels differ"
        expected[name] = {
            "label": label.tolist(),
            "onnxruntime": probabilities.tolist(),
            "native": native.tolist(),
        }
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes, sha256 {digest}…)")
        print(f"  signature {signature}; max |onnxruntime - native| = {gap:.2e}")
    out = ROOT / "crates/ferrite-models/tests/data/fraud_boosted.expected.json"
    out.write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
