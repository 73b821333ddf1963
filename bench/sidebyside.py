#!/usr/bin/env python3
"""Side-by-side OTLP ingest benchmark: DataTracing against the OpenTelemetry Collector and
Jaeger v2, under the same telemetrygen load.

Run through bench/run.sh, which builds every binary and passes their paths. Python standard
library only. Benchmark infrastructure, never a test: it asserts nothing and is not timed.

Per configuration and repetition, on a fresh server (fresh data directory) each time:

1. Max-rate run: telemetrygen sends `--spans` spans (OTLP/HTTP protobuf) as fast as the
   server takes them. Measured: spans the server accepted (its own counters) per second of
   server CPU (utime + stime from /proc/<pid>/stat, from just before the load until the
   server is idle again with everything stored), stored/accepted, peak RSS (VmHWM).
2. Steady run on another fresh server: telemetrygen at `--steady-rate` spans/s for
   `--steady-seconds`; RSS is the median of VmRSS samples over the second half.

Latency: telemetrygen does not report per-request latency and the peers do not all export a
request-duration histogram, so a small probe client (this script, a thread) sends one
20-span OTLP/HTTP protobuf request every 100 ms during both runs and times each until its
response. Its p99 is "p99 request latency" (at max load and at the steady rate). What an
acknowledgement means differs: DataTracing answers after the store has committed the spans;
the OpenTelemetry Collector and Jaeger answer once the batch processor has taken them.

Server and load are pinned to separate cores with taskset; everything listens on loopback.
Every wait is bounded.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import http.client
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc ---------------------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# --- small helpers -------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout, what, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8", "replace")


def prom_sum(text, names):
    """Sum of every sample of the named metrics (any labels) in Prometheus text."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            total += float(line.rsplit(" ", 1)[-1] if "}" not in line else line.rsplit("}", 1)[1].split()[0])
            found = True
    return total if found else None


def percentile(values, p):
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


# --- OTLP/HTTP protobuf probe --------------------------------------------------------------

def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(num, payload):  # length-delimited field
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _kv(key, value):
    return _ld(1, key) + _ld(2, _ld(1, value))


_PARENT_ATTRS = _ld(9, _kv(b"network.peer.address", b"1.2.3.4")) + _ld(9, _kv(b"peer.service", b"telemetrygen-server"))
_CHILD_ATTRS = _ld(9, _kv(b"network.peer.address", b"1.2.3.4")) + _ld(9, _kv(b"peer.service", b"telemetrygen-client"))


_MARK_T, _MARK_C, _MARK_P = b"\xa1" * 16, b"\xc2" * 8, b"\xd3" * 8


def _body_template(n_traces, service):
    """An ExportTraceServiceRequest shaped like telemetrygen's: traces of a CLIENT parent and
    one SERVER child with the same two attributes, 1 ms spans; ids and times are placeholders
    filled per request (protobuf lengths do not depend on them)."""
    times = _varint(7 << 3 | 1) + b"\xe4" * 8 + _varint(8 << 3 | 1) + b"\xf5" * 8
    child = _ld(1, _MARK_T) + _ld(2, b"\xb7" * 8) + _ld(4, _MARK_P) + _ld(5, b"okey-dokey-0") \
        + _varint(6 << 3) + _varint(2) + times + _CHILD_ATTRS
    parent = _ld(1, _MARK_T) + _ld(2, _MARK_P) + _ld(5, b"lets-go") + _varint(6 << 3) + _varint(3) \
        + times + _PARENT_ATTRS
    pair = _ld(2, child) + _ld(2, parent)
    resource = _ld(1, _ld(1, _kv(b"service.name", service)))
    body = _ld(1, resource + _ld(2, _ld(1, _ld(1, b"telemetrygen")) + pair * n_traces))
    start = body.index(pair)
    # Offsets of each placeholder within one pair.
    offsets = {m: [] for m in (_MARK_T, b"\xb7" * 8, _MARK_P, b"\xe4" * 8, b"\xf5" * 8)}
    for m, found in offsets.items():
        i = pair.find(m)
        while i >= 0:
            found.append(i)
            i = pair.find(m, i + len(m))
    return bytearray(body), start, len(pair), offsets


class OtlpBodies:
    """Request bodies of n spans (n/2 traces of two spans) with fresh ids and current times."""

    def __init__(self, n_spans, service, rng):
        self.n = max(1, n_spans // 2)
        self.body, self.start, self.size, self.offsets = _body_template(self.n, service)
        self.rng = rng

    def next(self):
        b, rng = self.body, self.rng
        now = time.time_ns()
        t_start, t_end = struct.pack("<Q", now - 1_000_000), struct.pack("<Q", now)
        tid, cid, pid = (self.offsets[_MARK_T], self.offsets[b"\xb7" * 8][0], self.offsets[_MARK_P])
        st, en = self.offsets[b"\xe4" * 8], self.offsets[b"\xf5" * 8]
        ids = rng.randbytes(32 * self.n)
        for k in range(self.n):
            base = self.start + k * self.size
            r = ids[32 * k: 32 * k + 32]
            for o in tid:
                b[base + o: base + o + 16] = r[:16]
            b[base + cid: base + cid + 8] = r[16:24]
            for o in pid:
                b[base + o: base + o + 8] = r[24:32]
            for o in st:
                b[base + o: base + o + 8] = t_start
            for o in en:
                b[base + o: base + o + 8] = t_end
        return bytes(b)


class Paced(threading.Thread):
    """Sends one request of `spans` spans every `interval` seconds on one keep-alive
    connection and times each until its response (catching up without sleeping when late)."""

    def __init__(self, port, spans, interval, service=b"bench-probe"):
        super().__init__(daemon=True)
        self.port, self.spans, self.interval, self.service = port, spans, interval, service
        self.latencies, self.errors, self.sent = [], 0, 0
        self.stop = threading.Event()
        self.bodies = OtlpBodies(spans, service, random.Random(7))

    def run(self):
        conn = None
        next_at = time.monotonic()
        while not self.stop.is_set():
            body = self.bodies.next()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                t0 = time.perf_counter()
                conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
                resp = conn.getresponse()
                resp.read()
                dt = time.perf_counter() - t0
                if resp.status == 200:
                    self.latencies.append(dt)
                    self.sent += self.spans
                else:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn = None
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)


def Probe(port):
    """The latency probe: one 20-span request every 100 ms."""
    return Paced(port, 20, 0.1)


# --- servers -------------------------------------------------------------------------------

class Server:
    """A running server under test: its process, OTLP/HTTP port and counters."""

    def __init__(self, name, argv, otlp_port, metrics_url, accepted_names, stored, workdir,
                 env=None, log=None):
        self.name, self.argv, self.otlp_port = name, argv, otlp_port
        self.metrics_url, self.accepted_names, self.stored_fn = metrics_url, accepted_names, stored
        self.workdir, self.env, self.log_path = workdir, env, log
        self.proc = None

    def start(self, core):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(core)] + self.argv, stdout=log, stderr=log,
            env=self.env, cwd=self.workdir, start_new_session=True)
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                return self.accepted() is not None
            except OSError:
                return False
        wait_for(ready, 60, f"{self.name} to serve metrics")
        wait_for(lambda: _connectable(self.otlp_port), 30, f"{self.name} OTLP port")

    def metrics(self):
        return http_get(self.metrics_url)

    def accepted(self):
        text = self.metrics()
        v = prom_sum(text, self.accepted_names)
        # Counters with labels appear only after the first sample: a served page is ready.
        return v if v is not None else 0.0

    def stored(self):
        return self.stored_fn(self) if self.stored_fn else None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _connectable(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _metric_stored(names):
    return lambda s: prom_sum(s.metrics(), names) or 0.0


def _file_spans(path):
    def count(_server):
        try:
            with open(path, "rb") as f:
                return float(f.read().count(b'"spanId":'))
        except FileNotFoundError:
            return 0.0
    return count


DT_ACCEPTED = {"datatracing_collector_spans_accepted_total", "datatracing_collector_spans_accepted"}
DT_WRITTEN = {"datatracing_collector_spans_written_total", "datatracing_collector_spans_written"}
OTEL_ACCEPTED = {"otelcol_receiver_accepted_spans_total", "otelcol_receiver_accepted_spans"}
OTEL_SENT = {"otelcol_exporter_sent_spans_total", "otelcol_exporter_sent_spans"}


def datatracing(args, name, work, sampling=False, clickhouse_url=None):
    port, grpc, query = free_port(), free_port(), free_port()
    lines = [
        "log:", "  level: warn",
        "collector:", f"  listen: 127.0.0.1:{port}", f"  grpc_listen: 127.0.0.1:{grpc}",
    ]
    if sampling:
        policy = os.path.join(work, "keep-all.yaml")
        with open(policy, "w") as f:
            f.write("rules: []\ndefault:\n  decision: keep\n")
        lines += [
            "  sampling:", "    enabled: true", f"    policy_file: {policy}",
            "    decision_wait: 1s", "    idle_timeout: 2s", "    max_traces: 200000",
        ]
    lines += ["query:", f"  listen: 127.0.0.1:{query}", "storage:"]
    if clickhouse_url:
        lines += ["  backend: clickhouse", "  clickhouse:", f"    url: {clickhouse_url}",
                  f"    database: bench{random.randrange(1 << 30)}"]
    else:
        lines += ["  backend: embedded", "  embedded:", f"    data_dir: {os.path.join(work, 'data')}"]
    cfg = os.path.join(work, "datatracing.yaml")
    with open(cfg, "w") as f:
        f.write("\n".join(lines) + "\n")
    return Server(name, [args.datatracing, "collector", "--config", cfg], port,
                  f"http://127.0.0.1:{port}/metrics", DT_ACCEPTED, _metric_stored(DT_WRITTEN),
                  work, log=os.path.join(work, "server.log"))


def _otel_telemetry(metrics_port):
    return f"""
  telemetry:
    logs:
      level: warn
    metrics:
      level: normal
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: {metrics_port}
"""


def otelcol(args, name, work, exporter, tail=False):
    port, grpc, mport = free_port(), free_port(), free_port()
    out = os.path.join(work, "spans.jsonl")
    exporters = {"nop": "  nop: {}\n", "file": f"  file:\n    path: {out}\n"}[exporter]
    processors = "[tail_sampling, batch]" if tail else "[batch]"
    tail_cfg = """  tail_sampling:
    decision_wait: 1s
    num_traces: 200000
    policies:
      - name: keep-all
        type: always_sample
""" if tail else ""
    cfg = f"""receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
      grpc:
        endpoint: 127.0.0.1:{grpc}
processors:
  batch: {{}}
{tail_cfg}exporters:
{exporters}service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: {processors}
      exporters: [{exporter}]
{_otel_telemetry(mport)}"""
    path = os.path.join(work, "otelcol.yaml")
    with open(path, "w") as f:
        f.write(cfg)
    stored = _file_spans(out) if exporter == "file" else None
    return Server(name, [args.otelcol, "--config", path], port, f"http://127.0.0.1:{mport}/metrics",
                  OTEL_ACCEPTED, stored, work, log=os.path.join(work, "server.log"))


def jaeger(args, name, work, backend):
    port, grpc, mport = free_port(), free_port(), free_port()
    if backend == "memory":
        store = "        memory:\n          max_traces: 1000000\n"
    else:
        store = f"""        badger:
          directories:
            keys: {os.path.join(work, 'badger', 'keys')}
            values: {os.path.join(work, 'badger', 'values')}
          ephemeral: false
"""
    cfg = f"""extensions:
  jaeger_storage:
    backends:
      bench_store:
{store}receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
      grpc:
        endpoint: 127.0.0.1:{grpc}
processors:
  batch: {{}}
exporters:
  jaeger_storage_exporter:
    trace_storage: bench_store
service:
  extensions: [jaeger_storage]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
{_otel_telemetry(mport)}"""
    path = os.path.join(work, "jaeger.yaml")
    with open(path, "w") as f:
        f.write(cfg)
    return Server(name, [args.jaeger, "--config", path], port, f"http://127.0.0.1:{mport}/metrics",
                  OTEL_ACCEPTED, _metric_stored(OTEL_SENT), work, log=os.path.join(work, "server.log"))


class ClickHouseEngine:
    """tools/chdb-http in front of the chdb engine, on the load core (not measured)."""

    def __init__(self, args, work):
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(args.load_core), args.python, args.chdb_http,
             "--path", os.path.join(work, "chdb"), "--port", "0"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(work, "chdb.log"), "ab"),
            start_new_session=True)
        line = _readline_bounded(self.proc.stdout, 180)
        self.url = "http://127.0.0.1:" + line.strip().rsplit(":", 1)[1]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def _readline_bounded(pipe, timeout):
    box = []
    t = threading.Thread(target=lambda: box.append(pipe.readline().decode()), daemon=True)
    t.start()
    t.join(timeout)
    if not box or not box[0]:
        raise RuntimeError("the ClickHouse engine (tools/chdb-http) did not start")
    # Keep draining so the engine never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in pipe], daemon=True).start()
    return box[0]


CONFIGS = {
    # name: (label, factory(args, name, work, engine_url))
    "dt-embedded": ("DataTracing OTLP → embedded store",
                    lambda a, n, w, ch: datatracing(a, n, w)),
    "dt-tail": ("DataTracing, tail sampling on (keep-all policy) → embedded",
                lambda a, n, w, ch: datatracing(a, n, w, sampling=True)),
    "dt-clickhouse": ("DataTracing OTLP → ClickHouse (collector CPU only)",
                      lambda a, n, w, ch: datatracing(a, n, w, clickhouse_url=ch)),
    "otel-nop": ("OTel Collector otlp → batch → nop",
                 lambda a, n, w, ch: otelcol(a, n, w, "nop")),
    "otel-file": ("OTel Collector otlp → batch → file",
                  lambda a, n, w, ch: otelcol(a, n, w, "file")),
    "otel-tail": ("OTel Collector otlp → tail_sampling (always_sample) → batch → nop",
                  lambda a, n, w, ch: otelcol(a, n, w, "nop", tail=True)),
    "jaeger-memory": ("Jaeger v2, memory store",
                      lambda a, n, w, ch: jaeger(a, n, w, "memory")),
    "jaeger-badger": ("Jaeger v2, badger store",
                      lambda a, n, w, ch: jaeger(a, n, w, "badger")),
}


# --- runs ----------------------------------------------------------------------------------

def telemetrygen(args, port, spans=None, rate=None, seconds=None):
    """telemetrygen argv: `spans` as fast as possible, or `rate` spans/s for `seconds`."""
    argv = ["taskset", "-c", str(args.load_core), args.telemetrygen, "traces",
            "--otlp-http", "--otlp-insecure", f"--otlp-endpoint=127.0.0.1:{port}",
            "--child-spans=1", f"--batch-size={args.batch_size}", "--service=telemetrygen"]
    if rate:
        # Its limiter waits once per span; ten workers keep each wait in the millisecond range.
        workers = 10
        argv += [f"--workers={workers}", f"--rate={rate / workers}", f"--duration={seconds}s"]
    else:
        # Two spans per trace (a parent and one child), split over the workers.
        per_worker = max(1, spans // (2 * args.workers))
        argv += [f"--workers={args.workers}", f"--traces={per_worker}", "--rate=0"]
    return argv


def load(args, port, log):
    """The max-rate load. Returns telemetrygen's exit codes, or the replay's request errors.

    `telemetrygen`: `--generators` processes side by side (each has one exporter with one
    request in flight, so several keep the server busier); its SDK drops spans when its queue
    overflows, so the server accepts fewer than `--spans`.
    `replay`: the same span shape pre-encoded before the clock starts (`OtlpBodies`) and sent
    over `--generators` keep-alive connections: every span reaches the server."""
    if args.load == "replay":
        return replay(args, port)
    per = args.spans // args.generators
    with open(log, "ab") as err:
        procs = [subprocess.Popen(telemetrygen(args, port, spans=per), stdout=subprocess.DEVNULL, stderr=err)
                 for _ in range(args.generators)]
        codes = []
        deadline = time.monotonic() + args.run_timeout
        for p in procs:
            try:
                codes.append(p.wait(max(1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait(10))
    return codes


def encode_replay(args):
    gen = OtlpBodies(args.batch_size, b"telemetrygen", random.Random(11))
    return [gen.next() for _ in range(max(1, args.spans // args.batch_size))]


def replay(args, port):
    bodies = args.replay_bodies
    lock, nxt, errors = threading.Lock(), [0], []
    deadline = time.monotonic() + args.run_timeout

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(bodies):
                return
            try:
                conn.request("POST", "/v1/traces", bodies[i], {"Content-Type": "application/x-protobuf"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(resp.status)
            except (OSError, http.client.HTTPException) as e:
                errors.append(str(e))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.generators)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1, deadline - time.monotonic()))
    return {"request_errors": len(errors), "first": errors[:3]}


def settle(server, timeout):
    """Waits until everything accepted is stored (when countable) and the server is idle."""
    end = time.monotonic() + timeout
    pid = server.proc.pid
    while time.monotonic() < end:
        before = cpu_seconds(pid)
        time.sleep(1.5)
        busy = cpu_seconds(pid) - before
        acc, sto = server.accepted(), server.stored()
        if busy <= 0.02 and (sto is None or sto >= acc):
            return True
    return False


def max_rate_run(args, name, work, engine_url):
    label, factory = CONFIGS[name]
    server = factory(args, name, work, engine_url)
    server.start(args.server_core)
    try:
        time.sleep(1.0)  # let start-up work finish before the CPU baseline
        cpu0 = cpu_seconds(server.proc.pid)
        acc0 = server.accepted()
        perf = None
        if args.perf:
            # Sampling profiler on the server for the load and settle phases (perf runs on
            # the load core, so it does not take the server's core).
            perf = subprocess.Popen(
                ["taskset", "-c", str(args.load_core), "perf", "record", "-F", "499", "-g",
                 "-p", str(server.proc.pid), "-o", os.path.join(work, "perf.data")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = Probe(server.otlp_port)
        t0 = time.monotonic()
        probe.start()
        codes = load(args, server.otlp_port, os.path.join(work, "telemetrygen.log"))
        load_wall = time.monotonic() - t0
        probe.stop.set()
        probe.join(35)
        settled = settle(server, args.settle_timeout)
        cpu = cpu_seconds(server.proc.pid) - cpu0
        accepted = server.accepted() - acc0
        stored = server.stored()
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait(60)
        return {
            "accepted": accepted, "stored": stored, "cpu_s": cpu, "load_wall_s": load_wall,
            "spans_per_cpu_s": accepted / cpu if cpu > 0 else None,
            "peak_rss_kib": status_kib(server.proc.pid, "VmHWM"),
            "probe_latencies": probe.latencies, "probe_errors": probe.errors,
            "telemetrygen_rc": codes, "server_busy": cpu / load_wall if load_wall else None, "settled": settled,
        }
    finally:
        server.stop()


def steady_run(args, name, work, engine_url):
    """A fixed rate from a paced client (telemetrygen's per-span limiter cannot hold 10k
    spans/s on a busy 2-core machine): one `--batch-size`-span request every
    batch/rate seconds, each timed."""
    label, factory = CONFIGS[name]
    server = factory(args, name, work, engine_url)
    server.start(args.server_core)
    try:
        time.sleep(1.0)
        pid = server.proc.pid
        cpu0 = cpu_seconds(pid)
        sender = Paced(server.otlp_port, args.batch_size, args.batch_size / args.steady_rate,
                       service=b"telemetrygen")
        samples = []
        t0 = time.monotonic()
        sender.start()
        while time.monotonic() - t0 < args.steady_seconds:
            samples.append((time.monotonic() - t0, status_kib(pid, "VmRSS")))
            time.sleep(0.5)
        sender.stop.set()
        sender.join(35)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        half = [kib for t, kib in samples if t >= args.steady_seconds / 2]
        return {
            "rss_kib": statistics.median(half) if half else None,
            "achieved_rate": sender.sent / wall if wall > 0 else None,
            "cpu_share": cpu / wall if wall > 0 else None,
            "accepted": server.accepted(),
            "probe_latencies": sender.latencies, "probe_errors": sender.errors,
        }
    finally:
        server.stop()


# --- report --------------------------------------------------------------------------------

def median_of(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt_int(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt_ms(v):
    return "—" if v is None else f"{v * 1000:.1f} ms"


def fmt_mib(kib):
    return "—" if kib is None else f"{kib / 1024:.0f} MiB"


def report(results, args):
    base = results.get("otel-file", {}).get("summary", {}).get("spans_per_cpu_s")
    rows = [
        "| configuration | spans per server CPU-second (median, min–max) | vs OTel otlp→file "
        f"| accepted of {args.spans:,} sent (server core busy) | stored / accepted "
        "| probe p99 at max rate | probe p99 at steady rate | peak RSS "
        f"| RSS at {args.steady_rate:,} spans/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s = r["summary"]
        spc = s["spans_per_cpu_s"]
        ratio = f"{spc / base:.2f}x" if spc and base else "—"
        spread = f"{fmt_int(s['spans_per_cpu_s_min'])}–{fmt_int(s['spans_per_cpu_s_max'])}"
        stored = s["stored_ratio"]
        stored_txt = "— (discarded)" if stored is None else f"{stored:.3f}"
        busy = "—" if s["server_busy"] is None else f"{s['server_busy']:.0%}"
        rows.append(
            f"| {CONFIGS[name][0]} | **{fmt_int(spc)}** ({spread}) | {ratio} "
            f"| {fmt_int(s['accepted'])} ({busy}) | {stored_txt} "
            f"| {fmt_ms(s['p99_max'])} | {fmt_ms(s['p99_steady'])} | {fmt_mib(s['peak_rss_kib'])} "
            f"| {fmt_mib(s['steady_rss_kib'])} |")
    return "\n".join(rows) + "\n"


def summarize(runs, steady):
    lat_max = [x for r in runs for x in r["probe_latencies"]]
    lat_steady = [x for r in steady for x in r["probe_latencies"]]
    ratios = [r["stored"] / r["accepted"] for r in runs if r["stored"] is not None and r["accepted"]]
    spc = [r["spans_per_cpu_s"] for r in runs if r["spans_per_cpu_s"]]
    return {
        "spans_per_cpu_s": statistics.median(spc) if spc else None,
        "spans_per_cpu_s_min": min(spc) if spc else None,
        "spans_per_cpu_s_max": max(spc) if spc else None,
        "accepted": median_of(runs, "accepted"),
        "stored_ratio": statistics.median(ratios) if ratios else None,
        "p99_max": percentile(lat_max, 99),
        "p99_steady": percentile(lat_steady, 99),
        "p50_steady": percentile(lat_steady, 50),
        "peak_rss_kib": median_of(runs, "peak_rss_kib"),
        "steady_rss_kib": median_of(steady, "rss_kib"),
        "steady_cpu_share": median_of(steady, "cpu_share"),
        "steady_achieved_rate": median_of(steady, "achieved_rate"),
        "server_busy": median_of(runs, "server_busy"),
        "load_wall_s": median_of(runs, "load_wall_s"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datatracing", required=True)
    ap.add_argument("--otelcol", required=True)
    ap.add_argument("--jaeger", required=True)
    ap.add_argument("--telemetrygen", required=True)
    ap.add_argument("--python", help="Python with chdb (for dt-clickhouse)")
    ap.add_argument("--chdb-http", help="tools/chdb-http/server.py")
    ap.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configurations")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--spans", type=int, default=300_000)
    ap.add_argument("--load", choices=["telemetrygen", "replay"], default="telemetrygen",
                    help="max-rate load generator (see load())")
    ap.add_argument("--generators", type=int, default=4,
                    help="telemetrygen processes, or replay connections, in the max-rate run")
    ap.add_argument("--workers", type=int, default=1, help="workers per telemetrygen process")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steady-rate", type=int, default=10_000)
    ap.add_argument("--steady-seconds", type=int, default=20)
    ap.add_argument("--no-steady", action="store_true", help="skip the steady-rate runs")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--run-timeout", type=int, default=300)
    ap.add_argument("--settle-timeout", type=int, default=60)
    ap.add_argument("--perf", action="store_true",
                    help="record `perf record -g` of the server during each max-rate run (perf.data in the run's directory; kept)")
    ap.add_argument("--out", required=True, help="results directory")
    args = ap.parse_args()

    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    # This script's own polling stays off the server's core.
    os.sched_setaffinity(0, {args.load_core})
    os.makedirs(args.out, exist_ok=True)
    args.replay_bodies = encode_replay(args) if args.load == "replay" else None
    results = {}
    for name in names:
        runs, steady = [], []
        for rep in range(args.reps):
            work = tempfile.mkdtemp(prefix=f"{name}-{rep}-", dir=args.out)
            works = [work]
            engine = ClickHouseEngine(args, work) if name == "dt-clickhouse" else None
            try:
                url = engine.url if engine else None
                r = max_rate_run(args, name, work, url)
                runs.append(r)
                print(f"{name} rep {rep}: {r['accepted']:.0f} accepted, {r['cpu_s']:.2f} CPU-s, "
                      f"{fmt_int(r['spans_per_cpu_s'])} spans/CPU-s, stored {r['stored']}, "
                      f"server busy {r['server_busy']:.0%}, peak RSS {fmt_mib(r['peak_rss_kib'])}, settled={r['settled']}", flush=True)
                if not args.no_steady:
                    swork = tempfile.mkdtemp(prefix=f"{name}-{rep}-steady-", dir=args.out)
                    works.append(swork)
                    s = steady_run(args, name, swork, url)
                    steady.append(s)
                    print(f"{name} rep {rep} steady: {fmt_int(s['achieved_rate'])} spans/s, "
                          f"RSS {fmt_mib(s['rss_kib'])}, CPU {s['cpu_share']:.2f}, "
                          f"probe p99 {fmt_ms(percentile(s['probe_latencies'], 99))}", flush=True)
            finally:
                if engine:
                    engine.stop()
            # Data directories can be large (file exporter output, stores): keep logs only.
            for w in works:
                for sub in ("data", "badger", "chdb", "spans.jsonl"):
                    p = os.path.join(w, sub)
                    if os.path.isdir(p):
                        shutil.rmtree(p, ignore_errors=True)
                    elif os.path.exists(p):
                        os.remove(p)
        results[name] = {"runs": [{k: v for k, v in r.items() if k != "probe_latencies"} for r in runs],
                         "summary": summarize(runs, steady)}
    table = report(results, args)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print()
    print(table)


if __name__ == "__main__":
    main()
