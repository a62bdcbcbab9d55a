#!/usr/bin/env bash
# Model-serving benchmarks (BENCHMARKS.md records the output), each with its goal's command:
#  1. ModelInfer `fraud_gbdt`, batch 1, open loop at 1,000 calls/s, the empty-RPC floor
#     alternated with it in 10 rounds, and the raw model in this process (back to back and at
#     the same rate) for the gap to the floor and what of it is the model's own run;
#  2. the same at batch 64, closed loop, against the raw model at batch 64;
#  3. batched throughput: 64 callers pipelining on ModelStreamInfer to `fraud_gbdt_batched`
#     against raw in-process batch-1 calls/s (server with `worker_threads = 1`);
#  4. sequential tritonclient ModelInfer calls (the Python client people already use).
# HALT_POLL_NS=N, PIN_CPUS=1: see scripts/bench_lib.sh.
# Everything listens on loopback; every load is bounded in count and time.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-bench.XXXXXX)}"
mkdir -p "$OUT"
source scripts/bench_lib.sh
release_bin
[ -x .venv/bin/python ] || bash scripts/setup.sh >&2
server=""
trap '[ -z "$server" ] || stop; restore_halt_poll' EXIT
set_halt_poll

config() { # $1 async worker threads (0: one per core), $2 file
  write_config "$2" <<CFG
[server]
worker_threads = $1
CFG
}
config 0 "$OUT/default.toml"
config 1 "$OUT/one-worker.toml"
run() { # label, bench arguments...
  local label=$1; shift
  echo "==> $label: ferrite bench $*" >&2
  on_client_cpus "$bin" bench --addr "$ADDR" "$@" --json "$OUT/$label.json" | tee "$OUT/$label.txt"
}

serve "$OUT/default.toml"
run modelinfer-1000 --rpc model-infer-gbdt --rate 1000 --requests 20000 --duration-s 25 \
  --with-floor --rounds 10 --with-raw --client-threads 1
run modelinfer-batch64 --rpc model-infer-gbdt --batch 64 --requests 5000 --concurrency 1 \
  --with-floor --with-raw
echo "==> tritonclient" >&2
on_client_cpus .venv/bin/python scripts/triton_latency.py --addr "$ADDR" --model fraud_gbdt --requests 5000 | tee "$OUT/tritonclient.txt"
stop

serve "$OUT/one-worker.toml"
run batched-throughput --rpc model-stream-infer-gbdt --model fraud_gbdt_batched --requests 200000 \
  --duration-s 30 --concurrency 64 --client-threads 1 --with-raw
stop
echo "results in $OUT" >&2
