#!/usr/bin/env bash
# A fraud call against the floor plus its unavoidable work (issue 16), on one `ferrite serve`
# with the shipped config on the embedded store (experiments off, so every call runs the same
# pipeline), in ROUNDS rounds of two `ferrite bench` runs, each beside the health check:
#   features-fraud: the online read a ScoreFraud call makes (fraud_v2 for the transaction's
#                   user and merchant, its request context), to take its cost above the floor;
#   score-fraud:    the call itself (after 1,200 unmeasured calls: the server scores with the
#                   model's trees in Rust once 1,000 rows agreed with ONNX Runtime), with the
#                   raw model (fraud_txn_gbdt in this process, back to back and at RATE: the
#                   trees in Rust, the model the server runs; ONNX Runtime's legs when the file
#                   has no trees).
# Per round: unavoidable = floor + (read - its floor) + raw model run, against the fraud call's
# server CPU per call; printed with the raw model both back to back (p50) and at RATE (p50).
#   bash scripts/bench_fraud_floor.sh [OUT]
# Loopback only; every load is bounded in count and time. About 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-fraud-floor.XXXXXX)}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RATE="${RATE:-500}"
REQUESTS="${REQUESTS:-5000}"
ROUNDS="${ROUNDS:-3}"
source scripts/bench_lib.sh
release_bin

shipped_config_no_experiments "$OUT/ferrite.toml"
"$bin" materialize-incremental --config "$OUT/ferrite.toml" >"$OUT/materialize.log" 2>&1
serve "$OUT/ferrite.toml"
trap 'stop' EXIT
common=(--addr "$ADDR" --rate "$RATE" --requests "$REQUESTS" --duration-s 30 --concurrency 64
  --server-pid "$server" --with-floor --transactions "$PWD/features/data/transactions.parquet")
for round in $(seq "$ROUNDS"); do
  "$bin" bench "${common[@]}" --rpc features-fraud --json "$OUT/read-$round.json" >"$OUT/read-$round.txt"
  "$bin" bench "${common[@]}" --rpc score-fraud --with-raw --models "$PWD/models" --warmup 1200 \
    --json "$OUT/fraud-$round.json" >"$OUT/fraud-$round.txt"
  echo "round $round done" >&2
done
.venv/bin/python - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("round  floor  read-floor  raw b2b / at rate  unavoidable  fraud call  ratio (b2b / at rate)  steal %")
for r in range(1, rounds + 1):
    read = json.load(open(f"{out}/read-{r}.json"))
    fraud = json.load(open(f"{out}/fraud-{r}.json"))
    cpu = lambda leg: leg["server_cpu"]["us_per_call"]
    floor = cpu(fraud["floor"])
    above = cpu(read["run"]) - cpu(read["floor"])
    ones = [x for x in fraud["raw"] if x["batch"] == 1]
    raws = [x for x in ones if x.get("trees")] or ones
    b2b = next(x for x in raws if x["rate"] is None)["latency_us"]["p50"]
    paced = next((x for x in raws if x["rate"] is not None), None)
    paced = paced["latency_us"]["p50"] if paced else b2b
    call = cpu(fraud["run"])
    base = floor + above
    steal = max((j["host"]["cpu"] or {}).get("steal_pct", 0.0) for j in (read, fraud))
    print(f"{r:5}  {floor:5.0f}  {above:10.0f}  {b2b:7.0f} / {paced:<7.0f}  {base + b2b:5.0f}-{base + paced:<5.0f}  "
          f"{call:10.0f}  {call / (base + b2b):.2f}x / {call / (base + paced):.2f}x  {steal:.1f}")
PY
