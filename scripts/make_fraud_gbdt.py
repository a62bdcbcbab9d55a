"""Trains the fraud GBDT example model and exports it to ONNX twice: plain (probabilities as a
tensor) and with ZipMap (a {class: probability} map per row), as scikit-learn users export it.

200 trees of depth 3 over 40 transaction features, trained on seeded synthetic data. Writes
models/fraud_gbdt/1/model.onnx, models/fraud_gbdt_zipmap/1/model.onnx, the same plain file
as models/fraud_gbdt_batched/1/model.onnx (served with dynamic batching), and the expected
scores (scikit-learn's own predict_proba and Python onnxruntime's) for the tests.

    .venv/bin/pip install -r scripts/requirements-models.txt
    .venv/bin/python scripts/make_fraud_gbdt.py
"""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 40


def data(rng, n):
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    logit = -3.0 + x[:, :8] @ np.linspace(1.2, 0.3, 8) + 0.8 * np.sin(x[:, 8] * x[:, 9]) + 0.5 * (x[:, 10] > 1.5)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return x, y


def main():
    rng = np.random.default_rng(20261126)
    x, y = data(rng, 20_000)
    model = GradientBoostingClassifier(n_estimators=200, max_depth=3, learning_rate=0.1, random_state=0)
    model.fit(x, y)

    probe = data(np.random.default_rng(11), 6)[0]
    expected = {"features": probe.tolist(), "sklearn": model.predict_proba(probe).tolist()}
    for name, zipmap in [("fraud_gbdt", False), ("fraud_gbdt_zipmap", True)]:
        onx = to_onnx(model, x[:1], options={"zipmap": zipmap}, target_opset={"": 15, "ai.onnx.ml": 3})
        path = ROOT / "models" / name / "1" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(onx, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: probe})
        probabilities = outputs[1]
        if zipmap:
            probabilities = [[row[c] for c in sorted(row)] for row in probabilities]
        expected[name] = np.asarray(probabilities, dtype=np.float64).tolist()
        print(f"wrote {path.relative_to(ROOT)}: inputs {[i.name for i in session.get_inputs()]}, outputs {[o.name for o in session.get_outputs()]}")
    batched = ROOT / "models" / "fraud_gbdt_batched" / "1" / "model.onnx"
    batched.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "models" / "fraud_gbdt" / "1" / "model.onnx", batched)
    print(f"wrote {batched.relative_to(ROOT)}")
    out = ROOT / "crates/ferrite-server/tests/data/fraud_gbdt.expected.json"
    out.write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
