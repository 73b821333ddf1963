#!/usr/bin/env python3
"""Jaeger's /api/traces search against the same v1 search, alternating (so the machine's load
hits both alike), on a running query port: p50/p99 of each and their ratio.

Usage: jaeger-paired.py START END N [BASE]   (START/END in RFC 3339; BASE defaults to
http://127.0.0.1:16686). Services are those the load command writes.
"""
import random
import statistics
import sys
import time
import urllib.request
from datetime import datetime

start, end, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = sys.argv[4] if len(sys.argv) > 4 else "http://127.0.0.1:16686"
services = ["kafka-ingest", "dbt-models", "quality-checks", "reverse-etl"]


def micros(rfc3339):
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1_000_000)


def timed(url):
    t0 = time.perf_counter()
    with urllib.request.urlopen(base + url) as r:
        body = r.read()
    return (time.perf_counter() - t0) * 1000, len(body)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


random.seed(7)
v1, jaeger, sizes = [], [], []
for _ in range(n):
    s = random.choice(services)
    a, _ = timed(f"/api/v1/traces?service={s}&limit=20&start={start}&end={end}")
    b, size = timed(f"/api/traces?service={s}&limit=20&start={micros(start)}&end={micros(end)}")
    v1.append(a)
    jaeger.append(b)
    sizes.append(size)
print(
    f"v1 p50 {pct(v1, .5):.2f} p99 {pct(v1, .99):.2f} ms | jaeger p50 {pct(jaeger, .5):.2f} "
    f"p99 {pct(jaeger, .99):.2f} ms | jaeger/v1 p50 {pct(jaeger, .5) / pct(v1, .5):.2f}x "
    f"p99 {pct(jaeger, .99) / pct(v1, .99):.2f}x | jaeger body {statistics.mean(sizes) / 1024:.0f} KiB"
)
