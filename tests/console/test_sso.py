"""Single sign-on into the console through an OIDC provider (authorization code + PKCE)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest

from mcp import Client
from refund_mcp.auth.config import load_auth_config
from refund_mcp.http_app import build_http_app
from tests.console.fake_oidc import ISSUER, FakeOidc
from tests.console.support import AGENT, POLICY, SMALL, Browser, csrf_of

pytestmark = pytest.mark.anyio


async def sso_sign_in(monkeypatch, app, person, approvers="") -> tuple[Browser, FakeOidc]:
    idp = FakeOidc("console-client", person)
    monkeypatch.setenv("REFUND_MCP_CONSOLE_OIDC_CLIENT_ID", "console-client")
    monkeypatch.setenv("REFUND_MCP_CONSOLE_OIDC_ISSUER", ISSUER)
    monkeypatch.setenv("REFUND_MCP_CONSOLE_OIDC_APPROVERS", approvers)
    config = load_auth_config({}, host="127.0.0.1", port=8765)
    idp_http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=idp.app))
    browser = Browser(build_http_app(app, auth=config, console_http=idp_http))
    started = await browser.http.get("/console/sso?next=/console/refunds")
    assert started.status_code == 303
    authorize = started.headers["location"]
    assert authorize.startswith(f"{ISSUER}/authorize?") and "code_challenge=" in authorize
    # The "browser" follows the redirect to the provider, which signs the person in and sends it back.
    back = await idp_http.get(authorize)
    callback = urlsplit(back.headers["location"])
    assert callback.path == "/console/sso/callback"
    finished = await browser.http.get(f"{callback.path}?{callback.query}")
    return browser, idp, finished


async def test_sso_signs_in_an_approver_who_can_decide(app_factory, monkeypatch):
    async with app_factory(policy=POLICY, actor=AGENT) as app, Client(app.server) as agent:
        parked = (await agent.call_tool("create_refund", SMALL)).structured_content
        browser, idp, finished = await sso_sign_in(monkeypatch, app, {"sub": "u-123", "email": "lead@example.com"}, approvers="lead@example.com")
        assert finished.status_code == 303 and finished.headers["location"] == "/console/refunds"
        assert "code_verifier" in idp.token_requests[0]
        decided = await browser.decide(parked["refund_id"], "approve")
        assert decided.status_code == 303
        status = (await agent.call_tool("get_refund_status", {"refund_id": parked["refund_id"]})).structured_content
        assert status["status"] == "succeeded" and status["approval"]["decided_by"] == "lead@example.com"
        await browser.aclose()


async def test_sso_people_not_listed_as_approvers_only_read(app_factory, monkeypatch):
    async with app_factory(policy=POLICY, actor=AGENT) as app:
        browser, _idp, finished = await sso_sign_in(monkeypatch, app, {"sub": "u-9", "email": "viewer@example.com"})
        assert finished.status_code == 303
        page = await browser.http.get("/console")
        assert page.status_code == 200 and "viewer@example.com (read only)" in page.text
        await browser.aclose()


async def test_a_replayed_or_forged_callback_is_refused(app_factory, monkeypatch):
    async with app_factory(policy=POLICY, actor=AGENT) as app:
        browser, _idp, finished = await sso_sign_in(monkeypatch, app, {"sub": "u-1"})
        replay = await browser.http.get(f"/console/sso/callback?code=abc&state={parse_qs('s=x')['s'][0]}")
        assert replay.status_code == 401 and "unknown or too old" in replay.text
        await browser.aclose()
