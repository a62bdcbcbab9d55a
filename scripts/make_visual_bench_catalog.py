#!/usr/bin/env python3
"""The visual-search benchmark's catalog and queries, seeded, from the 24 photos of data/photos.

Runs in the visual peer's virtualenv (benches/peers/visual/README.md: torch, pillow, numpy),
never in the project's .venv. Embeds each photo and AUGMENT seeded augmentations of it (crop,
flip, rotation, brightness, JPEG re-encode) with the peer's PyTorch EfficientNet-Lite0 and
preprocessing (visual_peer.Embedder, the weights' (x - 127) / 128 normalisation), then makes a
synthetic catalog of N items around those embeddings: each item is one of them plus Gaussian
noise of norm about SIGMA, renormalised to unit length, so that a query's top 10 must be told
apart among hundreds of items of nearly equal similarity. Writes into OUT:

  vectors.npy        float32 [N, 1280], L2-normalised, row i = item i
  items.jsonl        per item, same order: item_id, category, in_stock, price (the peer's
                     --items and `ferrite build-index --embeddings`'s item rows)
  catalog.jsonl      the same rows with the vector row number (`row`), for tools that want it
  queries.npy        float32 [Q, 1280]: the embeddings of the files in query_images/, in name
                     order (the order `ferrite bench --images` sends them)
  query_images/      QUERIES held-out augmentations per photo, as JPEG files
  embed_images/      the catalog's own augmentations as JPEG files (24 x (1 + AUGMENT)),
  embed_catalog.jsonl  with one row per file (item_id, image_path, category, in_stock, price),
                     for the catalog-embedding throughput comparison
  embed_vectors.npy  the peer's embeddings of embed_images/ in embed_catalog.jsonl order
  meta.json          the parameters and the neighbour-score statistics of the queries

    python scripts/make_visual_bench_catalog.py OUT [--items 200000] [--sigma 1.0] ...
"""

import argparse
import io
import json
import pathlib
import sys
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches/peers/visual"))
import visual_peer  # noqa: E402  (the peer's Embedder: the same model and preprocessing)


def load_photos(photos: pathlib.Path) -> list[tuple[str, Image.Image]]:
    rows = [json.loads(line) for line in (photos / "catalog.jsonl").read_text().splitlines() if line.strip()]
    out = []
    for row in rows:
        img = Image.open(photos / row["image_path"])
        out.append((row["item_id"].removeprefix("photo-"), ImageOps.exif_transpose(img).convert("RGB")))
    return out


def augment(img: Image.Image, rng: np.random.Generator) -> bytes:
    """One seeded augmentation as JPEG bytes: crop 60-95 % of the area, maybe a mirror, a
    rotation of up to 15 degrees, brightness 0.7-1.3, then JPEG at quality 60-95."""
    w, h = img.size
    area = rng.uniform(0.6, 0.95)
    aspect = rng.uniform(0.8, 1.25)
    cw = int(min(w, max(32, round(w * np.sqrt(area * aspect)))))
    ch = int(min(h, max(32, round(h * np.sqrt(area / aspect)))))
    left = int(rng.integers(0, w - cw + 1))
    top = int(rng.integers(0, h - ch + 1))
    out = img.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = out.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, expand=False)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(60, 96)))
    return buf.getvalue()


def embed_files(embedder: visual_peer.Embedder, blobs: list[bytes], batch: int = 16) -> np.ndarray:
    out = []
    for i in range(0, len(blobs), batch):
        x = np.stack([embedder.preprocess(b) for b in blobs[i : i + batch]])
        out.append(embedder.embed(x))
    return np.concatenate(out).astype(np.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--photos", type=pathlib.Path, default=ROOT / "data/photos")
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--augment", type=int, default=12, help="catalog augmentations per photo")
    ap.add_argument("--queries", type=int, default=8, help="held-out query augmentations per photo")
    ap.add_argument("--sigma", type=float, default=1.0, help="norm of the noise added to each item")
    ap.add_argument("--categories", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    out = args.out
    (out / "query_images").mkdir(parents=True, exist_ok=True)
    (out / "embed_images").mkdir(parents=True, exist_ok=True)
    embedder = visual_peer.Embedder(visual_peer.LITE_MEAN, visual_peer.LITE_STD)

    photos = load_photos(args.photos)
    embed_rows, embed_blobs, query_blobs = [], [], []
    for name, img in photos:
        original = io.BytesIO()
        img.save(original, format="JPEG", quality=95)
        blobs = [original.getvalue()] + [augment(img, rng) for _ in range(args.augment)]
        for j, blob in enumerate(blobs):
            fname = f"{name}-{j:02d}.jpg"
            (out / "embed_images" / fname).write_bytes(blob)
            embed_rows.append({"item_id": f"img-{name}-{j:02d}", "image_path": f"embed_images/{fname}", "category": name,
                               "in_stock": True, "price": 10.0})
            embed_blobs.append(blob)
        for j in range(args.queries):
            blob = augment(img, rng)
            fname = f"{name}-q{j:02d}.jpg"
            (out / "query_images" / fname).write_bytes(blob)
            query_blobs.append((fname, blob))

    t0 = time.perf_counter()
    bases = embed_files(embedder, embed_blobs)
    query_blobs.sort()
    queries = embed_files(embedder, [b for _, b in query_blobs])
    print(f"embedded {len(embed_blobs) + len(query_blobs)} images in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    np.save(out / "embed_vectors.npy", bases)
    np.save(out / "queries.npy", queries)
    with open(out / "embed_catalog.jsonl", "w") as f:
        for row in embed_rows:
            f.write(json.dumps(row) + "\n")

    n, d = args.items, bases.shape[1]
    vectors = np.empty((n, d), dtype=np.float32)
    origin = rng.integers(0, len(bases), size=n)
    for start in range(0, n, 20_000):
        stop = min(n, start + 20_000)
        noise = rng.standard_normal((stop - start, d), dtype=np.float32) * np.float32(args.sigma / np.sqrt(d))
        v = bases[origin[start:stop]] + noise
        vectors[start:stop] = v / np.linalg.norm(v, axis=1, keepdims=True)
    np.save(out / "vectors.npy", vectors)

    category = rng.integers(0, args.categories, size=n)
    in_stock = rng.random(n) < 0.9
    price = np.round(np.exp(rng.normal(3.0, 0.8, size=n)), 2)
    with open(out / "items.jsonl", "w") as items, open(out / "catalog.jsonl", "w") as catalog:
        for i in range(n):
            row = {"item_id": f"item-{i:06d}", "category": f"cat-{category[i]:03d}",
                   "in_stock": bool(in_stock[i]), "price": float(price[i])}
            items.write(json.dumps(row) + "\n")
            catalog.write(json.dumps({**row, "row": i}) + "\n")

    # How hard the queries are: the exact scores of their 1st, 10th, 11th and 100th neighbours.
    scores = queries @ vectors.T
    top = -np.sort(-scores, axis=1)[:, :100]
    stats = {k: float(np.mean(top[:, i])) for k, i in (("s1", 0), ("s10", 9), ("s11", 10), ("s100", 99))}
    stats["gap_10_11"] = float(np.mean(top[:, 9] - top[:, 10]))
    meta = {"items": n, "dim": d, "sigma": args.sigma, "augment": args.augment, "queries": len(queries),
            "categories": args.categories, "seed": args.seed, "bases": len(bases),
            "mean": list(visual_peer.LITE_MEAN), "std": list(visual_peer.LITE_STD),
            "neighbour_scores": stats}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
