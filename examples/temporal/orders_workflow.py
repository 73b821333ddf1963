"""The Temporal example: an order workflow with one activity, run by a worker with Temporal's
own OpenTelemetry tracing interceptor (temporalio.contrib.opentelemetry), on the other side of
datatracing-sdk's Temporal header carrier. sdk/tests/temporal.rs runs it against a real
Temporal dev server and the datatracing binary.

  continue <address> <collector>
      stdin: the `_tracer-data` payload the Rust SDK injected ({"metadata": {k: str}, "data": str}).
      A client without tracing puts it on a workflow start as that header (what a Rust client
      does); the worker runs with Temporal's TracingInterceptor, which continues the trace in
      its RunWorkflow and RunActivity spans.
  inject <address> <collector>
      A client with Temporal's TracingInterceptor starts the workflow under a Python span; the
      workflow returns the raw `_tracer-data` header it received, for Rust to extract.

Spans go to the collector over OTLP/HTTP and are also printed; one JSON object on stdout.
"""

import asyncio
import base64
import json
import sys
import uuid
from datetime import timedelta

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, Interceptor, OutboundInterceptor, StartWorkflowInput
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.worker import Worker

HEADER = "_tracer-data"


@activity.defn
async def enrich(order: int) -> int:
    return order * 10


@workflow.defn
class OrderWorkflow:
    @workflow.run
    async def run(self, order: int) -> dict:
        total = await workflow.execute_activity(
            enrich, order, start_to_close_timeout=timedelta(seconds=30)
        )
        header = workflow.info().headers.get(HEADER)
        raw = None
        if header is not None:
            raw = {
                "metadata": {k: base64.b64encode(v).decode() for k, v in header.metadata.items()},
                "data": base64.b64encode(header.data).decode(),
            }
        return {"total": total, "header": raw}


class _SetHeader(OutboundInterceptor):
    """What a Rust client does: put the payload its SDK injected on the workflow start."""

    def __init__(self, next, payload):
        super().__init__(next)
        self.payload = payload

    async def start_workflow(self, input: StartWorkflowInput):
        input.headers = {**input.headers, HEADER: self.payload}
        return await super().start_workflow(input)


class SetHeader(Interceptor):
    def __init__(self, payload):
        self.payload = payload

    def intercept_client(self, next):
        return _SetHeader(next, self.payload)


def span_json(s):
    return {
        "name": s.name,
        "trace_id": format(s.context.trace_id, "032x"),
        "span_id": format(s.context.span_id, "016x"),
        "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
    }


async def main(mode, address, collector):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "temporal-python"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    # Batched: a span ended inside a workflow must not wait on the network (Temporal's deadlock
    # detector fails a workflow task that does not yield within 2 s).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{collector}/v1/traces")))
    trace.set_tracer_provider(provider)
    tracing = TracingInterceptor()
    queue = f"orders-{uuid.uuid4()}"

    worker_client = await Client.connect(address, interceptors=[tracing])
    out = {}
    async with Worker(worker_client, task_queue=queue, workflows=[OrderWorkflow], activities=[enrich]):
        if mode == "continue":
            given = json.load(sys.stdin)
            payload = Payload(
                metadata={k: v.encode() for k, v in given["metadata"].items()},
                data=given["data"].encode(),
            )
            client = await Client.connect(address, interceptors=[SetHeader(payload)])
            result = await client.execute_workflow(
                OrderWorkflow.run, 4, id=f"order-{uuid.uuid4()}", task_queue=queue
            )
        elif mode == "inject":
            tracer = trace.get_tracer("temporal-interop")
            with tracer.start_as_current_span("python client"):
                result = await worker_client.execute_workflow(
                    OrderWorkflow.run, 4, id=f"order-{uuid.uuid4()}", task_queue=queue
                )
        else:
            raise SystemExit(f"unknown mode {mode}")
        out["result"] = result
    provider.force_flush()
    provider.shutdown()
    out["spans"] = [span_json(s) for s in memory.get_finished_spans()]
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
