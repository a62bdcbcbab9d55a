#!/usr/bin/env bash
# Soak: a mixed workload at 80 % of its measured maximum rate for 10 minutes against one
# `ferrite serve` on the embedded store with the shipped models, pipelines and experiments.
#   bash scripts/soak.sh [OUT]
# 1. Maximum: the five RPCs below run together in closed loops (CONCURRENCY callers each) for
#    MAX_S seconds; each one's calls/s is its share of the mixed maximum. Then the maximum
#    the open-loop clients sustain: the five together in open loops at 1.0, 0.9, ... of those
#    rates for PROBE_S seconds each, until a probe has no call cut or failed and at most
#    PROBE_SKIP_PCT (0.5) % skipped.
# 2. Soak: the same five together in open loops at SHARE (0.8) of the open-loop maxima, in windows of
#    WINDOW_S seconds (one `ferrite bench` per RPC and window, so that each window has its own
#    p99) for SOAK_S seconds; the server's resident memory is read from /proc every second.
#    Nobody scrapes /metrics during the soak: memory must stay flat without it.
# 3. benches/soak/summarize.py prints errors, p99 per window and RSS growth after the warm-up
#    (WARMUP_S), exits 1 when a goal is missed (any error, RSS growth >= 5 %), and draws the
#    RSS curve and the p99s into OUT/soak.png when the chart's virtualenv exists
#    (~/.cache/ferrite-peers/soak, benches/soak/requirements.txt; never installed by CI).
# Loopback only; every load is bounded in time and count. Needs a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
OUT="${1:-$(mktemp -d -t ferrite-soak.XXXXXX)}"
mkdir -p "$OUT/windows"
OUT=$(cd "$OUT" && pwd)
SOAK_S="${SOAK_S:-600}"
WINDOW_S="${WINDOW_S:-30}"
WARMUP_S="${WARMUP_S:-60}"
MAX_S="${MAX_S:-15}"
PROBE_S="${PROBE_S:-15}"
PROBE_SKIP_PCT="${PROBE_SKIP_PCT:-0.5}"
SHARE="${SHARE:-0.8}"
CONCURRENCY="${CONCURRENCY:-4}"
RPCS="${RPCS:-features model-infer-gbdt score-fraud recommend price}"
source scripts/bench_lib.sh
release_bin

shipped_config "$OUT/ferrite.toml"
"$bin" materialize-incremental --config "$OUT/ferrite.toml" >"$OUT/materialize.log" 2>&1
server=""
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
  return 0
}
trap cleanup EXIT
serve "$OUT/ferrite.toml"
echo "server pid $server at $ADDR" >&2

# The load of one RPC; extra arguments are passed on.
load() { # rpc json args...
  local rpc=$1 json=$2
  shift 2
  local keys=2000
  [ "$rpc" = price ] && keys=500
  on_client_cpus "$bin" bench --addr "$ADDR" --rpc "$rpc" --keys "$keys" --warmup 20 \
    --json "$json" "$@" >/dev/null
}

echo "==> maximum: ${RPCS// /, } together, closed loops of $CONCURRENCY callers, ${MAX_S} s" >&2
jobs_=()
for rpc in $RPCS; do
  load "$rpc" "$OUT/max-$rpc.json" --concurrency "$CONCURRENCY" --requests 100000000 --duration-s "$MAX_S" &
  jobs_+=($!)
done
for j in "${jobs_[@]}"; do wait "$j"; done

closed_max() { # rpc [fraction] -> fraction (1) x its closed-loop maximum calls/s
  .venv/bin/python -c 'import json,sys; print(round(float(sys.argv[2]) * json.load(open(sys.argv[1]))["run"]["rps"], 1))' \
    "$OUT/max-$1.json" "${2:-1}"
}

# The maximum the open-loop clients sustain: all five open loops at FRACTION of their
# closed-loop maxima for PROBE_S seconds, FRACTION from 1.0 down by 0.1 (to 0.5 at least)
# until no call failed or was cut and at most PROBE_SKIP_PCT % of them were skipped (a rare
# stall of ~100 ms skips a few dozen calls at any load; a saturated load skips more and more).
# Five open-loop generators cost the two cores more than five closed loops, so the
# closed-loop maxima overstate what they can offer.
echo "==> open-loop maximum: ${PROBE_S}-second probes from 1.0 of the closed-loop maxima down" >&2
fraction=""
for f in 1.0 0.9 0.8 0.7 0.6 0.5; do
  jobs_=()
  for rpc in $RPCS; do
    rate=$(closed_max "$rpc" "$f")
    requests=$(.venv/bin/python -c "import math; print(math.ceil($rate * $PROBE_S) + 1)")
    load "$rpc" "$OUT/probe-$f-$rpc.json" --rate "$rate" --concurrency 64 \
      --requests "$requests" --duration-s "$PROBE_S" &
    jobs_+=($!)
  done
  for j in "${jobs_[@]}"; do wait "$j"; done
  verdict=$(.venv/bin/python -c 'import json, sys
runs = [json.load(open(p))["run"] for p in sys.argv[2:]]
failed = sum(r["errors"] + r.get("cut", 0) for r in runs)
skipped = sum(r["skipped"] for r in runs)
offered = sum(r["sent"] + r["skipped"] for r in runs)
pct = 100 * skipped / max(offered, 1)
print("ok" if failed == 0 and pct <= float(sys.argv[1]) else "no", failed, skipped, f"{pct:.2f}")' \
    "$PROBE_SKIP_PCT" "$OUT"/probe-"$f"-*.json)
  read -r ok failed skipped pct <<<"$verdict"
  echo "  at $f of the closed-loop maxima: $failed calls failed or cut, $skipped skipped ($pct %)" >&2
  if [ "$ok" = ok ]; then fraction=$f; break; fi
done
[ -n "$fraction" ] || { fraction=0.5; echo "  no probe was sustained: taking 0.5" >&2; }
for rpc in $RPCS; do echo "$rpc $(closed_max "$rpc" "$fraction") $fraction"; done >"$OUT/open-max.txt"
rate_of() { # rpc -> SHARE x its open-loop maximum calls/s
  awk -v r="$1" -v s="$SHARE" '$1 == r { printf "%.1f", s * $2 }' "$OUT/open-max.txt"
}
for rpc in $RPCS; do echo "$rpc $(rate_of "$rpc")"; done >"$OUT/rates.txt"
echo "rates (calls/s, $SHARE of the open-loop maxima, which are $fraction of the closed-loop ones):" >&2
cat "$OUT/rates.txt" >&2

# Resident memory, one line a second: seconds since the soak started, then kB resident in
# all, of it anonymous (the heap) and file-backed (mapped files), then the server's threads.
start=$(date +%s.%N)
(
  while kill -0 "$server" 2>/dev/null; do
    mem=$(awk '/^(VmRSS|RssAnon|RssFile|Threads):/ {printf "%s ", $2}' "/proc/$server/status" 2>/dev/null) || break
    awk -v s="$start" -v n="$(date +%s.%N)" -v m="$mem" 'BEGIN { printf "%.1f %s\n", n - s, m }'
    sleep 1
  done
) >"$OUT/rss.txt" &
sampler=$!

windows=$(( (SOAK_S + WINDOW_S - 1) / WINDOW_S ))
echo "==> soak: $windows windows of ${WINDOW_S} s at ${SHARE} of the maximum" >&2
for w in $(seq 1 "$windows"); do
  jobs_=()
  while read -r rpc rate; do
    requests=$(.venv/bin/python -c "import math; print(math.ceil($rate * $WINDOW_S) + 1)")
    load "$rpc" "$OUT/windows/$w-$rpc.json" --rate "$rate" --concurrency 64 \
      --requests "$requests" --duration-s "$WINDOW_S" &
    jobs_+=($!)
  done <"$OUT/rates.txt"
  for j in "${jobs_[@]}"; do wait "$j"; done
  echo "window $w/$windows done" >&2
done
kill "$sampler" 2>/dev/null || true
sampler=""
stop

chart=()
[ -x "$HOME/.cache/ferrite-peers/soak/bin/python" ] && chart=(--chart "$OUT/soak.png")
py="$HOME/.cache/ferrite-peers/soak/bin/python"
[ -x "$py" ] || py=.venv/bin/python
"$py" benches/soak/summarize.py "$OUT" --window-s "$WINDOW_S" --warmup-s "$WARMUP_S" --share "$SHARE" "${chart[@]}"
