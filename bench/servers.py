"""The servers under test (DataTracing, the OpenTelemetry Collector, Jaeger v2) and the
ClickHouse engine: configuration files, start, readiness, counters, stop; and the /proc
readings. Part of bench/sidebyside.py."""

import os
import random
import signal
import socket
import subprocess
import threading
import time
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
        # Experiments with the embedded store's settings, e.g. `synchronous: normal`.
        lines += [f"    {kv.replace('=', ': ', 1)}" for kv in args.embedded_setting]
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


