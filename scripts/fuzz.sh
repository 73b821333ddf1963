#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz on libFuzzer) for a bounded time, starting from
# the committed corpus. Usage: scripts/fuzz.sh [seconds per target, default 30] [target...]
# New inputs a run finds go to a scratch directory, not into the checkout; a crash leaves
# its input in fuzz/artifacts/<target>/ and fails the run with the command to replay it.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(otlp_protobuf otlp_json native_json policy wal_reader)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "error: fuzzing needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
# cargo-fuzz at a pinned version, built once into the cache beside the other test tools.
tools="$HOME/.cache/datatracing/tools"
cargo_fuzz_version=0.13.2
if [ "$("$tools/bin/cargo-fuzz" --version 2>/dev/null || true)" != "cargo-fuzz $cargo_fuzz_version" ]; then
  echo "installing cargo-fuzz $cargo_fuzz_version into $tools"
  # --debug: compiles in a fraction of the time, and the tool only drives cargo.
  cargo install cargo-fuzz --locked --debug --version "$cargo_fuzz_version" --root "$tools" --quiet
fi
export PATH="$tools/bin:$PATH"

# Sanitizer builds differ from the test builds: a target directory of their own, cached.
target_dir="${DATATRACING_FUZZ_TARGET_DIR:-$HOME/.cache/datatracing/target-fuzz}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

cargo +nightly fuzz build --fuzz-dir fuzz --target-dir "$target_dir"
# scripts/test.sh builds the targets in the background while the tests run.
if [ -n "${DATATRACING_FUZZ_BUILD_ONLY:-}" ]; then
  exit 0
fi

for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "==> fuzzing $t for ${seconds}s"
  if ! cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$target_dir" "$t" \
      "$scratch/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 2>"$scratch/$t.log"; then
    tail -n 60 "$scratch/$t.log" >&2
    echo "error: fuzz target $t failed; replay the input above with:" >&2
    echo "  cargo +nightly fuzz run --fuzz-dir fuzz $t fuzz/artifacts/$t/<file>" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$scratch/$t.log" | sed "s/^/  $t /"
done
