#!/usr/bin/env bash
# The test command: installs what is missing, then runs every test of the workspace.
# Tests start their own redis-server processes and servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh

start=$(date +%s)
cargo fmt --all --check
# Without --workspace, cargo tests the default members: every crate but the criterion benches.
cargo test --locked
echo "tests finished in $(( $(date +%s) - start )) s (target dir: $CARGO_TARGET_DIR)"
