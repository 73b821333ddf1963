#!/usr/bin/env python3
"""ClickHouse's HTTP interface in front of chdb (the real ClickHouse engine, in-process).

Test infrastructure only, never a product dependency. It lets the official `clickhouse`
Rust crate talk to a real ClickHouse engine on a machine without a ClickHouse server.

What it does, and only that:
- SQL arrives unchanged (the `query` URL parameter, else the request body) and runs on one
  chdb connection, serialised by a lock. SQL is never parsed or emulated; for an INSERT whose
  data is in the body, the trailing `FORMAT <name>` is split off to tell chdb the input format
  (as ClickHouse's own HTTP handler does).
- `database`, `default_format` and ClickHouse settings come from URL parameters; each query
  runs with exactly the settings its request names. The session keeps the last query's
  database and settings, and only what differs is changed (`USE`, `SET`, `SET ... =
  DEFAULT`): each of those is an engine call of its own (0.4-0.6 ms), and a client sends the
  same database and settings with every query.
- Credentials from `X-ClickHouse-User` / `X-ClickHouse-Key`, `user` / `password` parameters,
  or basic auth, checked against `--user` / `--password`.
- `decompress=1` bodies are ClickHouse's compressed framing (LZ4 or none per block).
- Errors answer the way ClickHouse does: an HTTP status by error code, the
  `X-ClickHouse-Exception-Code` header, and the `Code: N. DB::Exception: ...` text. This
  includes a body INSERT the engine refuses (TOO_MANY_PARTS, say): chdb's streaming insert
  does not raise then, so an error counted in `system.errors` while the insert ran (queries
  are serialised, so it is this insert's) is answered as the insert's exception.
- `GET /ping` answers `Ok.`.
- Fault injection for tests, under `/__admin/`: `delay?ms=N` delays every later query.
- `--tls-cert FILE --tls-key FILE` serves HTTPS instead (Python's `ssl`), as ClickHouse's
  `https_port` does, so clients' TLS set-up (CA files, verification) is tested for real.
- `--backups-path DIR` lets `BACKUP ... TO File('DIR/...')` and `RESTORE ... FROM File(...)`
  write and read there (ClickHouse's `backups.allowed_path`, in a generated config file).
- `--query-log` turns on the engine's `system.query_log` (in the generated config), so the
  engine's own time and work per statement (`query_duration_ms`, `read_rows`, `read_bytes`)
  can be read next to the time a client sees; `SYSTEM FLUSH LOGS` makes it current.
- `--cluster NAME` is the one exception to "never parsed": a stand-in for a clustered install
  (ADR 0009, "ClickHouse at scale"). The generated config defines `remote_servers` NAME as one
  shard of one replica at 127.0.0.1:9000 and sets `tcp_port` 9000, which makes the engine
  treat that replica as itself: `Distributed` tables over NAME read and write the local
  tables in-process, no network (chdb listens on no port). It also defines the `{shard}` and
  `{replica}` macros. chdb cannot run the two cluster features that need ClickHouse Keeper
  and a server (`ON CLUSTER` answers QUERY_IS_PROHIBITED, `Replicated*MergeTree` tables stay
  read-only), so each query is rewritten first: ` ON CLUSTER NAME` is removed and
  `ReplicatedXMergeTree('<path>', '<replica>'[, args])` becomes `XMergeTree([args])`. Every
  rewrite is recorded, original and result, and listed by `GET /__admin/cluster-rewrites`
  (JSON), so a test can check that exactly the statements it expected were changed.
  `--shards N` (with `--cluster`) lists that same replica as N shards: reads through a
  `Distributed` table then see every row N times, but the engine treats the queries as
  fanning out to several shards and applies the checks only such queries get, chiefly the
  refusal of a non-`GLOBAL` `IN` over a `Distributed` table inside a query over one
  (`distributed_product_mode = 'deny'`, code 288). Inserts still land once.

Prints `listening on HOST:PORT` on stdout once ready. Exits when its parent process dies.
"""

import argparse
import base64
import json
import os
import re
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import chdb
import lz4.block

# URL parameters that are not ClickHouse settings.
NOT_SETTINGS = {
    "query", "database", "default_format", "user", "password", "decompress", "compress",
    "query_id", "session_id", "session_timeout", "session_check", "wait_end_of_query",
    "buffer_size", "add_http_cors_header", "quota_key", "role",
}
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CODE = re.compile(r"Code: (\d+)\.")
# `ReplicatedXMergeTree('<keeper path>', '<replica name>'` up to the next argument or the `)`.
REPLICATED_ENGINE = re.compile(r"\bReplicated(\w*MergeTree)\(\s*'[^']*'\s*,\s*'[^']*'\s*(,\s*)?")
# The port the generated cluster config names as this server's (nothing listens on it).
CLUSTER_TCP_PORT = 9000
# A statement that changes the session's database or settings itself.
SESSION_CHANGE = re.compile(r"(?is)^\s*(USE|SET)\b")
TRAILING_FORMAT = re.compile(r"(?is)^(.*?)\s+FORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$")

# ClickHouse's HTTP status per error code (HTTPHandler's mapping, the codes we meet).
STATUS_BY_CODE = {
    192: 401, 193: 401, 194: 401, 516: 401,  # unknown user, wrong/required password, auth failed
    497: 403,  # ACCESS_DENIED
    60: 404, 81: 404, 46: 404, 47: 404,  # unknown table, database, function, identifier
    6: 400, 26: 400, 27: 400, 33: 400, 38: 400, 41: 400, 53: 400, 62: 400, 69: 400, 70: 400,
    72: 400, 117: 400, 130: 400, 131: 400, 276: 400, 349: 400, 36: 400, 43: 400, 44: 400,
    115: 400,
    202: 503,  # TOO_MANY_SIMULTANEOUS_QUERIES
    159: 500,  # TIMEOUT_EXCEEDED
}


class Engine:
    def __init__(self, path, user, password, backups_path=None, cluster=None, shards=1,
                 query_log=False):
        config = []
        if query_log:
            config.append("<query_log><database>system</database><table>query_log</table>"
                          "<flush_interval_milliseconds>1000</flush_interval_milliseconds>"
                          "</query_log>")
        if backups_path:
            os.makedirs(backups_path, exist_ok=True)
            config.append("<backups><allowed_path>%s/</allowed_path></backups>"
                          % os.path.abspath(backups_path).rstrip("/"))
        if cluster:
            if not SETTING_NAME.match(cluster):
                raise SystemExit("--cluster must be letters, digits and _")
            if shards < 1:
                raise SystemExit("--shards must be at least 1")
            shard = ("<shard><replica><host>127.0.0.1</host><port>%d</port></replica></shard>"
                     % CLUSTER_TCP_PORT)
            config.append(
                "<tcp_port>%d</tcp_port>"
                "<remote_servers><%s>%s</%s></remote_servers>"
                "<macros><shard>01</shard><replica>r1</replica></macros>"
                % (CLUSTER_TCP_PORT, cluster, shard * shards, cluster))
        if config:
            os.makedirs(path, exist_ok=True)
            name = os.path.join(backups_path or path, "chdb-http.xml")
            with open(name, "w") as f:
                f.write("<clickhouse>%s</clickhouse>\n" % "".join(config))
            path = "%s?config-file=%s" % (path, name)
        self.conn = chdb.connect(path)
        self.lock = threading.Lock()
        self.user = user
        self.password = password
        self.delay_ms = 0
        self.on_cluster = (re.compile(r"\s+ON\s+CLUSTER\s+`?%s`?(?=\s|$)" % re.escape(cluster),
                                      re.IGNORECASE) if cluster else None)
        self.rewrites = []
        # What the session holds now (see `prepare`); None: not known, set it.
        self.database = None
        self.settings = {}

    def rewrite(self, sql):
        """A clustered statement as the single node can run it (`--cluster` only), recorded."""
        if self.on_cluster is None:
            return sql
        out = REPLICATED_ENGINE.sub(r"\1(", self.on_cluster.sub("", sql))
        if out != sql:
            with self.lock:
                self.rewrites.append({"original": sql, "rewritten": out})
        return out

    def run(self, sql, data, database, fmt, settings):
        with self.lock:
            if self.delay_ms:
                time.sleep(self.delay_ms / 1000.0)
            started = time.monotonic()
            self.prepare(database, settings)
            try:
                if data is not None:
                    m = TRAILING_FORMAT.match(sql)
                    if not m:
                        raise chdb.ChdbError(
                            "Code: 62. DB::Exception: INSERT with data in the request body must end "
                            "with FORMAT <name>. (SYNTAX_ERROR)")
                    before = self.error_counts()
                    inserter = self.conn.send_insert(m.group(1), m.group(2))
                    try:
                        inserter.append(data)
                        result = inserter.finish()
                    except Exception:
                        try:
                            inserter.cancel()
                        except Exception:
                            pass
                        raise
                    # The engine raised during the insert and chdb swallowed it (its row count
                    # may still include what materialized views took): answer with the
                    # exception, as ClickHouse does.
                    failure = self.new_error(before)
                    if failure is not None:
                        raise chdb.ChdbError(failure)
                    summary = {"written_rows": result.rows_written, "written_bytes": result.bytes_written}
                    return b"", summary, time.monotonic() - started
                result = self.conn.query(sql, fmt)
                out = result.bytes() or b""
                summary = {"read_rows": result.rows_read(), "read_bytes": result.bytes_read(),
                           "result_rows": 0, "result_bytes": len(out)}
                return out, summary, time.monotonic() - started
            finally:
                # The query itself may have changed the session (a `USE`, a `SET`): what it
                # holds is then unknown, and the next query sets everything again.
                if SESSION_CHANGE.match(sql):
                    self.forget_session()

    def prepare(self, database, settings):
        """Brings the session to `database` and exactly `settings`, changing only what differs
        from the previous query's (serialised by the caller's lock)."""
        if database != self.database:
            self.database = None
            self.conn.query("USE `%s`" % database.replace("`", "``"), "TabSeparated")
            self.database = database
        for name in [n for n in self.settings if n not in settings]:
            self.settings.pop(name, None)
            try:
                self.conn.query("SET %s = DEFAULT" % name, "TabSeparated")
            except Exception:
                # Not reset (a `readonly` session refuses SET): set it again next time.
                self.forget_session()
        for name, value in settings.items():
            if self.settings.get(name) == value:
                continue
            self.settings.pop(name, None)
            literal = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
            self.conn.query("SET %s = %s" % (name, literal), "TabSeparated")
            self.settings[name] = value

    def forget_session(self):
        """Every setting any request named back to its default, database unknown."""
        for name in list(self.settings):
            try:
                self.conn.query("SET %s = DEFAULT" % name, "TabSeparated")
            except Exception:
                pass
        self.settings = {}
        self.database = None


    def error_counts(self):
        """{error code: count} from system.errors (serialised by the caller's lock)."""
        out = self.conn.query("SELECT code, value FROM system.errors", "TabSeparated").bytes() or b""
        counts = {}
        for line in out.decode("utf-8", errors="replace").splitlines():
            code, _, value = line.partition("\t")
            counts[int(code)] = int(value)
        return counts

    def new_error(self, before):
        """The `Code: N. DB::Exception: ...` text of the latest error counted since `before`."""
        out = self.conn.query(
            "SELECT code, value, name, last_error_message FROM system.errors "
            "ORDER BY last_error_time DESC", "TSVRaw").bytes() or b""
        for line in out.decode("utf-8", errors="replace").splitlines():
            code, value, name, message = (line.split("\t", 3) + ["", "", "", ""])[:4]
            if int(value) > before.get(int(code), 0):
                return "Code: %s. DB::Exception: %s. (%s)" % (code, message, name)
        return None


def decompress(body):
    """Decodes ClickHouse's compressed framing: per block a 16-byte checksum, a method byte,
    the compressed size (including the 9-byte header), the uncompressed size, the payload."""
    out = bytearray()
    pos = 0
    while pos < len(body):
        if len(body) - pos < 25:
            raise ValueError("truncated compressed block header")
        method = body[pos + 16]
        csize, usize = struct.unpack_from("<II", body, pos + 17)
        payload = body[pos + 25: pos + 16 + csize]
        if len(payload) != csize - 9:
            raise ValueError("truncated compressed block")
        if method == 0x82:
            out += lz4.block.decompress(payload, uncompressed_size=usize)
        elif method == 0x02:
            out += payload
        else:
            raise ValueError("unsupported compression method 0x%02x" % method)
        pos += 16 + csize
    return bytes(out)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this, Nagle's algorithm and the client's delayed ACK add 40 ms to responses.
    disable_nagle_algorithm = True
    engine = None

    def log_message(self, fmt, *args):  # quiet: tests read stdout for the port only
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status, body, headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        # Headers and body leave in one write (one segment for small answers).
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(body)
        self.wfile.write(b"".join(self._headers_buffer))
        self._headers_buffer = []

    def fail(self, code, message):
        text = message if message.startswith("Code:") else "Code: %d. DB::Exception: %s" % (code, message)
        self.reply(STATUS_BY_CODE.get(code, 500), (text.rstrip() + "\n").encode(),
                   {"X-ClickHouse-Exception-Code": str(code), "Content-Type": "text/plain; charset=UTF-8"})

    def credentials(self, params):
        user = self.headers.get("X-ClickHouse-User") or params.get("user")
        password = self.headers.get("X-ClickHouse-Key") or params.get("password")
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
            user, password = user or u, password or p
        return user or "default", password or ""

    def handle_any(self):
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        body = self.read_body()
        if url.path == "/ping":
            return self.reply(200, b"Ok.\n")
        if url.path.startswith("/__admin/delay"):
            self.engine.delay_ms = int(params.get("ms", "0"))
            return self.reply(200, b"ok\n")
        if url.path == "/__admin/cluster-rewrites":
            with self.engine.lock:
                listed = json.dumps(self.engine.rewrites)
            return self.reply(200, listed.encode(), {"Content-Type": "application/json"})
        if url.path not in ("/", ""):
            return self.fail(0, "There is no handle %s" % url.path)
        user, password = self.credentials(params)
        if user != self.engine.user or password != self.engine.password:
            return self.fail(516, "%s: Authentication failed: password is incorrect, or there is no "
                                  "user with such name. (AUTHENTICATION_FAILED)" % user)
        sql = params.get("query")
        data = None
        if sql is None:
            sql = body.decode("utf-8", errors="replace")
        elif body:
            data = body
        if not sql.strip():
            return self.fail(62, "Empty query. (SYNTAX_ERROR)")
        try:
            if data is not None and params.get("decompress") == "1":
                data = decompress(data)
        except Exception as e:  # corrupt framing: ClickHouse answers CANNOT_DECOMPRESS
            return self.fail(271, "Cannot decompress: %s. (CANNOT_DECOMPRESS)" % e)
        settings = {k: v for k, v in params.items()
                    if k not in NOT_SETTINGS and not k.startswith("param_") and SETTING_NAME.match(k)}
        sql = self.engine.rewrite(sql)
        database = params.get("database") or self.headers.get("X-ClickHouse-Database") or "default"
        fmt = params.get("default_format") or self.headers.get("X-ClickHouse-Format") or "TabSeparated"
        try:
            out, summary, elapsed = self.engine.run(sql, data, database, fmt, settings)
        except Exception as e:
            message = str(e)
            m = CODE.search(message)
            code = int(m.group(1)) if m else 1001
            if m:
                message = message[m.start():]
            return self.fail(code, message)
        summary = {k: str(v) for k, v in summary.items()}
        summary["elapsed_ns"] = str(int(elapsed * 1e9))
        self.reply(200, out, {
            "Content-Type": "application/octet-stream",
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Summary": json.dumps(summary),
        })

    do_GET = handle_any
    do_POST = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that timed out and hung up is normal in fault tests, not an error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def watch_parent(parent):
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", required=True, help="chdb data directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--user", default="default")
    ap.add_argument("--password", default="")
    ap.add_argument("--backups-path", help="directory BACKUP/RESTORE may use with File(...)")
    ap.add_argument("--cluster", help="define this cluster (one local shard) and rewrite its DDL")
    ap.add_argument("--shards", type=int, default=1,
                    help="with --cluster: list this engine as that many shards of the cluster")
    ap.add_argument("--query-log", action="store_true",
                    help="keep system.query_log (the engine's own time and rows per statement)")
    ap.add_argument("--tls-cert", help="PEM certificate: serve HTTPS")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = ap.parse_args()
    if args.shards != 1 and not args.cluster:
        raise SystemExit("--shards needs --cluster")
    Handler.engine = Engine(args.path, args.user, args.password, args.backups_path,
                            args.cluster, args.shards, args.query_log)
    server = Server((args.host, args.port), Handler)
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        # A client that refuses the certificate fails its handshake in accept(), which the
        # server loop treats as a failed accept (OSError) and moves on.
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    print("listening on %s:%d" % server.server_address[:2], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
