"""What each call needs, and the second line inside the tools: `require_scope` refuses on its own,
even when nothing in front of the MCP server checked the scope."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from mcp import Client
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from refund_mcp.auth.scopes import READ, TOOL_SCOPES, WRITE, scope_for_message
from tests.security._support import SANDBOX_TXN, row_count

pytestmark = pytest.mark.anyio


@contextmanager
def bearer(actor: str, *scopes: str):
    """As if the SDK's auth middleware had verified a token: the in-process server inherits it."""
    reset = auth_context_var.set(AuthenticatedUser(AccessToken(token="fingerprint", client_id=actor, scopes=list(scopes))))
    try:
        yield
    finally:
        auth_context_var.reset(reset)


async def test_every_tool_the_server_offers_has_a_declared_scope(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
    assert names == set(TOOL_SCOPES)
    assert {name for name, scope in TOOL_SCOPES.items() if scope == WRITE} == {"create_refund", "cancel_refund"}


@pytest.mark.parametrize(
    ("message", "needed"),
    [
        ({"method": "tools/call", "params": {"name": "create_refund"}}, ("create_refund", WRITE)),
        ({"method": "tools/call", "params": {"name": "lookup_transaction"}}, ("lookup_transaction", READ)),
        ({"method": "tools/call", "params": {"name": "a_tool_added_later"}}, ("a_tool_added_later", WRITE)),
        ({"method": "tools/call", "params": {"name": 7}}, ("tools/call", WRITE)),
        ({"method": "tools/call"}, ("tools/call", WRITE)),
        ({"method": "resources/read", "params": {"uri": "refunds://policy"}}, ("resources/read", READ)),
        ({"method": "some/new_method"}, ("some/new_method", READ)),
        ({"method": "initialize"}, None),
        ({"method": "tools/list"}, None),
        ({"method": "notifications/initialized"}, None),
        ({"id": 3, "result": {}}, None),
        ("not an object", ("invalid message", WRITE)),
    ],
)
def test_each_json_rpc_message_needs_the_scope_of_what_it_asks_for(message, needed):
    assert scope_for_message(message) == needed


async def test_a_read_token_cannot_create_or_cancel_even_past_the_http_gate(app_factory):
    async with app_factory() as app:
        with bearer("reader-bot", READ):
            async with Client(app.server) as client:
                looked_up = await client.call_tool("lookup_transaction", {"transaction_id": SANDBOX_TXN})
                assert not looked_up.is_error, looked_up.content
                created = await client.call_tool("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": 500})
                cancelled = await client.call_tool("cancel_refund", {"refund_id": "rf_" + "0" * 26})
        for result in (created, cancelled):
            assert result.is_error
            assert "[forbidden]" in result.content[0].text and "refunds:write" in result.content[0].text
        from refund_mcp.store import tables

        assert await row_count(app, tables.refunds) == 0


async def test_a_write_only_token_cannot_read_past_the_http_gate(app_factory):
    async with app_factory() as app:
        with bearer("write-only-bot", WRITE):
            async with Client(app.server) as client:
                looked_up = await client.call_tool("lookup_transaction", {"transaction_id": SANDBOX_TXN})
                assert looked_up.is_error and "[forbidden]" in looked_up.content[0].text
                with pytest.raises(Exception, match="forbidden"):
                    await client.read_resource("refunds://policy")
                created = await client.call_tool("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": 500})
                assert not created.is_error, created.content
                assert created.structured_content["actor"] == "write-only-bot"


async def test_without_a_token_the_configured_stdio_identity_is_used(app_factory):
    async with app_factory(actor="desk-agent") as app, Client(app.server) as client:
        created = await client.call_tool("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": 500})
        assert created.structured_content["actor"] == "desk-agent"
