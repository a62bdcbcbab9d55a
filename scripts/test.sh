#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the workspace.
# Tests start their own redis-server processes and servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

start=$(date +%s)
cargo fmt --all --check
log=$(mktemp -t ferrite-test.XXXXXX.log)
trap 'rm -f "$log"' EXIT
# Without --workspace, cargo tests the default members: every crate but the criterion benches.
cargo test --locked 2>&1 | tee "$log"
# The fault scripts (a few seconds each): Redis killed and restarted under load, kill -9 during
# pushes, SIGTERM with calls in flight; on the debug `ferrite` that `cargo test` just built.
for fault in redis kill9 sigterm; do
  FERRITE_NO_BUILD=1 bash "scripts/fault_$fault.sh"
done
echo "tests finished in $(( $(date +%s) - start )) s (target dir: $CARGO_TARGET_DIR)"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
