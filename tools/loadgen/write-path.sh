#!/usr/bin/env bash
# The collector's write path under load: OTLP/HTTP protobuf into `datatracing collector`,
# writing to the embedded store or to ClickHouse, reporting spans per collector CPU-second.
#
#   tools/loadgen/write-path.sh embedded|clickhouse [loadgen args...]
#
# The collector runs alone on core 0; the load generator (and, for ClickHouse, the engine)
# on core 1, so the collector's CPU time excludes ClickHouse's. ClickHouse is the server at
# $CLICKHOUSE_URL when set, else the real engine (chdb) behind tools/chdb-http in the test
# virtualenv ($DATATRACING_PYTHON, see scripts/test.sh). Extra collector settings can be
# given as YAML lines in $COLLECTOR_YAML (indented under `collector:`).
# Build first: cargo build --release --locked -p datatracing-cli -p datatracing-loadgen
set -euo pipefail
cd "$(dirname "$0")/../.."

backend="${1:?usage: $0 embedded|clickhouse [loadgen args...]}"
shift
T="${CARGO_TARGET_DIR:-$HOME/.cache/datatracing/target}/release"
py="${DATATRACING_PYTHON:-$HOME/.cache/datatracing/venv/bin/python}"
for bin in "$T/datatracing" "$T/datatracing-loadgen"; do
  [ -x "$bin" ] || { echo "error: $bin missing; build it (see the header of $0)" >&2; exit 1; }
done
command -v taskset >/dev/null || { echo "error: taskset is required (apt-get install util-linux)" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
  || python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

storage=""
case "$backend" in
  embedded)
    storage="storage:
  backend: embedded
  embedded:
    data_dir: $work/data"
    ;;
  clickhouse)
    url="${CLICKHOUSE_URL:-}"
    if [ -z "$url" ]; then
      [ -x "$py" ] || { echo "error: $py missing: run scripts/test.sh once (it installs chdb) or set CLICKHOUSE_URL" >&2; exit 1; }
      taskset -c 1 "$py" tools/chdb-http/server.py --path "$work/chdb" --port 0 > "$work/chdb.out" 2>"$work/chdb.err" &
      pids+=("$!")
      for _ in $(seq 1200); do
        grep -q "listening on" "$work/chdb.out" 2>/dev/null && break
        sleep 0.1
      done
      addr="$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$work/chdb.out" | head -1)"
      [ -n "$addr" ] || { cat "$work/chdb.err" >&2; echo "error: chdb-http did not start" >&2; exit 1; }
      url="http://$addr"
    fi
    storage="storage:
  backend: clickhouse
  clickhouse:
    url: $url
    database: dt_bench_$$"
    ;;
  *) echo "error: backend must be embedded or clickhouse" >&2; exit 1 ;;
esac

listen="127.0.0.1:$(port)"
cat > "$work/config.yaml" <<EOF
log:
  level: warn
$storage
collector:
  listen: $listen
  grpc_listen: null
${COLLECTOR_YAML:-}
EOF
taskset -c 0 "$T/datatracing" collector --config "$work/config.yaml" > "$work/collector.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 600); do
  curl -fsS "http://$listen/readyz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$work/collector.log" >&2; exit 1; }
  sleep 0.1
done
taskset -c 1 "$T/datatracing-loadgen" --ingest "http://$listen" --protocol otlp-proto \
  --server-pid "$server" --queries 0 "$@"
