#!/usr/bin/env python3
"""Statements side by side behind `tools/chdb-http`, with the engine's own figures.

Test tooling for benchmarks (docs/benchmarks.md, issue 10), not a product part. Needs a
front started with `--query-log`. Runs each statement file (one SQL statement each) in
turn, `--rounds` times, interleaved so that drift in the machine's load hits all of them,
with `use_query_condition_cache = 0` (the engine otherwise remembers which granules a
repeated literal filter skipped, which a search over fresh ids never gets). Then prints
per statement: the engine's time (query_log `query_duration_ms`, p50 / p90), what the
client waited (p50 / p90), and the work of the last run: rows read, marks selected, bytes
decompressed, compressed blocks, peak memory, and scalar subqueries evaluated / answered
from the query's own cache (a subquery the statement names twice is evaluated once when
the second use is a hit).

    python tools/chdb-http/compare.py --database load10m --rounds 30 two-1.sql two-2.sql one.sql
"""

import argparse
import http.client
import json
import time
import urllib.parse
import uuid


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:18124")
    ap.add_argument("--database", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    u = urllib.parse.urlsplit(args.url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 8123, timeout=120)

    def run(sql, fmt="RowBinary"):
        path = "/?" + urllib.parse.urlencode({"database": args.database, "default_format": fmt,
                                               "use_query_condition_cache": "0"})
        conn.request("POST", path, body=sql.encode())
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise SystemExit("%s answered %d: %s" % (sql[:200], r.status, body[:500]))
        return body

    run_id = uuid.uuid4().hex[:12]
    statements = {f: open(f).read() for f in args.files}
    waited = {f: [] for f in args.files}
    for _ in range(args.rounds):
        for f, sql in statements.items():
            started = time.perf_counter()
            run("/* compare %s %s */ %s" % (run_id, f, sql))
            waited[f].append((time.perf_counter() - started) * 1000)
    run("SYSTEM FLUSH LOGS")
    print("| statement | engine p50 / p90 ms | client p50 / p90 ms | rows read | marks "
          "| decompressed MiB | blocks | memory MiB | scalar subqueries run / cached |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f in args.files:
        tag = "/* compare %s %s */" % (run_id, f)
        body = run(
            "SELECT query_duration_ms, read_rows, ProfileEvents['SelectedMarks'], "
            "ProfileEvents['CompressedReadBufferBytes'], ProfileEvents['CompressedReadBufferBlocks'], "
            "memory_usage, ProfileEvents['ScalarSubqueriesCacheMiss'], "
            "ProfileEvents['ScalarSubqueriesGlobalCacheHit'] + ProfileEvents['ScalarSubqueriesLocalCacheHit'] "
            "FROM system.query_log WHERE type = 'QueryFinish' AND startsWith(query, '%s') "
            "ORDER BY event_time_microseconds" % tag.replace("'", "\\'"),
            "JSONCompactEachRow")
        rows = [json.loads(line) for line in body.decode().splitlines() if line]
        if not rows:
            raise SystemExit("no query_log rows for %s (is the front started with --query-log?)" % f)
        d = [r[0] for r in rows]
        last = rows[-1]
        print("| %s | %d / %d | %.1f / %.1f | %d | %d | %.2f | %d | %.1f | %d / %d |" % (
            f, quantile(d, 0.5), quantile(d, 0.9), quantile(waited[f], 0.5),
            quantile(waited[f], 0.9), int(last[1]), int(last[2]), int(last[3]) / 2**20,
            int(last[4]), int(last[5]) / 2**20, int(last[6]), int(last[7])))


if __name__ == "__main__":
    main()
