#!/usr/bin/env bash
# The fraud call with its score from the model's trees walked in Rust (the default, once they
# agreed with ONNX Runtime on 1,000 rows) against the same call scored by ONNX Runtime
# (`fraud.native_trees = false`), in one alternated run: two `ferrite serve` processes on one
# Redis (the sample data materialized once), experiments off, the shipped fraud pipeline,
# driven in turn by `ferrite bench --rpc score-fraud` at the same open-loop rate. Each server
# first answers WARMUP calls (unmeasured; the trees are trusted after 1,000 rows). Printed:
# per side the calls, p50/p99 (median of the rounds) and server CPU per call (pooled), and
# their ratios.
#   ROUNDS (4), RATE (calls/s, 400), LEG_S (8), CONCURRENCY (64), WARMUP (1500),
#   FERRITE_BIN (a built binary; default: cargo build --release).
# Every load is bounded in count and time; loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-fraud-trees.XXXXXX)}"
mkdir -p "$OUT/legs" "$OUT/none"
OUT=$(cd "$OUT" && pwd)
DATA="$PWD/features/data"
ROUNDS="${ROUNDS:-4}"
RATE="${RATE:-400}"
LEG_S="${LEG_S:-8}"
CONCURRENCY="${CONCURRENCY:-64}"
WARMUP="${WARMUP:-1500}"
source scripts/bench_lib.sh
release_bin
peer_run_setup

REDIS_PORT=$(port)
redis "$REDIS_PORT" "$OUT/redis.log"
wait_for "$OUT/redis.log" "Ready to accept connections" "${pids[-1]}" 60

# The shipped pipelines, and a copy whose fraud pipeline keeps to ONNX Runtime.
mkdir -p "$OUT/onnx-pipelines"
cp pipelines/*.toml "$OUT/onnx-pipelines/"
sed -i 's/^explain = \(.*\)$/explain = \1\nnative_trees = false/' "$OUT/onnx-pipelines/fraud.toml"
grep -q '^native_trees = false' "$OUT/onnx-pipelines/fraud.toml"
config() { # side, pipelines directory
  write_config "$OUT/$1.toml" <<CFG
data_dir = "$DATA"
online_store = "redis"
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
[pipelines]
directory = "$2"
[experiments]
directory = "$OUT/none"
state_store = "embedded"
state_dir = "$OUT/$1-state"
exposures_dir = ""
CFG
}
config trees "$PWD/pipelines"
config onnx "$OUT/onnx-pipelines"

echo "==> materialize into Redis :$REDIS_PORT" >&2
"$bin" materialize --quiet --config "$OUT/trees.toml" --start 2020-01-01 --end 2028-01-01

declare -A addr pid
for side in trees onnx; do
  mkdir -p "$OUT/$side"
  OUT="$OUT/$side" serve "$OUT/$side.toml"
  addr[$side]=$ADDR
  pid[$side]=$server
  pids+=("$server")
  server=""
  "$bin" bench --addr "${addr[$side]}" --rpc score-fraud --transactions "$DATA/transactions.parquet" \
    --keys 30000 --concurrency 8 --requests "$WARMUP" >/dev/null
  echo "$side ${addr[$side]} (pid ${pid[$side]}), warmed up with $WARMUP calls" >&2
done
grep -h "they score its rows from now on" "$OUT"/trees/serve.log >&2 ||
  echo "warning: the trees server did not report its trees trusted" >&2

leg_no=0
for round in $(seq 1 "$ROUNDS"); do
  for side in trees onnx; do
    leg_no=$((leg_no + 1))
    json=$(printf '%s/legs/%03d-%s.json' "$OUT" "$leg_no" "$side")
    echo "==> round $round: $side at $RATE/s for $LEG_S s" >&2
    fraud_leg "$side" "$json"
  done
done

echo
echo "Fraud scores by the trees in Rust vs ONNX Runtime ($(nproc) CPUs, client, servers and Redis on one machine, loopback; open loop $RATE/s, concurrency $CONCURRENCY, $ROUNDS rounds of $LEG_S s legs alternated; $(date -u +%F))"
.venv/bin/python - "$OUT/legs" <<'PY'
import json, sys
from collections import defaultdict
from pathlib import Path

legs = defaultdict(list)
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    side = f.stem.split("-", 1)[1]
    report = json.loads(f.read_text())
    run = report["run"]
    run["steal"] = ((report.get("host") or {}).get("cpu") or {}).get("steal_pct", 0.0)
    legs[side].append(run)

def median(xs):
    xs = sorted(xs)
    return (xs[len(xs) // 2] + xs[(len(xs) - 1) // 2]) / 2

rows = {}
for side in ("trees", "onnx"):
    runs = legs[side]
    calls = sum(r["ok"] + r["errors"] for r in runs)
    rows[side] = {
        "calls": calls,
        "errors": sum(r["errors"] for r in runs),
        "fallbacks": sum(r.get("fallbacks", 0) for r in runs),
        "p50": median([r["latency_us"]["p50"] for r in runs]),
        "p99": median([r["latency_us"]["p99"] for r in runs]),
        "cpu": 1e6 * sum(r["server_cpu"]["cpu_s"] for r in runs) / max(calls, 1),
        "steal": sum(r["steal"] for r in runs) / len(runs),
    }
print(f"{'side':<7}{'calls':>8}{'errors':>8}{'fallbacks':>10}{'p50 µs':>9}{'p99 µs':>9}{'CPU µs/call':>13}{'steal %':>9}")
for side, r in rows.items():
    print(f"{side:<7}{r['calls']:>8}{r['errors']:>8}{r['fallbacks']:>10}{r['p50']:>9.0f}{r['p99']:>9.0f}{r['cpu']:>13.1f}{r['steal']:>9.1f}")
t, o = rows["trees"], rows["onnx"]
print(f"trees / onnx: CPU per call {t['cpu'] / o['cpu']:.2f}x ({t['cpu'] - o['cpu']:+.0f} µs), "
      f"p50 {t['p50'] / o['p50']:.2f}x, p99 {t['p99'] / o['p99']:.2f}x")
PY
echo "results in $OUT" >&2
