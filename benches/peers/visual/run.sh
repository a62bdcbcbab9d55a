#!/usr/bin/env bash
# Visual search, Ferrite beside the Python peer stack (README.md in this folder), in one run:
#   1. the catalog (scripts/make_visual_bench_catalog.py, seeded; skipped when OUT/catalog has
#      one): 200,000 L2-normalised 1280-d vectors around the photos' embeddings, queries;
#   2. the index, built on both sides with the same FAISS factory (FACTORY, HNSW32): Ferrite's
#      `ferrite build-index --embeddings`, the peer's faiss-cpu at its start; both timed;
#   3. catalog embedding throughput: `ferrite build-index` over the catalog's own images
#      (embed_images/, a few hundred JPEGs) against the peer's PyTorch over the same files
#      (visual_peer.py --embed-only), the same threads; Ferrite's embeddings are checked
#      against PyTorch's;
#   4. both servers on free loopback ports (THREADS for the peer's gRPC workers, torch and
#      FAISS); recall@10 of both against NumPy brute force (recall.py), unfiltered and with a
#      1 % category filter (CATEGORY);
#   5. ROUNDS alternated rounds of `ferrite bench` against each (concurrency 1): image ->
#      top-10 (IMAGE_REQUESTS calls), embedding -> top-10 (EMB_REQUESTS), the same with the
#      category filter; Ferrite's embedding legs also time the raw in-process search of the
#      same index (--with-raw); every leg reads the server's CPU time from /proc;
#   6. summarize.py prints one table.
# Everything it starts is stopped on exit; every wait and every load is bounded.
#   bash benches/peers/visual/run.sh [OUT]
# MODEL (image_embedder_onnx: Ferrite's embedding model; image_embedder for the candle one),
# FACTORY (HNSW32), EF_SEARCH (128: HNSW candidates per search on both sides), THREADS (2), ROUNDS (3), IMAGE_REQUESTS (600: a p99 over 150 calls is their second-worst), EMB_REQUESTS (2000),
# CATEGORY (cat-042), ITEMS (200000), FERRITE_PEER_VENV (~/.cache/ferrite-peers/visual),
# LIVE_RECALL_SAMPLE (0: Ferrite's live-recall sampler off, as the peer has none; the
# shipped default, 0.05, re-runs one search in 20 exactly off the request path).
# REUSE_INDEXES=1 keeps the indexes (and their build times) of an earlier run into the same OUT.
# HALT_POLL_NS=N, PIN_CPUS=1: see scripts/bench_lib.sh.
set -euo pipefail
cd "$(dirname "$0")/../../.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-visual.XXXXXX)}"
mkdir -p "$OUT/legs/image" "$OUT/legs/embedding" "$OUT/legs/embedding-filtered"
OUT=$(cd "$OUT" && pwd)
PEER_VENV="${FERRITE_PEER_VENV:-$HOME/.cache/ferrite-peers/visual}"
MODEL="${MODEL:-image_embedder_onnx}"
FACTORY="${FACTORY:-HNSW32}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
IMAGE_REQUESTS="${IMAGE_REQUESTS:-600}"
EMB_REQUESTS="${EMB_REQUESTS:-2000}"
CATEGORY="${CATEGORY:-cat-042}"
ITEMS="${ITEMS:-200000}"
LIVE_RECALL_SAMPLE="${LIVE_RECALL_SAMPLE:-0}"
EF_SEARCH="${EF_SEARCH:-128}"
peer=benches/peers/visual
py="$PEER_VENV/bin/python"
CAT="$OUT/catalog"

[ -x "$py" ] && "$py" -c 'import torch, faiss, grpc_tools' 2>/dev/null ||
  { echo "no peer virtualenv at $PEER_VENV: see $peer/README.md" >&2; exit 1; }
source scripts/bench_lib.sh
release_bin
port() { peer_port; }
now() { date +%s.%N; }
peer_run_setup

if [ -f "$CAT/meta.json" ]; then
  echo "==> catalog: $CAT (kept)" >&2
else
  echo "==> catalog: $ITEMS items into $CAT" >&2
  timeout 1800 "$py" scripts/make_visual_bench_catalog.py "$CAT" --items "$ITEMS" --threads "$THREADS" \
    2> >(grep -v -e FutureWarning -e 'torch.load' >&2)
fi

# The same model and preprocessing on both sides; the index is built for this model.
cat >"$OUT/ferrite.toml" <<CFG
[log]
level = "info"
[models]
repository = "$PWD/models"
poll_interval_s = 0
[features]
repository = "$PWD/features"
[search]
index_dir = "$OUT/index"
model = "$MODEL"
live_recall_sample = $LIVE_RECALL_SAMPLE
ef_search = $EF_SEARCH
CFG

reuse=""
[ "${REUSE_INDEXES:-0}" = 1 ] && reuse=1
# (Only an index built for MODEL: the server refuses one built for another model.)
if [ -n "$reuse" ] && grep -q "\"model\": \"$MODEL\"," "$OUT/index/index.json" 2>/dev/null &&
  grep -q "^built " "$OUT/build-index.log" 2>/dev/null; then
  echo "==> REUSE_INDEXES=1: Ferrite's index and its build time kept from an earlier run" >&2
else
  echo "==> Ferrite: build-index --embeddings ($FACTORY over $ITEMS items)" >&2
  rm -rf "$OUT/index"
  timeout 3600 "$bin" build-index --models "$PWD/models" --model "$MODEL" --embeddings "$CAT/vectors.npy" \
    --catalog "$CAT/items.jsonl" --factory "$FACTORY" --out "$OUT/index" >"$OUT/build-index.log" 2>&1 ||
    { tail -20 "$OUT/build-index.log" >&2; exit 1; }
fi
# build-index's own elapsed time: reading the catalog and the .npy, building, writing.
ferrite_build_s=$(grep -o 'in [0-9.]* s$' "$OUT/build-index.log" | tail -1 | awk '{print $2}')

echo "==> catalog embedding: Ferrite build-index over $CAT/embed_images, then the peer's PyTorch" >&2
rm -rf "$OUT/index-images"
t0=$(now)
timeout 1800 "$bin" build-index --models "$PWD/models" --model "$MODEL" --catalog "$CAT/embed_catalog.jsonl" \
  --batch-size 16 --factory Flat --out "$OUT/index-images" >"$OUT/build-images.log" 2>&1 ||
  { tail -20 "$OUT/build-images.log" >&2; exit 1; }
ferrite_embed_s=$(echo "$(now) - $t0" | bc)
t0=$(now)
timeout 1800 "$py" "$peer/visual_peer.py" --embed-only "$CAT/embed_images" --threads "$THREADS" \
  >"$OUT/peer-embed.json" 2> >(grep -v -e FutureWarning -e 'torch.load' >&2)
peer_embed_s=$(echo "$(now) - $t0" | bc)
"$py" - "$OUT" "$ferrite_embed_s" "$peer_embed_s" "$THREADS" <<'PY'
import json, pathlib, sys
import numpy as np
out, seconds, peer_wall, threads = pathlib.Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
cat = out / "catalog"
ref = np.load(cat / "embed_vectors.npy")
rows = [json.loads(l)["item_id"] for l in (cat / "embed_catalog.jsonl").read_text().splitlines() if l.strip()]
built = [json.loads(l)["item_id"] for l in (out / "index-images/items.jsonl").read_text().splitlines() if l.strip()]
got = np.fromfile(out / "index-images/vectors.f32", dtype="<f4").reshape(len(built), -1)
order = {item: i for i, item in enumerate(built)}
got = got[[order[item] for item in rows]]
# The last line: the weights package prints a line of its own to stdout first.
peer = json.loads((out / "peer-embed.json").read_text().strip().splitlines()[-1])
result = {
    "images": len(rows),
    "ferrite_build_index_s": seconds,
    "ferrite_images_per_s": len(rows) / seconds,
    "peer_process_s": peer_wall,
    "peer_process_images_per_s": len(rows) / peer_wall,
    "peer_images_per_s": peer["images_per_s"],
    "peer_seconds": peer["seconds"],
    "peer_batch": peer["batch"],
    "threads": threads,
    "max_abs_diff_vs_pytorch": float(np.abs(got - ref).max()),
    "min_cosine_vs_pytorch": float((got * ref).sum(axis=1).min()),
    "median_cosine_vs_pytorch": float(np.median((got * ref).sum(axis=1))),
}
(out / "embed.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result), file=sys.stderr)
PY

echo "==> Ferrite: serve (the index loads before it listens)" >&2
on_server_cpu "$bin" serve --config "$OUT/ferrite.toml" --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
  >"$OUT/serve.log" 2>&1 &
server=$!
pids+=("$server")
wait_for "$OUT/serve.log" "ferrite listening" "$server" 600
grep -q "visual search index ready" "$OUT/serve.log" ||
  { grep -i "search" "$OUT/serve.log" >&2; echo "ferrite serve did not load $OUT/index" >&2; exit 1; }
FERRITE_ADDR=$(grep -o 'grpc=[0-9.:]*' "$OUT/serve.log" | head -1 | cut -d= -f2)

echo "==> peer: visual_peer.py ($FACTORY built at start, $THREADS threads)" >&2
PEER_PORT=$(port)
if [ -n "$reuse" ] && [ -f "$OUT/peer.faiss" ] && [ -s "$OUT/peer-build-s" ]; then
  echo "==> REUSE_INDEXES=1: the peer's index and its build time kept from an earlier run" >&2
else
  rm -f "$OUT/peer.faiss" "$OUT/peer-build-s"
fi
on_server_cpu "$py" "$peer/visual_peer.py" --port "$PEER_PORT" --vectors "$CAT/vectors.npy" --items "$CAT/items.jsonl" \
  --factory "$FACTORY" --ef-search "$EF_SEARCH" --threads "$THREADS" --index-cache "$OUT/peer.faiss" >"$OUT/peer.log" 2>&1 &
peer_pid=$!
pids+=("$peer_pid")
wait_for "$OUT/peer.log" "visual peer listening" "$peer_pid" 3600
PEER_ADDR="127.0.0.1:$PEER_PORT"
[ -s "$OUT/peer-build-s" ] || grep -o 'built in [0-9.]*' "$OUT/peer.log" | awk '{print $3}' >"$OUT/peer-build-s"
peer_build_s=$(cat "$OUT/peer-build-s")
# index.json's build_seconds is the index build alone (validation, FAISS), like the peer's
# figure (index_factory, add); build-index's also reads the catalog and writes the index.
ferrite_index_s=$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["build_seconds"])' "$OUT/index/index.json")
printf '{"factory": "%s", "items": %s, "ferrite_build_index_s": %s, "ferrite_index_build_s": %s, "peer_build_s": %s}\n' \
  "$FACTORY" "$ITEMS" "$ferrite_build_s" "$ferrite_index_s" "$peer_build_s" >"$OUT/build.json"
echo "Ferrite at $FERRITE_ADDR (pid $server), peer at $PEER_ADDR (pid $peer_pid); logs in $OUT" >&2

echo "==> recall@10 against NumPy brute force" >&2
timeout 1800 "$py" "$peer/recall.py" --catalog "$CAT" --category "$CATEGORY" --json "$OUT/recall.json" \
  "ferrite=$FERRITE_ADDR" "peer=$PEER_ADDR" >/dev/null

leg_no=0
# One leg: kind (image|embedding|embedding-filtered), side (ferrite|peer).
leg() {
  local kind=$1 side=$2 addr pid json args
  if [ "$side" = ferrite ]; then addr=$FERRITE_ADDR pid=$server; else addr=$PEER_ADDR pid=$peer_pid; fi
  leg_no=$((leg_no + 1))
  json=$(printf '%s/legs/%s/%03d-%s.json' "$OUT" "$kind" "$leg_no" "$side")
  case $kind in
    image) args=(--rpc visual-search --images "$CAT/query_images" --requests "$IMAGE_REQUESTS" --warmup 20 --duration-s 120) ;;
    embedding*) args=(--rpc visual-search-embedding --queries "$CAT/queries.npy" --requests "$EMB_REQUESTS" --warmup 200 --duration-s 60) ;;
  esac
  [ "$kind" = embedding-filtered ] && args+=(--filter-category "$CATEGORY")
  [ "$side" = ferrite ] && [ "$kind" != image ] && args+=(--with-raw --server-config "$OUT/ferrite.toml")
  echo "==> $kind: $side" >&2
  on_client_cpus timeout 600 "$bin" bench --addr "$addr" "${args[@]}" --top-k 10 --concurrency 1 \
    --keys 1000000 --zipf-s 0 --client-threads 1 --server-pid "$pid" --json "$json" |
    grep -E '^(raw|run|  +server CPU|host|  error)' >&2 || true
}

for _ in $(seq 1 "$ROUNDS"); do
  for kind in image embedding embedding-filtered; do
    leg "$kind" ferrite
    leg "$kind" peer
  done
done

echo
echo "Visual search, Ferrite vs the peer stack ($(nproc) CPUs, client and servers on the same machine, loopback; closed loop, concurrency 1; $FACTORY over $ITEMS items, efSearch $EF_SEARCH; peer threads $THREADS)"
"$py" "$peer/summarize.py" "$OUT" | tee "$OUT/summary.md"
ps -o rss= -p "$server" | awk '{printf "Ferrite server RSS %.0f MiB\n", $1/1024}'
ps -o rss= -p "$peer_pid" | awk '{printf "peer server RSS %.0f MiB\n", $1/1024}'
echo "results in $OUT" >&2
