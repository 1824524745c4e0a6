"""/metrics through prometheus-client: a scrape of a running server moves during a refund; labels stay closed."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from refund_mcp.metrics import exposition
from tests.conftest import make_app
from tests.support.servers import http_server

pytestmark = pytest.mark.anyio

HITL_POLICY = __import__("pathlib").Path(__file__).resolve().parent / "support" / "hitl_policy.yaml"
TXN = "sandbox:demo_usd_order"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text scrape, keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape: dict[Any, float], name: str, **labels: str) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_scrape_of_a_running_server_moves_during_a_refund(tmp_path) -> None:
    env = {
        "REFUND_MCP_DB": f"sqlite+aiosqlite:///{tmp_path / 'srv.sqlite3'}",
        "REFUND_MCP_POLICY": str(HITL_POLICY),
        "REFUND_MCP_SANDBOX": "1",
        "REFUND_MCP_METRICS_CACHE_SECONDS": "0",
        "REFUND_MCP_WORKER_INTERVAL_SECONDS": "3600",
    }
    with http_server(env) as base:
        async with httpx2.AsyncClient() as http:
            before = samples((await http.get(f"{base}/metrics")).text)
            async with Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
                done = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "duplicate", "amount_minor": 500})
                assert not done.is_error, done.content
                parked = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "fraudulent", "amount_minor": 700})
                assert parked.structured_content["status"] == "pending_approval"
                await client.call_tool("no_such_tool\n{evil=\"1\"}", {})
            response = await http.get(f"{base}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("refund_mcp_tool_calls_total", tool="create_refund", outcome="ok") == 2
    assert moved("refund_mcp_tool_calls_total", tool="unknown", outcome="error") == 1
    assert moved("refund_mcp_tool_call_duration_seconds_count", tool="create_refund") == 2
    assert moved("refund_mcp_processor_calls_total", processor="sandbox", operation="create_refund", outcome="ok") == 1
    assert moved("refund_mcp_processor_call_duration_seconds_count", processor="sandbox", operation="create_refund") == 1
    assert value(after, "refund_mcp_state_up") == 1
    assert value(after, "refund_mcp_refunds", status="pending_approval") == 1
    assert value(after, "refund_mcp_approvals_pending") == 1
    assert value(after, "refund_mcp_reserved_amount_minor", currency="USD") == 700
    assert value(after, "refund_mcp_queue_depth") == 0
    assert value(after, "refund_mcp_circuit_open", processor="sandbox") == 0
    assert not [key for key in after if "evil" in repr(key) or "no_such_tool" in repr(key)]


async def test_two_thousand_junk_tool_names_add_no_series(app_factory) -> None:
    async with app_factory() as app:
        async with Client(app.server) as client:
            await client.call_tool("lookup_transaction", {"transaction_id": TXN})
            body, _ = exposition()
            before = set(samples(body.decode()))
            for n in range(2000):
                result = await client.call_tool(f'junk_{n}"}} 1\nrefund_mcp_forged{{a="', {})
                assert result.is_error
    body, _ = exposition()
    after = samples(body.decode())
    assert set(after) == before | {
        (name, (("outcome", "error"), ("tool", "unknown"))) for name in ("refund_mcp_tool_calls_total", "refund_mcp_tool_calls_created")
    } | {key for key in after if key[0].startswith("refund_mcp_tool_call_duration_seconds") and ("tool", "unknown") in key[1]}
    assert value(after, "refund_mcp_tool_calls_total", tool="unknown", outcome="error") >= 2000
    assert not [key for key in after if key[0] == "refund_mcp_forged"]


async def test_state_gauges_are_cached_between_scrapes(app_factory) -> None:
    from refund_mcp.observability.state import StateCollector

    now = [100.0]
    collector = StateCollector(ttl_seconds=5, clock=lambda: now[0])
    async with app_factory() as app:
        collector.attach(app, env={})
        await collector.refresh()
        first = collector._snapshot
        await collector.refresh()
        assert collector._snapshot is first  # within the TTL: no query
        now[0] += 6
        await collector.refresh()
        assert collector._snapshot is not first and collector._snapshot.ok


async def test_the_state_gauges_read_postgresql(pg_database: str) -> None:
    from refund_mcp.observability.state import read_snapshot

    async with make_app(pg_database, policy=HITL_POLICY) as app:
        async with Client(app.server) as client:
            parked = await client.call_tool(
                "create_refund", {"transaction_id": "sandbox:demo_usd_order", "reason": "fraudulent", "amount_minor": 700}
            )
        assert parked.structured_content["status"] == "pending_approval"
        snapshot = await read_snapshot(app.db, app.service.clock())
    assert snapshot.ok and snapshot.pending_approvals == 1 and snapshot.reserved_minor == {"USD": 700}
