# Sourced by the scripts: where cargo builds (outside the clone, so clones share it).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferrite-target}"
export PATH="$HOME/.cargo/bin:$PATH"
# FAISS (built from source by faiss-sys through CMake) otherwise compiles one file at a time.
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
