"""Trains the demand model `pricing_demand` (expected units sold per item-day at a candidate
price) on Ferrite's own point-in-time training set of the feature service pricing_v1
(features/pricing.toml), in numpy.

    .venv/bin/pip install -r scripts/requirements-models.txt -r scripts/requirements-data.txt
    cargo build -p ferrite
    .venv/bin/python scripts/train_pricing_model.py [--ferrite PATH]

1. `ferrite training-set` joins every row of features/data/item_demand.parquet (an item-day:
   its start, the price charged, the units sold) with pricing_v1 as of the day's start; the
   request field `price` is the file's column of that name. The model's input vector is the
   service's features in order as f32, as serving builds it.
2. An MLP whose output is a log rate (served with output = "exp"), trained with Poisson loss
   on the days before TRAIN_UNTIL; the standardisation is folded into the first layer.
3. Held-out (the days after it): mean Poisson deviance against a constant (the training mean)
   and against the item's own last 7 days (units_sold_7d / 7); and a price grid per item live
   at TRAIN_UNTIL (list price x 0.8 .. 1.2): how often predicted demand falls with price, and
   the fitted own-price elasticity per category next to the generator's.
4. Writes models/pricing_demand/{config.toml, 1/model.safetensors, 1/features.json} and the
   parity fixture crates/ferrite-pipelines/tests/data/pricing_parity{.json,_entities.parquet}.

Seeded, single-threaded BLAS: every run writes the same bytes.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one summation order, so every run writes the same bytes

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nn_numpy as nn  # noqa: E402
from make_example_models import save_safetensors  # noqa: E402
from make_sample_data import ELASTICITY, COMPETITOR_ELASTICITY, ITEM_CATEGORIES  # noqa: E402
from train_recs_models import floats, json_number, training_set  # noqa: E402
from training_common import default_ferrite, micros, service_features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVICE, MODEL = "pricing_v1", "pricing_demand"
TRAIN_UNTIL = "2026-09-16T00:00:00Z"
HIDDEN = [32, 16]
EPOCHS, BATCH, LR = 40, 256, 1e-3
SEED = 20260917
GRID = [0.8, 0.9, 1.0, 1.1, 1.2]  # candidate prices as multiples of the list price
PARITY_CUT = "2026-09-20T12:30:00Z"
PARITY_ITEMS = 20


def deviance(y, mu):
    """Mean Poisson deviance."""
    y, mu = np.asarray(y, np.float64), np.maximum(np.asarray(mu, np.float64), 1e-12)
    term = np.where(y > 0, y * np.log(np.maximum(y, 1e-12) / mu), 0.0)
    return float(2 * np.mean(term - (y - mu)))


def train(x, y, rng):
    mu, sd = nn.standardizer(x)
    z = (x - mu) / sd
    layers = nn.init_mlp(rng, [x.shape[1], *HIDDEN, 1])
    layers[-1] = (layers[-1][0] * 0.1, np.array([np.log(y.mean())]))
    opt = nn.Adam(nn.flat(layers), LR, weight_decay=1e-4)
    n = len(y)
    for epoch in range(EPOCHS):
        order = rng.permutation(n)
        total = 0.0
        for s in range(0, n, BATCH):
            b = order[s:s + BATCH]
            f, acts = nn.mlp_forward(layers, z[b])
            rate = np.exp(f[:, 0])
            total += (rate - y[b] * f[:, 0]).sum()
            grads = nn.mlp_backward(layers, acts, ((rate - y[b]) / len(b))[:, None])
            opt.step([a for wb in grads for a in wb])
        if epoch % 10 == 9:
            print(f"  epoch {epoch + 1}: Poisson loss {total / n:.4f}")
    w0, b0 = nn.fold_standardization(layers[0][0], layers[0][1], mu, sd)
    return nn.mlp_tensors([(w0, b0)] + layers[1:])


def predict(tensors, x):
    """The served model: the MLP in float32, then e^x."""
    return np.exp(nn.candle_mlp(tensors, x)[:, 0]).astype(np.float32)


def price_rows(items, prices, at_us):
    ts = np.full(len(items), at_us, np.int64).view("datetime64[us]")
    return pa.table({"item_id": pa.array(np.asarray(items, np.int64)),
                     "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                     "price": pa.array(np.asarray(prices, np.float64))})


def grid_at(args, names, items, at_us):
    """Each item's list price at the time, then the vectors at GRID x list price."""
    probe, _ = training_set(args.ferrite, args.features, price_rows(items, np.ones(len(items)), at_us), SERVICE, names)
    lp = probe.column("list_price").to_numpy(zero_copy_only=False).astype(np.float64)
    ok = np.isfinite(lp)
    items, lp = items[ok], lp[ok]
    prices = np.round(lp[:, None] * np.array(GRID)[None, :], 2)
    table, x = training_set(args.ferrite, args.features, price_rows(np.repeat(items, len(GRID)), prices.reshape(-1), at_us),
                            SERVICE, names)
    return items, prices, table, x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ferrite", type=Path, default=default_ferrite(), help="the ferrite binary")
    ap.add_argument("--features", type=Path, default=ROOT / "features", help="feature definitions")
    ap.add_argument("--no-parity", action="store_true", help="skip the parity fixture")
    args = ap.parse_args()
    names = service_features(args.features, SERVICE)
    assert "cost" in names and "list_price" in names

    demand = pq.read_table(args.features / "data/item_demand.parquet")
    table, x = training_set(args.ferrite, args.features, demand, SERVICE, names)
    assert np.isfinite(x).all(), "the pricing vectors must have no NaN"
    y = demand.column("units").to_numpy().astype(np.float64)
    t = demand.column("event_timestamp").cast(pa.int64()).to_numpy()
    tr, held = t < micros(TRAIN_UNTIL), t >= micros(TRAIN_UNTIL)
    print(f"item-days: {len(y)} ({tr.sum()} before {TRAIN_UNTIL}), {len(names)} features, mean units {y.mean():.3f}")

    tensors = train(x[tr].astype(np.float64), y[tr], np.random.default_rng(SEED))
    pred = predict(tensors, x[held])
    last7 = x[held, names.index("units_sold_7d")].astype(np.float64) / 7
    metrics = {
        "train_until": TRAIN_UNTIL, "train_rows": int(tr.sum()), "eval_rows": int(held.sum()),
        "deviance_model": deviance(y[held], pred),
        "deviance_constant": deviance(y[held], np.full(held.sum(), y[tr].mean())),
        "deviance_last_7d": deviance(y[held], np.maximum(last7, 0.05)),
    }
    metrics["deviance_explained_vs_constant"] = 1 - metrics["deviance_model"] / metrics["deviance_constant"]
    print(f"held-out mean Poisson deviance: model {metrics['deviance_model']:.4f}, constant "
          f"{metrics['deviance_constant']:.4f}, last 7 days {metrics['deviance_last_7d']:.4f} "
          f"({metrics['deviance_explained_vs_constant']:.1%} of the constant's explained)")

    # Price response at TRAIN_UNTIL for every item then on sale.
    items, prices, gt, gx = grid_at(args, names, np.unique(demand.column("item_id").to_numpy()), micros(TRAIN_UNTIL))
    units = predict(tensors, gx).reshape(len(items), len(GRID))
    falling = np.all(np.diff(units, axis=1) < 0, axis=1)
    fitted = -(np.log(units[:, 3]) - np.log(units[:, 1])) / (np.log(prices[:, 3]) - np.log(prices[:, 1]))
    cat = np.column_stack([gt.column(f"category_{c[0]}").to_numpy() for c in ITEM_CATEGORIES]).argmax(axis=1)
    cat = cat.reshape(len(items), len(GRID))[:, 0]
    per_cat = {}
    for k, (name, *_rest) in enumerate(ITEM_CATEGORIES):
        sel = cat == k
        per_cat[name] = {"items": int(sel.sum()), "fitted_median": float(np.median(fitted[sel])),
                         "generator": ELASTICITY[k] + COMPETITOR_ELASTICITY}
    metrics["price_grid"] = GRID
    metrics["items_on_grid"] = int(len(items))
    metrics["share_strictly_decreasing"] = float(falling.mean())
    metrics["elasticity_by_category"] = per_cat
    print(f"price grid x{GRID} of the list price at {TRAIN_UNTIL}, {len(items)} items: predicted demand falls "
          f"at every step for {falling.mean():.1%}; fitted elasticity (0.9 -> 1.1) median {np.median(fitted):.2f}")
    for name, v in per_cat.items():
        print(f"  {name:14} {v['items']:4} items  fitted {v['fitted_median']:.2f}  generator {v['generator']:.2f}")

    out_dir = ROOT / "models" / MODEL
    dims = [len(names), *HIDDEN, 1]
    (out_dir / "1").mkdir(parents=True, exist_ok=True)
    (out_dir / "config.toml").write_text(f"""\
# Demand model for dynamic pricing: expected units sold per item-day at a candidate price, from
# the {len(names)} features of the feature service {SERVICE} (features/pricing.toml; the request
# field `price` is the candidate), an MLP giving a log rate and output = "exp". Trained with
# Poisson loss by scripts/train_pricing_model.py; 1/features.json names the inputs in order.
backend = "candle"
max_batch_size = 1024
inputs = [{{ name = "features", dtype = "FP32", dims = [{len(names)}] }}]
outputs = [{{ name = "units", dtype = "FP32", dims = [1] }}]

[candle]
architecture = "mlp"
dims = [{", ".join(map(str, dims))}]
output = "exp"
""")
    save_safetensors(tensors, out_dir / "1/model.safetensors")
    baseline = x[tr].astype(np.float64).mean(axis=0)
    spec = {"feature_service": SERVICE, "features": names, "baseline": [json_number(v) for v in baseline],
            "output": "units", "metrics": metrics}
    (out_dir / "1/features.json").write_text(json.dumps(spec, indent=1) + "\n")
    print(f"wrote models/{MODEL} (dims {dims}, output exp)")

    if not args.no_parity:
        write_parity(args, names, tensors, items)


def write_parity(args, names, tensors, items):
    data = ROOT / "crates/ferrite-pipelines/tests/data"
    rng = np.random.default_rng(20260920)
    cut = micros(PARITY_CUT)
    pick = np.sort(rng.choice(items, PARITY_ITEMS, replace=False))
    got, prices, _, _ = grid_at(args, names, pick, cut)
    assert (got == pick).all(), "every parity item has a price at the cut"
    entities = price_rows(np.repeat(pick, len(GRID)), prices.reshape(-1), cut)
    path = data / "pricing_parity_entities.parquet"
    pq.write_table(entities, path, compression="zstd")
    table, x = training_set(args.ferrite, args.features, entities, SERVICE, names)
    units = predict(tensors, x)
    rows = [{"item_id": int(i), "price": float(p), "cost": float(c), "list_price": float(lp),
             "vector": floats(v), "units": float(u)}
            for i, p, c, lp, v, u in zip(entities.column("item_id").to_pylist(), entities.column("price").to_pylist(),
                                         table.column("cost").to_pylist(), table.column("list_price").to_pylist(), x, units)]
    fixture = {"cut_time_us": cut, "feature_service": SERVICE, "model": MODEL, "version": 1, "features": names,
               "price_grid": GRID, "rows": rows}
    out = data / "pricing_parity.json"
    out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)} and {path.name}: {PARITY_ITEMS} items x {len(GRID)} prices at {PARITY_CUT}")


if __name__ == "__main__":
    main()
