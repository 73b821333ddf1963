#!/usr/bin/env python3
"""Where a ClickHouse read's time goes, per statement shape, behind `tools/chdb-http`.

Test tooling for benchmarks (docs/benchmarks.md, issue 10), not a product part. Needs a
front started with `--query-log`. For every statement the store sent to `--database` since
`--since` (the engine's `system.query_log`), grouped by shape (search step, summaries,
links, ...), it prints the engine's own time and work (query_log: duration, rows and bytes
read). Then it replays one sample statement of each shape `--repeat` times through the
front and splits what a client waits for into: the engine's own time (query_log), the
front's engine calls (`X-ClickHouse-Summary` `elapsed_ns`, which adds chdb's per-call cost
and any `USE`/`SET`), and the rest (HTTP, Python, the copy of the answer). `SELECT 1` is
replayed too, as the floor of one round trip. Replays run with
`use_query_condition_cache = 0`: the engine otherwise remembers which granules a repeated
literal filter skipped, and from the second repeat on a replay would measure that memory,
which the store's searches over ever-new ids never get.

    python tools/chdb-http/profile.py --url http://127.0.0.1:18124 --database load10m \
        --since '2026-12-03 14:00:00' --repeat 20
"""

import argparse
import http.client
import json
import re
import statistics
import time
import urllib.parse

# Statement shapes of store-clickhouse's reader, first match wins.
SHAPES = [
    ("search step, cursor page", re.compile(r"sum\(count\(\)\) OVER.*NOT IN \(SELECT trace_id", re.S)),
    ("search step, cursor page (newest rows before the cursor)", re.compile(r"sum\(countIf\(start_time <=", re.S)),
    ("search step, first page", re.compile(r"sum\(count\(\)\) OVER", re.S)),
    ("search step, exact fallback", re.compile(r"toUInt64\(0\) AS scanned", re.S)),
    ("search step + summaries (one statement)", re.compile(r"argMin\(service.*AS latest", re.S)),
    ("summaries (trace_summaries)", re.compile(r"argMinMerge\(root\)", re.S)),
    ("summaries", re.compile(r"argMin\(service", re.S)),
    ("links from (upstream level, trace_summaries)", re.compile(r"groupUniqArrayArray\(links_out\)", re.S)),
    ("links from (upstream level)", re.compile(r"links_json != ''", re.S)),
    ("links to (downstream level)", re.compile(r"FROM \S*span_links\S* WHERE target_trace_id IN", re.S)),
    ("get traces (batched)", re.compile(r"LIMIT 1 BY trace_id, span_id", re.S)),
    ("get trace", re.compile(r"LIMIT 1 BY span_id", re.S)),
    ("services", re.compile(r"DISTINCT toString\(service\)", re.S)),
    ("operations", re.compile(r"DISTINCT toString\(operation\)", re.S)),
]


def shape(sql):
    for name, pattern in SHAPES:
        if pattern.search(sql):
            return name
    return None


class Front:
    def __init__(self, url, database):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 8123, timeout=60)
        self.database = database

    def run(self, sql, fmt="TabSeparated"):
        """(seconds the client waited, the front's summary, answer bytes)."""
        path = "/?" + urllib.parse.urlencode({"database": self.database, "default_format": fmt,
                                               "max_execution_time": "30",
                                               "use_query_condition_cache": "0"})
        started = time.perf_counter()
        self.conn.request("POST", path, body=sql.encode())
        r = self.conn.getresponse()
        body = r.read()
        waited = time.perf_counter() - started
        if r.status != 200:
            raise SystemExit("%s answered %d: %s" % (sql[:200], r.status, body[:500]))
        return waited, json.loads(r.getheader("X-ClickHouse-Summary") or "{}"), body


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def logged(front, since, tag=None):
    """QueryFinish rows of query_log: (query, duration µs, read_rows, read_bytes)."""
    front.run("SYSTEM FLUSH LOGS")
    where = "type = 'QueryFinish' AND current_database = '%s' AND event_time >= '%s'" % (
        front.database, since)
    if tag:
        where += " AND position(query, '%s') > 0" % tag
    _, _, body = front.run(
        "SELECT query, toInt64(dateDiff('microsecond', query_start_time_microseconds, "
        "event_time_microseconds)), read_rows, read_bytes FROM system.query_log WHERE " + where,
        "JSONCompactEachRow")
    return [json.loads(line) for line in body.decode().splitlines() if line]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:18124")
    ap.add_argument("--database", required=True)
    ap.add_argument("--since", required=True, help="query_log event_time lower bound (UTC)")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    front = Front(args.url, args.database)

    groups = {}
    for query, micros, rows, nbytes in logged(front, args.since):
        name = shape(query)
        if name:
            groups.setdefault(name, []).append((query, micros, rows, nbytes))
    print("## Statements the store sent (engine's own figures, system.query_log)\n")
    print("| statement | count | engine p50 / p99 ms | read rows (mean) | read MiB (mean) |")
    print("|---|---|---|---|---|")
    for name, _ in SHAPES:
        g = groups.get(name)
        if not g:
            continue
        d = [m / 1000 for _, m, _, _ in g]
        print("| %s | %d | %.1f / %.1f | %d | %.2f |" % (
            name, len(g), quantile(d, 0.5), quantile(d, 0.99),
            statistics.mean(r for _, _, r, _ in g), statistics.mean(b for _, _, _, b in g) / 2**20))

    print("\n## One sample of each, replayed %d times through the front (p50 ms)\n" % args.repeat)
    print("| statement | client waited | front's engine calls | engine's own | rest (HTTP, Python, copies) |")
    print("|---|---|---|---|---|")
    samples = [("SELECT 1", "SELECT 1")] + [(n, groups[n][len(groups[n]) // 2][0])
                                              for n, _ in SHAPES if n in groups]
    for name, sql in samples:
        tag = "/* profile %d */" % time.time_ns()
        waited, calls = [], []
        for _ in range(args.repeat):
            w, summary, _ = front.run(tag + " " + sql, "RowBinary")
            waited.append(w * 1000)
            calls.append(int(summary.get("elapsed_ns", 0)) / 1e6)
        own = [m / 1000 for _, m, _, _ in logged(front, args.since, tag)]
        w, c, o = quantile(waited, 0.5), quantile(calls, 0.5), quantile(own, 0.5)
        print("| %s | %.1f | %.1f | %.1f | %.1f |" % (name, w, c, o, w - c))


if __name__ == "__main__":
    main()
