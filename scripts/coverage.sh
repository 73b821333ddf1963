#!/usr/bin/env bash
# Line coverage of the whole workspace (informational; not a gate).
# Uses cargo-tarpaulin's ptrace engine, which needs no LLVM tools and works offline once the
# crate is installed from the registry. Output: a summary on stdout and target/coverage/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datatracing/target-coverage}"
if ! command -v cargo-tarpaulin >/dev/null 2>&1; then
  echo "installing cargo-tarpaulin (one time, several minutes)..."
  cargo install cargo-tarpaulin --locked
fi
mkdir -p target/coverage
cargo tarpaulin --workspace --engine ptrace --skip-clean --out Html --out Json \
  --output-dir target/coverage --exclude-files 'tools/*' --timeout 300 "$@"
