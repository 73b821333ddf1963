"""Sends a small pipeline trace with the official OpenTelemetry Python SDK and OTLP exporter.

Test infrastructure for cli/tests/otlp_python.rs. Spans are made with the SDK's tracer, then
handed to the real OTLP exporter (HTTP/protobuf or gRPC); the export result and the ids are
printed as one JSON line for the Rust test to check against the query API.

usage: otel_pipeline.py http http://127.0.0.1:4318/v1/traces [--downstream]
       otel_pipeline.py grpc 127.0.0.1:4317 [--downstream]

--downstream adds a second trace: a downstream job whose one span continues the join
(a FOLLOWS_FROM link across traces) and fails too, so tail sampling keeps it.
"""

import json
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode


class Collect(SpanProcessor):
    def __init__(self):
        self.spans = []

    def on_end(self, span):
        self.spans.append(span)


def main():
    protocol, endpoint = sys.argv[1], sys.argv[2]
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=10)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=10)

    collect = Collect()
    provider = TracerProvider(resource=Resource.create({"service.name": "py-etl-" + protocol, "deployment.environment": "test"}))
    provider.add_span_processor(collect)
    tracer = provider.get_tracer("datatracing-e2e", "1.0")

    with tracer.start_as_current_span("ingest orders", kind=SpanKind.CONSUMER,
                                      attributes={"datatracing.span.kind": "INGEST", "records": 1200}) as root:
        with tracer.start_as_current_span("read customers", attributes={"datatracing.span.kind": "INGEST"}) as side:
            pass
        links = [
            Link(root.get_span_context(), {"datatracing.link.type": "data_dependency"}),
            Link(side.get_span_context(), {"datatracing.link.type": "data_dependency"}),
        ]
        with tracer.start_as_current_span("join orders+customers", links=links,
                                          attributes={"datatracing.span.kind": "JOIN", "ratio": 0.5,
                                                      "ok": False, "tables": ["orders", "customers"]}) as join:
            join.add_event("spill to disk", {"bytes": 4096})
            join.set_status(Status(StatusCode.ERROR, "3 rows failed the schema check"))

    downstream = None
    if "--downstream" in sys.argv[3:]:
        # A new root (no parent in the context), in a trace of its own.
        follows = Link(join.get_span_context(), {"datatracing.link.type": "follows_from"})
        with tracer.start_as_current_span("refresh features", context=None, links=[follows],
                                          attributes={"datatracing.span.kind": "SERVE"}) as downstream:
            downstream.set_status(Status(StatusCode.ERROR, "stale input"))

    result = exporter.export(collect.spans)
    exporter.shutdown()
    ctx = root.get_span_context()
    extra = {}
    if downstream is not None:
        d = downstream.get_span_context()
        extra = {"downstream_trace": format(d.trace_id, "032x"), "downstream": format(d.span_id, "016x")}
    print(json.dumps({
        **extra,
        "ok": result == SpanExportResult.SUCCESS,
        "trace_id": format(ctx.trace_id, "032x"),
        "root": format(ctx.span_id, "016x"),
        "side": format(side.get_span_context().span_id, "016x"),
        "join": format(join.get_span_context().span_id, "016x"),
        "spans": len(collect.spans),
    }), flush=True)


if __name__ == "__main__":
    main()
