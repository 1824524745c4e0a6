"""The HTTP app in-process (httpx2.ASGITransport): request-size limit, Host checks for public
deployments, and the configuration that decides who may reach the server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from refund_mcp.auth import AuthConfigError, load_auth_config
from refund_mcp.auth.tokens_file import add_token
from refund_mcp.auth.url_tokens import carries_token
from refund_mcp.http_app import MAX_REQUEST_BODY_BYTES, build_http_app
from tests.security._support import SANDBOX_TXN, mirrored_headers, tool_call

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def asgi_client(app: Any, *, host: str, port: int = 8765, env: dict[str, str] | None = None, base_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    config = load_auth_config(env or {}, host=host, port=port)
    starlette_app = build_http_app(app, host, port=port, auth=config)
    async with starlette_app.router.lifespan_context(starlette_app):
        transport = httpx2.ASGITransport(app=starlette_app)
        async with httpx2.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http


def post(http: httpx2.AsyncClient, body: dict[str, Any], token: str | None = None, **headers: str) -> Any:
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **mirrored_headers(body), **headers}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    return http.post("/mcp", json=body, headers=sent)


async def test_a_body_over_the_limit_is_413_even_without_auth(app_factory):
    async with app_factory() as app, asgi_client(app, host="127.0.0.1", base_url="http://127.0.0.1:8765") as http:
        oversized = tool_call("lookup_transaction", {"transaction_id": SANDBOX_TXN, "padding": "x" * (MAX_REQUEST_BODY_BYTES + 1)})
        assert (await post(http, oversized)).status_code == 413
        assert (await http.get("/healthz")).status_code == 200


async def test_a_public_deployment_accepts_its_own_host_name_and_refuses_others(app_factory, tmp_path: Path):
    token, _ = add_token(tmp_path / "tokens.yaml", "bot", ["refunds:read"])
    env = {"REFUND_MCP_TOKENS": str(tmp_path / "tokens.yaml"), "REFUND_MCP_RESOURCE_URL": "https://refunds.example.com/mcp"}
    async with app_factory() as app:
        async with asgi_client(app, host="0.0.0.0", env=env, base_url="https://refunds.example.com") as http:
            body = tool_call("list_refunds")
            assert (await post(http, body, token)).status_code == 200
            assert (await post(http, body, token, Host="attacker.example")).status_code == 421
            assert (await post(http, body, token, Origin="https://attacker.example")).status_code == 403
            assert (await post(http, body, token, Origin="https://refunds.example.com")).status_code == 200


async def test_building_the_app_for_a_public_address_without_auth_is_refused(app_factory):
    async with app_factory() as app:
        with pytest.raises(AuthConfigError, match="without auth"):
            build_http_app(app, "0.0.0.0", auth=load_auth_config({}, host="0.0.0.0", port=8765))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REFUND_MCP_OAUTH_AUDIENCE": "api://refunds"}, "REFUND_MCP_OAUTH_ISSUER is not"),
        ({"REFUND_MCP_OAUTH_ISSUER": "idp.example.com"}, "must be an http"),
        ({"REFUND_MCP_OAUTH_ISSUER": "https://idp.example.com", "REFUND_MCP_OAUTH_JWKS_URL": "http://idp.example.com/keys"}, "https"),
        ({"REFUND_MCP_TOKENS": "/nonexistent/tokens.yaml"}, "cannot read"),
        ({"REFUND_MCP_RESOURCE_URL": "refunds.example.com/mcp"}, "REFUND_MCP_RESOURCE_URL"),
    ],
    ids=["audience-without-issuer", "issuer-not-a-url", "jwks-over-http", "missing-tokens-file", "resource-not-a-url"],
)
def test_incomplete_or_unsafe_auth_settings_are_refused_naming_the_variable(env, message):
    with pytest.raises(AuthConfigError, match=message):
        load_auth_config(env, host="127.0.0.1", port=8765)


def test_the_oauth_audience_defaults_to_the_public_resource_url():
    env = {"REFUND_MCP_OAUTH_ISSUER": "https://idp.example.com", "REFUND_MCP_RESOURCE_URL": "https://refunds.example.com/mcp"}
    config = load_auth_config(env, host="0.0.0.0", port=8765)
    assert config.enabled
    assert config.verifier.audience == "https://refunds.example.com/mcp"
    assert config.verifier.jwks.url == "https://idp.example.com/.well-known/jwks.json"
    assert config.resource_metadata_url == "https://refunds.example.com/.well-known/oauth-protected-resource/mcp"
    assert "refunds.example.com" in config.allowed_hosts


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        (b"access_token=abc", True),
        (b"Token=abc", True),
        (b"key=rmcp_abc", True),
        (b"state=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", True),
        (b"access%5Ftoken=abc", True),
        (b"limit=5&cursor=rf_01", False),
        (b"", False),
    ],
)
def test_tokens_are_recognised_in_any_query_parameter(query, refused):
    assert carries_token(query) is refused
