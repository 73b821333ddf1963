"""The Python OpenTelemetry SDK's own propagators (W3C trace context + baggage, the default
global propagator) on the other side of the SDK's carriers. Used by sdk/tests/interop_python.rs.

  extract-http  stdin: JSON object of HTTP headers; continue the trace in a child span
  extract-env   the process environment (EnvironmentGetter); continue the trace
  inject-http   start a span with baggage; print the headers it injects
  inject-env    start a span with baggage; print the environment (EnvironmentSetter)

Prints one JSON object on stdout.
"""

import json
import os
import sys

from opentelemetry import baggage, context, propagate, trace
from opentelemetry.propagators._envcarrier import EnvironmentGetter, EnvironmentSetter
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("datatracing-sdk-interop")


def continue_trace(cx):
    parent = trace.get_current_span(cx).get_span_context()
    with tracer.start_as_current_span("python child", context=cx) as span:
        sc = span.get_span_context()
        return {
            "trace_id": format(sc.trace_id, "032x"),
            "span_id": format(sc.span_id, "016x"),
            "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
            "parent_remote": parent.is_remote,
            "tracestate": parent.trace_state.to_header(),
            "sampled": parent.trace_flags.sampled,
            "baggage": {k: str(v) for k, v in baggage.get_all(cx).items()},
        }


def start_with_baggage():
    cx = baggage.set_baggage("run", "py-7")
    token = context.attach(cx)
    span = tracer.start_span("python producer")
    cx = trace.set_span_in_context(span, cx)
    sc = span.get_span_context()
    ids = {"trace_id": format(sc.trace_id, "032x"), "span_id": format(sc.span_id, "016x")}
    return cx, ids, token


mode = sys.argv[1]
if mode == "extract-http":
    headers = json.load(sys.stdin)
    out = continue_trace(propagate.extract(headers))
elif mode == "extract-env":
    out = continue_trace(propagate.extract(os.environ, getter=EnvironmentGetter()))
elif mode == "inject-http":
    cx, out, _ = start_with_baggage()
    carrier = {}
    propagate.inject(carrier, context=cx)
    out["carrier"] = carrier
elif mode == "inject-env":
    cx, out, _ = start_with_baggage()
    env = {}
    propagate.inject(env, context=cx, setter=EnvironmentSetter())
    out["carrier"] = env
else:
    raise SystemExit(f"unknown mode {mode}")
print(json.dumps(out))
