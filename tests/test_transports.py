"""The installed server over stdio and over streamable HTTP, through the SDK's own clients."""

from __future__ import annotations

import os

import pytest

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from tests.conftest import TEST_POLICY
from tests.support.servers import http_server, refund_mcp_command

pytestmark = pytest.mark.anyio

TXN = "sandbox:demo_usd_order"


def server_env(tmp_path) -> dict[str, str]:
    return {
        "REFUND_MCP_DB": f"sqlite+aiosqlite:///{tmp_path / 'srv.sqlite3'}",
        "REFUND_MCP_POLICY": str(TEST_POLICY),
        "REFUND_MCP_SANDBOX": "1",
        "REFUND_MCP_ACTOR": "stdio-agent",
    }


async def exercise(client: Client) -> None:
    tools = {tool.name for tool in (await client.list_tools()).tools}
    assert "create_refund" in tools
    txn = (await client.call_tool("lookup_transaction", {"transaction_id": TXN})).structured_content
    assert txn["refundable_minor"] == 12000
    refund = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 2500})
    assert not refund.is_error, refund.content
    assert refund.structured_content["status"] == "succeeded"
    over = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": 9501})
    assert over.is_error and "[amount_exceeds_refundable]" in over.content[0].text
    bad = await client.call_tool("create_refund", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": "lots"})
    assert bad.is_error and "[validation_error]" in bad.content[0].text and "amount_minor" in bad.content[0].text
    status = (await client.call_tool("get_refund_status", {"refund_id": refund.structured_content["refund_id"]})).structured_content
    assert status["status"] == "succeeded"
    listed = (await client.call_tool("list_refunds", {"transaction_id": TXN})).structured_content
    assert [r["refund_id"] for r in listed["refunds"]] == [refund.structured_content["refund_id"]]


@pytest.mark.parametrize("mode", [{}, {"mode": "legacy"}], ids=["2026-07-28", "legacy"])
async def test_the_installed_server_works_over_stdio(tmp_path, mode):
    command, *args = refund_mcp_command()
    params = StdioServerParameters(command=command, args=[*args, "serve"], env=server_env(tmp_path))
    async with Client(params, **mode) as client:
        await exercise(client)
        refund = (await client.call_tool("list_refunds", {})).structured_content["refunds"][0]
        assert refund["actor"] == "stdio-agent"


@pytest.mark.parametrize("mode", [{}, {"mode": "legacy"}], ids=["2026-07-28", "legacy"])
async def test_the_server_works_over_streamable_http(tmp_path, mode):
    with http_server(server_env(tmp_path)) as base:
        async with httpx2.AsyncClient() as http:
            async with Client(streamable_http_client(f"{base}/mcp", http_client=http), **mode) as client:
                await exercise(client)
            health = (await http.get(f"{base}/healthz")).json()
            assert health["status"] == "ok" and health["processors"] == ["sandbox"]
            metrics = (await http.get(f"{base}/metrics")).text
            assert 'refund_mcp_tool_calls_total{outcome="ok",tool="create_refund"} 1.0' in metrics


def test_the_stdio_server_exits_when_its_client_closes_stdin(tmp_path):
    """A desktop client ends a session by closing stdin; the server (and its worker) must then exit by itself."""
    import subprocess

    proc = subprocess.run(
        [*refund_mcp_command(), "serve"],
        input=b"",
        env={**os.environ, **server_env(tmp_path), "REFUND_MCP_WORKER_INTERVAL_SECONDS": "3600"},
        capture_output=True,
        timeout=120,  # a hang, not slowness, is what this guards against
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == b""  # nothing but MCP on stdout
    assert b"refund-mcp serving on stdio" in proc.stderr
