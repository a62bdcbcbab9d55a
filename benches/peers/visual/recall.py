#!/usr/bin/env python3
"""Recall@k of visual-search servers against an exact (NumPy brute-force) search.

For each server (name=host:port) and each query (the rows of queries.npy, or the files of
query_images/ sent as images), calls ferrite.v1.SearchService/VisualSearch for the top k,
unfiltered and restricted to one category, and compares the answered item ids with the exact
top k of the catalog (vectors.npy, inner product; the same category for the filtered case).
Image queries are compared with the exact answer for the PyTorch embedding of the same file
(queries.npy row i is query_images/ file i in name order), so they also show whether a
server embeds images as PyTorch does. Prints one JSON object (and writes it with --json).

    python recall.py --catalog DIR --category cat-042 ferrite=127.0.0.1:5001 peer=127.0.0.1:5002
"""

import argparse
import json
import pathlib
import sys

import grpc
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import visual_peer  # noqa: E402  (compile_protos)


def exact_top(queries: np.ndarray, vectors: np.ndarray, k: int, keep: np.ndarray | None) -> np.ndarray:
    scores = queries @ vectors.T
    if keep is not None:
        scores[:, ~keep] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return top


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("servers", nargs="+", help="name=host:port")
    ap.add_argument("--catalog", type=pathlib.Path, required=True)
    ap.add_argument("--category", default="cat-042")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--timeout-s", type=float, default=10.0, help="per call")
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--proto-root", type=pathlib.Path,
                    default=pathlib.Path(__file__).resolve().parents[3] / "proto")
    args = ap.parse_args()
    visual_peer.compile_protos(args.proto_root)
    from ferrite.v1 import common_pb2, search_pb2, search_pb2_grpc  # noqa: F401

    cat = args.catalog
    vectors = np.load(cat / "vectors.npy", mmap_mode="r")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.load(cat / "queries.npy").astype(np.float32)
    ids = []
    categories = []
    for line in (cat / "items.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            ids.append(row["item_id"])
            categories.append(row["category"])
    ids = np.array(ids)
    keep = np.array(categories) == args.category
    images = sorted(p for p in (cat / "query_images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(images) != len(queries):
        raise SystemExit(f"{len(images)} query images for {len(queries)} query embeddings")
    exact = {
        "unfiltered": [set(ids[r]) for r in exact_top(queries, vectors, args.k, None)],
        "filtered": [set(ids[r]) for r in exact_top(queries, vectors, args.k, keep)],
    }
    result = {"k": args.k, "queries": len(queries), "category": args.category,
              "category_items": int(keep.sum()), "items": len(ids), "servers": {}}
    for spec in args.servers:
        name, addr = spec.split("=", 1)
        channel = grpc.insecure_channel(addr)
        stub = search_pb2_grpc.SearchServiceStub(channel)
        out = {}
        for kind in ("embedding", "image"):
            for case in ("unfiltered", "filtered"):
                hits = 0
                wrong_category = 0
                for i, q in enumerate(queries):
                    req = search_pb2.VisualSearchRequest(top_k=args.k)
                    if kind == "embedding":
                        req.embedding.values.extend(q.tolist())
                    else:
                        req.image = images[i].read_bytes()
                    if case == "filtered":
                        req.filter.categories.append(args.category)
                    resp = stub.VisualSearch(req, timeout=args.timeout_s)
                    got = [h.item_id for h in resp.hits]
                    hits += len(set(got[: args.k]) & exact[case][i])
                    if case == "filtered":
                        wrong_category += sum(h.category != args.category for h in resp.hits)
                key = f"{kind}_{case}"
                out[key] = hits / (args.k * len(queries))
                if case == "filtered":
                    out[f"{key}_outside_filter"] = wrong_category
        channel.close()
        result["servers"][name] = out
        print(f"{name}: " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in out.items()), file=sys.stderr)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
