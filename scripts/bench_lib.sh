# Helpers shared by the benchmark scripts (sourced, not run). Each script sets OUT and bin.

# A free loopback port.
port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Writes a config to $1: the repository's models (hot reload off) and feature definitions,
# info logs, then the lines on stdin, which continue the [features] table (store keys) or add
# tables of their own.
write_config() {
  {
    printf '[log]\nlevel = "info"\n[models]\nrepository = "%s/models"\npoll_interval_s = 0\n' "$PWD"
    printf '[features]\nrepository = "%s/features"\n' "$PWD"
    cat
  } >"$1"
}

# Writes to $1 the shipped ferrite.toml, its relative paths made absolute (they are read from
# the config's folder) and every path the server writes moved into OUT, model polling off;
# further sed expressions (`-e EXPR`, applied after these) change more.
shipped_config() {
  local to=$1
  shift
  sed -E -e "s#^(repository|directory|index_dir) = \"([^/][^\"]*)\"#\1 = \"$PWD/\2\"#" \
    -e "s|^embedded_path = .*|embedded_path = \"$OUT/online\"|" \
    -e "s|^state_dir = .*|state_dir = \"$OUT/experiments\"|" \
    -e "s|^exposures_dir = .*|exposures_dir = \"$OUT/exposures\"|" \
    -e "s|^poll_interval_s = .*|poll_interval_s = 0|" \
    "$@" ferrite.toml >"$to"
}

# shipped_config with no experiments (an empty directory, OUT/no-experiments) and no exposure
# log, so that every call runs the same pipeline; further `-e EXPR` as for shipped_config.
shipped_config_no_experiments() {
  local to=$1
  shift
  mkdir -p "$OUT/no-experiments"
  shipped_config "$to" \
    -e "s|^directory = \"$PWD/experiments\".*|directory = \"$OUT/no-experiments\"|" \
    -e "s|^exposures_dir = .*|exposures_dir = \"\"|" "$@"
}

# Sets bin: FERRITE_BIN when given (a binary already built), else the release build, built
# here first.
release_bin() {
  if [ -n "${FERRITE_BIN:-}" ]; then
    bin=$FERRITE_BIN
  else
    cargo build --release --locked -p ferrite >&2
    bin="$CARGO_TARGET_DIR/release/ferrite"
  fi
}

# Starts `ferrite serve --config $1` on free loopback ports; sets server (its pid) and ADDR.
serve() {
  on_server_cpu "$bin" serve --config "$1" --grpc-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 >"$OUT/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 300); do
    grep -q "ferrite listening" "$OUT/serve.log" && break
    sleep 0.1
  done
  ADDR=$(grep -o 'grpc=[0-9.:]*' "$OUT/serve.log" | head -1 | cut -d= -f2)
  [ -n "$ADDR" ] || { cat "$OUT/serve.log" >&2; echo "the server did not start" >&2; return 1; }
}

# Stops the server serve() started (SIGTERM, graceful).
stop() { kill -TERM "$server"; wait "$server" 2>/dev/null || true; server=""; }

# Opt-in: HALT_POLL_NS=N has idle vCPUs of this (Linux, virtual) machine poll up to N ns
# before they halt, for the run (the haltpoll idle driver's guest_halt_poll_ns; root only;
# the kernel's default is 200000, and some VMs boot with 0). Restored by restore_halt_poll.
halt_poll_file=/sys/module/haltpoll/parameters/guest_halt_poll_ns
saved_halt_poll=""
set_halt_poll() {
  [ -n "${HALT_POLL_NS:-}" ] || return 0
  [ -w "$halt_poll_file" ] || { echo "HALT_POLL_NS is set but $halt_poll_file is not writable" >&2; return 1; }
  saved_halt_poll=$(cat "$halt_poll_file")
  echo "$HALT_POLL_NS" >"$halt_poll_file"
  echo "guest halt polling: $saved_halt_poll -> $HALT_POLL_NS ns for this run" >&2
}
restore_halt_poll() {
  [ -z "$saved_halt_poll" ] || echo "$saved_halt_poll" >"$halt_poll_file"
  saved_halt_poll=""
}

# Opt-in: PIN_CPUS=1 runs the server (and a Redis the script starts) on the machine's last
# CPU and the load generator on the others (taskset; 2 CPUs at least). A read then waits for
# Redis by switching to it on its own CPU instead of waking another, possibly halted, CPU,
# and the client's wake-ups do not land on the server's CPU. Each report's host line names
# the load generator's CPUs when it was pinned.
server_cpu=""
client_cpus=""
if [ -n "${PIN_CPUS:-}" ]; then
  ncpu=$(nproc)
  [ "$ncpu" -ge 2 ] || { echo "PIN_CPUS needs 2 CPUs or more, this machine has $ncpu" >&2; exit 1; }
  server_cpu=$((ncpu - 1))
  client_cpus=0
  [ "$ncpu" -eq 2 ] || client_cpus="0-$((ncpu - 2))"
  echo "pinned: server and Redis on CPU $server_cpu, load generator on CPUs $client_cpus" >&2
fi
# Run in the background only (`on_server_cpu cmd &`): it execs, so that $! is the command's
# pid (a backgrounded function is a subshell, which a kill would leave the command behind).
on_server_cpu() { if [ -n "$server_cpu" ]; then exec taskset -c "$server_cpu" "$@"; else exec "$@"; fi; }
on_client_cpus() { if [ -n "$client_cpus" ]; then taskset -c "$client_cpus" "$@"; else "$@"; fi; }

# For the scripts that run a peer stack beside Ferrite: the servers started go in `pids` (and
# `server`), all stopped on exit; `redis PORT LOG` starts one on the server's CPU; `wait_for
# FILE TEXT PID [SECONDS]` waits (120 s by default) for TEXT in FILE while PID lives.
peer_run_setup() {
  pids=()
  server=""
  trap peer_run_cleanup EXIT
  set_halt_poll
}
peer_run_cleanup() {
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  restore_halt_poll
}
redis() { # port, log
  on_server_cpu redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --daemonize no >"$2" 2>&1 &
  pids+=($!)
}
# One Redis for Ferrite and one for the peer, on free ports, logs in OUT, both accepting
# connections on return: sets FERRITE_REDIS / ferrite_redis and PEER_REDIS / peer_redis
# (port / pid). Needs peer_run_setup and port.
two_redis() {
  FERRITE_REDIS=$(port)
  redis "$FERRITE_REDIS" "$OUT/redis-ferrite.log"
  ferrite_redis=$!
  PEER_REDIS=$(port)
  redis "$PEER_REDIS" "$OUT/redis-peer.log"
  peer_redis=$!
  wait_for "$OUT/redis-ferrite.log" "Ready to accept connections" "$ferrite_redis" 180
  wait_for "$OUT/redis-peer.log" "Ready to accept connections" "$peer_redis" 180
}
wait_for() {
  local tenths=$((${4:-120} * 10))
  for _ in $(seq 1 "$tenths"); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  tail -30 "$1" >&2
  echo "$1: no \"$2\"" >&2
  return 1
}

# A process and all its descendants (a peer's worker processes), one pid a line:
# `proc_tree PID… | sort -un | paste -sd,` is a `--server-pid` list.
proc_tree() {
  local p
  for p in "$@"; do
    echo "$p"
    # shellcheck disable=SC2046
    proc_tree $(cat /proc/"$p"/task/*/children 2>/dev/null)
  done
}

# A free loopback port from the peer's Python ($py), for scripts that run a peer stack.
peer_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# One leg of an alternated fraud run (bench_experiments.sh, bench_fraud_trees.sh):
# `ferrite bench --rpc score-fraud` on the sample's transactions against server SIDE
# (`addr[SIDE]`, `pid[SIDE]`) at RATE calls/s for LEG_S seconds with CONCURRENCY callers, the
# report as JSON in FILE and its summary lines on stderr. Needs bin, DATA and those settings.
fraud_leg() { # side, file
  on_client_cpus "$bin" bench --addr "${addr[$1]}" --rpc score-fraud \
    --transactions "$DATA/transactions.parquet" --keys 30000 --rate "$RATE" \
    --concurrency "$CONCURRENCY" --requests $((RATE * LEG_S)) --duration-s "$LEG_S" \
    --warmup 100 --client-threads 1 --server-pid "${pid[$1]}" --json "$2" |
    grep -E '^(run|  +server CPU|host|  error)' >&2 || true
}
