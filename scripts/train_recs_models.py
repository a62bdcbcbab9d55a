"""Trains the recommendation models `recs_user_tower`, `recs_item_tower` (a two-tower retrieval
model) and `recs_ranker` (a Wide & Deep click ranker) on Ferrite's own point-in-time training
sets of the feature services recs_user_v1 and recs_item_v1 (features/recs.toml), in numpy.

    .venv/bin/pip install -r scripts/requirements-models.txt -r scripts/requirements-data.txt
    cargo build -p ferrite
    .venv/bin/python scripts/train_recs_models.py [--ferrite PATH]

1. `ferrite training-set` joins every impression of features/data/impressions.parquet with
   recs_user_v1 (the user's taste as of the impression) and recs_item_v1 (the item as of then).
   A model's input vector is its service's features in order as f32, as serving builds it.
2. Time split: train on the impressions before TRAIN_UNTIL, evaluate on the weeks after it.
3. Two towers (MLPs with an L2-normalised 32-d output) trained jointly on the clicked
   (user, item) pairs: in-batch softmax over cosine / TEMPERATURE, with the log of each item's
   share of the clicks subtracted from its logits (the in-batch negatives are drawn by clicks,
   not uniformly) and a repeated item in a batch not counted as a negative.
4. The ranker (Wide & Deep, sigmoid) over user vector ++ item vector ++ [tower dot product],
   in two stages. (a) The click model: logistic loss on every training impression (label:
   clicked), i.e. P(click | shown). (b) The exposure correction: what is served, and evaluated,
   is "retrieve 200, order by the ranker", and whether a user clicks an item at all also depends
   on whether the logging policy shows it (40 % of slots by popularity). So the wide part (the
   deep part stays the click model) is fitted further with a listwise softmax loss on retrieval
   lists: at weekly cuts of the training weeks, for each user with a click in the following
   week, the towers' top-200 of the catalogue as of the cut (user and item vectors as of the
   cut), the positives being the items the user clicked that week. Its number of epochs is tuned
   on the last training week (towers, click model and lists refitted on the weeks before it);
   the held-out weeks are never looked at.
5. Held-out: recall@20 and NDCG@20 against the items each user clicked in the held-out weeks
   (nothing excluded), for popularity, two-tower retrieval, and retrieval of 200 re-ranked.
6. The input standardisation is folded into the first layers, so the served models take the
   raw vectors. Writes models/recs_{user_tower,item_tower,ranker}/{config.toml,
   1/model.safetensors, 1/features.json} and the parity fixture
   crates/ferrite-pipelines/tests/data/recs_parity{.json,_entities_users.parquet,
   _entities_items.parquet}.

Seeded, single-threaded BLAS: every run writes the same bytes.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one summation order, so every run writes the same bytes

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nn_numpy as nn  # noqa: E402
from make_example_models import save_safetensors  # noqa: E402
from training_common import default_ferrite, micros, service_features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
USER_SERVICE, ITEM_SERVICE = "recs_user_v1", "recs_item_v1"
USER_MODEL, ITEM_MODEL, RANKER = "recs_user_tower", "recs_item_tower", "recs_ranker"
TRAIN_UNTIL = "2026-09-16T00:00:00Z"  # the two weeks after it are held out
EMBED = 32
TOWER_HIDDEN = [64]
RANKER_HIDDEN = [64, 32]
TEMPERATURE = 0.05
TOWER_EPOCHS, TOWER_BATCH, TOWER_LR = 20, 256, 2e-3
RANKER_EPOCHS, RANKER_BATCH, RANKER_LR = 8, 512, 1e-3
K, RETRIEVE = 20, 200
# The exposure stage: retrieval lists at weekly cuts (label: clicked in the week after the cut).
LIST_START, LIST_STEP_DAYS, LIST_WINDOW_DAYS = "2026-08-05T00:00:00Z", 7, 7
LIST_LR, LIST_BATCH, LIST_EPOCHS_GRID = 3e-3, 64, (2, 4, 8)
VALID_FROM = "2026-09-09T00:00:00Z"  # tuning: the last training week validates
DAY_US = 86_400 * 1_000_000
SEED = 20260916
# Parity fixture: a cut time off every snapshot grid (user_taste at midnight, items weekly).
PARITY_CUT = "2026-09-20T12:30:00Z"
PARITY_USERS, PARITY_ITEMS = 20, 20
COLD_USERS = [1_999_999_998, 1_999_999_999]


def training_set(ferrite, features_dir, entities, service, names):
    """`ferrite training-set` over an entities table; returns it joined and the model matrix."""
    with tempfile.TemporaryDirectory() as tmp:
        ent, out = Path(tmp) / "entities.parquet", Path(tmp) / "out.parquet"
        pq.write_table(entities, ent)
        cmd = [str(ferrite), "training-set", "--features", str(features_dir), "--entities", str(ent),
               "--service", service, "--out", str(out), "--quiet"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        table = pq.read_table(out)
    got = [c for c in table.column_names if c not in entities.column_names]
    assert got == names, f"training-set columns differ from the definitions: {got} != {names}"
    for c in entities.column_names:
        assert table.column(c).equals(entities.column(c)), f"row order changed ({c})"
    return table, matrix(table, names)


def matrix(table, names):
    """The model's input: f32, bool as 1/0, null as NaN (as the serving side converts)."""
    cols = []
    for name in names:
        c = table.column(name)
        if pa.types.is_boolean(c.type):
            c = c.cast(pa.float64())
        cols.append(c.to_numpy(zero_copy_only=False).astype(np.float64))
    return np.column_stack(cols).astype(np.float32)


def entity_rows(key, ids, at_us):
    ts = np.full(len(ids), at_us, np.int64).view("datetime64[us]")
    return pa.table({key: pa.array(np.asarray(ids, np.int64)), "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC"))})


# ----------------------------------------------------------------------------------------------
# Two towers


def train_towers(xu, xi, items, rng):
    """In-batch softmax with the log-click-share correction; returns the float64 layers, with
    the standardisation (of the positives' vectors) still separate."""
    mu_u, sd_u = nn.standardizer(xu)
    mu_i, sd_i = nn.standardizer(xi)
    zu, zi = (xu - mu_u) / sd_u, (xi - mu_i) / sd_i
    user = nn.init_mlp(rng, [xu.shape[1], *TOWER_HIDDEN, EMBED])
    item = nn.init_mlp(rng, [xi.shape[1], *TOWER_HIDDEN, EMBED])
    _, inverse, counts = np.unique(items, return_inverse=True, return_counts=True)
    log_q = np.log(counts[inverse] / len(items))
    opt = nn.Adam(nn.flat(user) + nn.flat(item), TOWER_LR, weight_decay=1e-4)
    n = len(items)
    for epoch in range(TOWER_EPOCHS):
        order = rng.permutation(n)
        total = 0.0
        for s in range(0, n - TOWER_BATCH + 1, TOWER_BATCH):
            b = order[s:s + TOWER_BATCH]
            hu, au = nn.mlp_forward(user, zu[b])
            hi, ai = nn.mlp_forward(item, zi[b])
            eu, nu = nn.l2_normalize(hu)
            ei, ni = nn.l2_normalize(hi)
            logits = eu @ ei.T / TEMPERATURE - log_q[b][None, :]
            same = items[b][:, None] == items[b][None, :]
            logits = np.where(same & ~np.eye(len(b), dtype=bool), -1e9, logits)
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            total += -np.log(np.diag(p) + 1e-30).sum()
            g = (p - np.eye(len(b))) / len(b) / TEMPERATURE
            gu = nn.l2_normalize_backward(eu, nu, g @ ei)
            gi = nn.l2_normalize_backward(ei, ni, g.T @ eu)
            grads = nn.mlp_backward(user, au, gu) + nn.mlp_backward(item, ai, gi)
            opt.step([a for wb in grads for a in wb])
        if epoch % 10 == 9 or epoch == TOWER_EPOCHS - 1:
            print(f"  towers epoch {epoch + 1}: in-batch loss {total / (n // TOWER_BATCH * TOWER_BATCH):.4f}")
    return (user, mu_u, sd_u), (item, mu_i, sd_i)


def export_mlp(tower):
    layers, mu, sd = tower
    w0, b0 = nn.fold_standardization(layers[0][0], layers[0][1], mu, sd)
    return nn.mlp_tensors([(w0, b0)] + layers[1:])


def embed(tensors, x):
    """The served tower: its MLP in float32, then each row divided by its L2 norm."""
    return nn.candle_l2_normalize(nn.candle_mlp(tensors, x))


# ----------------------------------------------------------------------------------------------
# Ranker


def train_ranker(x, y, rng):
    mu, sd = nn.standardizer(x)
    z = (x - mu) / sd
    deep = nn.init_mlp(rng, [x.shape[1], *RANKER_HIDDEN, 1])
    wide = [(np.zeros((1, x.shape[1])), np.array([math.log(y.mean() / (1 - y.mean()))]))]
    opt = nn.Adam(nn.flat(wide) + nn.flat(deep), RANKER_LR, weight_decay=1e-4)
    n = len(y)
    for epoch in range(RANKER_EPOCHS):
        order = rng.permutation(n)
        total = 0.0
        for s in range(0, n, RANKER_BATCH):
            b = order[s:s + RANKER_BATCH]
            hw, aw = nn.mlp_forward(wide, z[b])
            hd, ad = nn.mlp_forward(deep, z[b])
            logit = (hw + hd)[:, 0]
            p = nn.sigmoid(logit)
            total += -(y[b] * np.log(p + 1e-12) + (1 - y[b]) * np.log(1 - p + 1e-12)).sum()
            g = ((p - y[b]) / len(b))[:, None]
            grads = nn.mlp_backward(wide, aw, g) + nn.mlp_backward(deep, ad, g)
            opt.step([a for wb in grads for a in wb])
        print(f"  ranker epoch {epoch + 1}: log loss {total / n:.4f}")
    w, b = nn.fold_standardization(wide[0][0], wide[0][1], mu, sd)
    d0 = nn.fold_standardization(deep[0][0], deep[0][1], mu, sd)
    tensors = {"wide.weight": np.asarray(w, np.float32), "wide.bias": np.asarray(b, np.float32)}
    tensors.update(nn.mlp_tensors([d0] + deep[1:], "deep."))
    return tensors


def rank_scores(tensors, x):
    return nn.sigmoid(nn.candle_wide_deep(tensors, x)[:, 0]).astype(np.float32)


def catalogue(args, item_names, all_items, at_us):
    """The items active at a time, with their recs_item_v1 vectors as of then."""
    _, xi = training_set(args.ferrite, args.features, entity_rows("item_id", all_items, at_us), ITEM_SERVICE, item_names)
    active = np.isfinite(xi).all(axis=1) & (xi[:, item_names.index("is_active")] == 1)
    return all_items[active], xi[active]


def retrieval_lists(args, user_names, item_names, towers, log, cut, end):
    """For each user with a click in [cut, end): the ranker's inputs [users, RETRIEVE, 69] for the
    towers' top RETRIEVE of the catalogue as of cut, and whether the user clicked each in [cut, end)."""
    users, items, clicked, t = log
    cand, xi = catalogue(args, item_names, np.unique(items), cut)
    ei = embed(towers[1], xi)
    sel = (t >= cut) & (t < end) & clicked
    list_users = np.unique(users[sel])
    _, xu = training_set(args.ferrite, args.features, entity_rows("user_id", list_users, cut), USER_SERVICE, user_names)
    sims = embed(towers[0], xu) @ ei.T
    x, y = [], []
    for k, u in enumerate(list_users):
        top = np.lexsort((cand, -sims[k]))[:RETRIEVE]
        x.append(np.column_stack([np.repeat(xu[k:k + 1], len(top), axis=0), xi[top], sims[k, top][:, None]]))
        y.append(np.isin(cand[top], items[sel & (users == u)]))
    return np.stack(x).astype(np.float32), np.stack(y)


def list_cuts(until_us):
    """Weekly cuts from LIST_START whose label window ends by until_us."""
    cuts, c = [], micros(LIST_START)
    while c + LIST_WINDOW_DAYS * DAY_US <= until_us:
        cuts.append(c)
        c += LIST_STEP_DAYS * DAY_US
    return cuts


def training_lists(args, user_names, item_names, towers, log, until_us):
    got = [retrieval_lists(args, user_names, item_names, towers, log, c, c + LIST_WINDOW_DAYS * DAY_US)
           for c in list_cuts(until_us)]
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])


def fit_exposure(click_t, x, y, epochs, rng, checkpoint=None):
    """The exposure stage: the click model's wide part fitted further (its deep part fixed) with a
    listwise softmax loss over each retrieval list, the list's clicked items sharing the target.
    Starts from the click model; checkpoint(epoch, tensors) after each epoch."""
    n_lists, n_cand, width = x.shape
    flat_x = x.reshape(-1, width).astype(np.float64)
    mu, sd = nn.standardizer(flat_x)
    z = ((flat_x - mu) / sd).reshape(n_lists, n_cand, width)
    deep = nn.candle_mlp(click_t, x.reshape(-1, width), "deep.")[:, 0].reshape(n_lists, n_cand).astype(np.float64)
    w_raw = click_t["wide.weight"][0].astype(np.float64)
    w = w_raw * sd  # the same function of the standardised inputs
    b = np.array([float(click_t["wide.bias"][0]) + float(w_raw @ mu)])
    target = y / np.maximum(y.sum(axis=1, keepdims=True), 1)
    opt = nn.Adam([w, b], LIST_LR)

    def export():
        w2, b2 = w / sd, b[0] - (w / sd) @ mu
        out = dict(click_t)
        out["wide.weight"], out["wide.bias"] = w2[None, :].astype(np.float32), np.array([b2], np.float32)
        return out

    for epoch in range(epochs):
        order = rng.permutation(n_lists)
        total = 0.0
        for s in range(0, n_lists, LIST_BATCH):
            b_ = order[s:s + LIST_BATCH]
            logit = z[b_] @ w + b[0] + deep[b_]
            logit -= logit.max(axis=1, keepdims=True)
            p = np.exp(logit)
            p /= p.sum(axis=1, keepdims=True)
            total += -(target[b_] * np.log(p + 1e-30)).sum()
            g = (p - target[b_]) / len(b_)
            opt.step([np.einsum("uc,ucf->f", g, z[b_]), np.array([g.sum()])])
        print(f"  ranker exposure epoch {epoch + 1}: listwise loss {total / n_lists:.4f}")
        if checkpoint:
            checkpoint(epoch + 1, export())
    return export()


def list_metrics(ranker, x, y):
    """recall@K and NDCG@K of ordering each retrieval list by the ranker (positives: y, so recall
    among the retrieved), ties by list position."""
    logit = nn.candle_wide_deep(ranker, x.reshape(-1, x.shape[2]))[:, 0].reshape(y.shape)
    ranked, relevant = [], []
    for k in range(len(y)):
        if y[k].any():
            idx = np.arange(y.shape[1])
            ranked.append(idx[np.lexsort((idx, -logit[k]))])
            relevant.append(set(idx[y[k]].tolist()))
    return ranking_metrics(ranked, relevant)


def tune_exposure(args, user_names, item_names, xu, xi, items, clicked, t, log):
    """Refits the towers and the click model on the weeks before VALID_FROM and picks the exposure
    stage's epochs by NDCG@K of the retrieval lists of the week after it."""
    print(f"tuning on the week from {VALID_FROM} (everything refitted on the weeks before it):")
    rng = np.random.default_rng(SEED + 1)
    fit = t < micros(VALID_FROM)
    pos = fit & clicked
    ut, it = train_towers(xu[pos].astype(np.float64), xi[pos].astype(np.float64), items[pos], rng)
    towers = (export_mlp(ut), export_mlp(it))
    dot = (embed(towers[0], xu) * embed(towers[1], xi)).sum(axis=1, dtype=np.float32)
    xr = np.column_stack([xu, xi, dot]).astype(np.float32)
    click_t = train_ranker(xr[fit].astype(np.float64), clicked[fit].astype(np.float64), rng)
    x, y = training_lists(args, user_names, item_names, towers, log, micros(VALID_FROM))
    vx, vy = retrieval_lists(args, user_names, item_names, towers, log, micros(VALID_FROM),
                             micros(VALID_FROM) + LIST_WINDOW_DAYS * DAY_US)
    base = list_metrics(click_t, vx, vy)
    hit = vy.any(axis=1)  # lists with a clicked item among the retrieved (so list_metrics' users)
    tt = ranking_metrics([np.arange(RETRIEVE)] * int(hit.sum()), [set(np.flatnonzero(r).tolist()) for r in vy[hit]])
    print(f"  validation ({int(hit.sum())} of {len(vy)} users with a click among the retrieved): two-tower order recall@20 {tt['recall@20']:.4f} NDCG@20 {tt['ndcg@20']:.4f}; "
          f"click model alone {base['recall@20']:.4f} / {base['ndcg@20']:.4f}")
    scores = {}

    def checkpoint(epoch, tensors):
        if epoch in LIST_EPOCHS_GRID:
            m = list_metrics(tensors, vx, vy)
            scores[epoch] = m
            print(f"  tune epochs {epoch}: validation recall@20 {m['recall@20']:.4f} NDCG@20 {m['ndcg@20']:.4f}")

    fit_exposure(click_t, x, y, max(LIST_EPOCHS_GRID), rng, checkpoint)
    best = max(LIST_EPOCHS_GRID, key=lambda e: (scores[e]["ndcg@20"], -e))
    return best, {"two_tower": tt, "click_model": base, "epochs": {str(e): scores[e] for e in LIST_EPOCHS_GRID},
                  "chosen_epochs": best}


# ----------------------------------------------------------------------------------------------
# Evaluation


def ranking_metrics(ranked, relevant):
    """Mean recall@K and NDCG@K (binary gains) over users; ranked: per user, item ids best first."""
    recall, ndcg = [], []
    discount = 1 / np.log2(np.arange(2, K + 2))
    for top, rel in zip(ranked, relevant):
        hits = np.isin(top[:K], list(rel))
        recall.append(hits.sum() / len(rel))
        ndcg.append((hits * discount[:len(hits)]).sum() / discount[:min(len(rel), K)].sum())
    return {"recall@20": float(np.mean(recall)), "ndcg@20": float(np.mean(ndcg))}


def evaluate(args, user_names, item_names, towers, ranker, imp, train, held):
    """Users with a held-out click; their taste and the catalogue as of TRAIN_UNTIL."""
    cut = micros(TRAIN_UNTIL)
    users = imp.column("user_id").to_numpy()
    items = imp.column("item_id").to_numpy()
    clicked = imp.column("clicked").to_numpy(zero_copy_only=False)
    purchased = imp.column("purchased").to_numpy(zero_copy_only=False)
    all_items = np.unique(items)
    _, xi = training_set(args.ferrite, args.features, entity_rows("item_id", all_items, cut), ITEM_SERVICE, item_names)
    active = np.isfinite(xi).all(axis=1) & (xi[:, item_names.index("is_active")] == 1)
    cand, xi = all_items[active], xi[active]
    ei = embed(towers[1], xi)

    pop_counts = np.zeros(len(cand))
    pos = np.searchsorted(cand, items[train & clicked])
    ok = (pos < len(cand)) & (cand[np.minimum(pos, len(cand) - 1)] == items[train & clicked])
    np.add.at(pop_counts, pos[ok], 1)
    pop_rank = cand[np.lexsort((cand, -pop_counts))]

    out = {}
    for label, target in (("clicked", clicked), ("purchased", purchased)):
        sel = held & target
        eval_users = np.unique(users[sel])
        relevant = [set(items[sel & (users == u)].tolist()) for u in eval_users]
        _, xu = training_set(args.ferrite, args.features, entity_rows("user_id", eval_users, cut), USER_SERVICE, user_names)
        eu = embed(towers[0], xu)
        sims = eu @ ei.T
        tt = [cand[np.lexsort((cand, -s))] for s in sims]
        rr = []
        for k in range(len(eval_users)):
            top = np.lexsort((cand, -sims[k]))[:RETRIEVE]
            x = np.column_stack([np.repeat(xu[k:k + 1], len(top), axis=0), xi[top], sims[k, top][:, None]])
            s = rank_scores(ranker, x)
            rr.append(cand[top][np.lexsort((cand[top], -s))])
        out[label] = {
            "users": int(len(eval_users)),
            "popularity": ranking_metrics([pop_rank] * len(eval_users), relevant),
            "two_tower": ranking_metrics(tt, relevant),
            "two_tower_then_ranker": ranking_metrics(rr, relevant),
        }
    out["candidates"] = int(len(cand))
    return out


# ----------------------------------------------------------------------------------------------
# Files


def write_config(out_dir, comment, arch, dims, output, out_name):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.toml").write_text(f"""\
{comment}
backend = "candle"
max_batch_size = 1024
inputs = [{{ name = "features", dtype = "FP32", dims = [{dims[0]}] }}]
outputs = [{{ name = "{out_name}", dtype = "FP32", dims = [{dims[-1]}] }}]

[candle]
architecture = "{arch}"
dims = [{", ".join(map(str, dims))}]
output = "{output}"
""")


def json_number(x):
    return None if math.isnan(x) else float(x)


def write_spec(out_dir, service, names, x, extra):
    baseline = x.astype(np.float64).mean(axis=0)
    spec = {"feature_service": service, "features": names, "baseline": [json_number(v) for v in baseline], **extra}
    (out_dir / "1" / "features.json").write_text(json.dumps(spec, indent=1) + "\n")


def floats(a):
    return [float(v) for v in np.asarray(a, np.float32).tolist()]


def write_parity(args, user_names, item_names, user_t, item_t, ranker_t, imp, held):
    data = ROOT / "crates/ferrite-pipelines/tests/data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20260920)
    cut = micros(PARITY_CUT)
    users = imp.column("user_id").to_numpy()
    items = imp.column("item_id").to_numpy()
    clicked = imp.column("clicked").to_numpy(zero_copy_only=False)
    known = np.unique(users[held & clicked])
    pick_u = np.r_[np.sort(rng.choice(known, PARITY_USERS - len(COLD_USERS), replace=False)), COLD_USERS]
    all_items = np.unique(items)
    _, xi_all = training_set(args.ferrite, args.features, entity_rows("item_id", all_items, cut), ITEM_SERVICE, item_names)
    active = all_items[np.isfinite(xi_all).all(axis=1) & (xi_all[:, item_names.index("is_active")] == 1)]
    pick_i = np.sort(rng.choice(active, PARITY_ITEMS, replace=False))
    ue, ie = entity_rows("user_id", pick_u, cut), entity_rows("item_id", pick_i, cut)
    pq.write_table(ue, data / "recs_parity_entities_users.parquet", compression="zstd")
    pq.write_table(ie, data / "recs_parity_entities_items.parquet", compression="zstd")
    _, xu = training_set(args.ferrite, args.features, ue, USER_SERVICE, user_names)
    _, xi = training_set(args.ferrite, args.features, ie, ITEM_SERVICE, item_names)
    assert np.isfinite(xu).all() and np.isfinite(xi).all()
    eu, ei = embed(user_t, xu), embed(item_t, xi)
    pairs = []
    for k in range(len(pick_u)):
        for j in (k % len(pick_i), (k + 7) % len(pick_i)):
            dot = np.float32((eu[k] * ei[j]).sum(dtype=np.float32))
            x = np.r_[xu[k], xi[j], dot].astype(np.float32)
            score = rank_scores(ranker_t, x[None, :])[0]
            pairs.append({"user_id": int(pick_u[k]), "item_id": int(pick_i[j]), "retrieval_score": float(dot),
                          "vector": floats(x), "score": float(score)})
    fixture = {
        "cut_time_us": cut,
        "user_service": USER_SERVICE, "item_service": ITEM_SERVICE,
        "user_model": USER_MODEL, "item_model": ITEM_MODEL, "ranker_model": RANKER, "version": 1,
        "user_features": user_names, "item_features": item_names,
        "cold_users": COLD_USERS,
        "users": [{"user_id": int(u), "vector": floats(xu[k]), "embedding": floats(eu[k])} for k, u in enumerate(pick_u)],
        "items": [{"item_id": int(i), "vector": floats(xi[k]), "embedding": floats(ei[k])} for k, i in enumerate(pick_i)],
        "pairs": pairs,
    }
    out = data / "recs_parity.json"
    out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)} and its entities: {len(pick_u)} users ({len(COLD_USERS)} unknown), "
          f"{len(pick_i)} items, {len(pairs)} ranked pairs at {PARITY_CUT}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ferrite", type=Path, default=default_ferrite(), help="the ferrite binary")
    ap.add_argument("--features", type=Path, default=ROOT / "features", help="feature definitions")
    ap.add_argument("--no-parity", action="store_true", help="skip the parity fixture")
    args = ap.parse_args()
    user_names = service_features(args.features, USER_SERVICE)
    item_names = service_features(args.features, ITEM_SERVICE)

    imp = pq.read_table(args.features / "data/impressions.parquet")
    keys = imp.select(["user_id", "item_id", "event_timestamp"])
    _, xu = training_set(args.ferrite, args.features, keys, USER_SERVICE, user_names)
    _, xi = training_set(args.ferrite, args.features, keys, ITEM_SERVICE, item_names)
    assert np.isfinite(xu).all() and np.isfinite(xi).all(), "the recs vectors must have no NaN"
    t = imp.column("event_timestamp").cast(pa.int64()).to_numpy()
    clicked = imp.column("clicked").to_numpy(zero_copy_only=False)
    items = imp.column("item_id").to_numpy()
    train, held = t < micros(TRAIN_UNTIL), t >= micros(TRAIN_UNTIL)
    pos = train & clicked
    print(f"impressions: {len(t)} ({train.sum()} before {TRAIN_UNTIL}); clicks {clicked.mean():.2%}; "
          f"{pos.sum()} training pairs; user vector {len(user_names)}, item vector {len(item_names)}")

    log = (imp.column("user_id").to_numpy(), items, clicked, t)
    epochs, tuning = tune_exposure(args, user_names, item_names, xu, xi, items, clicked, t, log)
    print(f"chosen: {epochs} epochs of the exposure stage")

    rng = np.random.default_rng(SEED)
    user_tower, item_tower = train_towers(xu[pos].astype(np.float64), xi[pos].astype(np.float64), items[pos], rng)
    user_t, item_t = export_mlp(user_tower), export_mlp(item_tower)
    dot = (embed(user_t, xu) * embed(item_t, xi)).sum(axis=1, dtype=np.float32)
    xr = np.column_stack([xu, xi, dot]).astype(np.float32)
    ranker_names = user_names + item_names + ["retrieval_score"]
    click_t = train_ranker(xr[train].astype(np.float64), clicked[train].astype(np.float64), rng)
    lx, ly = training_lists(args, user_names, item_names, (user_t, item_t), log, micros(TRAIN_UNTIL))
    print(f"exposure stage: {len(ly)} retrieval lists of {RETRIEVE} at {len(list_cuts(micros(TRAIN_UNTIL)))} weekly cuts, "
          f"{int(ly.sum())} clicked candidates")
    ranker_t = fit_exposure(click_t, lx, ly, epochs, rng)

    metrics = evaluate(args, user_names, item_names, (user_t, item_t), ranker_t, imp, train, held)
    y_held = clicked[held]
    metrics["impression_auc"] = {"ranker": float(roc_auc_score(y_held, rank_scores(ranker_t, xr[held]))),
                                 "click_model": float(roc_auc_score(y_held, rank_scores(click_t, xr[held]))),
                                 "retrieval_score": float(roc_auc_score(y_held, dot[held]))}
    print(f"held-out impressions ({held.sum()}): click ROC AUC of the ranker {metrics['impression_auc']['ranker']:.4f}, "
          f"of its click model stage {metrics['impression_auc']['click_model']:.4f}, "
          f"of the two-tower score alone {metrics['impression_auc']['retrieval_score']:.4f}")
    for label in ("clicked", "purchased"):
        m = metrics[label]
        print(f"held-out from {TRAIN_UNTIL}, against the items each user {label} ({m['users']} users, "
              f"{metrics['candidates']} candidates, nothing excluded):")
        for k in ("popularity", "two_tower", "two_tower_then_ranker"):
            print(f"  {k:24} recall@20 {m[k]['recall@20']:.4f}  NDCG@20 {m[k]['ndcg@20']:.4f}")
    c = metrics["clicked"]
    assert c["two_tower"]["recall@20"] > c["popularity"]["recall@20"], "two-tower does not beat popularity"
    summary = {"train_until": TRAIN_UNTIL, "train_rows": int(train.sum()), "train_pairs": int(pos.sum()),
               "eval": metrics}
    ranker_summary = {**summary, "ranker_lists": int(len(ly)), "ranker_tuning": {"valid_from": VALID_FROM, **tuning}}

    header = "# {what}\n# Made by scripts/train_recs_models.py; 1/features.json names the inputs in order."
    for name, service, names, x, tensors, dims, arch, output, out_name, what in (
        (USER_MODEL, USER_SERVICE, user_names, xu[train], user_t, [len(user_names), *TOWER_HIDDEN, EMBED], "mlp",
         "l2_normalize", "embedding",
         f"Two-tower retrieval, user side: the {len(user_names)} features of the feature service {USER_SERVICE}\n"
         f"# (features/recs.toml) to a unit {EMBED}-d embedding; cosine with recs_item_tower's embedding."),
        (ITEM_MODEL, ITEM_SERVICE, item_names, xi[train], item_t, [len(item_names), *TOWER_HIDDEN, EMBED], "mlp",
         "l2_normalize", "embedding",
         f"Two-tower retrieval, item side: the {len(item_names)} features of the feature service {ITEM_SERVICE}\n"
         f"# (features/recs.toml) to a unit {EMBED}-d embedding; cosine with recs_user_tower's embedding."),
        (RANKER, f"{USER_SERVICE}+{ITEM_SERVICE}", ranker_names, xr[train], ranker_t,
         [len(ranker_names), *RANKER_HIDDEN, 1], "wide_deep", "sigmoid", "score",
         f"Wide & Deep ranker (clicks given shown, then exposure) over {USER_SERVICE} ({len(user_names)}) ++ {ITEM_SERVICE} ({len(item_names)}) ++\n"
         f"# [retrieval_score: the dot product of the two towers' embeddings], {len(ranker_names)} inputs in that order."),
    ):
        out_dir = ROOT / "models" / name
        write_config(out_dir, header.format(what=what), arch, dims, output, out_name)
        save_safetensors(tensors, out_dir / "1/model.safetensors")
        extra = {"output": out_name, "metrics": ranker_summary if name == RANKER else summary}
        if name == RANKER:
            extra["feature_services"] = [USER_SERVICE, ITEM_SERVICE]
        write_spec(out_dir, service, names, x, extra)
        print(f"wrote models/{name} (dims {dims}, output {output})")

    if not args.no_parity:
        write_parity(args, user_names, item_names, user_t, item_t, ranker_t, imp, held)


if __name__ == "__main__":
    main()
