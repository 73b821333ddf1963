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
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from otlp import OtlpBodies, Paced, Probe
from servers import CONFIGS, ClickHouseEngine, cpu_seconds, percentile, status_kib


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
    batch/rate seconds over `--steady-connections` connections, each request timed."""
    label, factory = CONFIGS[name]
    server = factory(args, name, work, engine_url)
    server.start(args.server_core)
    try:
        time.sleep(1.0)
        pid = server.proc.pid
        cpu0 = cpu_seconds(pid)
        # Several connections, as a collector serving many clients sees: one connection
        # would cap the rate at batch / latency when acknowledgements are slow.
        conns = args.steady_connections
        senders = [Paced(server.otlp_port, args.batch_size, conns * args.batch_size / args.steady_rate,
                         service=b"telemetrygen", seed=i) for i in range(conns)]
        samples = []
        t0 = time.monotonic()
        for i, sender in enumerate(senders):
            sender.start()
            time.sleep(args.batch_size / args.steady_rate)  # staggered, not in bursts
        while time.monotonic() - t0 < args.steady_seconds:
            samples.append((time.monotonic() - t0, status_kib(pid, "VmRSS")))
            time.sleep(0.5)
        for sender in senders:
            sender.stop.set()
        for sender in senders:
            sender.join(35)
        wall = time.monotonic() - t0
        cpu = cpu_seconds(pid) - cpu0
        half = [kib for t, kib in samples if t >= args.steady_seconds / 2]
        return {
            "rss_kib": statistics.median(half) if half else None,
            "achieved_rate": sum(x.sent for x in senders) / wall if wall > 0 else None,
            "cpu_share": cpu / wall if wall > 0 else None,
            "accepted": server.accepted(),
            "probe_latencies": [v for x in senders for v in x.latencies],
            "probe_errors": sum(x.errors for x in senders),
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
        f"| accepted of {args.spans:,} generated (server CPU-s per load second) | stored / accepted "
        f"| p99 latency: 20-span probe, max-rate run | p99 latency: {args.batch_size}-span requests "
        f"at {args.steady_rate:,} spans/s | peak RSS "
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
        achieved = s["steady_achieved_rate"]
        steady_note = (f" (reached {achieved:,.0f}/s)"
                       if achieved is not None and achieved < 0.95 * args.steady_rate else "")
        busy = "—" if s["server_busy"] is None else f"{s['server_busy']:.2f}"
        rows.append(
            f"| {CONFIGS[name][0]} | **{fmt_int(spc)}** ({spread}) | {ratio} "
            f"| {fmt_int(s['accepted'])} ({busy}) | {stored_txt} "
            f"| {fmt_ms(s['p99_max'])} | {fmt_ms(s['p99_steady'])} | {fmt_mib(s['peak_rss_kib'])} "
            f"| {fmt_mib(s['steady_rss_kib'])}{steady_note} |")
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
    ap.add_argument("--load", choices=["telemetrygen", "replay"], default="replay",
                    help="max-rate load generator (see load())")
    ap.add_argument("--generators", type=int, default=4,
                    help="telemetrygen processes, or replay connections, in the max-rate run")
    ap.add_argument("--workers", type=int, default=1, help="workers per telemetrygen process")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steady-rate", type=int, default=10_000)
    ap.add_argument("--steady-seconds", type=int, default=20)
    ap.add_argument("--steady-connections", type=int, default=4)
    ap.add_argument("--no-steady", action="store_true", help="skip the steady-rate runs")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument("--run-timeout", type=int, default=300)
    ap.add_argument("--settle-timeout", type=int, default=60)
    ap.add_argument("--embedded-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="extra storage.embedded setting for the DataTracing embedded runs (repeatable)")
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
                      f"server CPU-s per load second {r['server_busy']:.2f}, peak RSS {fmt_mib(r['peak_rss_kib'])}, settled={r['settled']}", flush=True)
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

