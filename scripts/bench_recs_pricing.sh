#!/usr/bin/env bash
# Recommendations and prices, Ferrite against the stack it replaces (benches/peers/recs_pricing:
# Feast with a Redis online store + faiss-cpu + the same models in NumPy, behind a Python gRPC
# service), both answering ferrite.v1.ScoringService/Recommend and /Price and driven by
# `ferrite bench --rpc recommend|price` in one run, Redis on both sides:
#   1. parity: the peer's answers equal Ferrite's (benches/peers/recs_pricing/parity.py);
#   2. per RPC, at each rate the peer sustains (RECS_RATES, PRICE_RATES), the two sides
#      alternated ROUNDS times (open loop, same concurrency), each round also Ferrite's floor
#      (its health check) and the call's online reads on Ferrite's server and Redis;
#   3. Ferrite alone at the issue's rates (500 Recommend/s, 1,000 Price/s), ROUNDS times.
# Each leg reads the CPU time of every server-side process from /proc (Ferrite and its Redis;
# the glue service with Feast in it and the peer's Redis) and the host's steal;
# benches/peers/fraud/summarize.py prints each RPC's table and ratios at the end. Every load is
# bounded in count and time. Needs the peer's virtualenv (benches/peers/recs_pricing/README.md;
# never installed by setup.sh or CI). HALT_POLL_NS=N, PIN_CPUS=1: see scripts/bench_lib.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-recs-pricing.XXXXXX)}"
mkdir -p "$OUT/legs/recommend" "$OUT/legs/price"
OUT=$(cd "$OUT" && pwd)
PEER_VENV="${FERRITE_PEER_VENV:-$HOME/.cache/ferrite-peers/recs_pricing}"
DATA="${FERRITE_PIPELINE_DATA:-$PWD/features/data}"
RECS_RATES="${RECS_RATES:-10 20}"
PRICE_RATES="${PRICE_RATES:-50 100}"
RECS_TARGET="${RECS_TARGET:-500}"
PRICE_TARGET="${PRICE_TARGET:-1000}"
ROUNDS="${ROUNDS:-2}"
LEG_S="${LEG_S:-10}"
MIN_CALLS="${MIN_CALLS:-300}"
CONCURRENCY="${CONCURRENCY:-128}"
peer=benches/peers/recs_pricing

[ -x "$PEER_VENV/bin/feast" ] || { echo "no peer virtualenv at $PEER_VENV: see $peer/README.md" >&2; exit 1; }
source scripts/bench_lib.sh
release_bin
py="$PEER_VENV/bin/python"
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
"$py" "$peer/make_feast_repo.py" --features features --data "$DATA" --redis "127.0.0.1:$PEER_REDIS" \
  --out "$OUT/feast" >&2
(cd "$OUT/feast" && "$PEER_VENV/bin/feast" apply >"$OUT/feast-apply.log" 2>&1 &&
  "$PEER_VENV/bin/feast" materialize 2020-01-01T00:00:00 2028-01-01T00:00:00 >"$OUT/feast-materialize.log" 2>&1) ||
  { tail -30 "$OUT"/feast-*.log >&2; exit 1; }

echo "==> peer: the glue service" >&2
GLUE_PORT=$(port)
on_server_cpu "$py" "$peer/recs_pricing_glue.py" --port "$GLUE_PORT" --feast-repo "$OUT/feast" --data "$DATA" \
  >"$OUT/glue.log" 2>&1 &
glue=$!
pids+=("$glue")
wait_for "$OUT/glue.log" "glue listening" "$glue" 180
PEER_ADDR="127.0.0.1:$GLUE_PORT"
PEER_PIDS="$glue,$peer_redis"

echo "==> Ferrite: serve" >&2
serve "$OUT/ferrite.toml"
FERRITE_ADDR=$ADDR
FERRITE_PIDS="$server,$ferrite_redis"
echo "Ferrite at $FERRITE_ADDR (pids $FERRITE_PIDS); peer at $PEER_ADDR (pids $PEER_PIDS)" >&2

parity="parity not checked"
if (cd "$peer" && "$py" parity.py --ferrite "$FERRITE_ADDR" --peer "$PEER_ADDR" --users "${PARITY_USERS:-300}") \
  >"$OUT/parity.log" 2>&1; then
  parity="parity: $(tail -1 "$OUT/parity.log")"
else
  parity="PARITY FAILED (the peer's answers differ from Ferrite's): see $OUT/parity.log"
fi
echo "$parity" >&2

leg_no=0
# One leg: rpc, side, rate. Writes $OUT/legs/RPC/NNN-side-rate.json. Sides: ferrite, peer;
# floor (Ferrite's health check, its server and Redis) and read-RPC (an online read the call
# makes, e.g. read-features-price), each at the call's rate on Ferrite's processes.
leg() {
  local rpc=$1 side=$2 rate=$3 addr pidlist keys=2000 call=$1
  [ "$rpc" = price ] && keys=500
  case $side in
    floor) call=health ;;
    read-*) call=${side#read-} keys=500 ;;
  esac
  if [ "$side" = peer ]; then addr=$PEER_ADDR pidlist=$PEER_PIDS; else addr=$FERRITE_ADDR pidlist=$FERRITE_PIDS; fi
  leg_no=$((leg_no + 1))
  local json seconds=$(((MIN_CALLS + rate - 1) / rate))
  [ "$seconds" -ge "$LEG_S" ] || seconds=$LEG_S
  [ "$seconds" -le 30 ] || seconds=30
  json=$(printf '%s/legs/%s/%03d-%s-%s.json' "$OUT" "$rpc" "$leg_no" "$side" "$rate")
  echo "==> $rpc: $side at $rate/s for $seconds s" >&2
  on_client_cpus "$bin" bench --addr "$addr" --rpc "$call" --keys "$keys" --rate "$rate" \
    --concurrency "$CONCURRENCY" --requests $((rate * seconds)) --duration-s "$seconds" --warmup 50 \
    --client-threads 1 --server-pid "$pidlist" --json "$json" |
    grep -E '^(run|  +server CPU|host|  error)' >&2 || true
}

# At the peer's rates, also what no server can do without on this host at that rate: the
# empty call and the call's online reads (their Redis work included).
for rate in $RECS_RATES; do
  for _ in $(seq 1 "$ROUNDS"); do
    leg recommend ferrite "$rate"; leg recommend peer "$rate"
    leg recommend floor "$rate"; leg recommend read-features-recs "$rate"; leg recommend read-features-recs-items "$rate"
  done
done
for rate in $PRICE_RATES; do
  for _ in $(seq 1 "$ROUNDS"); do
    leg price ferrite "$rate"; leg price peer "$rate"; leg price floor "$rate"; leg price read-features-price "$rate"
  done
done
for _ in $(seq 1 "$ROUNDS"); do
  leg recommend ferrite "$RECS_TARGET"
  leg price ferrite "$PRICE_TARGET"
done

for rpc in recommend price; do
  echo
  echo "$rpc, Ferrite vs the peer stack ($(nproc) CPUs, client and servers on the same machine, loopback; open loop, concurrency $CONCURRENCY, Redis on both sides, data $DATA)"
  "$py" benches/peers/fraud/summarize.py table "$OUT/legs/$rpc" --p99-us 100000 --cpu-goal 20 --no-rate-goals
done
echo
echo "$parity"
ps -o rss= -p "$server" | awk '{printf "Ferrite server RSS %.0f MiB\n", $1/1024}'
echo "results in $OUT" >&2
