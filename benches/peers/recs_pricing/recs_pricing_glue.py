"""The recommendations and pricing peer's scoring service: ferrite.v1.ScoringService/Recommend
and /Price in Python, the way a team without Ferrite would build them: Feast for the stored
features (Redis online store), the request-time features computed here, FAISS (IndexFlatIP)
for retrieval, and the four small dense models run in this process in numpy float32.

    python recs_pricing_glue.py --port 50072 --feast-repo /tmp/feast-recs-pricing

It follows the same definitions as Ferrite: pipelines/recommendations.toml and
pipelines/pricing.toml give the feature services, models and business rules; features/*.toml
give each service's vector order and the request views' expressions (evaluated with
benches/peers/fraud/ferrite_defs.Expr); models/<name>/config.toml and <version>/model.safetensors
give the networks (forward passes of scripts/nn_numpy.py, which are the candle backend's).
The catalogue (item ids of the item service's first stored view, their item-tower embeddings
in a FAISS index, category, popularity, availability) is built at start and rebuilt on the
pipeline's `refresh_s` timer, as Ferrite does. No latency budget and no fallback for an outage
(a failure is an error); see README.md for the rest of what is left out.
Stubs are generated from proto/ with grpcio-tools at start; nothing generated is committed.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
import threading
import time
import tomllib
from concurrent import futures
from pathlib import Path

# One thread per call for FAISS and BLAS: calls run in parallel on the gRPC server's threads
# (as Ferrite runs its models single-threaded per call), not each on every core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE.parent / "fraud"))
sys.path.insert(0, str(ROOT / "scripts"))

import ferrite_defs  # noqa: E402  (benches/peers/fraud)
import nn_numpy  # noqa: E402  (scripts/)

# Items read from the store per read while building the catalogue (Ferrite's CHUNK).
CHUNK = 512


def generate_stubs(proto_root: Path) -> Path:
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="ferrite-peer-stubs-"))
    protos = ["ferrite/v1/common.proto", "ferrite/v1/features.proto", "ferrite/v1/scoring.proto"]
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", *protos])
    if code != 0:
        raise SystemExit(f"protoc failed on {proto_root}")
    sys.path.insert(0, str(out))
    return out


class BadRequest(Exception):
    """The caller's mistake: answered INVALID_ARGUMENT."""


class Unavailable(Exception):
    """No answer can be computed: answered UNAVAILABLE."""


# ---------------------------------------------------------------- models


class DenseModel:
    """A candle model of models/ (mlp or wide_deep, then its output activation) in numpy
    float32, with the forward passes of scripts/nn_numpy.py."""

    def __init__(self, models: Path, name: str, version: str):
        from safetensors.numpy import load_file

        config = tomllib.loads((models / name / "config.toml").read_text())
        candle = config.get("candle", {})
        self.name, self.version = name, str(version)
        self.architecture = candle.get("architecture", "mlp")
        self.output = candle.get("output", "none")
        self.width = int(config["inputs"][0]["dims"][0])
        self.tensors = load_file(str(models / name / self.version / "model.safetensors"))
        if self.architecture not in ("mlp", "wide_deep"):
            raise SystemExit(f"model {name}: architecture {self.architecture!r} is not run by the peer")
        if self.output not in ("none", "sigmoid", "exp", "l2_normalize"):
            raise SystemExit(f"model {name}: output {self.output!r} is not run by the peer")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"model {self.name}: expected [n, {self.width}], got {list(x.shape)}")
        if self.architecture == "wide_deep":
            y = nn_numpy.candle_wide_deep(self.tensors, x)
        else:
            y = nn_numpy.candle_mlp(self.tensors, x)
        with np.errstate(over="ignore", invalid="ignore"):
            if self.output == "sigmoid":
                y = nn_numpy.sigmoid(y).astype(np.float32)
            elif self.output == "exp":
                y = np.exp(y).astype(np.float32)
            elif self.output == "l2_normalize":
                y = nn_numpy.candle_l2_normalize(y)
        return y


# ---------------------------------------------------------------- features


class Service:
    """One Ferrite feature service read through Feast: its stored features from the online
    store (one get_online_features call for all rows), its request-time features evaluated
    here, the float32 vectors in the service's order."""

    def __init__(self, store, reg: ferrite_defs.Registry, name: str):
        self.name = name
        self.order = reg.service(name)
        self.width = len(self.order)
        self.feast_service = store.get_feature_service(name)
        self.store = store
        exprs = {(v, f.name): f.expr for v, rv in reg.request_views.items() for f in rv.features}
        keys = {k for v, _ in self.order if v in reg.views for k in reg.join_keys(reg.views[v])}
        for v, f in self.order:
            if v in reg.request_views:
                for inp in exprs[(v, f)].inputs:
                    if isinstance(inp, tuple):
                        keys.update(reg.join_keys(reg.views[inp[0]]))
        if len(keys) != 1:
            raise SystemExit(f"feature service {name!r}: expected one join key, got {sorted(keys)}")
        self.join_key = keys.pop()
        # Per column: a stored feature, an expression of stored features only (computed once
        # per entity), or an expression reading request fields (computed per request row).
        self.columns = []
        for j, key in enumerate(self.order):
            expr = exprs.get(key)
            if expr is None:
                self.columns.append((j, "stored", key))
            elif any(isinstance(i, str) for i in expr.inputs):
                self.columns.append((j, "request", expr))
            else:
                self.columns.append((j, "entity", expr))
        self.request_fields = sorted(
            {i for _, kind, e in self.columns if kind == "request" for i in e.inputs if isinstance(i, str)}
        )

    def read(self, ids: list) -> list[dict | None]:
        """The stored values of each entity, (view, feature) -> value; None for an entity no
        view has a row for (every stored value missing)."""
        table = self.store.get_online_features(
            features=self.feast_service, entity_rows=[{self.join_key: i} for i in ids], full_feature_names=True
        ).to_dict()
        columns = []
        for name, column in table.items():
            view, _, feature = name.partition("__")
            if feature:
                columns.append(((view, feature), column))
        out = []
        for r in range(len(ids)):
            values = {key: column[r] for key, column in columns}
            out.append(values if any(v is not None for v in values.values()) else None)
        return out

    def vectors(self, stored: dict | None, requests: list[dict] | None = None) -> np.ndarray:
        """[rows, width] float32 for one entity's stored values (None: unknown, every stored
        value null) and one request-field dict per row (one row without request fields)."""
        return np.array(self._rows(stored, requests or [{}]), dtype=np.float32)

    def entity_vectors(self, stored: list) -> np.ndarray:
        """[entities, width] float32, one row per entity's stored values (no request fields)."""
        return np.array([self._rows(s, [{}])[0] for s in stored], dtype=np.float32).reshape(-1, self.width)

    def _rows(self, stored: dict | None, requests: list[dict]) -> list[list[float]]:
        values = stored or {}
        base = [0.0] * self.width
        per_request = []
        for j, kind, what in self.columns:
            if kind == "stored":
                base[j] = ferrite_defs.to_f32_input(values.get(what))
            elif kind == "entity":
                base[j] = ferrite_defs.to_f32_input(what.eval(values))
            else:
                per_request.append((j, what))
        if not per_request:
            return [base] * len(requests)
        rows = []
        for fields in requests:
            row, row_values = list(base), {**values, **fields}
            for j, expr in per_request:
                row[j] = ferrite_defs.to_f32_input(expr.eval(row_values))
            rows.append(row)
        return rows


_INT = re.compile(r"[+-]?[0-9]+")


def parse_id(value, what: str) -> int:
    """An integer entity id given as an int or its decimal string (Rust's `trim().parse::<i64>()`)."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if _INT.fullmatch(text) and -(2**63) <= int(text) < 2**63:
        return int(text)
    raise BadRequest(f"{what}: expected an integer id or its decimal string, got {value!r}")


# ---------------------------------------------------------------- recommendations


class Catalog:
    """Every item of the catalogue view, with its item-tower embedding in a FAISS index."""

    def __init__(self, ids, embeddings, vectors, categories, popularity, available, built_at):
        import faiss

        self.ids = ids
        # Each item's vector of the item service as of this build: the ranker's item part.
        self.vectors = vectors
        self.position = {i: p for p, i in enumerate(ids)}
        self.categories = categories
        self.popularity = np.asarray(popularity, np.float32)
        self.available = np.asarray(available, bool)
        self.category_positions: dict = {}
        for p, c in enumerate(categories):
            self.category_positions.setdefault(c, []).append(p)
        self.by_popularity = sorted(range(len(ids)), key=lambda p: (-float(self.popularity[p]), p))
        self.embeddings = np.ascontiguousarray(embeddings, np.float32)
        self.dim = self.embeddings.shape[1]
        self.index = faiss.IndexFlatIP(self.dim)
        if len(ids):
            self.index.add(self.embeddings)
        self.built_at = built_at

    def __len__(self):
        return len(self.ids)


class Recommender:
    def __init__(self, store, reg, args):
        pipeline = tomllib.loads(Path(args.recs_pipeline).read_text())
        self.section = s = pipeline["recommendations"]
        self.top_k = int(s.get("top_k", 20))
        self.max_top_k = int(s.get("max_top_k", 100))
        self.candidates = int(s.get("candidates", 200))
        self.max_per_category = int(s.get("max_per_category", 0))
        # Items the user bought in the feature's window are never recommended (a string of
        # comma-separated ids, read beside the user's vector).
        self.purchased = s.get("exclude_purchased")
        self.refresh_s = float(s.get("refresh_s", 300))
        self.user = Service(store, reg, pipeline["feature_service"])
        self.items = Service(store, reg, s["item_service"])
        cat_view, cat_feature = s["category"].split(":", 1)
        self.category_key = (cat_view, cat_feature)
        names = {f: j for j, (_, f) in enumerate(self.items.order)}
        self.in_stock, self.active, self.popularity_col = names[s["in_stock"]], names[s["active"]], names[s["popularity"]]
        # What a call re-checks live for its candidates: the stored in-stock and active features.
        self.live_refs = [self.items.order[self.in_stock], self.items.order[self.active]]
        if any(v not in reg.views for v, _ in self.live_refs):
            raise SystemExit("recommendations: in_stock and active must be stored features")
        self.live_features = [f"{v}:{f}" for v, f in self.live_refs]
        self.store = store
        models = Path(args.models)
        m = pipeline["model"]
        self.user_tower = DenseModel(models, m["name"], m.get("version", "1"))
        t = s["item_tower"]
        self.item_tower = DenseModel(models, t["name"], t.get("version", "1"))
        r = s["ranker"]
        self.ranker = DenseModel(models, r["name"], r.get("version", "1"))
        self.ranker_index = int(r.get("output_index", 0))
        if self.ranker.width != self.user.width + self.items.width + 1:
            raise SystemExit(f"ranker {self.ranker.name} takes {self.ranker.width} values, not user ++ item ++ score")
        # The catalogue view: the first stored view of the item service (Ferrite's rule); its
        # item ids are listed from its offline source.
        view = next(v for v, _ in self.items.order if v in reg.views)
        src = reg.sources[reg.views[view].source]
        self.catalog_source = Path(args.data) / src["path"]
        self.catalog: Catalog | None = None
        # Ferrite scans the kept vectors exactly when a filter keeps at most this share of the
        # catalogue (or at most `candidates` items), FAISS with a selector otherwise.
        self.exact_share = 0.05

    def build_catalog(self) -> Catalog:
        started = time.perf_counter()
        ids = pc.unique(pq.read_table(self.catalog_source, columns=[self.items.join_key])[self.items.join_key])
        listed = sorted(i for i in ids.to_pylist() if i is not None)
        keep_ids, embeddings, vectors, categories, popularity, available = [], [], [], [], [], []
        for start in range(0, len(listed), CHUNK):
            chunk = listed[start : start + CHUNK]
            stored = self.items.read(chunk)
            kept = [r for r in range(len(chunk)) if stored[r] is not None]
            if not kept:
                continue
            x = self.items.entity_vectors([stored[r] for r in kept])
            embeddings.append(self.item_tower(x))
            vectors.append(x)
            for k, r in enumerate(kept):
                row = x[k]
                keep_ids.append(chunk[r])
                c = stored[r].get(self.category_key)
                categories.append(c if isinstance(c, str) else None)
                pop = row[self.popularity_col]
                popularity.append(0.0 if math.isnan(pop) else pop)
                available.append(bool(row[self.active] != 0.0 and row[self.in_stock] > 0.0))
        if not embeddings:
            raise RuntimeError(f"the online store has no item of {self.catalog_source.name}")
        catalog = Catalog(keep_ids, np.concatenate(embeddings), np.concatenate(vectors), categories, popularity,
                          available, time.time())
        print(
            f"catalogue built: {len(catalog)} items, {int(catalog.available.sum())} available "
            f"({(time.perf_counter() - started) * 1e3:.0f} ms)",
            flush=True,
        )
        return catalog

    def refresh_forever(self, stop: threading.Event):
        while not stop.wait(self.refresh_s):
            try:
                self.catalog = self.build_catalog()
            except Exception as e:  # the previous catalogue keeps serving
                print(f"catalogue not rebuilt ({e}); the previous one stays", flush=True)

    def search(self, catalog: Catalog, query: np.ndarray, keep: np.ndarray):
        """The `candidates` best kept items by inner product: (positions, scores, plan)."""
        import faiss

        kept = np.flatnonzero(keep)
        n = len(catalog)
        if len(kept) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), "exact"
        k = min(self.candidates, len(kept))
        if len(kept) <= self.exact_share * n or len(kept) <= self.candidates:
            # Exact scan of the kept vectors, float32 products summed in dimension order.
            vecs = catalog.embeddings[kept]
            scores = np.zeros(len(kept), np.float32)
            for d in range(catalog.dim):
                scores += vecs[:, d] * query[d]
            order = sorted(range(len(kept)), key=lambda i: (-float(scores[i]), int(kept[i])))[:k]
            return kept[order], scores[order], "exact"
        bitmap = np.packbits(keep, bitorder="little")
        selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
        params = faiss.SearchParameters(sel=selector)
        scores, labels = catalog.index.search(query[None, :], k, params=params)
        labels, scores = labels[0], scores[0]
        good = labels >= 0
        return labels[good], scores[good], "selector"

    def diversify(self, ranked: list, k: int) -> list:
        seen: dict = {}
        out = []
        for item in ranked:
            if len(out) == k:
                break
            n = seen.get(item[3], 0)
            if self.max_per_category == 0 or n < self.max_per_category:
                seen[item[3]] = n + 1
                out.append(item)
        return out

    def popular(self, catalog: Catalog, keep: np.ndarray, k: int) -> list:
        items = [
            (catalog.ids[p], float(catalog.popularity[p]), 0.0, catalog.categories[p])
            for p in catalog.by_popularity
            if keep[p]
        ]
        return self.diversify(items, k)

    def recommend(self, user_id, top_k: int, exclude: list, category: str | None) -> dict:
        """The answer: items (id, score, retrieval score, category), cold_start, retrieved, plan."""
        if top_k == 0:
            top_k = self.top_k
        elif top_k > self.max_top_k:
            raise BadRequest(f"top_k: {top_k} items asked for; at most {self.max_top_k} (max_top_k)")
        user = parse_id(user_id, self.user.join_key)
        excluded = [parse_id(x, f"exclude_item_ids[{i}]") for i, x in enumerate(exclude)]
        catalog = self.catalog
        if catalog is None:
            raise Unavailable("the item catalogue is not built yet")
        keep = catalog.available.copy()
        for x in excluded:
            p = catalog.position.get(x)
            if p is not None:
                keep[p] = False
        if category:
            in_category = np.zeros(len(catalog), bool)
            in_category[catalog.category_positions.get(category, [])] = True
            keep &= in_category
        stored = self.user.read([user])[0]
        user_row = self.user.vectors(stored)
        if stored is None:
            return {"items": self.popular(catalog, keep, top_k), "cold_start": True, "retrieved": 0,
                    "plan": "", "version": ""}
        if self.purchased:
            column = self.store.get_online_features(
                features=[self.purchased], entity_rows=[{self.user.join_key: user}], full_feature_names=True
            ).to_dict()["__".join(self.purchased.split(":", 1))]
            for x in (column[0] or "").split(","):
                p = catalog.position.get(int(x)) if x.strip() else None
                if p is not None:
                    keep[p] = False
        embedding = self.user_tower(user_row)[0]
        if embedding.shape[0] != catalog.dim:
            raise Unavailable(f"user tower gives {embedding.shape[0]} values; the index holds {catalog.dim}")
        positions, scores, plan = self.search(catalog, embedding, keep)
        if len(positions) == 0:
            return {"items": [], "cold_start": False, "retrieved": 0, "plan": plan, "version": ""}
        # The candidates' availability, live: one read of the two stored features; what went
        # off sale or out of stock since the catalogue was built is dropped here. The ranker
        # reads the rest of each item's vector from the catalogue (as of its last build).
        ids = [catalog.ids[p] for p in positions]
        table = self.store.get_online_features(
            features=self.live_features, entity_rows=[{self.items.join_key: i} for i in ids], full_feature_names=True
        ).to_dict()
        stock = np.array([ferrite_defs.to_f32_input(v) for v in table["__".join(self.live_refs[0])]], np.float32)
        active = np.array([ferrite_defs.to_f32_input(v) for v in table["__".join(self.live_refs[1])]], np.float32)
        live = [r for r in range(len(ids)) if stock[r] > 0.0 and active[r] != 0.0 and not math.isnan(active[r])]
        if not live:
            return {"items": [], "cold_start": False, "retrieved": len(ids), "plan": plan, "version": ""}
        live = np.asarray(live)
        x = np.empty((len(live), self.ranker.width), np.float32)
        x[:, : self.user.width] = user_row[0]
        x[:, self.user.width : -1] = catalog.vectors[positions[live]]
        x[:, -1] = scores[live]
        out = self.ranker(x)[:, self.ranker_index]
        ranked = [
            (ids[r], float(out[i]), float(scores[r]), catalog.categories[positions[r]])
            for i, r in enumerate(live)
        ]
        ranked.sort(key=lambda item: -item[1])  # stable, as Rust's sort_by
        return {"items": self.diversify(ranked, top_k), "cold_start": False, "retrieved": len(ids),
                "plan": plan, "version": self.ranker.version}


# ---------------------------------------------------------------- pricing


class Pricer:
    def __init__(self, store, reg, args):
        pipeline = tomllib.loads(Path(args.pricing_pipeline).read_text())
        self.section = s = pipeline["pricing"]
        self.price_field = s.get("price_field", "price")
        self.candidates = int(s.get("candidates", 50))
        self.min_margin = float(s.get("min_margin", 0.0))
        self.max_change = float(s["max_change"])
        self.objective = s.get("objective", "revenue")
        self.endings = [(float(e["step"]), float(e["at"])) for e in s.get("endings", [])]
        self.service = Service(store, reg, pipeline["feature_service"])
        by_feature = {f: (v, f) for v, f in self.service.order}
        self.cost_key = by_feature[s["cost"]]
        self.current_key = by_feature[s["current_price"]]
        if self.service.request_fields != [self.price_field]:
            raise SystemExit(f"pricing: service reads request fields {self.service.request_fields}; the peer fills only {self.price_field!r}")
        m = pipeline["model"]
        self.model = DenseModel(Path(args.models), m["name"], m.get("version", "1"))
        self.output_index = int(m.get("output_index", 0))

    def range(self, cost: float, current: float):
        """(floor, lo cents, hi cents, floor_binds, conflict), as price.rs's range()."""
        floor = cost * (1.0 + self.min_margin)
        down = current * (1.0 - self.max_change)
        up = current * (1.0 + self.max_change)
        noise = 1e-6
        floor_c = int(max(math.ceil(floor * 100.0), 1.0))
        down_c = int(max(math.ceil(down * 100.0 - noise), 1.0))
        up_c = int(math.floor(up * 100.0 + noise))
        lo = max(floor_c, down_c)
        return floor, lo, up_c, floor_c >= down_c, lo > up_c

    def grid(self, lo: int, hi: int, conflict: bool) -> list[int]:
        """Candidate prices in cents, as price.rs's grid()."""
        rules = [(round(step * 100.0), round(at * 100.0)) for step, at in self.endings]
        rules = [(st, at) for st, at in rules if st > 0] + [(1, 0)]

        def first_at_or_above(x, step, at):
            return at + ((x - at) // step) * step + (0 if (x - at) % step == 0 else step)

        if conflict:
            step, at = rules[0]
            return [max(first_at_or_above(lo, step, at), 1)]
        for step, at in rules:
            first = first_at_or_above(lo, step, at)
            if first > hi:
                continue
            count = (hi - first) // step + 1
            picks = max(min(self.candidates, count), 1)
            out = []
            for i in range(picks):
                k = 0 if picks == 1 else i * (count - 1) // (picks - 1)
                c = first + k * step
                if not out or out[-1] != c:
                    out.append(c)
            return out
        return []

    def price(self, item_id) -> dict:
        item = parse_id(item_id, self.service.join_key)
        stored = self.service.read([item])[0]
        if stored is None:
            raise BadRequest(f"{self.service.join_key}: no item with this id in the online store (no view has a row for it)")

        def finite(key):
            v = stored.get(key)
            return float(v) if type(v) in (int, float) and math.isfinite(v) else None

        cost, current = finite(self.cost_key), finite(self.current_key)
        if cost is None or current is None or current <= 0.0 or cost < 0.0:
            # Ferrite answers its catalogue's current price, flagged as a fallback.
            if current is None or current <= 0.0:
                raise Unavailable(f"item {item}: no price could be computed and no current price is known")
            return {"price": current, "current": current, "floor": math.nan, "units": math.nan,
                    "revenue": math.nan, "margin": math.nan, "bound": "current_price", "candidates": 0,
                    "fallback": "the online store has no usable cost for this item", "version": ""}
        floor, lo, hi, floor_binds, conflict = self.range(cost, current)
        cents = self.grid(lo, hi, conflict)
        prices = [c / 100.0 for c in cents]
        n = len(prices)
        x = self.service.vectors(stored, [{self.price_field: p} for p in prices])
        units = [float(u) for u in self.model(x)[:, self.output_index]]

        def value(i):
            u = max(units[i], 0.0) if math.isfinite(units[i]) else 0.0
            return prices[i] * u if self.objective == "revenue" else (prices[i] - cost) * u

        # The best expected value; ties go to the price nearest the current one (and, as
        # Rust's max_by, the last of equals).
        best = 0
        for i in range(1, n):
            a, b = (value(i), -abs(prices[i] - current)), (value(best), -abs(prices[best] - current))
            if a >= b:
                best = i
        if conflict:
            bound = "cost_floor"
        elif n == 1:
            bound = "price_ending"
        elif n > 1 and best == 0:
            bound = "cost_floor" if floor_binds else "max_decrease"
        elif n > 1 and best == n - 1:
            bound = "max_increase"
        else:
            bound = "none"
        u = units[best]
        return {"price": prices[best], "current": current, "floor": floor, "units": u,
                "revenue": prices[best] * u, "margin": (prices[best] - cost) * u, "bound": bound,
                "candidates": n, "fallback": None, "version": self.model.version}


# ---------------------------------------------------------------- the service


def open_store(feast_repo: Path):
    from feast import FeatureStore
    from feast.infra.online_stores.online_store import OnlineStore

    # As in benches/peers/fraud/glue.py: Feast 0.63 checks on every read whether the store
    # supports versioned reads by importing each optional online store, again on every call
    # for the extras not installed. No read here is versioned: skipped, in the peer's favour.
    OnlineStore._check_versioned_read_support = lambda self, grouped_refs: None
    return FeatureStore(repo_path=str(feast_repo))


def make_servicer(pb, pb_grpc, common, recommender: Recommender, pricer: Pricer):
    def fail(context, e):
        code = grpc.StatusCode.INVALID_ARGUMENT if isinstance(e, BadRequest) else grpc.StatusCode.UNAVAILABLE
        context.abort(code, str(e))

    class Servicer(pb_grpc.ScoringServiceServicer):
        def Recommend(self, request, context):
            started = time.perf_counter()
            which = request.WhichOneof("user")
            user = request.user_id_int if which == "user_id_int" else request.user_id
            try:
                a = recommender.recommend(
                    user, request.top_k, list(request.exclude_item_ids) + list(request.context.basket_item_ids),
                    request.context.category or None,
                )
            except (BadRequest, Unavailable) as e:
                fail(context, e)
            return pb.RecommendResponse(
                items=[
                    pb.ScoredItem(item_id=str(i), score=s, retrieval_score=r, category=c or "")
                    for i, s, r, c in a["items"]
                ],
                meta=common.ResponseMeta(
                    model_name=recommender.ranker.name, model_version=a["version"], cold_start=a["cold_start"],
                    server_latency_us=int((time.perf_counter() - started) * 1e6),
                ),
                retrieved=a["retrieved"],
                retrieval_plan=a["plan"],
            )

        def Price(self, request, context):
            started = time.perf_counter()
            which = request.WhichOneof("item")
            item = request.item_id_int if which == "item_id_int" else request.item_id
            try:
                if request.context:
                    raise BadRequest(f"context: the pricing pipeline reads no request field but the candidate {pricer.price_field!r}")
                a = pricer.price(item)
            except (BadRequest, Unavailable) as e:
                fail(context, e)
            return pb.PriceResponse(
                price=a["price"], currency="EUR", current_price=a["current"], floor_price=a["floor"],
                expected_units=a["units"], expected_revenue=a["revenue"], expected_margin=a["margin"],
                bound=a["bound"], candidates=a["candidates"],
                meta=common.ResponseMeta(
                    model_name=pricer.model.name, model_version=a["version"],
                    fallback=a["fallback"] is not None, fallback_reason=a["fallback"] or "",
                    server_latency_us=int((time.perf_counter() - started) * 1e6),
                ),
            )

    return Servicer()


def build(args):
    """The recommender and pricer over the Feast repository, catalogue built."""
    reg = ferrite_defs.load(Path(args.features))
    store = open_store(args.feast_repo)
    recommender = Recommender(store, reg, args)
    pricer = Pricer(store, reg, args)
    recommender.catalog = recommender.build_catalog()
    return recommender, pricer


def add_arguments(ap: argparse.ArgumentParser):
    ap.add_argument("--feast-repo", type=Path, required=True)
    ap.add_argument("--features", type=Path, default=ROOT / "features")
    ap.add_argument("--data", type=Path, default=ROOT / "features" / "data",
                    help="where source paths point (the catalogue's item ids are listed from it)")
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--recs-pipeline", type=Path, default=ROOT / "pipelines" / "recommendations.toml")
    ap.add_argument("--pricing-pipeline", type=Path, default=ROOT / "pipelines" / "pricing.toml")
    ap.add_argument("--proto", type=Path, default=ROOT / "proto")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=16, help="gRPC server threads")
    add_arguments(ap)
    args = ap.parse_args()

    generate_stubs(args.proto)
    from ferrite.v1 import common_pb2, scoring_pb2, scoring_pb2_grpc

    recommender, pricer = build(args)
    stop = threading.Event()
    threading.Thread(target=recommender.refresh_forever, args=(stop,), daemon=True).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    scoring_pb2_grpc.add_ScoringServiceServicer_to_server(
        make_servicer(scoring_pb2, scoring_pb2_grpc, common_pb2, recommender, pricer), server
    )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(
        f"glue listening on 127.0.0.1:{args.port} (Recommend: {len(recommender.catalog)} items, "
        f"{recommender.user.width}+{recommender.items.width} features; Price: {pricer.service.width} features)",
        flush=True,
    )
    try:
        server.wait_for_termination()
    finally:
        stop.set()


if __name__ == "__main__":
    main()
