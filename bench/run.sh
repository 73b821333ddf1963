#!/usr/bin/env bash
# Side-by-side OTLP ingest benchmark: DataTracing against the OpenTelemetry Collector and
# Jaeger v2, under the same telemetrygen load. See bench/README.md.
#
#   bench/run.sh [sidebyside.py options]      e.g. bench/run.sh --only dt-embedded,otel-file --reps 5
#
# Builds (or reuses) the Go peers (bench/build-peers.sh, cached in ~/.cache/datatracing/bench),
# the DataTracing release binary (cargo, in $CARGO_TARGET_DIR) and the ClickHouse test engine's
# virtualenv, then runs bench/sidebyside.py. Results go to
# ~/.cache/datatracing/bench/results/<UTC time>/ (table.md, results.json, server logs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: $1 is required: $2" >&2; exit 1; }; }
need cargo "install Rust with rustup"
need go "install Go 1.26 or newer"
need python3 "apt-get install python3 python3-venv"
need taskset "apt-get install util-linux"
[ "$(nproc)" -ge 2 ] || { echo "error: needs 2 cores (server and load generator on separate cores)" >&2; exit 1; }

# Go peers.
peers="$("$here/build-peers.sh")"
otelcol="$(sed -n 's/^otelcol=//p' <<<"$peers")"
jaeger="$(sed -n 's/^jaeger=//p' <<<"$peers")"
telemetrygen="$(sed -n 's/^telemetrygen=//p' <<<"$peers")"

# DataTracing, release profile.
echo "run.sh: building DataTracing (release)" >&2
cargo build --release --locked -p datatracing-cli >&2
target="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
datatracing="$target/release/datatracing"

# The ClickHouse engine behind tools/chdb-http (same virtualenv as scripts/test.sh).
venv="${DATATRACING_VENV:-$HOME/.cache/datatracing/venv}"
python="${DATATRACING_PYTHON:-$venv/bin/python}"
if ! "$python" -c 'import chdb, lz4' >/dev/null 2>&1; then
  echo "run.sh: installing the ClickHouse test engine (chdb-core) into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tools/test-requirements.txt
  sha256sum tools/test-requirements.txt | cut -d' ' -f1 >"$venv/.requirements.sha256"
  python="$venv/bin/python"
fi

out="${DATATRACING_BENCH_OUT:-$HOME/.cache/datatracing/bench/results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
{
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1) x $(nproc)"
  echo "memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "go: $(go version)"
  echo "rustc: $(rustc --version)"
  sed -n 's/^\([A-Z_]*VERSION\)=/\1=/p' "$here/versions.env"
} >"$out/machine.txt"
exec python3 "$here/sidebyside.py" \
  --datatracing "$datatracing" --otelcol "$otelcol" --jaeger "$jaeger" --telemetrygen "$telemetrygen" \
  --python "$python" --chdb-http "$root/tools/chdb-http/server.py" --out "$out" "$@"
