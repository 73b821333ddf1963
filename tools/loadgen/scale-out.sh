#!/usr/bin/env bash
# Scale-out cost (issue 17): spans per collector CPU-second with N collectors routing by
# trace id (collector.peers, static members) against one collector, same load.
#
#   tools/loadgen/scale-out.sh <replicas> [loadgen args...]
#
# Every collector runs on core 0 (embedded store, a data directory each, durable queue off);
# one load generator per collector runs on core 1, sending OTLP/HTTP protobuf to its
# collector, $SPANS spans in all (default 300000) split between them. With N > 1 each
# collector forwards the spans other replicas own (about (N-1)/N of what it receives).
# Reported: spans per collector CPU-second (all collectors' CPU time, from the first request
# until every span is stored), and the forwarding latency histogram's mean.
# Extra collector settings: YAML lines in $COLLECTOR_YAML (indented under `collector:`);
# $FORWARD_COMPRESSION sets collector.peers.forward.compression (none, the default, or gzip);
# ROUTING=off runs the N collectors without routing (what N processes cost by themselves).
# Build first: cargo build --release --locked -p datatracing-cli -p datatracing-loadgen
set -euo pipefail
cd "$(dirname "$0")/../.."

n="${1:?usage: $0 <replicas> [loadgen args...]}"
shift
spans="${SPANS:-300000}"
T="${CARGO_TARGET_DIR:-$HOME/.cache/datatracing/target}/release"
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

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu() { # utime + stime of the collectors, in clock ticks
  local t=0
  for p in "${servers[@]}"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
written() { # spans written by all collectors
  local t=0
  for l in "${listens[@]}"; do
    t=$((t + $(curl -fsS "http://$l/metrics" | awk '/^datatracing_collector_spans_written_total/ {s+=$2} END {printf "%d", s}')))
  done
  echo "$t"
}

grpc=(); listens=(); servers=()
for i in $(seq 0 $((n - 1))); do grpc+=("127.0.0.1:$(port)"); listens+=("127.0.0.1:$(port)"); done
members="$(printf '"%s", ' "${grpc[@]}")"
for i in $(seq 0 $((n - 1))); do
  peers=""
  if [ "$n" -gt 1 ] && [ "${ROUTING:-on}" = on ]; then
    peers="  peers:
    enabled: true
    self: \"${grpc[$i]}\"
    static: [${members%, }]
    forward:
      compression: ${FORWARD_COMPRESSION:-none}"
  fi
  cat > "$work/config-$i.yaml" <<EOF
log:
  level: warn
storage:
  backend: embedded
  embedded:
    data_dir: $work/data-$i
collector:
  listen: ${listens[$i]}
  grpc_listen: ${grpc[$i]}
$peers
${COLLECTOR_YAML:-}
EOF
  taskset -c 0 "$T/datatracing" collector --config "$work/config-$i.yaml" > "$work/collector-$i.log" 2>&1 &
  servers+=("$!")
  pids+=("$!")
done
for i in $(seq 0 $((n - 1))); do
  for _ in $(seq 600); do
    curl -fsS "http://${listens[$i]}/readyz" >/dev/null 2>&1 && break
    kill -0 "${servers[$i]}" 2>/dev/null || { cat "$work/collector-$i.log" >&2; exit 1; }
    sleep 0.1
  done
done

tck="$(getconf CLK_TCK)"
before="$(cpu)"
gens=()
for i in $(seq 0 $((n - 1))); do
  taskset -c 1 "$T/datatracing-loadgen" --ingest "http://${listens[$i]}" --protocol otlp-proto \
    --spans $((spans / n)) --seed $((42 + i)) --queries 0 "$@" > "$work/loadgen-$i.out" 2>&1 &
  gens+=("$!")
done
for g in "${gens[@]}"; do wait "$g" || { cat "$work"/loadgen-*.out >&2; exit 1; }; done
total=$(( (spans / n) * n ))
for _ in $(seq 600); do
  [ "$(written)" -ge "$total" ] && break
  sleep 0.1
done
after="$(cpu)"
stored="$(written)"
secs="$(echo "($after - $before) / $tck" | bc -l)"
grep -h "request latency" "$work"/loadgen-*.out | sed 's/^/loadgen: /'
printf 'replicas: %d, spans sent: %d, stored: %d, collector CPU: %.2f s, spans per collector CPU-second: %.0f\n' \
  "$n" "$total" "$stored" "$secs" "$(echo "$total / $secs" | bc -l)"
if [ "$n" -gt 1 ]; then
  for l in "${listens[@]}"; do curl -fsS "http://$l/metrics"; done | awk '
    /^datatracing_collector_forward_duration_seconds_sum/ {s+=$2}
    /^datatracing_collector_forward_duration_seconds_count/ {c+=$2}
    /^datatracing_collector_forward_spans_total/ {f+=$2}
    /^datatracing_collector_forward_retries_total/ {r+=$2}
    /^datatracing_collector_forward_fallback_spans_total/ {b+=$2}
    /^datatracing_collector_spans_rejected_total/ {j+=$2}
    END {printf "forwarded spans: %d, mean forward latency: %.2f ms, forward retries: %d, fallback spans: %d, rejected spans: %d\n", f, (c ? 1000*s/c : 0), r, b, j}'
fi
