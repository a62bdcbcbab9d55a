"""Trains the fraud model `fraud_txn_gbdt` on Ferrite's own point-in-time training set of the
feature service fraud_v2 (features/fraud.toml), and exports it to ONNX.

    .venv/bin/pip install -r scripts/requirements-models.txt -r scripts/requirements-data.txt
    cargo build -p ferrite
    .venv/bin/python scripts/train_fraud_model.py [--ferrite PATH]

1. `ferrite training-set` joins every transaction of features/data/transactions.parquet with
   the service's features as of the transaction's time (the entity rows need no preparation:
   the request fields of txn_context are that file's columns).
2. The model's input vector is the service's features in the service's order, as f32
   (bool 1/0, null NaN), exactly as the serving side builds it.
3. Time split: train on the transactions before TRAIN_UNTIL (the last week of those picks one
   of a few settings), report ROC AUC and PR AUC on the weeks after it. LightGBM is
   single-threaded and seeded, so every run writes the same bytes.
4. Writes models/fraud_txn_gbdt/{config.toml, 1/model.onnx, 1/features.json} and the parity
   fixture crates/ferrite-pipelines/tests/data/fraud_parity{_entities.parquet,.json}: fixed
   rows at one cut time (cold-start users and merchants among them), their vectors from
   `ferrite training-set` and Python onnxruntime's scores.
"""

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import lightgbm
import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_boosted_models import OPSET, tidy  # noqa: E402
from training_common import default_ferrite, micros, service_features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "fraud_v2"
MODEL = "fraud_txn_gbdt"
ENTITY_COLUMNS = ["transaction_id", "user_id", "merchant_id", "amount", "currency", "device_type",
                  "event_timestamp", "is_fraud"]
TRAIN_UNTIL = "2026-09-12T00:00:00Z"
# Tuning: the last week before TRAIN_UNTIL validates; the held-out weeks are never looked at.
VALID_FROM = "2026-09-05T00:00:00Z"
# Parity fixture: a cut time off every snapshot grid (user snapshots are on the hour, merchant
# snapshots at midnight), so that "as of T" means the same for a training set and an online
# store materialized up to T.
PARITY_CUT = "2026-09-20T12:30:00Z"
PARITY_ROWS = 40
COLD_USER, COLD_MERCHANT = 1_999_999_999, 2_999_999_999
PARAMS = dict(n_estimators=400, objective="binary", random_state=7, n_jobs=1, deterministic=True,
              force_row_wise=True, subsample=0.8, subsample_freq=1, colsample_bytree=0.7, verbose=-1)
GRID = [  # (num_leaves, learning_rate, min_child_samples, scale_pos_weight)
    (15, 0.03, 40, 1.0),
    (31, 0.03, 40, 1.0),
    (15, 0.05, 20, 1.0),
    (15, 0.03, 40, 5.0),
    (7, 0.05, 40, 1.0),
]


def training_set(ferrite, entities, out, features_dir):
    cmd = [str(ferrite), "training-set", "--features", str(features_dir), "--entities", str(entities),
           "--service", SERVICE, "--out", str(out), "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return pq.read_table(out)


def matrix(table, names):
    """The model's input: f32, bool as 1/0, null as NaN (as the serving side converts)."""
    cols = []
    for name in names:
        c = table.column(name)
        if pa.types.is_boolean(c.type):
            c = c.cast(pa.float64())
        cols.append(c.to_numpy(zero_copy_only=False).astype(np.float64))
    return np.column_stack(cols).astype(np.float32)


def times(table):
    return table.column("event_timestamp").cast(pa.int64()).to_numpy()


def scores(model, x):
    return model.predict_proba(x)[:, 1]


def fit(params, x, y):
    num_leaves, lr, min_child, spw = params
    model = lightgbm.LGBMClassifier(num_leaves=num_leaves, learning_rate=lr, min_child_samples=min_child,
                                    scale_pos_weight=spw, **PARAMS)
    return model.fit(x, y)


def exact_thresholds(onx, booster):
    """LightGBM splits float32 inputs at double thresholds (x <= t); the ONNX tree ensemble
    stores them as float32, rounded to nearest, so a value equal to a threshold rounded up
    went the other way (up to 5e-3 on a probability here). The largest float32 <= t makes
    the float32 comparison the same as LightGBM's for every input."""
    trees = [t["tree_structure"] for t in booster.dump_model()["tree_info"]]
    node = next(n for n in onx.graph.node if n.op_type == "TreeEnsembleClassifier")
    a = {x.name: x for x in node.attribute}
    tree, ids, modes = a["nodes_treeids"].ints, a["nodes_nodeids"].ints, a["nodes_modes"].strings
    at = {(t, n): i for i, (t, n) in enumerate(zip(tree, ids))}
    values = list(a["nodes_values"].floats)

    def visit(k, nid, split):  # the ONNX tree and LightGBM's side by side
        i = at[(k, nid)]
        if modes[i] == b"LEAF":
            assert "split_feature" not in split
            return
        assert a["nodes_featureids"].ints[i] == split["split_feature"]
        t = split["threshold"]
        with np.errstate(over="ignore"):
            f = np.float32(t)
        values[i] = float(f if float(f) <= t else np.nextafter(f, np.float32(-np.inf)))
        visit(k, a["nodes_truenodeids"].ints[i], split["left_child"])
        visit(k, a["nodes_falsenodeids"].ints[i], split["right_child"])

    for k, root in enumerate(trees):
        visit(k, min(n for t, n in zip(tree, ids) if t == k), root)
    del a["nodes_values"].floats[:]
    a["nodes_values"].floats.extend(values)
    return onx


def export(model, n_features, out_dir, version=1):
    inputs = [("features", FloatTensorType([None, n_features]))]
    onx = tidy(convert_lightgbm(model, name=MODEL, initial_types=inputs, zipmap=False, target_opset=OPSET))
    onx = exact_thresholds(onx, model.booster_)
    onnx.checker.check_model(onx)
    path = out_dir / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onx, path)
    return path


def onnx_scores(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"features": x})
    outputs = [(o.name, o.type, o.shape) for o in session.get_outputs()]
    return np.asarray(probabilities, dtype=np.float64)[:, 1], outputs


def write_config(out_dir, n_features, trees):
    # Version 2, when there, is the challenger (--challenger) that experiments/ splits traffic with.
    labels = "{ stable = 1, challenger = 2 }" if (out_dir / "2" / "model.onnx").exists() else "{ stable = 1 }"
    (out_dir / "config.toml").write_text(f"""\
# LightGBM fraud model, {trees} trees over the {n_features} features of the feature service
# {SERVICE} (features/fraud.toml), in the service's order. Missing features are NaN, hence
# allow_non_finite. Made by scripts/train_fraud_model.py; 1/features.json names the inputs.
backend = "onnx"
max_batch_size = 4096
inputs = [{{ name = "features", dtype = "FP32", dims = [{n_features}] }}]
outputs = [{{ name = "label", dtype = "INT64", dims = [] }}, {{ name = "probabilities", dtype = "FP32", dims = [2] }}]
threads = 1
allow_non_finite = true
version_policy = "all"
labels = {labels}
""")


def json_number(x):
    return None if math.isnan(x) else float(x)


def parity_entities(table, rng):
    """PARITY_ROWS held-out transactions of distinct users (8 frauds among them), all moved to
    the cut time; the last 6 get a user or a merchant (or both) that no table knows."""
    users = table.column("user_id").to_numpy()
    fraud = table.column("is_fraud").to_numpy(zero_copy_only=False)
    late = times(table) >= micros(TRAIN_UNTIL)
    picked, seen = [], set()
    for want_fraud, count in ((True, 8), (False, PARITY_ROWS - 8)):
        taken = 0
        for i in rng.permutation(np.nonzero(late & (fraud == want_fraud))[0]):
            if taken < count and users[i] not in seen:
                picked.append(int(i))
                seen.add(users[i])
                taken += 1
    picked = [picked[i] for i in rng.permutation(len(picked))]
    rows = [{c: table.column(c)[i].as_py() for c in ENTITY_COLUMNS} for i in picked]
    for k, row in enumerate(rows[-6:]):
        row["transaction_id"] = 99_000_001 + k
        if k != 3 and k != 4:
            row["user_id"] = COLD_USER - k
        if k >= 3:
            row["merchant_id"] = COLD_MERCHANT - k
    schema = pa.schema([
        ("transaction_id", pa.int64()), ("user_id", pa.int64()), ("merchant_id", pa.int64()),
        ("amount", pa.float64()), ("currency", pa.string()), ("device_type", pa.string()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")), ("is_fraud", pa.bool_()),
    ])
    columns = {c: pa.array([r[c] for r in rows], schema.field(c).type) for c in schema.names}
    cut = np.full(len(rows), micros(PARITY_CUT), np.int64).view("datetime64[us]")
    columns["event_timestamp"] = pa.array(cut, schema.field("event_timestamp").type)
    return pa.table(columns, schema=schema)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ferrite", type=Path, default=default_ferrite(), help="the ferrite binary")
    ap.add_argument("--features", type=Path, default=ROOT / "features", help="feature definitions")
    ap.add_argument("--no-parity", action="store_true", help="skip the parity fixture")
    ap.add_argument("--challenger", action="store_true",
                    help="train the runner-up of the tuning grid as version 2 (the challenger the "
                         "example experiment splits traffic with); version 1 is left as it is")
    args = ap.parse_args()
    names = service_features(args.features, SERVICE)
    out_dir = ROOT / "models" / MODEL

    with tempfile.TemporaryDirectory() as tmp:
        table = training_set(args.ferrite, args.features / "data/transactions.parquet",
                             Path(tmp) / "fraud_train.parquet", args.features)
    got = [c for c in table.column_names if c not in ENTITY_COLUMNS]
    assert table.column_names[:len(ENTITY_COLUMNS)] == ENTITY_COLUMNS, table.column_names
    assert got == names, f"training-set columns differ from the definitions: {got} != {names}"
    x = matrix(table, names)
    y = table.column("is_fraud").to_numpy(zero_copy_only=False).astype(np.int64)
    t = times(table)
    train, held = t < micros(TRAIN_UNTIL), t >= micros(TRAIN_UNTIL)
    fit_part, valid = train & (t < micros(VALID_FROM)), train & (t >= micros(VALID_FROM))
    print(f"training set: {len(y)} rows x {len(names)} features; fraud rate {y.mean():.4f}")

    tuned = []
    for params in GRID:
        m = fit(params, x[fit_part], y[fit_part])
        p = scores(m, x[valid])
        ap_, auc = average_precision_score(y[valid], p), roc_auc_score(y[valid], p)
        print(f"  tune {params}: validation PR AUC {ap_:.4f}, ROC AUC {auc:.4f}")
        tuned.append((ap_, params))
    tuned.sort(key=lambda t: -t[0])
    version = 2 if args.challenger else 1
    params = tuned[version - 1][1]
    model = fit(params, x[train], y[train])
    p = scores(model, x[held])
    metrics = {
        "roc_auc": float(roc_auc_score(y[held], p)),
        "pr_auc": float(average_precision_score(y[held], p)),
        "base_rate": float(y[held].mean()),
        "train_rows": int(train.sum()),
        "eval_rows": int(held.sum()),
        "train_until": TRAIN_UNTIL,
    }
    print(f"chosen {params}; held-out from {TRAIN_UNTIL}: ROC AUC {metrics['roc_auc']:.4f}, "
          f"PR AUC {metrics['pr_auc']:.4f}, base rate {metrics['base_rate']:.4f} "
          f"({metrics['train_rows']} train rows, {metrics['eval_rows']} held-out rows)")
    gain = model.booster_.feature_importance("gain")
    top = np.argsort(-gain)[:15]
    print("top features by gain: " + ", ".join(f"{names[i]} {gain[i] / gain.sum():.1%}" for i in top))

    path = export(model, len(names), out_dir, version)
    trees = model.booster_.num_trees()
    write_config(out_dir, len(names), trees)
    onnx_p, outputs = onnx_scores(path, x[held])
    gap = float(np.abs(onnx_p - p).max())
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes), outputs {outputs}; "
          f"max |onnxruntime - lightgbm| on held-out rows {gap:.2e}")
    assert gap <= 1e-5, "the ONNX export does not reproduce LightGBM"

    with np.errstate(all="ignore"):
        baseline = np.nanmean(x[train].astype(np.float64), axis=0)
    spec = {
        "feature_service": SERVICE,
        "features": names,
        "baseline": [json_number(v) for v in baseline],
        "positive_output": "probabilities",
        "positive_index": 1,
        "metrics": metrics,
        "trees": trees,
    }
    (out_dir / str(version) / "features.json").write_text(json.dumps(spec, indent=1) + "\n")

    if not args.no_parity and not args.challenger:
        write_parity(args, names, table, path)


def write_parity(args, names, table, model_path):
    data = ROOT / "crates/ferrite-pipelines/tests/data"
    data.mkdir(parents=True, exist_ok=True)
    entities = parity_entities(table, np.random.default_rng(20260920))
    entities_path = data / "fraud_parity_entities.parquet"
    pq.write_table(entities, entities_path, compression="zstd")
    with tempfile.TemporaryDirectory() as tmp:
        joined = training_set(args.ferrite, entities_path, Path(tmp) / "parity.parquet", args.features)
    assert joined.column("transaction_id").to_pylist() == entities.column("transaction_id").to_pylist()
    x = matrix(joined, names)
    p, _ = onnx_scores(model_path, x)
    rows = []
    for i, r in enumerate(entities.drop_columns(["event_timestamp", "is_fraud"]).to_pylist()):
        rows.append({**r, "event_timestamp_us": micros(PARITY_CUT),
                     "vector": [json_number(v) for v in x[i].tolist()], "score": float(p[i])})
    fixture = {"cut_time_us": micros(PARITY_CUT), "feature_service": SERVICE, "model": MODEL, "version": 1,
               "features": names, "rows": rows}
    out = data / "fraud_parity.json"
    out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)} and {entities_path.name}: {len(rows)} rows at {PARITY_CUT}, "
          f"scores {min(p):.4f}..{max(p):.4f}")


if __name__ == "__main__":
    main()
