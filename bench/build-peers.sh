#!/usr/bin/env bash
# Builds the side-by-side peers from the Go module proxy with `go`: an OpenTelemetry
# Collector (by the OpenTelemetry Collector Builder), Jaeger v2 and telemetrygen, at the
# versions pinned in bench/versions.env. Each binary is cached under
# $DATATRACING_BENCH_CACHE (default ~/.cache/datatracing/bench)/<peer>-<version>/ and rebuilt
# only when missing, so a warm run costs nothing. Prints one `name=path` line per binary.
# Benchmark infrastructure only: nothing here is a product dependency.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
cache="${DATATRACING_BENCH_CACHE:-$HOME/.cache/datatracing/bench}"
command -v go >/dev/null 2>&1 || {
  echo "error: Go 1.26+ is required to build the benchmark peers (apt-get install golang-go, or a Go release)" >&2
  exit 1
}
export GOFLAGS="${GOFLAGS:-} -trimpath"
export CGO_ENABLED=0
log() { echo "build-peers: $*" >&2; }
timed() { # name, command...: runs the command, logs its wall time
  local name="$1" start end
  shift
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "$name built in $((end - start)) s"
}

scratch() { # a fresh scratch module directory, removed on exit
  local d
  d="$(mktemp -d)"
  scratch_dirs+=("$d")
  echo "$d"
}
scratch_dirs=()
trap 'rm -rf "${scratch_dirs[@]:-}"' EXIT

# --- telemetrygen --------------------------------------------------------------------------
telemetrygen_dir="$cache/telemetrygen-$TELEMETRYGEN_VERSION"
build_telemetrygen() {
  mkdir -p "$telemetrygen_dir"
  GOBIN="$telemetrygen_dir" go install \
    "github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen@$TELEMETRYGEN_VERSION"
}
[ -x "$telemetrygen_dir/telemetrygen" ] || timed "telemetrygen $TELEMETRYGEN_VERSION" build_telemetrygen

# --- OpenTelemetry Collector (OCB) ---------------------------------------------------------
otelcol_dir="$cache/otelcol-$OTELCOL_CORE_VERSION-contrib-$OTELCOL_CONTRIB_VERSION"
build_otelcol() {
  local w
  w="$(scratch)"
  GOBIN="$w/bin" go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_BUILDER_VERSION"
  cat >"$w/manifest.yaml" <<YAML
dist:
  name: otelcol-bench
  description: OpenTelemetry Collector for DataTracing side-by-side benchmarks
  output_path: $w/dist
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver $OTELCOL_CORE_VERSION
processors:
  - gomod: go.opentelemetry.io/collector/processor/batchprocessor $OTELCOL_CORE_VERSION
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/processor/tailsamplingprocessor $OTELCOL_CONTRIB_VERSION
exporters:
  - gomod: go.opentelemetry.io/collector/exporter/nopexporter $OTELCOL_CORE_VERSION
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter $OTELCOL_CONTRIB_VERSION
YAML
  (cd "$w" && "$w/bin/builder" --config "$w/manifest.yaml" >&2)
  mkdir -p "$otelcol_dir"
  install -m 0755 "$w/dist/otelcol-bench" "$otelcol_dir/otelcol-bench"
  cp "$w/manifest.yaml" "$otelcol_dir/manifest.yaml"
}
[ -x "$otelcol_dir/otelcol-bench" ] || timed "otelcol $OTELCOL_CORE_VERSION" build_otelcol

# --- Jaeger v2 -----------------------------------------------------------------------------
# Its go.mod has a replace directive, which `go install pkg@version` refuses, so it is built
# as a tool of a scratch module (the replace is ignored there; the build does not need it).
jaeger_dir="$cache/jaeger-$JAEGER_VERSION"
build_jaeger() {
  local w
  w="$(scratch)"
  (cd "$w" && go mod init datatracing.bench/jaeger >/dev/null 2>&1 &&
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >&2 &&
    go build -o "$w/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
  mkdir -p "$jaeger_dir"
  install -m 0755 "$w/jaeger" "$jaeger_dir/jaeger"
}
[ -x "$jaeger_dir/jaeger" ] || timed "jaeger $JAEGER_VERSION" build_jaeger

echo "otelcol=$otelcol_dir/otelcol-bench"
echo "jaeger=$jaeger_dir/jaeger"
echo "telemetrygen=$telemetrygen_dir/telemetrygen"
