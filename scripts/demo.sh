#!/usr/bin/env bash
# The main job: install what is missing, build, serve on the embedded store with the example
# models and data, and show every service answering (with latency). On a terminal it then keeps
# serving until Ctrl-C; otherwise it stops the server and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

GRPC_ADDR="${FERRITE_GRPC_ADDR:-127.0.0.1:50051}"
METRICS_ADDR="${FERRITE_METRICS_ADDR:-127.0.0.1:9464}"

echo "==> building ferrite (release)" >&2
cargo build --release --locked -p ferrite
bin="$CARGO_TARGET_DIR/release/ferrite"

echo "==> materializing the sample features (features/data) into the embedded online store" >&2
"$bin" validate --config ferrite.toml
"$bin" materialize-incremental --config ferrite.toml

# Built when missing or built for another model than ferrite.toml's (the server refuses it then).
model=$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("ferrite.toml", "rb"))["search"]["model"])')
if ! grep -q "\"model\": \"$model\"," .ferrite/index/index.json 2>/dev/null; then
  echo "==> building the visual-search index of the sample photos (data/photos) with $model" >&2
  "$bin" build-index --catalog data/photos/catalog.jsonl --model "$model" --out .ferrite/index
fi

log=$(mktemp -t ferrite-demo.XXXXXX.log)
"$bin" serve --config ferrite.toml --grpc-addr "$GRPC_ADDR" --metrics-addr "$METRICS_ADDR" >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  grep -q "ferrite listening" "$log" && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; echo "ferrite serve exited" >&2; exit 1; }
  sleep 0.1
done
grep "ferrite listening" "$log" >&2 || { cat "$log" >&2; exit 1; }

echo "==> one request per service" >&2
.venv/bin/python scripts/demo_client.py --addr "$GRPC_ADDR"

echo "==> latency: 2000 health checks (the empty-RPC floor) from the load generator" >&2
"$bin" bench --addr "$GRPC_ADDR" --rpc health --requests 2000 --concurrency 1

echo "==> latency: 2000 GetOnlineFeatures calls, 1 user x 30 features, beside the floor" >&2
"$bin" bench --addr "$GRPC_ADDR" --rpc features --keys 2000 --requests 2000 --concurrency 1 --with-floor

echo "==> latency: 2000 ScoreFraud calls (130 features, 400-tree GBDT, decision) beside the floor" >&2
"$bin" bench --addr "$GRPC_ADDR" --rpc score-fraud --keys 2000 --requests 2000 --concurrency 1 --with-floor

echo "==> latency: 1000 Recommend calls (retrieve 200, re-check, rank, 20 items) beside the floor" >&2
"$bin" bench --addr "$GRPC_ADDR" --rpc recommend --keys 2000 --requests 1000 --concurrency 1 --with-floor

echo "==> latency: 1000 Price calls (demand model over the candidate prices) beside the floor" >&2
"$bin" bench --addr "$GRPC_ADDR" --rpc price --keys 500 --requests 1000 --concurrency 1 --with-floor

echo "==> latency: 200 VisualSearch calls (decode, embed, search a photo) beside the floor" >&2
"$bin" bench --addr "$GRPC_ADDR" --rpc visual-search --images data/photos --requests 200 --concurrency 1 --with-floor

echo "==> metrics: http://$METRICS_ADDR/metrics" >&2
curl -s "http://$METRICS_ADDR/metrics" | grep -E '^ferrite_(grpc_requests|pipeline_rows)_total' | head -n 12

if [ -t 0 ]; then
  echo "==> serving on $GRPC_ADDR (log: $log); Ctrl-C to stop" >&2
  wait $server
fi
