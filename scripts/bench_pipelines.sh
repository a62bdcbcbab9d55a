#!/usr/bin/env bash
# Fraud scoring, Ferrite against the stack it replaces (benches/peers/fraud: Feast with a Redis
# online store + a Python gRPC glue service + MLServer running the same ONNX model), both
# answering ferrite.v1.ScoringService/ScoreFraud for the sample's transactions and driven by
# `ferrite bench --rpc score-fraud` in one run:
#   1. at each of RATES, the two sides alternated ROUNDS times (open loop, same concurrency),
#      each round also Ferrite's floor (its health check) and the call's online read;
#   2. the peer at rising rates (PEER_LADDER) until a leg fails (errors, skipped calls or
#      p99 > 50 ms), each sustained rate also run on Ferrite;
#   3. Ferrite alone at rising rates (FERRITE_LADDER) until a leg fails.
# Each leg reads the CPU time of every server-side process from /proc (Ferrite and its Redis;
# the glue service with Feast in it, MLServer and its workers, and the peer's Redis) and the
# host's steal; benches/peers/fraud/summarize.py prints the table and the ratios at the end.
# Two Redis servers on free loopback ports; every load is bounded in count and time.
# Needs the peer's virtualenv (benches/peers/fraud/README.md; never installed by setup.sh or
# CI) and models/fraud_txn_gbdt. HALT_POLL_NS=N, PIN_CPUS=1: see scripts/bench_lib.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-pipelines.XXXXXX)}"
mkdir -p "$OUT/legs"
OUT=$(cd "$OUT" && pwd)
PEER_VENV="${FERRITE_PEER_VENV:-$HOME/.cache/ferrite-peers/fraud}"
DATA="${FERRITE_PIPELINE_DATA:-$PWD/features/data}"
MODEL_DIR="${MODEL_DIR:-$PWD/models/fraud_txn_gbdt/1}"
RATES="${RATES:-20 40}"
ROUNDS="${ROUNDS:-2}"
PEER_LADDER="${PEER_LADDER:-50 60 70 80 100 120 160 200 300}"
FERRITE_LADDER="${FERRITE_LADDER:-500 1000 1500 2000 3000 4000 6000 8000 12000}"
# A leg lasts LEG_S seconds, longer at low rates to make MIN_CALLS calls (30 s at most).
LEG_S="${LEG_S:-10}"
MIN_CALLS="${MIN_CALLS:-500}"
CONCURRENCY="${CONCURRENCY:-256}"
KEYS="${KEYS:-30000}"
P99_LIMIT_US=50000
peer=benches/peers/fraud

[ -x "$PEER_VENV/bin/feast" ] && [ -x "$PEER_VENV/bin/mlserver" ] || {
  echo "no peer virtualenv at $PEER_VENV: see $peer/README.md" >&2
  exit 1
}
[ -f "$MODEL_DIR/model.onnx" ] || { echo "no model at $MODEL_DIR/model.onnx" >&2; exit 1; }
source scripts/bench_lib.sh
release_bin
py="$PEER_VENV/bin/python"
# bench_lib's port() uses the project's .venv; the peer's Python does as well.
port() { peer_port; }

peer_run_setup



two_redis

echo "==> Ferrite: materialize into Redis :$FERRITE_REDIS" >&2
write_config "$OUT/ferrite.toml" <<CFG
data_dir = "$DATA"
online_store = "redis"
redis_url = "redis://127.0.0.1:$FERRITE_REDIS/0"
[pipelines]
directory = "$PWD/pipelines"
CFG
"$bin" materialize --quiet --config "$OUT/ferrite.toml" --start 2020-01-01 --end 2028-01-01

echo "==> peer: Feast repository from features/*.toml, apply and materialize into Redis :$PEER_REDIS" >&2
"$py" "$peer/make_feast_repo.py" --features features --data "$DATA" --service fraud_v2 \
  --redis "127.0.0.1:$PEER_REDIS" --out "$OUT/feast" >&2
(cd "$OUT/feast" && "$PEER_VENV/bin/feast" apply >"$OUT/feast-apply.log" 2>&1 &&
  "$PEER_VENV/bin/feast" materialize 2020-01-01T00:00:00 2028-01-01T00:00:00 >"$OUT/feast-materialize.log" 2>&1) ||
  { tail -30 "$OUT"/feast-*.log >&2; exit 1; }

echo "==> peer: MLServer and the glue service" >&2
cp -r "$peer/mlserver" "$OUT/mlserver"
"$py" - "$OUT/mlserver/fraud_txn_gbdt/model-settings.json" "$MODEL_DIR/model.onnx" <<'PY'
import json, sys
path, model = sys.argv[1:]
settings = json.load(open(path))
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
wait_for "$OUT/mlserver.log" "Loaded model 'fraud_txn_gbdt' successfully" "$mlserver"
GLUE_PORT=$(port)
on_server_cpu "$py" "$peer/glue.py" --port "$GLUE_PORT" --feast-repo "$OUT/feast" \
  --model-addr "127.0.0.1:$MLS_GRPC" --features features --pipeline pipelines/fraud.toml \
  --features-json "$MODEL_DIR/features.json" >"$OUT/glue.log" 2>&1 &
glue=$!
pids+=("$glue")
wait_for "$OUT/glue.log" "glue listening" "$glue"
sleep 2 # MLServer's workers are up once the model loaded; let them settle
PEER_ADDR="127.0.0.1:$GLUE_PORT"
PEER_PIDS=$(proc_tree "$glue" "$mlserver" "$peer_redis" | sort -un | paste -sd,)

echo "==> Ferrite: serve" >&2
serve "$OUT/ferrite.toml"
FERRITE_ADDR=$ADDR
FERRITE_PIDS=$(proc_tree "$server" "$ferrite_redis" | sort -un | paste -sd,)
echo "Ferrite at $FERRITE_ADDR (pids $FERRITE_PIDS); peer at $PEER_ADDR (pids $PEER_PIDS)" >&2
# Same inputs on both sides: the peer's vectors against Ferrite's for the first transactions.
parity="parity not checked"
if "$py" "$peer/parity.py" --ferrite "$FERRITE_ADDR" --feast-repo "$OUT/feast" --data "$DATA" \
  --transactions "${PARITY_N:-300}" >"$OUT/parity.log" 2>&1; then
  parity=$(tail -1 "$OUT/parity.log")
else
  parity="PARITY FAILED (the peer's model inputs differ from Ferrite's): see $OUT/parity.log"
fi
echo "$parity" >&2
# Ferrite scores with the model's trees in Rust once they agreed with ONNX Runtime on 1,000
# rows (fraud.native_trees): past that before any leg is measured.
"$bin" bench --addr "$FERRITE_ADDR" --rpc score-fraud --transactions "$DATA/transactions.parquet" \
  --keys "$KEYS" --concurrency 8 --requests 1200 >/dev/null

leg_no=0
# One leg: side, rate. Writes $OUT/legs/NNN-side-rate.json; returns 1 if the leg was not
# sustained (summarize.py check). Sides: ferrite, peer; floor (Ferrite's health check) and
# read-features-fraud (the call's online read), at the same rate on Ferrite's processes.
leg() {
  local side=$1 rate=$2 addr pidlist rpc=score-fraud
  case $side in
    floor) rpc=health ;;
    read-*) rpc=${side#read-} ;;
  esac
  if [ "$side" = peer ]; then addr=$PEER_ADDR pidlist=$PEER_PIDS; else addr=$FERRITE_ADDR pidlist=$FERRITE_PIDS; fi
  leg_no=$((leg_no + 1))
  local json seconds=$(((MIN_CALLS + rate - 1) / rate))
  [ "$seconds" -ge "$LEG_S" ] || seconds=$LEG_S
  [ "$seconds" -le 30 ] || seconds=30
  json=$(printf '%s/legs/%03d-%s-%s.json' "$OUT" "$leg_no" "$side" "$rate")
  echo "==> $side at $rate/s for $seconds s" >&2
  on_client_cpus "$bin" bench --addr "$addr" --rpc "$rpc" --transactions "$DATA/transactions.parquet" \
    --keys "$KEYS" --rate "$rate" --concurrency "$CONCURRENCY" --requests $((rate * seconds)) \
    --duration-s "$seconds" --warmup 100 --client-threads 1 --server-pid "$pidlist" --json "$json" |
    grep -E '^(run|  +server CPU|host|  error)' >&2 || true
  "$py" "$peer/summarize.py" check "$json" --p99-us "$P99_LIMIT_US"
}

# At the shared rates, also what no server can do without on this host at that rate: the
# empty call and the call's online read (Redis's work included).
for rate in $RATES; do
  for _ in $(seq 1 "$ROUNDS"); do
    leg ferrite "$rate" || true
    leg peer "$rate" || true
    leg floor "$rate" || true
    leg read-features-fraud "$rate" || true
  done
done
for rate in $PEER_LADDER; do
  leg peer "$rate" || break
  leg ferrite "$rate" || true
done
for rate in $FERRITE_LADDER; do
  leg ferrite "$rate" || break
done

echo
echo "Fraud scoring, Ferrite vs the peer stack ($(nproc) CPUs, client and servers on the same machine, loopback; open loop, concurrency $CONCURRENCY, legs of $LEG_S-30 s and >= $MIN_CALLS calls, data $DATA)"
"$py" "$peer/summarize.py" table "$OUT/legs" --p99-us "$P99_LIMIT_US"
echo "$parity"
ps -o rss= -p "$server" | awk '{printf "Ferrite server RSS %.0f MiB\n", $1/1024}'
echo "results in $OUT" >&2
