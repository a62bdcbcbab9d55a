#!/usr/bin/env bash
# Fault: SIGTERM while calls are in flight. Three clients keep image-embedder ModelInfer calls
# (a batch of 4 images, 2.4 MB, 0.3–0.4 s each here, debug build) running, and two ModelStreamInfer
# streams are open, one with a slow request on it; the client then sends SIGTERM to the server.
# Checks: unary calls in flight at the signal (for 0.2 s or more) finish OK; the stream's request
# is answered (or refused UNAVAILABLE by the server if it had not taken it yet) and the stream
# ends with a status, never a reset; new connections are refused promptly (UNAVAILABLE, never a
# hang); the process exits within the grace period plus 5 s, with status 0. Every other call
# ends OK or UNAVAILABLE. FAULT_SIGNAL=KILL shows the checks failing.
# Exits non-zero with a FAIL line when a check fails; prints one summary line. About 5-10 s.
set -euo pipefail
# shellcheck source=scripts/fault_lib.sh
source "$(dirname "$0")/fault_lib.sh"

GRACE_S=${GRACE_S:-4}
write_config "$WORK/ferrite.toml" fraud_logreg image_embedder <<CONF
online_store = "embedded"
embedded_path = "$WORK/online"
CONF
start_ferrite "$WORK/ferrite.toml" "$WORK/serve.log"
server=$FERRITE_PID
echo "$FAULT_NAME: ferrite on $FERRITE_ADDR (pid $server), grace period ${GRACE_S} s" >&2

status=0
"$PY" scripts/fault_client.py sigterm --addr "$FERRITE_ADDR" --pid "$server" --grace-s "$GRACE_S" \
  --signal "${FAULT_SIGNAL:-TERM}" >"$WORK/client.json" 2>"$WORK/client.err" || status=$?
[ "$status" -eq 0 ] || { cat "$WORK/client.err" >&2; fail_log "$WORK/serve.log" "client checks failed (see the FAIL line above)"; }

exit_status=0
wait "$server" || exit_status=$?
[ "$exit_status" -eq 0 ] || fail_log "$WORK/serve.log" "the server exited with status $exit_status after SIGTERM"
grep -q "server stopped\|in-flight calls still running after the grace period" "$WORK/serve.log" ||
  fail_log "$WORK/serve.log" "the server did not log its shutdown"
echo "$FAULT_NAME: PASS in $(elapsed) s: $(cat "$WORK/client.json")"
