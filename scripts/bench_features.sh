#!/usr/bin/env bash
# Feature-store benchmarks on the large sample dataset (BENCHMARKS.md records the output):
# materialization into one Redis and into the embedded store, a point-in-time training set,
# and GetOnlineFeatures over gRPC from a separate client process (ferrite bench) on the
# embedded store and on Redis (1 x 30 at 1,000 calls/s and sequential, 100 x 30 sequential and
# at 500 calls/s), beside the empty-RPC floor alternated with them in 5 rounds.
# Everything listens on loopback; every load is bounded in count and time. HALT_POLL_NS=N,
# PIN_CPUS=1: see scripts/bench_lib.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
DATA="${FERRITE_LARGE_DATA:-$HOME/.cache/ferrite-data/large}"
OUT="${1:-$(mktemp -d -t ferrite-bench.XXXXXX)}"
mkdir -p "$OUT"
source scripts/bench_lib.sh
release_bin

if [ ! -f "$DATA/user_stats.parquet" ]; then
  .venv/bin/pip install -q -r scripts/requirements-data.txt
  .venv/bin/python scripts/make_sample_data.py --size large --out "$DATA"
fi

REDIS_PORT=$(port)
on_server_cpu redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$OUT/redis.log" 2>&1 &
redis=$!
server=""
cleanup() {
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
  kill "$redis" 2>/dev/null || true
  restore_halt_poll
}
trap cleanup EXIT
set_halt_poll
sleep 0.5

config() { # $1 store kind, $2 file
  write_config "$2" <<CFG
data_dir = "$DATA"
online_store = "$1"
embedded_path = "$OUT/embedded"
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
CFG
}
config redis "$OUT/redis.toml"
config embedded "$OUT/embedded.toml"

measure() { # label, command...
  local label=$1; shift
  echo "==> $label: $*" >&2
  /usr/bin/time -v "$@" >"$OUT/$label.out" 2>"$OUT/$label.time"
  cat "$OUT/$label.out"
  grep -E "Maximum resident|Elapsed" "$OUT/$label.time"
}

# Both stores are always filled (idempotent): the serving benchmarks below read from them,
# and an empty store answers as fast as it finds nothing. SERVE_ONLY=1 skips the training set.
measure materialize-redis "$bin" materialize --quiet --config "$OUT/redis.toml" --start 2026-01-01 --end 2027-01-01 --view user_stats --view user_profile
measure materialize-embedded "$bin" materialize --quiet --config "$OUT/embedded.toml" --start 2026-01-01 --end 2027-01-01 --view user_stats --view user_profile
if [ -z "${SERVE_ONLY:-}" ]; then
measure training-set "$bin" training-set --config "$OUT/embedded.toml" --entities "$DATA/transactions.parquet" --feature 'user_stats:*' --feature 'user_profile:*' --out "$OUT/train.parquet"
fi

for store in embedded redis; do
  serve "$OUT/$store.toml"
  echo "==> GetOnlineFeatures on $store at $ADDR" >&2
  on_client_cpus "$bin" bench --addr "$ADDR" --rpc features --keys 150000 --rate 1000 --concurrency 64 --requests 10000 --duration-s 20 --with-floor --rounds 5 --json "$OUT/$store-1x30.json"
  on_client_cpus "$bin" bench --addr "$ADDR" --rpc features --keys 150000 --concurrency 1 --requests 5000 --duration-s 20 --with-floor --rounds 5 --client-threads 1 --json "$OUT/$store-1x30-sequential.json"
  on_client_cpus "$bin" bench --addr "$ADDR" --rpc features-100 --keys 149900 --concurrency 1 --requests 5000 --duration-s 20 --with-floor --rounds 5 --json "$OUT/$store-100x30.json"
  on_client_cpus "$bin" bench --addr "$ADDR" --rpc features-100-columnar --keys 149900 --concurrency 1 --requests 5000 --duration-s 20 --json "$OUT/$store-100x30-columnar.json"
  on_client_cpus "$bin" bench --addr "$ADDR" --rpc features-100 --keys 149900 --rate 500 --concurrency 64 --requests 5000 --duration-s 20 --json "$OUT/$store-100x30-open.json"
  on_client_cpus "$bin" bench --addr "$ADDR" --rpc features-100-columnar --keys 149900 --rate 500 --concurrency 64 --requests 5000 --duration-s 20 --json "$OUT/$store-100x30-columnar-open.json"
  ps -o rss= -p "$server" | awk '{printf "server RSS %.0f MiB\n", $1/1024}'
  stop
done
echo "results in $OUT" >&2
