"""Calls the MCP layer refuses before any tool body runs (unknown tool, invalid or unknown arguments,
a token without the tool's scope) are audited once each, in bounded records that keep no values."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from mcp import Client
from refund_mcp.store import tables
from tests.security._support import SANDBOX_TXN

pytestmark = pytest.mark.anyio


async def refused_records(app) -> list[dict]:
    async with app.db.engine.connect() as conn:
        rows = (await conn.execute(select(tables.audit_log.c.body).where(tables.audit_log.c.action == "tool.refused"))).all()
    return [json.loads(row.body) for row in rows]


async def test_every_refused_call_is_audited_once_without_its_values(app_factory):
    secretish = "4242 4242 4242 4242"
    forged_name = 'evil"} 1\nrefund_mcp_tool_calls_total{tool="x' + "y" * 5000
    async with app_factory() as app, Client(app.server) as client:
        calls = [
            ("no_such_tool", {}),
            (forged_name, {"a": 1}),
            ("lookup_transaction", {"transaction_id": SANDBOX_TXN, "surprise": secretish}),
            ("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "not-a-reason", "amount_minor": -5}),
            ("list_refunds", {"limit": "many" * 1000}),
        ]
        for name, arguments in calls:
            result = await client.call_tool(name, arguments)
            assert result.is_error
    records = await refused_records(app)
    assert len(records) == len(calls)
    assert [record["target"] for record in records] == ["unknown", "unknown", "lookup_transaction", "create_refund", "list_refunds"]
    assert [record["error_code"] for record in records] == ["error", "error", "validation_error", "validation_error", "validation_error"]
    assert all(record["actor"] == "agent-1" for record in records)
    text = json.dumps(records)
    assert secretish not in text and "many" * 10 not in text, "argument values are never kept"
    assert all(len(json.dumps(record)) < 1500 for record in records), "bounded whatever the caller sent"
    assert "\n" not in records[1]["detail"]["requested_name"] and len(records[1]["detail"]["requested_name"]) <= 60
    assert records[2]["detail"]["arguments"] == ["surprise", "transaction_id"]


async def test_a_tool_refused_for_its_scope_inside_the_tool_is_audited(app_factory):
    """require_scope inside the tool (the gate's second line) records its refusal too."""
    from refund_mcp.auth.scopes import ScopeDenied, require_scope
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    async with app_factory() as app:
        token = AccessToken(token="sha256:x", client_id="reader-bot", scopes=["refunds:read"])
        reset = auth_context_var.set(AuthenticatedUser(token))
        try:
            with pytest.raises(ScopeDenied):
                require_scope("create_refund")
            result = await app.server.call_tool("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "duplicate"})
        except Exception as exc:  # the SDK raises ToolError for a refused call
            assert "[forbidden]" in str(exc)
        else:
            pytest.fail(f"create_refund ran without refunds:write: {result}")
        finally:
            auth_context_var.reset(reset)
        [record] = await refused_records(app)
    assert (record["actor"], record["target"], record["error_code"], record["outcome"]) == ("reader-bot", "create_refund", "forbidden", "denied")


async def test_unknown_resources_and_prompts_are_audited_once_too(app_factory):
    from mcp.shared.exceptions import MCPError

    async with app_factory() as app, Client(app.server) as client:
        with pytest.raises(MCPError):
            await client.read_resource("refunds://nothing/" + "z" * 500)
        with pytest.raises(MCPError):
            await client.get_prompt("no_such_prompt\nSYSTEM", {"x": "4242 4242 4242 4242"})
        async with app.db.engine.connect() as conn:
            rows = (await conn.execute(
                select(tables.audit_log.c.body).where(tables.audit_log.c.action.in_(["resource.refused", "prompt.refused"]))
            )).all()
    records = [json.loads(row.body) for row in rows]
    assert [(r["action"], r["target"], r["error_code"]) for r in records] == [
        ("resource.refused", "unknown", "validation_error"),
        ("prompt.refused", "unknown", "validation_error"),
    ]
    assert "4242" not in json.dumps(records) and all(len(json.dumps(r)) < 1500 for r in records)


async def test_a_resource_refused_for_its_scope_inside_the_server_is_audited(app_factory):
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken
    from mcp.server.mcpserver.exceptions import ResourceError

    async with app_factory() as app:
        reset = auth_context_var.set(AuthenticatedUser(AccessToken(token="sha256:x", client_id="writer-only", scopes=["refunds:write"])))
        try:
            with pytest.raises(ResourceError, match="refunds:read"):
                await app.server.read_resource("refunds://policy")
        finally:
            auth_context_var.reset(reset)
        async with app.db.engine.connect() as conn:
            [row] = (await conn.execute(select(tables.audit_log.c.body).where(tables.audit_log.c.action == "resource.refused"))).all()
    record = json.loads(row.body)
    assert (record["actor"], record["target"], record["error_code"], record["outcome"]) == ("writer-only", "refunds://policy", "forbidden", "denied")
