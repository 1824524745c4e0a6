"""End to end in a real headless browser (Playwright driving Debian's chromium) against a real
`refund-mcp serve --transport http`: an agent asks over MCP, the notification receiver gets a
signed event, humans sign in and decide in the console, the agent sees the outcome.

Needs `pip install playwright` and `apt-get install chromium` (never `playwright install`).
Set REFUND_MCP_SCREENSHOTS=DIR to also save the README's screenshots there.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.console.support import AGENT, LARGE, POLICY, SMALL, make_tokens
from tests.security._support import mcp_over_http
from tests.support.servers import free_port, http_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright to run the browser tests")
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]
SECRET = "whsec_" + base64.b64encode(b"browser-test-notification-secret").decode()
# The sandbox keeps its payments for the module's server: each test asks for its own slice of
# demo_usd_large (USD 900.00) so their balances never collide.
XSS_NOTE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"><a href="javascript:window.__xss=3">open</a>'


class Receiver:
    """The notification receiver: a local HTTP server that records every POST."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, refund_id: str, kind: str, deadline: float = 30.0) -> dict:
        """Readiness polling: the worker delivers within a pass or two."""
        from standardwebhooks.webhooks import Webhook

        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            for headers, body in list(self.events):
                payload = Webhook(SECRET).verify(body, headers)
                if payload["refund_id"] == refund_id and payload["type"] == kind:
                    return payload
            time.sleep(0.1)
        raise AssertionError(f"no {kind} notification for {refund_id}")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("browser")
    tokens = make_tokens(root / "tokens.yaml")
    from refund_mcp.auth.tokens_file import add_token

    tokens["alice-agent"], _ = add_token(root / "tokens.yaml", "alice", ("refunds:read", "refunds:write"))
    receiver = Receiver()
    env = {
        "REFUND_MCP_SANDBOX": "1",
        "REFUND_MCP_DB": f"sqlite+aiosqlite:///{root / 'refunds.sqlite3'}",
        "REFUND_MCP_POLICY": str(POLICY),
        "REFUND_MCP_TOKENS": str(root / "tokens.yaml"),
        "REFUND_MCP_NOTIFY_URL": receiver.url,
        "REFUND_MCP_NOTIFY_SECRET": SECRET,
        "REFUND_MCP_WORKER_INTERVAL_SECONDS": "0.2",
    }
    with http_server(env) as base:
        yield {"base": base, "tokens": tokens, "receiver": receiver, "db": root / "refunds.sqlite3"}
    receiver.server.shutdown()


@pytest.fixture
async def browser():
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


async def signed_in(browser, world, who: str, *, width: int = 1100):
    context = await browser.new_context(viewport={"width": width, "height": 900})
    context.set_default_timeout(10_000)
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    page.dialogs = dialogs  # type: ignore[attr-defined]
    await page.goto(f"{world['base']}/console")
    assert page.url.startswith(f"{world['base']}/console/login")
    await page.get_by_label("Personal token").fill(world["tokens"][who])
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_load_state()
    assert page.url == f"{world['base']}/console", await page.content()
    return page


async def screenshot(page, name: str) -> None:
    """For the README (REFUND_MCP_SCREENSHOTS=docs); a no-op otherwise."""
    directory = os.environ.get("REFUND_MCP_SCREENSHOTS")
    if directory:
        await page.screenshot(path=str(Path(directory) / name), full_page=False)


def card_of(page, refund_id):
    """One refund's card in the queue (other cards may mention it among their payment's refunds)."""
    return page.locator(f"article[aria-labelledby='h-{refund_id}']")


async def agent_asks(world, request, token=None) -> dict:
    async with mcp_over_http(f"{world['base']}/mcp", token or world["tokens"][AGENT]) as agent:
        result = await agent.call_tool("create_refund", request)
        assert not result.is_error, result.content
        return result.structured_content


async def agent_status(world, refund_id) -> dict:
    async with mcp_over_http(f"{world['base']}/mcp", world["tokens"][AGENT]) as agent:
        return (await agent.call_tool("get_refund_status", {"refund_id": refund_id, "refresh": False})).structured_content


async def test_agent_asks_human_approves_in_the_browser_agent_sees_success(world, browser):
    parked = await agent_asks(world, {**SMALL, "note": XSS_NOTE})
    assert parked["status"] == "pending_approval"
    event = world["receiver"].wait_for(parked["refund_id"], "refund.approval_requested")
    assert event["amount_display"] == "USD 80.00" and event["console_url"].endswith(f"/console/refunds/{parked['refund_id']}")

    page = await signed_in(browser, world, "alice")
    card = card_of(page, parked["refund_id"])
    await card.wait_for()
    assert "USD 80.00" in await card.inner_text()
    # The note is shown as text and nothing in it ran.
    assert "<script>window.__xss = 1</script>" in await card.locator("blockquote.quoted").first.inner_text()
    assert await page.evaluate("window.__xss") is None and page.dialogs == []
    assert await card.locator("a[href^='javascript:']").count() == 0

    await card.get_by_label("Note (optional)").fill("called the customer")
    await card.get_by_role("button", name="Approve").click()
    await page.wait_for_url(f"**/console/refunds/{parked['refund_id']}?notice=approved")
    assert "succeeded" in await page.locator("h1").inner_text()
    await screenshot(page, "console-refund.png")
    assert (await agent_status(world, parked["refund_id"]))["status"] == "succeeded"
    decided = world["receiver"].wait_for(parked["refund_id"], "refund.approval_decided")
    assert decided["actor"] == "alice" and decided["decision"] == "approved"


async def test_deny_in_the_browser(world, browser):
    parked = await agent_asks(world, {**SMALL, "transaction_id": "sandbox:demo_usd_large", "amount_minor": 5500})
    page = await signed_in(browser, world, "bob", width=390)  # a phone
    card = card_of(page, parked["refund_id"])
    await card.scroll_into_view_if_needed()
    await screenshot(page, "console-phone.png")
    await card.get_by_role("button", name="Deny").click()
    await page.wait_for_url("**notice=denied")
    assert (await agent_status(world, parked["refund_id"]))["status"] == "cancelled"


async def test_self_approval_is_refused_even_when_forced(world, browser):
    parked = await agent_asks(world, {**SMALL, "transaction_id": "sandbox:demo_usd_large", "amount_minor": 5100}, token=world["tokens"]["alice-agent"])
    page = await signed_in(browser, world, "alice")
    card = card_of(page, parked["refund_id"])
    approve = card.get_by_role("button", name="Approve")
    assert await approve.is_disabled()
    await approve.evaluate("button => { button.disabled = false; button.removeAttribute('aria-disabled') }")
    await approve.click()
    assert "cannot approve it" in await page.locator("[role=alert]").inner_text()
    assert (await agent_status(world, parked["refund_id"]))["status"] == "pending_approval"


async def test_two_person_approval_in_two_browsers(world, browser):
    parked = await agent_asks(world, LARGE)
    alice = await signed_in(browser, world, "alice")
    await card_of(alice, parked["refund_id"]).get_by_role("button", name="Approve").click()
    await alice.wait_for_url("**notice=first_approval")
    second_wanted = world["receiver"].wait_for(parked["refund_id"], "refund.approval_requested")
    assert second_wanted["approvals_required"] == 2
    assert (await agent_status(world, parked["refund_id"]))["status"] == "pending_approval"
    bob = await signed_in(browser, world, "bob")
    card = card_of(bob, parked["refund_id"])
    assert "1 of 2 (by alice)" in await card.inner_text()
    await screenshot(bob, "console-queue.png")
    await card.get_by_role("button", name="Approve").click()
    await bob.wait_for_url("**notice=approved")
    assert (await agent_status(world, parked["refund_id"]))["status"] == "succeeded"


async def test_csrf_missing_is_refused(world, browser):
    parked = await agent_asks(world, {**SMALL, "transaction_id": "sandbox:demo_usd_large", "amount_minor": 5200})
    page = await signed_in(browser, world, "alice")
    card = card_of(page, parked["refund_id"])
    await card.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    await card.get_by_role("button", name="Approve").click()
    assert "CSRF" in await page.locator("[role=alert]").inner_text()
    assert (await agent_status(world, parked["refund_id"]))["status"] == "pending_approval"


async def test_an_expired_approval_is_refused(world, browser):
    parked = await agent_asks(world, {**SMALL, "transaction_id": "sandbox:demo_usd_large", "amount_minor": 5300})
    page = await signed_in(browser, world, "alice")
    card = card_of(page, parked["refund_id"])
    await card.wait_for()
    with sqlite3.connect(world["db"]) as db:  # its hour is over
        db.execute("UPDATE refunds SET approval_expires_at = '2000-01-01 00:00:00.000000' WHERE id = ?", (parked["refund_id"],))
    await card.get_by_role("button", name="Approve").click()
    # Refused as expired, or (if the worker got there first) as no longer waiting for approval.
    alert = await page.locator("[role=alert]").inner_text()
    assert "expired" in alert or "not waiting" in alert, alert
    assert (await agent_status(world, parked["refund_id"]))["status"] in ("pending_approval", "cancelled")


async def test_a_read_only_human_cannot_approve(world, browser):
    parked = await agent_asks(world, {**SMALL, "transaction_id": "sandbox:demo_usd_large", "amount_minor": 5400})
    page = await signed_in(browser, world, "rita")
    card = card_of(page, parked["refund_id"])
    assert await card.get_by_role("button", name="Approve").count() == 0
    token = await page.locator("header input[name=csrf_token]").get_attribute("value")
    answer = await page.request.post(f"{world['base']}/console/refunds/{parked['refund_id']}/approve", form={"csrf_token": token})
    assert answer.status == 403
    assert (await agent_status(world, parked["refund_id"]))["status"] == "pending_approval"
