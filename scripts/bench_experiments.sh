#!/usr/bin/env bash
# What an experiment costs a fraud call, in one alternated run: three `ferrite serve`
# processes on one Redis (the sample data materialized once), the same fraud pipeline and
# model, driven in turn by `ferrite bench --rpc score-fraud` at the same open-loop rate:
#   plain   no experiment;
#   assign  the experiment of `ab` without its exposure log: assignment and the canary's
#           bookkeeping alone;
#   ab      experiments/fraud_challenger.toml as an A/A split (95 % stable, 5 % canary, both on
#           fraud_txn_gbdt v1; exposure log on): assignment, the canary's bookkeeping and the
#           exposure record, on the same model;
#   shadow  the same plus a shadow variant (v2, the challenger, on a copy of every call, after
#           the answer).
# Each leg reads the server process's CPU time from /proc (its Redis apart: the same reads on
# every side) and the host's steal. Printed: per side the calls, p50/p99, server CPU per call,
# then what assignment (assign - plain) and the exposure log (ab - assign) add to a call's CPU
# and the shadow's p99 against ab's.
# Every load is bounded in count and time; loopback only.
#   ROUNDS (3), RATE (calls/s, 400), LEG_S (8), CONCURRENCY (64), SIDES (the sides run, in
#   this order: "plain assign ab shadow"), FERRITE_BIN (a built binary; default: cargo build
#   --release).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-experiments.XXXXXX)}"
mkdir -p "$OUT/legs"
OUT=$(cd "$OUT" && pwd)
DATA="$PWD/features/data"
ROUNDS="${ROUNDS:-3}"
RATE="${RATE:-400}"
LEG_S="${LEG_S:-8}"
CONCURRENCY="${CONCURRENCY:-64}"
read -r -a sides <<<"${SIDES:-plain assign ab shadow}"
[ -f models/fraud_txn_gbdt/2/model.onnx ] || {
  echo "models/fraud_txn_gbdt/2 is missing: bash scripts/setup.sh trains it" >&2
  exit 1
}
source scripts/bench_lib.sh
release_bin
peer_run_setup

REDIS_PORT=$(port)
redis "$REDIS_PORT" "$OUT/redis.log"
sleep 0.5

# One config per side; the experiments' canary state in each side's own directory (not the
# shared Redis: each side runs its own experiment).
config() { # side, experiments directory ("" for none), exposure log directory ("" for none)
  write_config "$OUT/$1.toml" <<CFG
data_dir = "$DATA"
online_store = "redis"
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
[pipelines]
directory = "$PWD/pipelines"
[experiments]
directory = "${2:-$OUT/none}"
state_store = "embedded"
state_dir = "$OUT/$1-state"
exposures_dir = "${3-$OUT/$1-exposures}"
CFG
}
mkdir -p "$OUT/none" "$OUT/ab-experiments" "$OUT/shadow-experiments"
# An A/A split (both arms on version 1, as the shipped 95/5 canary): what the side costs
# beyond plain is the experiment's own work, not a different model.
sed 's/^model_version = 2$/model_version = 1/' experiments/fraud_challenger.toml >"$OUT/ab-experiments/fraud_challenger.toml"
# The shadow side: the same split, and v2 (the challenger) runs as a shadow on every call.
awk '/^\[canary\]/ { print "[[variants]]\nname = \"shadow\"\nmodel_version = 2\nkind = \"shadow\"\n" } { print }' \
  "$OUT/ab-experiments/fraud_challenger.toml" >"$OUT/shadow-experiments/fraud_challenger.toml"
config plain ""
config assign "$OUT/ab-experiments" ""
config ab "$OUT/ab-experiments"
config shadow "$OUT/shadow-experiments"

echo "==> materialize into Redis :$REDIS_PORT" >&2
"$bin" materialize --quiet --config "$OUT/plain.toml" --start 2020-01-01 --end 2028-01-01

declare -A addr pid
for side in "${sides[@]}"; do
  mkdir -p "$OUT/$side"
  OUT="$OUT/$side" serve "$OUT/$side.toml"
  addr[$side]=$ADDR
  pid[$side]=$server
  pids+=("$server")
  server=""
done
for side in "${sides[@]}"; do echo "$side ${addr[$side]} (pid ${pid[$side]})" >&2; done

leg_no=0
for round in $(seq 1 "$ROUNDS"); do
  for side in "${sides[@]}"; do
    leg_no=$((leg_no + 1))
    json=$(printf '%s/legs/%03d-%02d-%s.json' "$OUT" "$leg_no" "$round" "$side")
    echo "==> round $round: $side at $RATE/s for $LEG_S s" >&2
    fraud_leg "$side" "$json"
  done
done

echo
echo "Experiments on the fraud pipeline ($(nproc) CPUs, client, servers and Redis on one machine, loopback; open loop $RATE/s, concurrency $CONCURRENCY, $ROUNDS rounds of $LEG_S s legs alternated ${sides[*]}; $(date -u +%F))"
.venv/bin/python - "$OUT/legs" <<'PY'
import json, sys
from collections import defaultdict
from pathlib import Path

legs = defaultdict(list)
by_round = defaultdict(dict)
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    _, round_no, side = f.stem.split("-", 2)
    report = json.loads(f.read_text())
    run = report["run"]
    run["steal"] = ((report.get("host") or {}).get("cpu") or {}).get("steal_pct", 0.0)
    legs[side].append(run)
    by_round[round_no][side] = run

def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2

def pooled(side):
    runs = legs[side]
    calls = sum(r["ok"] + r["errors"] for r in runs)
    cpu = sum(r["server_cpu"]["cpu_s"] for r in runs)
    return {
        "calls": calls,
        "errors": sum(r["errors"] for r in runs),
        "p50": median([r["latency_us"]["p50"] for r in runs]),
        "p99": median([r["latency_us"]["p99"] for r in runs]),
        "cpu_us": 1e6 * cpu / max(calls, 1),
        "steal": sum(r["steal"] for r in runs) / len(runs),
    }

rows = {s: pooled(s) for s in ("plain", "assign", "ab", "shadow") if legs[s]}
print(f"{'side':<8}{'calls':>8}{'errors':>8}{'p50 µs':>10}{'p99 µs':>10}{'CPU µs/call':>13}{'steal %':>9}")
for s, r in rows.items():
    print(f"{s:<8}{r['calls']:>8}{r['errors']:>8}{r['p50']:>10.0f}{r['p99']:>10.0f}{r['cpu_us']:>13.1f}{r['steal']:>9.1f}")
cpu = {s: r["cpu_us"] for s, r in rows.items()}
if {"plain", "assign", "ab"} <= cpu.keys():
    print(f"assignment (assign - plain): {cpu['assign'] - cpu['plain']:+.1f} µs server CPU per call; "
          f"exposure log (ab - assign): {cpu['ab'] - cpu['assign']:+.1f} µs; "
          f"both (ab - plain): {cpu['ab'] - cpu['plain']:+.1f} µs (plain pipeline {cpu['plain']:.1f} µs)")
if {"ab", "shadow"} <= cpu.keys():
    paired = [r["shadow"]["latency_us"]["p99"] / r["ab"]["latency_us"]["p99"]
              for r in by_round.values() if {"ab", "shadow"} <= r.keys()]
    print(f"shadow variant: p99 {rows['shadow']['p99'] / rows['ab']['p99']:.2f}x the same experiment without it "
          f"(median of the rounds' p99s), {median(paired):.2f}x as the median of the rounds' own ratios "
          f"({', '.join(f'{x:.2f}' for x in paired)}); CPU per call {rows['shadow']['cpu_us'] / rows['ab']['cpu_us']:.2f}x")
PY
echo "results in $OUT" >&2
