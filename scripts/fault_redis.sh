#!/usr/bin/env bash
# Fault: Redis killed (SIGKILL) mid-run and restarted on the same port from its append-only
# file (fsync on every write), under a server on the Redis online store that is never restarted.
# A client pushes rows and reads features in a loop, each call with a 200 ms deadline.
# Checks: every call answers within its deadline + 2 s slack (OK or UNAVAILABLE/DEADLINE_EXCEEDED,
# never a hang or another status); calls fail while Redis is down; they succeed again after the
# restart without restarting the server; every push acknowledged OK is readable after it.
# REDIS_PERSISTENCE="--appendonly no" shows the acknowledged-rows check failing.
# Exits non-zero with a FAIL line when a check fails; prints one summary line. About 5-10 s.
set -euo pipefail
# shellcheck source=scripts/fault_lib.sh
source "$(dirname "$0")/fault_lib.sh"

OUTAGE_S=${OUTAGE_S:-2}
port=$(free_port)
start_redis "$port" "$WORK/redis" "$WORK/redis.log"
write_config "$WORK/ferrite.toml" <<CONF
online_store = "redis"
redis_url = "redis://127.0.0.1:$port/0"
CONF
start_ferrite "$WORK/ferrite.toml" "$WORK/serve.log"
server=$FERRITE_PID
echo "$FAULT_NAME: ferrite on $FERRITE_ADDR (pid $server), redis on $port" >&2

control="$WORK/control"
mkdir -p "$control"
"$PY" scripts/fault_client.py redis --addr "$FERRITE_ADDR" --control "$control" \
  --deadline-ms 200 --slack-ms 2000 >"$WORK/client.json" 2>"$WORK/client.err" &
client=$!
PIDS+=("$client")

wait_for_file "$control/warm" 60 "$client" || { cat "$WORK/client.err" >&2; fail "the client never got 50 pushes acknowledged"; }
{ kill -KILL "$REDIS_PID" && wait "$REDIS_PID"; } 2>/dev/null || true
touch "$control/killed"
echo "$FAULT_NAME: $(elapsed) s: redis killed, down for ${OUTAGE_S} s" >&2
sleep "$OUTAGE_S"
start_redis "$port" "$WORK/redis" "$WORK/redis.log"
touch "$control/restarted"
echo "$FAULT_NAME: $(elapsed) s: redis restarted from its append-only file" >&2

status=0
wait "$client" || status=$?
if [ "$status" -ne 0 ]; then
  cat "$WORK/client.err" >&2
  fail "client checks failed (see the FAIL line above; server log: FAULT_KEEP=1 keeps $WORK/serve.log)"
fi
kill -0 "$server" 2>/dev/null || fail_log "$WORK/serve.log" "the server died during the run"
echo "$FAULT_NAME: PASS in $(elapsed) s: $(cat "$WORK/client.json")"
