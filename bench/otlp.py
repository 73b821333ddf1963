"""OTLP/HTTP protobuf requests shaped like telemetrygen's, built without an OTLP library, and
a paced client that times each request. Part of bench/sidebyside.py."""

import http.client
import random
import struct
import threading
import time


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

    def __init__(self, port, spans, interval, service=b"bench-probe", seed=0):
        super().__init__(daemon=True)
        self.port, self.spans, self.interval, self.service = port, spans, interval, service
        self.latencies, self.errors, self.sent = [], 0, 0
        self.stop = threading.Event()
        self.bodies = OtlpBodies(spans, service, random.Random(7 + 1000 * seed))

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


