#!/usr/bin/env bash
# Online features and model serving, Ferrite against the servers a user would otherwise pick,
# side by side in one run (closed loop, `ferrite bench` for every side):
#   features  Ferrite's GetOnlineFeatures (`--rpc features`: 1 user x 30 features, user_stats
#             and user_profile, Redis online store) against Feast's feature server (`feast
#             serve`, HTTP/JSON, its own Redis; `--rpc feast-features`): the same definitions
#             (benches/peers/fraud/make_feast_repo.py --service fraud_v1 writes exactly those
#             two views), the same data, both materialized by their own command;
#   model     ModelInfer on models/fraud_gbdt (200 trees x 40 inputs, batch 1) against
#             MLServer 1.7 over KServe v2 gRPC running the same ONNX file with ONNX Runtime
#             (benches/peers/fraud/mlserver's runtime; `--rpc model-infer-gbdt` for both);
#   floor     each server's empty call: Ferrite's gRPC health check, Feast's GET /health,
#             MLServer's ServerLive.
# ROUNDS rounds, each running every leg once, the two sides of an area back to back and in
# turn first; legs of LEG_S seconds (floors FLOOR_S) or LEG_CALLS calls, CONCURRENCY callers.
# Each leg reads the CPU time of every process of its side's stack from /proc (Ferrite and its
# Redis; feast serve's gunicorn master, its workers and its Redis; MLServer and any worker
# process) and the host's steal. At the end, one table: calls/s and server CPU per call of
# each side, and the peer/Ferrite ratios.
# Needs redis-server, the peer's virtualenv (benches/peers/fraud/README.md; never installed
# by setup.sh or CI) and models/fraud_gbdt. Data: features/data (the committed sample, 2,000
# users); FERRITE_PEERS_DATA=DIR KEYS=N for another (the large set: KEYS=150000).
#   ROUNDS (3), LEG_S (10), FLOOR_S (5), LEG_CALLS (200000), CONCURRENCY (16),
#   FEAST_WORKERS (gunicorn workers of feast serve; one per CPU), FEAST_UNPATCHED (1: without
#   the patch benches/peers/fraud/feast_serve.py applies), CLIENT_THREADS (1),
#   FERRITE_BIN (a built binary; default: cargo build --release). HALT_POLL_NS, PIN_CPUS:
#   scripts/bench_lib.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-peers.XXXXXX)}"
mkdir -p "$OUT/legs"
OUT=$(cd "$OUT" && pwd)
PEER_VENV="${FERRITE_PEER_VENV:-$HOME/.cache/ferrite-peers/fraud}"
DATA="${FERRITE_PEERS_DATA:-$PWD/features/data}"
KEYS="${KEYS:-2000}"
ROUNDS="${ROUNDS:-3}"
LEG_S="${LEG_S:-10}"
FLOOR_S="${FLOOR_S:-5}"
LEG_CALLS="${LEG_CALLS:-200000}"
CONCURRENCY="${CONCURRENCY:-16}"
FEAST_WORKERS="${FEAST_WORKERS:-$(nproc)}"
CLIENT_THREADS="${CLIENT_THREADS:-1}"
MODEL="$PWD/models/fraud_gbdt/1/model.onnx"
peer=benches/peers/fraud
root=$PWD

[ -x "$PEER_VENV/bin/feast" ] && [ -x "$PEER_VENV/bin/mlserver" ] || {
  echo "no peer virtualenv at $PEER_VENV: see $peer/README.md" >&2
  exit 1
}
[ -f "$MODEL" ] || { echo "no model at $MODEL" >&2; exit 1; }
source scripts/bench_lib.sh
release_bin
py="$PEER_VENV/bin/python"
# bench_lib's port() uses the project's .venv; the peer's Python does as well.
port() { peer_port; }
peer_run_setup


two_redis

echo "==> Ferrite: materialize user_stats and user_profile into Redis :$FERRITE_REDIS" >&2
write_config "$OUT/ferrite.toml" <<CFG
data_dir = "$DATA"
online_store = "redis"
redis_url = "redis://127.0.0.1:$FERRITE_REDIS/0"
CFG
"$bin" materialize --quiet --config "$OUT/ferrite.toml" --start 2020-01-01 --end 2028-01-01 \
  --view user_stats --view user_profile

echo "==> Feast: repository from features/*.toml, apply and materialize into Redis :$PEER_REDIS" >&2
"$py" "$peer/make_feast_repo.py" --features features --data "$DATA" --service fraud_v1 \
  --redis "127.0.0.1:$PEER_REDIS" --out "$OUT/feast" >&2
(cd "$OUT/feast" && "$PEER_VENV/bin/feast" apply >"$OUT/feast-apply.log" 2>&1 &&
  "$PEER_VENV/bin/feast" materialize 2020-01-01T00:00:00 2028-01-01T00:00:00 >"$OUT/feast-materialize.log" 2>&1) ||
  { tail -n 30 "$OUT"/feast-*.log >&2; exit 1; }

echo "==> Feast: feast serve ($FEAST_WORKERS workers)" >&2
FEAST_PORT=$(port)
# No access log and no worker recycling (gunicorn's --max-requests, 1000 by default, restarts
# a worker every ~1000 calls), and the glue's patch (feast_serve.py): all in the peer's favour.
# FEAST_UNPATCHED=1 runs `feast serve` itself.
feast_serve=("$py" "$root/$peer/feast_serve.py")
[ -z "${FEAST_UNPATCHED:-}" ] || feast_serve=("$PEER_VENV/bin/feast" serve)
(cd "$OUT/feast" && on_server_cpu "${feast_serve[@]}" --host 127.0.0.1 --port "$FEAST_PORT" \
  --workers "$FEAST_WORKERS" --no-access-log --max-requests 0 --registry_ttl_sec 3600 >"$OUT/feast-serve.log" 2>&1) &
feast=$!
pids+=("$feast")
for _ in $(seq 1 1200); do
  [ "$(grep -c 'Application startup complete' "$OUT/feast-serve.log" 2>/dev/null)" -ge "$FEAST_WORKERS" ] && break
  kill -0 "$feast" 2>/dev/null || break
  sleep 0.1
done
[ "$(grep -c 'Application startup complete' "$OUT/feast-serve.log")" -ge "$FEAST_WORKERS" ] ||
  { tail -n 30 "$OUT/feast-serve.log" >&2; echo "feast serve did not start" >&2; exit 1; }
FEAST_ADDR="127.0.0.1:$FEAST_PORT"

echo "==> MLServer: fraud_gbdt" >&2
mkdir -p "$OUT/mlserver/fraud_gbdt"
cp "$peer/mlserver/settings.json" "$OUT/mlserver/"
cp "$peer/mlserver/fraud_txn_gbdt/onnx_runtime.py" "$OUT/mlserver/fraud_gbdt/"
"$py" - "$peer/mlserver/fraud_txn_gbdt/model-settings.json" "$OUT/mlserver/fraud_gbdt/model-settings.json" "$MODEL" <<'PY'
import json, sys
example, path, model = sys.argv[1:]
settings = json.load(open(example))
settings["name"] = "fraud_gbdt"
settings["parameters"]["uri"] = model
json.dump(settings, open(path, "w"), indent=1)
PY
MLS_GRPC=$(port)
MLS_HTTP=$(port)
MLS_METRICS=$(port)
MLSERVER_GRPC_PORT=$MLS_GRPC MLSERVER_HTTP_PORT=$MLS_HTTP MLSERVER_METRICS_PORT=$MLS_METRICS \
  on_server_cpu "$PEER_VENV/bin/mlserver" start "$OUT/mlserver" >"$OUT/mlserver.log" 2>&1 &
mlserver=$!
pids+=("$mlserver")
wait_for "$OUT/mlserver.log" "gRPC server running" "$mlserver"
wait_for "$OUT/mlserver.log" "Loaded model 'fraud_gbdt' successfully" "$mlserver"
MLS_ADDR="127.0.0.1:$MLS_GRPC"

echo "==> Ferrite: serve" >&2
serve "$OUT/ferrite.toml"
FERRITE_ADDR=$ADDR
sleep 2 # every server up; let their start-up work settle
FERRITE_PIDS=$(proc_tree "$server" "$ferrite_redis" | sort -un | paste -sd,)
FEAST_PIDS=$(proc_tree "$feast" "$peer_redis" | sort -un | paste -sd,)
MLS_PIDS=$(proc_tree "$mlserver" | sort -un | paste -sd,)
{
  echo "Ferrite  $FERRITE_ADDR  pids $FERRITE_PIDS"
  echo "Feast    $FEAST_ADDR  pids $FEAST_PIDS"
  echo "MLServer $MLS_ADDR  pids $MLS_PIDS"
} | tee "$OUT/servers.txt" >&2

leg_no=0
# One leg: area, side, seconds, then ferrite bench's options. Writes $OUT/legs/NNN-area-side.json.
leg() {
  local area=$1 side=$2 seconds=$3 addr pidlist json
  shift 3
  case $side in
    ferrite) addr=$FERRITE_ADDR pidlist=$FERRITE_PIDS ;;
    feast) addr=$FEAST_ADDR pidlist=$FEAST_PIDS ;;
    mlserver) addr=$MLS_ADDR pidlist=$MLS_PIDS ;;
  esac
  leg_no=$((leg_no + 1))
  json=$(printf '%s/legs/%03d-%s-%s.json' "$OUT" "$leg_no" "$area" "$side")
  echo "==> $area, $side, $seconds s" >&2
  on_client_cpus "$bin" bench --addr "$addr" --concurrency "$CONCURRENCY" --requests "$LEG_CALLS" \
    --duration-s "$seconds" --warmup 100 --client-threads "$CLIENT_THREADS" --server-pid "$pidlist" \
    --json "$json" "$@" | grep -E '^(run|  +server CPU|host|  error)' >&2 || true
}
features() { # side
  local rpc=features
  [ "$1" = ferrite ] || rpc="feast-features"
  leg features "$1" "$LEG_S" --rpc "$rpc" --keys "$KEYS" --feature-repo features
}
model() { leg model "$1" "$LEG_S" --rpc model-infer-gbdt --model fraud_gbdt; }
floor() {
  case $1 in
    ferrite) leg floor ferrite "$FLOOR_S" --rpc health ;;
    feast) leg floor feast "$FLOOR_S" --rpc feast-health ;;
    mlserver) leg floor mlserver "$FLOOR_S" --rpc server-live ;;
  esac
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then first=ferrite; else first=peer; fi
  for area in features model floor; do
    case $area in
      features) peer_side=feast ;;
      model) peer_side=mlserver ;;
      floor) peer_side="feast mlserver" ;;
    esac
    if [ "$first" = ferrite ]; then order="ferrite $peer_side"; else order="$peer_side ferrite"; fi
    for side in $order; do "$area" "$side"; done
  done
done

echo
echo "Ferrite against feast serve and MLServer ($(nproc) CPUs, clients and servers on one machine, loopback; closed loop, $CONCURRENCY callers, $ROUNDS rounds of $LEG_S s legs (floors $FLOOR_S s), alternated; data $DATA, $KEYS users; $(date -u +%F))"
"$py" - "$OUT/legs" <<'PY'
import json, sys
from collections import defaultdict
from pathlib import Path

legs = defaultdict(list)
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    _, area, side = f.stem.split("-", 2)
    report = json.loads(f.read_text())
    run = report["run"]
    run["steal"] = ((report.get("host") or {}).get("cpu") or {}).get("steal_pct", 0.0)
    legs[area, side].append(run)

def pooled(runs):
    calls = sum(r["ok"] + r["errors"] for r in runs)
    seconds = sum(r["duration_s"] for r in runs)
    cpu = sum(r["server_cpu"]["cpu_s"] for r in runs)
    mid = lambda xs: sorted(xs)[len(xs) // 2]
    present = [r["present_pct"] for r in runs if r.get("present_pct") is not None]
    return {
        "legs": len(runs),
        "calls": calls,
        "errors": sum(r["errors"] for r in runs),
        "cut": sum(r.get("cut", 0) for r in runs),
        "rps": calls / max(seconds, 1e-9),
        "cpu_us": 1e6 * cpu / max(calls, 1),
        "p50": mid([r["latency_us"]["p50"] for r in runs]),
        "p99": mid([r["latency_us"]["p99"] for r in runs]),
        "present": f"{sum(present) / len(present):.1f}" if present else "",
        "steal": " ".join(f"{r['steal']:.1f}" for r in runs),
    }

names = {
    ("features", "ferrite"): "Ferrite GetOnlineFeatures",
    ("features", "feast"): "feast serve /get-online-features",
    ("model", "ferrite"): "Ferrite ModelInfer",
    ("model", "mlserver"): "MLServer ModelInfer",
    ("floor", "ferrite"): "Ferrite health check",
    ("floor", "feast"): "feast serve GET /health",
    ("floor", "mlserver"): "MLServer ServerLive",
}
rows = {k: pooled(legs[k]) for k in names if legs[k]}
head = f"{'':<34}{'legs':>5}{'calls':>9}{'errors':>7}{'cut':>5}{'calls/s':>10}{'CPU µs/call':>13}{'p50 µs':>9}{'p99 µs':>9}{'present %':>11}  steal % per leg"
print(head)
for k, r in rows.items():
    print(f"{names[k]:<34}{r['legs']:>5}{r['calls']:>9}{r['errors']:>7}{r['cut']:>5}{r['rps']:>10.0f}{r['cpu_us']:>13.1f}"
          f"{r['p50']:>9.0f}{r['p99']:>9.0f}{r['present']:>11}  {r['steal']}")
print("\npeer / Ferrite (p50, p99: median of the legs')")
for area, side in (("features", "feast"), ("model", "mlserver"), ("floor", "feast"), ("floor", "mlserver")):
    f, p = rows.get((area, "ferrite")), rows.get((area, side))
    if f and p:
        print(f"{names[area, side]:<34} calls/s {p['rps'] / f['rps']:.3f} (Ferrite {f['rps'] / p['rps']:.1f}x)   "
              f"CPU per call {p['cpu_us'] / f['cpu_us']:.1f}   p50 {p['p50'] / f['p50']:.1f}   p99 {p['p99'] / f['p99']:.1f}")
PY
echo "results in $OUT" >&2
