"""Writes the OTLP seeds of the fuzz corpus (corpus/otlp_protobuf, corpus/otlp_json) with
the OpenTelemetry Python protobuf classes: run with the test virtualenv's python
(~/.cache/datatracing/venv/bin/python fuzz/make_seeds.py). The first byte of each seed is
the target's mode byte: 0 plain, 1 gzip."""

import base64
import gzip
import json
import pathlib

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

HERE = pathlib.Path(__file__).parent
T0 = 1_764_000_000_000_000_000


def kv(key, **value):
    return KeyValue(key=key, value=AnyValue(**value))


def request(spans_per_scope=2, with_everything=True):
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", string_value="etl-orders"))
    ss = rs.scope_spans.add()
    ss.scope.name = "datatracing-sdk"
    for i in range(spans_per_scope):
        s = ss.spans.add()
        s.trace_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
        s.span_id = (i + 1).to_bytes(8, "big")
        if i:
            s.parent_span_id = (1).to_bytes(8, "big")
        s.name = f"step-{i}"
        s.kind = Span.SPAN_KIND_INTERNAL
        s.start_time_unix_nano = T0 + i * 1000
        s.end_time_unix_nano = T0 + i * 1000 + 500_000
        if with_everything:
            s.attributes.extend([
                kv("datatracing.span.kind", string_value="JOIN"),
                kv("rows", int_value=42),
                kv("ratio", double_value=0.5),
                kv("ok", bool_value=True),
                kv("blob", bytes_value=b"\x00\x01"),
                kv("tags", array_value=ArrayValue(values=[AnyValue(string_value="a")])),
                kv("nested", kvlist_value=KeyValueList(values=[kv("x", int_value=1)])),
            ])
            e = s.events.add()
            e.name = "retry"
            e.time_unix_nano = T0 + 100
            e.attributes.append(kv("attempt", int_value=2))
            link = s.links.add()
            link.trace_id = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
            link.span_id = bytes.fromhex("00f067aa0ba902b7")
            link.attributes.append(kv("datatracing.link.type", string_value="DATA_DEPENDENCY"))
            s.status.code = Status.STATUS_CODE_ERROR
            s.status.message = "boom"
    return req


def main():
    seeds = {
        "one_span": request(1, False),
        "every_field": request(3, True),
        "empty": ExportTraceServiceRequest(),
    }
    for kind in ("otlp_protobuf", "otlp_json"):
        (HERE / "corpus" / kind).mkdir(parents=True, exist_ok=True)
    for name, req in seeds.items():
        pb = req.SerializeToString()
        # OTLP/JSON: ids as hex, enums as integers (the OTLP JSON mapping).
        doc = json_format.MessageToDict(req, use_integers_for_enums=True)
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for s in ss.get("spans", []):
                    for k in ("traceId", "spanId", "parentSpanId"):
                        if k in s:
                            s[k] = base64.b64decode(s[k]).hex()
                    for link in s.get("links", []):
                        for k in ("traceId", "spanId"):
                            link[k] = base64.b64decode(link[k]).hex()
        js = json.dumps(doc).encode()
        for kind, body in (("otlp_protobuf", pb), ("otlp_json", js)):
            (HERE / "corpus" / kind / name).write_bytes(b"\x00" + body)
            (HERE / "corpus" / kind / f"{name}.gz").write_bytes(b"\x01" + gzip.compress(body))


main()
