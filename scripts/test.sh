#!/usr/bin/env bash
# Every check CI runs, in CI's order: formatting, lints, then the whole test suite.
# Works on a fresh machine with a Rust toolchain; anything else a test needs is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds are cached outside the clone so fresh clones (CI) reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/datatracing/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A CI run compiles everything once from a fresh clone: incremental compilation only adds
# work there (it pays off on a developer's repeated builds).
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "error: '$1' is required: $2" >&2
    exit 1
  fi
}
need cargo "install Rust with rustup (stable, with the rustfmt and clippy components)"
need rustfmt "rustup component add rustfmt"
need cargo-clippy "rustup component add clippy"

step() { printf '\n==> %s\n' "$*"; }

# A real ClickHouse engine for the ClickHouse tests: a server named by
# DATATRACING_TEST_CLICKHOUSE_URL, else (with Docker) a container, else the chdb-core engine
# behind tools/chdb-http, installed here into a cached virtualenv.
if [ -z "${DATATRACING_TEST_CLICKHOUSE_URL:-}" ]; then
  need python3 "install Python 3.9+ with the venv module (Debian: apt-get install python3 python3-venv)"
  venv="${DATATRACING_VENV:-$HOME/.cache/datatracing/venv}"
  want="$(sha256sum tools/test-requirements.txt | cut -d' ' -f1)"
  have="$(cat "$venv/.requirements.sha256" 2>/dev/null || true)"
  if [ "$want" != "$have" ] || ! "$venv/bin/python" -c 'import chdb, lz4, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.grpc.trace_exporter, opentelemetry.exporter.otlp.proto.http.trace_exporter, temporalio.contrib.opentelemetry' >/dev/null 2>&1; then
    step "installing the Python test peers (chdb-core, OpenTelemetry SDK, Temporal) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r tools/test-requirements.txt
    echo "$want" > "$venv/.requirements.sha256"
  fi
  export DATATRACING_PYTHON="$venv/bin/python"
fi

# A real Kubernetes control plane (etcd + kube-apiserver) for the operator tests, built from
# the Go module proxy once and cached in ~/.cache/datatracing/k8s.
need go "install Go 1.24.6 or newer (Debian's golang package is too old)"
need openssl "apt-get install openssl"
need curl "apt-get install curl"
need jq "apt-get install jq"  # runbooks/disaster-recovery.md, run by its tests
# Both Go builds (minutes each on a cold machine, nothing once cached) run in the
# background while the Rust code is formatted, linted and compiled, and are awaited before
# the first test runs: on a cold CI machine this overlaps the longest phases. They run side
# by side, not one after the other: much of a cold Go build waits on module downloads, which
# the other build's compiling fills.
go_logs="$(mktemp -d)"
# --node: also kubelet, kube-controller-manager, kube-scheduler, kube-proxy and the pause
# program, for the e2e cluster (e2e/tests/cluster).
./tools/k8s-envtest/build.sh --node >"$go_logs/k8s.out" 2>"$go_logs/k8s.log" &
k8s_build=$!
./tools/jaeger/build.sh >"$go_logs/jaeger.out" 2>"$go_logs/jaeger.log" &
jaeger_build=$!
await_go_builds() {
  if ! wait "$k8s_build"; then
    cat "$go_logs/k8s.log" >&2
    echo "error: building the test Kubernetes API server failed (log above; rerun: tools/k8s-envtest/build.sh)" >&2
    exit 1
  fi
  if ! wait "$jaeger_build"; then
    cat "$go_logs/jaeger.log" >&2
    echo "error: building Jaeger v2 failed (log above; rerun: tools/jaeger/build.sh)" >&2
    exit 1
  fi
  # The operator tests' control plane, and Jaeger v2 for the differential test
  # (e2e/tests/jaeger_compat.rs), at the version bench/versions.env pins.
  DATATRACING_K8S_DIR="$(cat "$go_logs/k8s.out")"
  DATATRACING_JAEGER="$(cat "$go_logs/jaeger.out")"
  export DATATRACING_K8S_DIR DATATRACING_JAEGER
}

# A real Apache Kafka broker for the SDK's Kafka example (examples/tests/kafka_pipeline.rs):
# the broker jars from Maven (tools/kafka/pom.xml), run in KRaft mode on Java 17+ by the
# test harness (testkit::kafka). Installed once into ~/.cache/datatracing/kafka, in the
# background like the Go builds.
need java "install Java 17+ (Debian: apt-get install openjdk-17-jre-headless)"
need mvn "install Maven (Debian: apt-get install maven)"
kafka_log="$(mktemp)"
./tools/kafka/install.sh >"$kafka_log.out" 2>"$kafka_log" &
kafka_install=$!
await_kafka() {
  if ! wait "$kafka_install"; then
    cat "$kafka_log" >&2
    echo "error: installing the Kafka broker jars failed (log above; rerun: tools/kafka/install.sh)" >&2
    exit 1
  fi
  DATATRACING_KAFKA_DIR="$(cat "$kafka_log.out")"
  export DATATRACING_KAFKA_DIR
}

# A real browser for the UI tests (e2e/tests/ui.rs): Debian's chromium, driven by
# Playwright (playwright-core from npm at the version e2e/browser/package-lock.json pins; it
# never downloads a browser of its own). And for the e2e cluster (e2e/tests/cluster), Debian's
# containerd, runc, CNI plugins and iptables. Installed in the background (one apt-get run),
# like the Go builds, and awaited before the first test runs.
need node "install Node.js 20+ with npm (Debian: apt-get install nodejs npm)"
need npm "install npm (Debian: apt-get install npm)"
export DATATRACING_CHROMIUM="${DATATRACING_CHROMIUM:-/usr/bin/chromium}"
debs=""
[ -x "$DATATRACING_CHROMIUM" ] || debs="$debs chromium"
command -v containerd >/dev/null 2>&1 && command -v ctr >/dev/null 2>&1 || debs="$debs containerd"
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || debs="$debs runc"
[ -x /usr/lib/cni/bridge ] || debs="$debs containernetworking-plugins"
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || debs="$debs iptables"
if [ -n "$debs" ] && { [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; }; then
  echo "error: the UI browser tests and the e2e cluster need Debian packages:$debs: run 'sudo apt-get update && sudo apt-get install -y$debs' (or set DATATRACING_CHROMIUM for chromium)" >&2
  exit 1
fi
browser_log="$(mktemp)"
(
  set -e
  if [ -n "$debs" ]; then
    echo "installing$debs with apt-get"
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $debs
  fi
  want="$(sha256sum e2e/browser/package-lock.json | cut -d' ' -f1)"
  if [ "$want" != "$(cat e2e/browser/node_modules/.lock.sha256 2>/dev/null || true)" ]; then
    npm ci --prefix e2e/browser --no-audit --no-fund --cache "$HOME/.npm"
    echo "$want" > e2e/browser/node_modules/.lock.sha256
  fi
) >"$browser_log" 2>&1 &
browser_setup=$!
await_browser() {
  if ! wait "$browser_setup"; then
    cat "$browser_log" >&2
    echo "error: installing the UI test browser or the e2e cluster's Debian packages failed (log above)" >&2
    exit 1
  fi
}

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings are errors)"
# The e2e cluster's scenarios are a test target of their own that `--all-targets` leaves out
# (`test = false` in e2e/Cargo.toml, so they can run last, below): named here.
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --test cluster --locked -- -D warnings

step "cargo deny (licenses, duplicate versions, banned crates, sources; advisories where reachable)"
./scripts/deny.sh

log="$(mktemp)"
# A failing step stops the run: background builds stop with it.
trap 'for p in ${fuzz_build:-}; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done; rm -rf "$log" "$go_logs" "$browser_log" "$kafka_log" "$kafka_log.out" "${build_logs:-}"' EXIT

step "cargo test: compile every test"
cargo test --workspace --all-targets --locked --no-run
cargo test --workspace --test cluster --locked --no-run

# The fuzz targets (sanitizer builds on the nightly toolchain) build in the background while
# the tests run: the tests leave most of the two cores idle (70-80 % idle while the e2e
# tests wait on servers, measured on a cold run), and on a cold machine this build takes
# many minutes. It runs in a session of its own at the lowest priority (the scheduler groups
# CPU time by session), so the tests keep the CPU they need. The e2e cluster's pods run the
# binary the tests built (e2e/README.md, "Why not a release build"); its scenarios run
# after the other tests.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "error: fuzzing needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
build_logs="$(mktemp -d)"
background() { # log, command...: in a new session, lowest priority
  local out="$1"
  shift
  setsid bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null || true; exec nice -n 19 "$@"' bash "$@" >"$out" 2>&1 &
}
background "$build_logs/fuzz.log" env DATATRACING_FUZZ_BUILD_ONLY=1 ./scripts/fuzz.sh
fuzz_build=$!
await_build() { # pid, what, log
  if ! wait "$1"; then
    cat "$3" >&2
    echo "error: $2 failed (log above)" >&2
    exit 1
  fi
}

step "waiting for the Go-built test binaries, the Debian packages, the UI test browser and the Kafka broker jars"
await_go_builds
await_browser
await_kafka

step "cargo test: doc tests"
cargo test --workspace --doc --locked 2>&1 | tee -a "$log"

step "cargo test: every unit, integration and end-to-end test but the e2e cluster's"
cargo test --workspace --all-targets --locked 2>&1 | tee -a "$log"

step "cargo test: the e2e cluster's scenarios (e2e/tests/cluster, real pods)"
cargo test --workspace --test cluster --locked 2>&1 | tee -a "$log"

# Coverage-guided fuzzing of every decoder of untrusted input, bounded (nightly toolchain,
# cargo-fuzz cached in ~/.cache/datatracing/tools; a crash fails the run).
step "fuzzing: ${DATATRACING_FUZZ_SECONDS:-30}s per target (scripts/fuzz.sh)"
await_build "$fuzz_build" "building the fuzz targets (scripts/fuzz.sh)" "$build_logs/fuzz.log"
./scripts/fuzz.sh "${DATATRACING_FUZZ_SECONDS:-30}"

# One closing line for the whole run (cargo prints one result line per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     END { printf "\ntests: %d passed, %d failed, %d skipped\n", p, f, i; if (p == 0) exit 1 }' "$log"
