#!/usr/bin/env bash
# Builds Jaeger v2 (the cmd/jaeger program of github.com/jaegertracing/jaeger) from the Go
# module proxy, for the Jaeger differential test (e2e/tests/jaeger_compat.rs); test
# infrastructure only. The version is the one bench/versions.env pins and the binary lands
# where bench/build-peers.sh caches it ($DATATRACING_BENCH_CACHE, default
# ~/.cache/datatracing/bench, /jaeger-<version>/jaeger), so either script reuses the other's
# build. Rebuilt only when missing. Prints the binary's path on success.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../../bench/versions.env
. "$root/bench/versions.env"
cache="${DATATRACING_BENCH_CACHE:-$HOME/.cache/datatracing/bench}"
out="$cache/jaeger-$JAEGER_VERSION/jaeger"
if [ -x "$out" ]; then
  echo "$out"
  exit 0
fi
command -v go >/dev/null 2>&1 || { echo "error: Go 1.24+ is required to build Jaeger v2 for the differential test" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Jaeger's go.mod has a replace directive, which `go install pkg@version` refuses, so it is
# built as a tool of a scratch module (the replace is not needed for the build).
(cd "$work" && go mod init datatracing.test/jaeger >/dev/null 2>&1 &&
  go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >&2 &&
  go build -trimpath -ldflags "-s -w" -o "$work/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger >&2)
mkdir -p "$(dirname "$out")"
install -m 0755 "$work/jaeger" "$out"
echo "$out"
