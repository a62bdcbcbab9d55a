#!/usr/bin/env bash
# Recommend and Price against the floor plus their unavoidable work (issue 17), on one
# `ferrite serve` with the shipped config (experiments off, so every call runs the same
# pipeline), in ROUNDS rounds of `ferrite bench` runs, each beside the health check:
#   features-price:      the online read a Price call makes (pricing_v1 of the item);
#   price:               the call, with the raw work (the demand model on 50 candidate prices,
#                        in the load generator's process);
#   features-recs:       a Recommend call's read of the user (recs_user_v1 + bought items);
#   features-recs-items: its live check of 200 candidates (stock level and on-sale);
#   recommend:           the call, with the raw work (the user tower on one row, the search of
#                        200 candidates among 500 items, the ranker on 200 rows).
# Per round and RPC: unavoidable = floor + each read's CPU above its floor + the raw work's
# p50s added (back to back / at the run's rate), against the call's server CPU per call.
# STORE=embedded (default) or redis: with redis the features live in a redis-server this
# script starts, and its CPU time counts with the server's on every leg.
#   bash scripts/bench_recs_floor.sh [OUT]
# Loopback only; every load is bounded in count and time. About 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-recs-floor.XXXXXX)}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RECS_RATE="${RECS_RATE:-500}"
PRICE_RATE="${PRICE_RATE:-1000}"
REQUESTS="${REQUESTS:-5000}"
ROUNDS="${ROUNDS:-3}"
STORE="${STORE:-embedded}"
source scripts/bench_lib.sh
release_bin

store=()
if [ "$STORE" = redis ]; then
  REDIS_PORT=$(port)
  redis "$REDIS_PORT" "$OUT/redis.log"
  redis_pid=$!
  wait_for "$OUT/redis.log" "Ready to accept connections" "$redis_pid" 180
  store=(-e "s|^online_store = \"embedded\"|online_store = \"redis\"|"
    -e "s|^redis_url = \"redis://127.0.0.1:6379/0\"|redis_url = \"redis://127.0.0.1:$REDIS_PORT/0\"|")
fi
shipped_config_no_experiments "$OUT/ferrite.toml" "${store[@]}"
"$bin" materialize --quiet --config "$OUT/ferrite.toml" --start 2020-01-01 --end 2028-01-01
serve "$OUT/ferrite.toml"
pids=("$server")
[ "$STORE" = redis ] && pids+=("$redis_pid")
cleanup() {
  stop
  [ "$STORE" = redis ] && kill "$redis_pid" 2>/dev/null
  true
}
trap cleanup EXIT
server_pids=$(IFS=,; echo "${pids[*]}")
leg() { # rpc rate json [more args]
  local rpc=$1 rate=$2 json=$3
  shift 3
  "$bin" bench --addr "$ADDR" --rpc "$rpc" --keys 500 --rate "$rate" --requests "$REQUESTS" --duration-s 30 \
    --concurrency 64 --server-pid "$server_pids" --with-floor --models "$PWD/models" --warmup 200 \
    --json "$OUT/$json.json" "$@" >"$OUT/$json.txt"
}
for round in $(seq "$ROUNDS"); do
  leg features-price "$PRICE_RATE" "read-price-$round"
  leg price "$PRICE_RATE" "price-$round" --with-raw
  leg features-recs "$RECS_RATE" "read-recs-$round"
  leg features-recs-items "$RECS_RATE" "read-items-$round"
  leg recommend "$RECS_RATE" "recommend-$round" --with-raw
  echo "round $round done" >&2
done
.venv/bin/python - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
load = lambda name: json.load(open(f"{out}/{name}.json"))
cpu = lambda leg: leg["server_cpu"]["us_per_call"]
def p50s(report, paced):
    return sum(r["latency_us"]["p50"] for r in report["raw"] if r["stage"] and (r["rate"] is not None) == paced)
print("rpc        round  floor  reads-floor  raw b2b / at rate  unavoidable  call  ratio (b2b / at rate)  fallbacks  steal %")
for rpc, reads in (("price", ["read-price"]), ("recommend", ["read-recs", "read-items"])):
    for r in range(1, rounds + 1):
        call = load(f"{rpc}-{r}")
        legs = [load(f"{name}-{r}") for name in reads]
        floor = cpu(call["floor"])
        above = sum(cpu(l["run"]) - cpu(l["floor"]) for l in legs)
        b2b, paced = p50s(call, False), p50s(call, True)
        base = floor + above
        mine = cpu(call["run"])
        steal = max((j["host"]["cpu"] or {}).get("steal_pct", 0.0) for j in [call, *legs])
        print(f"{rpc:9}  {r:5}  {floor:5.0f}  {above:11.0f}  {b2b:7.0f} / {paced:<7.0f}  {base + b2b:5.0f}-{base + paced:<5.0f}  "
              f"{mine:5.0f}  {mine / (base + b2b):.2f}x / {mine / (base + paced):.2f}x  {call['run']['fallbacks']:9}  {steal:.1f}")
PY
