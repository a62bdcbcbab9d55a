# shellcheck shell=bash
# Helpers shared by the fault scripts (sourced, not run): a scratch directory, the ferrite
# binary, configs, starting the server and Redis on free loopback ports, and a trap that stops
# every process the script started and removes the scratch directory.
#
# FERRITE_BIN: the binary to test (default: the debug build, built here unless
# FERRITE_NO_BUILD=1, as scripts/test.sh sets after `cargo test` has built it).
# FAULT_KEEP=1 keeps the scratch directory (logs, configs, stores) for a look after a run.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
# shellcheck source=scripts/env.sh
source scripts/env.sh

PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "FAIL: $PY is missing: run scripts/setup.sh" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "FAIL: redis-server is missing: run scripts/setup.sh" >&2; exit 1; }

FAULT_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d -t "ferrite-$FAULT_NAME.XXXXXX")
PIDS=()

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${FAULT_KEEP:-}" ]; then echo "$FAULT_NAME: scratch directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

fail() {
  echo "FAIL: $FAULT_NAME: $*" >&2
  exit 1
}

# Shows the end of a log, then fails.
fail_log() { # log, message
  echo "--- last lines of $1" >&2
  tail -n 40 "$1" >&2 || true
  fail "$2"
}

if [ -z "${FERRITE_BIN:-}" ]; then
  FERRITE_BIN="$CARGO_TARGET_DIR/debug/ferrite"
  if [ -z "${FERRITE_NO_BUILD:-}" ]; then
    echo "==> building ferrite (debug)" >&2
    cargo build --locked -q -p ferrite
  fi
fi
[ -x "$FERRITE_BIN" ] || fail "no ferrite binary at $FERRITE_BIN"

# A free loopback port (taken again between here and its use only by bad luck).
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Writes a server config to $1: the repository's feature definitions, the models named after
# $1 (from models/, linked into a scratch repository; none: no model), no pipeline, no
# experiment, no search index, graceful shutdown of $GRACE_S seconds, then the lines on stdin
# (the store keys, continuing the [features] table).
write_config() { # file, model...
  local config=$1 models="$WORK/models" m
  shift
  mkdir -p "$models" "$WORK/pipelines"
  for m in "$@"; do ln -sfn "$ROOT/models/$m" "$models/$m"; done
  {
    printf '[server]\nshutdown_grace_s = %s\nworker_threads = 2\n' "${GRACE_S:-10}"
    printf '[log]\nlevel = "info"\n'
    printf '[models]\nrepository = "%s"\npoll_interval_s = 0\n' "$models"
    printf '[pipelines]\ndirectory = "%s"\n' "$WORK/pipelines"
    printf '[experiments]\ndirectory = "%s"\nstate_dir = "%s"\nexposures_dir = ""\n' "$WORK/no-experiments" "$WORK/experiment-state"
    printf '[search]\nindex_dir = "%s"\n' "$WORK/no-index"
    printf '[features]\nrepository = "%s/features"\n' "$ROOT"
    cat
  } >"$config"
}

# Starts `ferrite serve --config $1` on free loopback ports, logging to $2; sets FERRITE_PID
# and FERRITE_ADDR once it listens.
start_ferrite() { # config, log
  "$FERRITE_BIN" serve --config "$1" --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 >"$2" 2>&1 &
  FERRITE_PID=$!
  PIDS+=("$FERRITE_PID")
  local _
  for _ in $(seq 1 600); do
    grep -q "ferrite listening" "$2" && break
    kill -0 "$FERRITE_PID" 2>/dev/null || fail_log "$2" "ferrite serve exited during start-up"
    sleep 0.1
  done
  FERRITE_ADDR=$(grep -o 'grpc=[0-9.:]*' "$2" | head -n 1 | cut -d= -f2)
  [ -n "$FERRITE_ADDR" ] || fail_log "$2" "ferrite serve did not start within 60 s"
}

# Starts Redis on port $1 with its data in $2 (append-only file, fsync on every write),
# logging to $3; sets REDIS_PID once it answers PING. The same call restarts it from that file.
start_redis() { # port, dir, log
  mkdir -p "$2"
  # REDIS_PERSISTENCE replaces the durability flags (e.g. "--appendonly no" shows that the
  # acknowledged-rows check fails when Redis forgets).
  # shellcheck disable=SC2086
  redis-server --port "$1" --bind 127.0.0.1 --dir "$2" ${REDIS_PERSISTENCE:---appendonly yes --appendfsync always} \
    --save "" --daemonize no >>"$3" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  local _
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
    kill -0 "$REDIS_PID" 2>/dev/null || fail_log "$3" "redis-server exited during start-up"
    sleep 0.1
  done
  fail_log "$3" "redis-server did not answer PING within 10 s"
}

# Waits up to $2 seconds for file $1 to exist while process $3 lives.
wait_for_file() { # file, seconds, pid
  local _
  for _ in $(seq 1 $(($2 * 20))); do
    [ -e "$1" ] && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# Seconds since the script started, with milliseconds.
elapsed() { awk -v a="$FAULT_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
FAULT_START=$EPOCHREALTIME
