"""OpenTelemetry tracing (the [otel] extra) with the SDK's in-memory exporter, and JSON logs carrying the trace."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from mcp import Client
from refund_mcp.observability import logs, tracing

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

pytestmark = pytest.mark.anyio

TXN = "sandbox:demo_usd_order"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.use_provider(provider)
    try:
        yield memory
    finally:
        tracing.use_provider(None)
        provider.shutdown()


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger("refund_mcp")
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


async def test_one_create_refund_is_one_trace_continuing_the_callers_traceparent(app_factory, exporter, json_log) -> None:
    async with app_factory() as app:
        async with Client(app.server) as client:
            result = await client.call_tool(
                "create_refund",
                {"transaction_id": TXN, "reason": "duplicate", "amount_minor": 800},
                meta={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN}-01"},
            )
    assert not result.is_error, result.content
    refund_id = result.structured_content["refund_id"]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert {"tool create_refund", "policy.decision", "refund.reserve", "processor.create_refund"} <= set(spans)
    assert {f"{span.context.trace_id:032x}" for span in spans.values()} == {TRACE_ID}
    tool = spans["tool create_refund"]
    assert f"{tool.parent.span_id:016x}" == PARENT_SPAN  # continued from _meta, not a new trace
    processor = spans["processor.create_refund"]
    assert processor.attributes["refund_mcp.processor"] == "sandbox"
    assert processor.attributes["refund_mcp.outcome"] == "ok"
    assert processor.attributes["refund_mcp.processor_request_id"]
    assert processor.attributes["refund_mcp.refund_id"] == refund_id
    assert spans["policy.decision"].attributes["refund_mcp.policy.outcome"] == "allow"
    assert spans["refund.reserve"].attributes["refund_mcp.refund_id"] == refund_id
    assert tool.attributes["refund_mcp.outcome"] == "ok" and tool.attributes["refund_mcp.refund_id"] == refund_id

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    call = [line for line in lines if line["logger"] == "refund_mcp.server" and line.get("tool") == "create_refund"]
    assert call and call[-1]["refund_id"] == refund_id and call[-1]["actor"] == "agent-1"
    assert call[-1]["trace_id"] == TRACE_ID and call[-1]["outcome"] == "ok"


async def test_a_refused_call_marks_its_span_with_the_code(app_factory, exporter) -> None:
    async with app_factory() as app:
        async with Client(app.server) as client:
            refused = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "duplicate", "amount_minor": 999_999})
    assert refused.is_error
    tool = next(span for span in exporter.get_finished_spans() if span.name == "tool create_refund")
    assert tool.attributes["refund_mcp.outcome"] == "amount_exceeds_refundable"


def test_nothing_of_opentelemetry_is_imported_when_tracing_is_off() -> None:
    """refund-mcp's own code imports no OpenTelemetry SDK or exporter unless tracing is on. (The MCP SDK
    itself imports opentelemetry-api, its dependency, so only the SDK and exporters are checked.)"""
    code = (
        "import sys; from refund_mcp.cli import main; import refund_mcp.app, refund_mcp.http_app;"
        "from refund_mcp.observability import tracing; assert not tracing.configure_from_env({});"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_environment_switches_tracing_on_with_the_otlp_exporter() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the [otel] extra is not installed")
    code = (
        "from refund_mcp.observability import tracing\n"
        "from opentelemetry import trace\n"
        "assert not tracing.configure_from_env({})\n"
        "assert tracing.configure_from_env({'REFUND_MCP_OTEL': '1', 'OTEL_SERVICE_NAME': 'refunds-eu'})\n"
        "provider = trace.get_tracer_provider()\n"
        "print(type(provider).__module__, provider.resource.attributes['service.name'])\n"
        "provider.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["opentelemetry.sdk.trace", "refunds-eu"]


async def test_a_webhook_delivery_is_a_span_with_its_outcome(app_factory, exporter) -> None:
    from refund_mcp.webhooks.events import IgnoredEvent

    event = IgnoredEvent(processor="stripe", event_id="evt_traced", kind="charge.captured")
    async with app_factory() as app:
        assert await app.service.apply_event(event) == "ignored"
        assert await app.service.apply_event(event) == "replay"
    outcomes = [span.attributes["refund_mcp.webhook.outcome"] for span in exporter.get_finished_spans() if span.name == "webhook.apply"]
    assert outcomes == ["ignored", "replay"]
