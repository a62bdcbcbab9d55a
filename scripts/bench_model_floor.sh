#!/usr/bin/env bash
# ModelInfer against the physical floor (issue 19): server CPU per call of KServe ModelInfer
# on `fraud_gbdt` (the shipped config, embedded store) against the floor the issue names, a
# bare tonic server answering only the health check (`ferrite floor-server`, no Ferrite
# layers), plus the unavoidable work, the raw model run in process (`--with-raw`, ONNX
# Runtime, batch 1, p50). Both servers run side by side; each `ferrite bench` alternates the
# floor's legs (on the bare server, `--floor-addr`) with ModelInfer's in ROUNDS rounds, so
# every round pairs the two within seconds. RUNS runs; per round:
#   ratio = ModelInfer CPU per call / (bare floor CPU per call + raw model p50)
# and the same against Ferrite's own health check (a run with the floor on the server itself).
#   bash scripts/bench_model_floor.sh [OUT]
# CONCURRENCY (16), REQUESTS (40000 per run), RUNS (3), ROUNDS (4). Loopback only; every load
# is bounded in count and time. About 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-model-floor.XXXXXX)}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CONCURRENCY="${CONCURRENCY:-16}"
REQUESTS="${REQUESTS:-40000}"
RUNS="${RUNS:-3}"
ROUNDS="${ROUNDS:-4}"
source scripts/bench_lib.sh
release_bin

shipped_config "$OUT/ferrite.toml"
serve "$OUT/ferrite.toml"
"$bin" floor-server --grpc-addr 127.0.0.1:0 >"$OUT/floor.log" 2>&1 &
floor=$!
trap 'kill -TERM "$floor" 2>/dev/null || true; stop' EXIT
for _ in $(seq 1 100); do grep -q "floor listening" "$OUT/floor.log" && break; sleep 0.1; done
FLOOR_ADDR=$(grep -o 'grpc=[0-9.:]*' "$OUT/floor.log" | head -1 | cut -d= -f2)
[ -n "$FLOOR_ADDR" ] || { cat "$OUT/floor.log" >&2; echo "the floor server did not start" >&2; exit 1; }

common=(--addr "$ADDR" --rpc model-infer-gbdt --concurrency "$CONCURRENCY" --requests "$REQUESTS"
  --duration-s 30 --with-floor --rounds "$ROUNDS" --client-threads 1 --server-pid "$server")
for run in $(seq "$RUNS"); do
  "$bin" bench "${common[@]}" --floor-addr "$FLOOR_ADDR" --floor-pid "$floor" --with-raw --models "$PWD/models" \
    --json "$OUT/bare-$run.json" >"$OUT/bare-$run.txt"
  "$bin" bench "${common[@]}" --json "$OUT/own-$run.json" >"$OUT/own-$run.txt"
  echo "run $run done" >&2
done
.venv/bin/python - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
print("run round  bare floor  own health  raw p50  ModelInfer  ratio (bare / own health)  steal %")
bare_ratios, own_ratios = [], []
for r in range(1, runs + 1):
    bare, own = json.load(open(f"{out}/bare-{r}.json")), json.load(open(f"{out}/own-{r}.json"))
    raw = next(x for x in bare["raw"] if x["batch"] == 1 and x["rate"] is None)["latency_us"]["p50"]
    for i, (b, o) in enumerate(zip(bare["rounds"], own["rounds"]), 1):
        # ModelInfer from the bare run's round (paired with its bare floor); own health from
        # the other run's same round.
        call = b["run_cpu_us"]
        bare_ratios.append(call / (b["floor_cpu_us"] + raw))
        own_ratios.append(o["run_cpu_us"] / (o["floor_cpu_us"] + raw))
        steal = max((x["cpu"] or {}).get("steal_pct", 0.0) for x in (b, o))
        print(f"{r:3} {i:5}  {b['floor_cpu_us']:10.1f}  {o['floor_cpu_us']:10.1f}  {raw:7.1f}  {call:10.1f}  "
              f"{bare_ratios[-1]:.2f}x / {own_ratios[-1]:.2f}x  {steal:.1f}")
print(f"median ratio over {len(bare_ratios)} rounds: {statistics.median(bare_ratios):.2f}x against the bare floor, "
      f"{statistics.median(own_ratios):.2f}x against Ferrite's own health check; "
      f"rounds above 1.5x: {sum(x > 1.5 for x in bare_ratios)} / {sum(x > 1.5 for x in own_ratios)}")
PY
