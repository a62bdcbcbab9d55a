#!/usr/bin/env bash
# Recommendations and pricing, Ferrite beside the peer stack (README.md): builds Ferrite,
# materializes features/data into an embedded store for `ferrite serve` and, through a Feast
# repository generated from features/*.toml, into the peer's own Redis; starts both services
# on free loopback ports, runs parity.py against them and, with BENCH_REQUESTS > 0, a short
# closed-loop `ferrite bench --rpc recommend` and `--rpc price` on each side (the same client,
# the same requests), summarized by summarize.py. Everything it starts is stopped on exit;
# every wait is bounded.
#   bash benches/peers/recs_pricing/run.sh [OUT]
# PARITY_USERS (300), BENCH_REQUESTS (0), BENCH_CONCURRENCY (1), FERRITE_PEER_VENV.
set -euo pipefail
cd "$(dirname "$0")/../../.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-recs-pricing.XXXXXX)}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PEER_VENV="${FERRITE_PEER_VENV:-$HOME/.cache/ferrite-peers/recs_pricing}"
DATA="${FERRITE_PIPELINE_DATA:-$PWD/features/data}"
BENCH_REQUESTS="${BENCH_REQUESTS:-0}"
BENCH_CONCURRENCY="${BENCH_CONCURRENCY:-1}"
peer=benches/peers/recs_pricing
py="$PEER_VENV/bin/python"

[ -x "$PEER_VENV/bin/feast" ] || { echo "no peer virtualenv at $PEER_VENV: see $peer/README.md" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is not on PATH" >&2; exit 1; }
source scripts/bench_lib.sh
release_bin
# bench_lib's port() uses the project's .venv; the peer's Python does as well.
port() { peer_port; }
peer_run_setup

echo "==> Ferrite: materialize $DATA into an embedded store ($OUT/online)" >&2
cat >"$OUT/ferrite.toml" <<CFG
[log]
level = "info"
[models]
repository = "$PWD/models"
poll_interval_s = 0
[features]
repository = "$PWD/features"
data_dir = "$DATA"
online_store = "embedded"
embedded_path = "$OUT/online"
[pipelines]
directory = "$PWD/pipelines"
CFG
"$bin" materialize --quiet --config "$OUT/ferrite.toml" --start 2020-01-01 --end 2028-01-01

PEER_REDIS=$(port)
redis-server --port "$PEER_REDIS" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$OUT/redis-peer.log" 2>&1 &
pids+=($!)
wait_for "$OUT/redis-peer.log" "Ready to accept connections" "$!" 180
echo "==> peer: Feast repository from features/*.toml, apply and materialize into Redis :$PEER_REDIS" >&2
"$py" "$peer/make_feast_repo.py" --features features --data "$DATA" --redis "127.0.0.1:$PEER_REDIS" \
  --out "$OUT/feast" >&2
(cd "$OUT/feast" && "$PEER_VENV/bin/feast" apply >"$OUT/feast-apply.log" 2>&1 &&
  "$PEER_VENV/bin/feast" materialize 2020-01-01T00:00:00 2028-01-01T00:00:00 >"$OUT/feast-materialize.log" 2>&1) ||
  { tail -30 "$OUT"/feast-*.log >&2; exit 1; }

echo "==> Ferrite: serve (catalogues built before it is ready)" >&2
"$bin" serve --config "$OUT/ferrite.toml" --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 >"$OUT/serve.log" 2>&1 &
server=$!
pids+=("$server")
wait_for "$OUT/serve.log" "ferrite listening" "$server" 180
FERRITE_ADDR=$(grep -o 'grpc=[0-9.:]*' "$OUT/serve.log" | head -1 | cut -d= -f2)

echo "==> peer: the glue service (catalogue built at start)" >&2
GLUE_PORT=$(port)
"$py" "$peer/recs_pricing_glue.py" --port "$GLUE_PORT" --feast-repo "$OUT/feast" --data "$DATA" >"$OUT/glue.log" 2>&1 &
glue=$!
pids+=("$glue")
wait_for "$OUT/glue.log" "glue listening" "$glue" 180
PEER_ADDR="127.0.0.1:$GLUE_PORT"
echo "Ferrite at $FERRITE_ADDR, peer at $PEER_ADDR; logs in $OUT" >&2

echo "==> parity" >&2
status=0
(cd "$peer" && "$py" parity.py --ferrite "$FERRITE_ADDR" --peer "$PEER_ADDR" --users "${PARITY_USERS:-300}") \
  | tee "$OUT/parity.log" || status=$?

if [ "$BENCH_REQUESTS" -gt 0 ]; then
  for rpc in recommend price; do
    keys=2000
    [ "$rpc" = price ] && keys=500
    for side in ferrite peer; do
      addr=$FERRITE_ADDR
      [ "$side" = peer ] && addr=$PEER_ADDR
      echo "==> bench: $rpc on $side ($BENCH_REQUESTS calls, concurrency $BENCH_CONCURRENCY)" >&2
      "$bin" bench --addr "$addr" --rpc "$rpc" --keys "$keys" --requests "$BENCH_REQUESTS" \
        --concurrency "$BENCH_CONCURRENCY" --duration-s 60 --warmup 50 \
        --json "$OUT/bench-$rpc-$side.json" 2>&1 | tee "$OUT/bench-$rpc-$side.log"
    done
  done
  "$py" "$peer/summarize.py" "$OUT" | tee "$OUT/summary.md"
fi
exit "$status"
