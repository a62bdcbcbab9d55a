#!/usr/bin/env bash
# Fault: `kill -9` of the server while four clients push rows to the embedded online store.
# The server is restarted on the same store, and every row whose push was answered OK must be
# there with the values pushed (an acknowledgement means the row is committed, not buffered).
# Exits non-zero with a FAIL line when a check fails; prints one summary line. About 5 s.
set -euo pipefail
# shellcheck source=scripts/fault_lib.sh
source "$(dirname "$0")/fault_lib.sh"

write_config "$WORK/ferrite.toml" <<CONF
online_store = "embedded"
embedded_path = "$WORK/online"
CONF
start_ferrite "$WORK/ferrite.toml" "$WORK/serve.log"
server=$FERRITE_PID
echo "$FAULT_NAME: ferrite on $FERRITE_ADDR (pid $server), embedded store" >&2

control="$WORK/control"
mkdir -p "$control"
"$PY" scripts/fault_client.py push --addr "$FERRITE_ADDR" --control "$control" --acked "$WORK/acked.json" \
  --threads 4 --batch 4 --warm 200 >"$WORK/push.json" 2>"$WORK/push.err" &
client=$!
PIDS+=("$client")

wait_for_file "$control/warm" 60 "$client" || { cat "$WORK/push.err" >&2; fail "the clients never got 200 rows acknowledged"; }
# A little later still, at a moment the pushes do not choose.
sleep "0.$((RANDOM % 400 + 100))"
{ kill -KILL "$server" && wait "$server"; } 2>/dev/null || true
echo "$FAULT_NAME: $(elapsed) s: server killed with SIGKILL" >&2

status=0
wait "$client" || status=$?
[ "$status" -eq 0 ] || { cat "$WORK/push.err" >&2; fail "the pushing client failed (see above)"; }

start_ferrite "$WORK/ferrite.toml" "$WORK/serve2.log"
echo "$FAULT_NAME: $(elapsed) s: server restarted on the same store (pid $FERRITE_PID)" >&2
"$PY" scripts/fault_client.py verify --addr "$FERRITE_ADDR" --acked "$WORK/acked.json" \
  >"$WORK/verify.json" 2>"$WORK/verify.err" || { cat "$WORK/verify.err" >&2; fail "acknowledged rows were lost"; }
echo "$FAULT_NAME: PASS in $(elapsed) s: $(cat "$WORK/push.json") $(cat "$WORK/verify.json")"
