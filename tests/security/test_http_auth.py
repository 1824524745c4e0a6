"""Static bearer tokens over real HTTP: a `refund-mcp serve --transport http` subprocess with a tokens file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest

from mcp import MCPError
from refund_mcp.auth.tokens_file import add_token
from tests.security._support import (
    SANDBOX_TXN,
    RunningServer,
    base_env,
    mcp_over_http,
    mcp_post,
    refund_mcp_http,
    run_cli,
    tool_call,
)

pytestmark = pytest.mark.anyio

MODES = [pytest.param({}, id="2026-07-28"), pytest.param({"mode": "legacy"}, id="legacy")]


@dataclass
class Deployment:
    server: RunningServer
    env: dict[str, str]
    writer: str  # refunds:read + refunds:write, actor "writer-bot"
    reader: str  # refunds:read, actor "reader-bot"
    write_only: str  # refunds:write, actor "write-only-bot"

    def audit(self) -> list[dict]:
        exported = run_cli(self.env, "audit", "export")
        assert exported.returncode == 0, exported.stderr
        return [json.loads(line) for line in exported.stdout.splitlines()]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("static-auth")
    tokens = tmp / "tokens.yaml"
    writer, _ = add_token(tokens, "writer-bot", ["refunds:read", "refunds:write"])
    reader, _ = add_token(tokens, "reader-bot", ["refunds:read"])
    write_only, _ = add_token(tokens, "write-only-bot", ["refunds:write"])
    env = {**base_env(tmp), "REFUND_MCP_TOKENS": str(tokens)}
    with refund_mcp_http(env, tmp) as server:
        yield Deployment(server, env, writer, reader, write_only)


def test_a_request_without_a_token_is_401_with_a_bearer_challenge(deployment):
    response = mcp_post(deployment.server.mcp_url, tool_call("lookup_transaction", {"transaction_id": SANDBOX_TXN}))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    "header",
    ["Bearer rmcp_not-a-real-token", "Bearer", "Basic d3JpdGVyLWJvdDpzZWNyZXQ=", "Bearer " + "x" * 10_000],
    ids=["unknown-token", "empty", "basic-auth", "huge"],
)
def test_a_request_with_a_bad_token_is_401(deployment, header):
    response = mcp_post(deployment.server.mcp_url, tool_call("list_refunds"), Authorization=header)
    assert response.status_code == 401


def test_a_token_that_differs_by_one_character_is_401(deployment):
    near = deployment.reader[:-1] + ("A" if deployment.reader[-1] != "A" else "B")
    assert mcp_post(deployment.server.mcp_url, tool_call("list_refunds"), token=near).status_code == 401


@pytest.mark.parametrize("tool", ["create_refund", "cancel_refund"])
def test_a_read_token_calling_a_write_tool_is_403_insufficient_scope(deployment, tool):
    args = {"transaction_id": SANDBOX_TXN, "reason": "service_issue"} if tool == "create_refund" else {"refund_id": "rf_" + "0" * 26}
    response = mcp_post(deployment.server.mcp_url, tool_call(tool, args), token=deployment.reader)
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="refunds:write"' in challenge
    assert response.json()["scope"] == "refunds:write"


def test_a_batch_with_one_call_beyond_the_tokens_scope_is_refused_whole(deployment):
    batch = [
        tool_call("list_refunds", {}, request_id=1),
        tool_call("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": 100}, 2),
    ]
    response = mcp_post(deployment.server.mcp_url, batch, token=deployment.reader)
    assert response.status_code == 403
    assert 'scope="refunds:write"' in response.headers["www-authenticate"]


def test_a_body_that_repeats_a_key_is_refused_rather_than_guessed_at(deployment):
    # Parsers disagree on which of two "name" keys wins; the gate must not let the SDK pick the other.
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
        b'{"name":"lookup_transaction","name":"create_refund","arguments":{}}}'
    )
    response = mcp_post(deployment.server.mcp_url, body, token=deployment.reader)
    assert response.status_code == 400


@pytest.mark.parametrize("method", ["resources/read", "resources/list", "prompts/get", "prompts/list"])
def test_resources_and_prompts_need_the_read_scope(deployment, method):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"uri": "refunds://policy", "name": "handle_refund_request"}}
    response = mcp_post(deployment.server.mcp_url, body, token=deployment.write_only)
    assert response.status_code == 403
    assert 'scope="refunds:read"' in response.headers["www-authenticate"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_read_token_looks_up_but_the_sdk_client_cannot_refund_with_it(deployment, mode):
    async with mcp_over_http(deployment.server.mcp_url, deployment.reader, **mode) as client:
        looked_up = await client.call_tool("lookup_transaction", {"transaction_id": SANDBOX_TXN})
        assert not looked_up.is_error, looked_up.content
        assert looked_up.structured_content["transaction_id"] == SANDBOX_TXN
        policy = await client.read_resource("refunds://policy")
        assert "version" in policy.contents[0].text
    # The SDK client surfaces the 403 as an MCPError, raised out of its task groups.
    with pytest.raises(BaseExceptionGroup) as refused:
        async with mcp_over_http(deployment.server.mcp_url, deployment.reader, **mode) as client:
            await client.call_tool("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": 100})
    assert refused.group_contains(MCPError, depth=None)
    assert await _refunds_by(deployment, "reader-bot") == []


async def _refunds_by(deployment: Deployment, actor: str) -> list[dict]:
    async with mcp_over_http(deployment.server.mcp_url, deployment.writer) as client:
        page = (await client.call_tool("list_refunds", {"limit": 100})).structured_content
    return [refund for refund in page["refunds"] if refund["actor"] == actor]


@pytest.mark.parametrize("mode", MODES)
async def test_a_write_token_refunds_and_the_audit_log_names_the_tokens_actor(deployment, mode):
    async with mcp_over_http(deployment.server.mcp_url, deployment.writer, **mode) as client:
        result = await client.call_tool(
            "create_refund", {"transaction_id": SANDBOX_TXN, "reason": "service_issue", "amount_minor": 101 + len(mode)}
        )
        assert not result.is_error, result.content
        refund = result.structured_content
    assert refund["status"] == "succeeded"
    assert refund["actor"] == "writer-bot"
    records = [record for record in deployment.audit() if record["target"] == refund["refund_id"]]
    assert records, "the refund has no audit records"
    assert {record["actor"] for record in records} == {"writer-bot"}


async def test_a_write_only_token_connects_and_refunds_but_cannot_look_up(deployment):
    async with mcp_over_http(deployment.server.mcp_url, deployment.write_only) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert "create_refund" in names
        result = await client.call_tool("create_refund", {"transaction_id": SANDBOX_TXN, "reason": "duplicate", "amount_minor": 107})
        assert not result.is_error, result.content
        assert result.structured_content["actor"] == "write-only-bot"
    lookup = mcp_post(deployment.server.mcp_url, tool_call("lookup_transaction", {"transaction_id": SANDBOX_TXN}), token=deployment.write_only)
    assert lookup.status_code == 403


async def test_an_actor_argument_is_a_validation_error_and_meta_cannot_change_the_actor(deployment):
    async with mcp_over_http(deployment.server.mcp_url, deployment.writer) as client:
        spoofed = await client.call_tool(
            "create_refund", {"transaction_id": SANDBOX_TXN, "reason": "product_defective", "amount_minor": 211, "actor": "admin"}
        )
        assert spoofed.is_error
        assert "[validation_error]" in spoofed.content[0].text and "actor" in spoofed.content[0].text
        tricked = await client.call_tool(
            "create_refund",
            {"transaction_id": SANDBOX_TXN, "reason": "product_defective", "amount_minor": 212},
            meta={"actor": "admin", "client_id": "admin", "sub": "admin", "user": "admin"},
        )
        assert not tricked.is_error, tricked.content
        assert tricked.structured_content["actor"] == "writer-bot"
        refund_id = tricked.structured_content["refund_id"]
    audit = deployment.audit()
    records = [record for record in audit if record["target"] == refund_id]
    assert records and {record["actor"] for record in records} == {"writer-bot"}
    assert not [record for record in audit if record["actor"] == "admin"]


def test_a_scope_refusal_is_written_to_the_audit_log_and_counted(deployment):
    response = mcp_post(deployment.server.mcp_url, tool_call("cancel_refund", {"refund_id": "rf_" + "1" * 26}), token=deployment.reader)
    assert response.status_code == 403
    refusals = [r for r in deployment.audit() if r["action"] == "access.denied" and r["target"] == "cancel_refund"]
    assert refusals and refusals[-1]["actor"] == "reader-bot" and refusals[-1]["error_code"] == "forbidden"
    text = httpx2.get(f"{deployment.server.base}/metrics").text
    assert 'refund_mcp_tool_calls_total{outcome="forbidden",tool="cancel_refund"}' in text


def test_health_and_metrics_need_no_token(deployment):
    assert httpx2.get(f"{deployment.server.base}/healthz").json()["status"] == "ok"
    assert httpx2.get(f"{deployment.server.base}/metrics").status_code == 200


def test_a_foreign_host_header_is_refused_even_with_a_valid_token(deployment):
    body = tool_call("list_refunds")
    assert mcp_post(deployment.server.mcp_url, body, token=deployment.writer, Host="evil.example").status_code == 421
    assert mcp_post(deployment.server.mcp_url, body, token=deployment.writer, Host=f"evil.example:{deployment.server.port}").status_code == 421
    origin = mcp_post(deployment.server.mcp_url, body, token=deployment.writer, Origin="http://evil.example")
    assert origin.status_code == 403


@pytest.mark.parametrize("query", ["access_token={}", "token={}", "ACCESS_TOKEN={}", "x=1&Token={}", "key={}"])
def test_a_token_in_the_query_string_is_refused_and_never_logged(deployment, query):
    url = f"{deployment.server.mcp_url}?{query.format(deployment.writer)}"
    response = mcp_post(url, tool_call("list_refunds"))
    assert response.status_code == 400
    assert deployment.writer not in response.text
    with_header_too = mcp_post(url, tool_call("list_refunds"), token=deployment.writer)
    assert with_header_too.status_code == 400
    assert deployment.writer not in deployment.server.stderr()


def test_an_oversized_body_is_413_before_anything_parses_it(deployment):
    padding = "x" * (2 * 1024 * 1024)
    body = tool_call("lookup_transaction", {"transaction_id": SANDBOX_TXN, "padding": padding})
    assert mcp_post(deployment.server.mcp_url, body, token=deployment.writer).status_code == 413
    # Without a token it is refused too, before the body is read.
    assert mcp_post(deployment.server.mcp_url, body).status_code in (401, 413)


def test_serving_on_a_public_address_without_auth_is_refused_with_a_clear_message(tmp_path):
    env = base_env(tmp_path)
    finished = run_cli(env, "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "1")
    assert finished.returncode != 0
    assert "refusing to serve HTTP on 0.0.0.0 without auth" in finished.stderr
    assert "REFUND_MCP_TOKENS" in finished.stderr


def test_an_unreadable_tokens_file_stops_the_server_at_start(tmp_path):
    env = {**base_env(tmp_path), "REFUND_MCP_TOKENS": str(tmp_path / "missing.yaml")}
    finished = run_cli(env, "serve", "--transport", "http", "--port", "1")
    assert finished.returncode != 0
    assert "missing.yaml" in finished.stderr
