"""Unauthenticated webhook traffic costs bounded, in-memory work: refusals are counted and sampled
into the log, never written to the audit chain; unconfigured processors answer 404 without a write;
PayPal is asked to verify only within per-source and overall limits; bodies have a smaller cap, a
read deadline and a cap on how many are read at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from starlette.applications import Starlette

from refund_mcp import metrics
from refund_mcp.webhooks.errors import WebhookRateLimited, WebhookSignatureError
from refund_mcp.webhooks.limits import VerificationGate
from refund_mcp.webhooks.paypal import cert_url_allowed, signature_fields
from refund_mcp.webhooks.routes import MAX_BODY_BYTES, Limits, webhook_routes
from refund_mcp.store import tables
from tests.conftest import make_app, sqlite_url
from tests.security._support import row_count
from tests.test_processors_through_mcp import HostRouter
from tests.webhooks import signing
from tests.webhooks.world import PAYPAL_WEBHOOK_ID, all_fakes, env

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowVerifications(httpx2.AsyncBaseTransport):
    """PayPal's verify API answering only when released; every other call goes straight through."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner
        self.release = anyio.Event()
        self.waiting = 0

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/verify-webhook-signature"):
            self.waiting += 1
            await self.release.wait()
        return await self.inner.handle_async_request(request)


@asynccontextmanager
async def hooks(
    tmp_path, *, extra_env: dict[str, str] | None = None, wrap: Any = None, **options: Any
) -> AsyncIterator[tuple[Any, Any, httpx2.AsyncClient]]:
    fakes = all_fakes()
    transport = HostRouter(fakes) if wrap is None else wrap(HostRouter(fakes))
    async with httpx2.AsyncClient(transport=transport, timeout=5.0) as http:
        async with make_app(sqlite_url(tmp_path), env={**env(), **(extra_env or {})}, http=http) as app:
            routes = Starlette(routes=webhook_routes(app, Limits(**options)))
            transport = httpx2.ASGITransport(app=routes)
            async with httpx2.AsyncClient(transport=transport, base_url="http://refund-mcp.test") as client:
                yield app, fakes, client


def deliveries(name: str) -> float:
    return sum(
        sample.value
        for family in metrics.REGISTRY.collect()
        for sample in family.samples
        if sample.name == "refund_mcp_webhook_deliveries_total" and sample.labels.get("processor") == name
    )


async def test_300_junk_posts_write_no_audit_record_and_are_counted(tmp_path):
    async with hooks(tmp_path, extra_env={"SQUARE_ACCESS_TOKEN": ""}) as (app, _, client):
        records_before = await row_count(app, tables.audit_log)
        counted_before = {name: deliveries(name) for name in ("stripe", "adyen", "square", "unknown")}
        statuses = set()
        for index in range(300):
            name = ("stripe", "adyen", "square")[index % 3]
            headers = {"Stripe-Signature": f"t=1,v1={index:064x}"} if name == "stripe" else {}
            response = await client.post(f"/webhooks/{name}", content=b'{"junk": %d}' % index, headers=headers)
            statuses.add((name, response.status_code))
        assert statuses == {("stripe", 401), ("adyen", 400), ("square", 404)}  # Adyen signs items inside the body
        assert await row_count(app, tables.audit_log) - records_before == 0  # before: one record per POST
        assert deliveries("stripe") - counted_before["stripe"] == 100
        assert deliveries("square") - counted_before["square"] == 100, "unconfigured, counted, nothing written"


async def test_forged_paypal_deliveries_reach_paypals_verify_api_only_within_the_limits(tmp_path):
    clock = Clock()
    async with hooks(tmp_path, clock=clock) as (app, fakes, client):
        records_before = await row_count(app, tables.audit_log)
        body = signing.dumps(signing.paypal_event("WH-FORGED", "PAYMENT.CAPTURE.REFUNDED", {"id": "1"}))
        forged = signing.paypal_headers(body, "SOMEONEELSESWEBHOOK")
        answers = [(await client.post("/webhooks/paypal", content=body, headers=forged)).status_code for _ in range(50)]
        asked = len(fakes["paypal"].verify_requests)
        assert asked == 10, "one sender gets a burst of 10, then waits"  # before: 50 of 50
        assert answers.count(401) == 10 and answers.count(429) == 40
        clock.now += 20  # half a verification per second per sender refills 10 in 20 s
        await client.post("/webhooks/paypal", content=body, headers=forged)
        assert len(fakes["paypal"].verify_requests) == asked + 1
        assert await row_count(app, tables.audit_log) == records_before


async def test_the_verification_gate_limits_per_source_overall_and_in_flight():
    clock = Clock()
    gate = VerificationGate(per_source_rate=1, per_source_burst=2, overall_rate=1, overall_burst=3, concurrent=1, clock=clock)
    async with gate.admit("a"):
        with pytest.raises(WebhookRateLimited, match="in flight"):
            async with gate.admit("b"):
                pass
    async with gate.admit("a"):
        pass
    with pytest.raises(WebhookRateLimited, match="this address"):
        async with gate.admit("a"):
            pass
    async with gate.admit("b"):
        pass
    with pytest.raises(WebhookRateLimited, match="unverified deliveries;"):
        async with gate.admit("c"):
            pass
    clock.now += 1
    async with gate.admit("c"):
        pass


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.paypal.com/v1/notifications/certs/CERT-1", True),
        ("https://api.sandbox.paypal.com/v1/notifications/certs/CERT-1", True),
        ("https://API-M.paypal.com:443/v1/notifications/certs/CERT-1", True),
        ("https://evil.example\\@api.paypal.com/c", False),
        ("https://evil.example@api.paypal.com/c", False),
        ("https://api.paypal.com.evil.example/c", False),
        ("https://www.paypal.com/c", False),
        ("https://paypal.com/c", False),
        ("http://api.paypal.com/c", False),
        ("https://api.paypal.com:8443/c", False),
        ("https://api.paypal.com/c?x=https://evil.example", False),
        ("https://api.paypal.com/c#@evil.example", False),
    ],
)
def test_a_cert_url_must_be_a_plain_https_url_on_an_exact_paypal_host(url, allowed):
    assert cert_url_allowed(url) is allowed
    headers = signing.paypal_headers(b"{}", PAYPAL_WEBHOOK_ID, cert_url=url)
    if allowed:
        assert signature_fields(headers)["cert_url"] == url
    else:
        with pytest.raises(WebhookSignatureError, match="PAYPAL-CERT-URL"):
            signature_fields(headers)


async def test_a_stalled_body_times_out_and_bodies_read_at_once_are_capped(tmp_path):
    release = anyio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"type": '
        await release.wait()
        yield b"}"

    async with hooks(tmp_path, body_deadline_seconds=0.2, max_in_flight=1) as (app, _, client):
        records_before = await row_count(app, tables.audit_log)
        answers: dict[str, int] = {}

        async def post_stalled() -> None:
            response = await client.post("/webhooks/stripe", content=stalled(), headers={"Stripe-Signature": "t=1,v1=00"})
            answers["stalled"] = response.status_code

        async with anyio.create_task_group() as group:
            group.start_soon(post_stalled)
            await anyio.wait_all_tasks_blocked()
            busy = await client.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1,v1=00"})
            answers["second"] = busy.status_code
        release.set()
        assert answers == {"second": 503, "stalled": 408}
        too_big = await client.post("/webhooks/stripe", content=b"x" * (MAX_BODY_BYTES + 1))
        assert too_big.status_code == 413 and MAX_BODY_BYTES <= 256 * 1024
        assert await row_count(app, tables.audit_log) == records_before


async def test_a_flood_of_paypal_verifications_holds_at_most_four_calls_and_refunds_still_go_through(tmp_path):
    slow: list[SlowVerifications] = []

    def wrap(inner: httpx2.AsyncBaseTransport) -> SlowVerifications:
        slow.append(SlowVerifications(inner))
        return slow[0]

    async with hooks(tmp_path, wrap=wrap) as (app, fakes, client):
        from mcp import Client
        from tests.fakes.common import PaymentSeed
        from tests.webhooks.world import PAYMENT_IDS

        fakes["paypal"].add_payment(PaymentSeed(id=PAYMENT_IDS["paypal"], amount_minor=10000, currency="USD"))
        body = signing.dumps(signing.paypal_event("WH-FLOOD", "PAYMENT.CAPTURE.REFUNDED", {"id": "1"}))
        headers = signing.paypal_headers(body, PAYPAL_WEBHOOK_ID)
        answers: list[int] = []

        async def deliver() -> None:
            answers.append((await client.post("/webhooks/paypal", content=body, headers=headers)).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(12):
                group.start_soon(deliver)
            await anyio.wait_all_tasks_blocked()
            assert slow[0].waiting == 4, "four verifications in flight, whatever arrives"
            assert answers == [429] * 8
            async with Client(app.server) as mcp:
                refund = await mcp.call_tool(
                    "create_refund", {"transaction_id": f"paypal:{PAYMENT_IDS['paypal']}", "reason": "duplicate", "amount_minor": 500}
                )
                assert not refund.is_error, refund.content
                assert refund.structured_content["status"] in ("succeeded", "pending")
            slow[0].release.set()
        assert len(answers) == 12 and answers.count(429) == 8, "the four admitted were verified, not refused"
        assert len(fakes["paypal"].verify_requests) == 4
