"""Each real processor through the same MCP tools, against its wire-faithful fake (in process)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest

from mcp import Client
from refund_mcp.webhooks.events import PaymentEvent
from tests.conftest import make_app, sqlite_url
from tests.fakes import adyen, paypal, square, stripe
from tests.fakes.common import FakeProcessor, FakeTransport, PaymentSeed

pytestmark = pytest.mark.anyio


class HostRouter(httpx2.AsyncBaseTransport):
    """One client for all adapters: each fake answers on its own host name."""

    def __init__(self, fakes: dict[str, FakeProcessor]) -> None:
        self.transports = {f"{name}.fake": FakeTransport(fake.app) for name, fake in fakes.items()}

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self.transports[request.url.host].handle_async_request(request)


@dataclass
class Processors:
    fakes: dict[str, FakeProcessor]
    env: dict[str, str]


@pytest.fixture
def processors() -> Processors:
    fakes: dict[str, FakeProcessor] = {
        "stripe": stripe.StripeFake(),
        "paypal": paypal.PayPalFake(),
        "adyen": adyen.AdyenFake(),
        "square": square.SquareFake(),
    }
    env = {
        "REFUND_MCP_SANDBOX": "0",
        "STRIPE_API_KEY": stripe.DEFAULT_API_KEY,
        "STRIPE_API_BASE": "http://stripe.fake",
        "PAYPAL_CLIENT_ID": paypal.DEFAULT_CLIENT_ID,
        "PAYPAL_CLIENT_SECRET": paypal.DEFAULT_CLIENT_SECRET,
        "PAYPAL_API_BASE": "http://paypal.fake",
        "ADYEN_API_KEY": adyen.DEFAULT_API_KEY,
        "ADYEN_MERCHANT_ACCOUNT": adyen.DEFAULT_MERCHANT_ACCOUNT,
        "ADYEN_API_BASE": "http://adyen.fake/v71",
        "SQUARE_ACCESS_TOKEN": square.DEFAULT_ACCESS_TOKEN,
        "SQUARE_API_BASE": "http://square.fake",
    }
    return Processors(fakes, env)


PAYMENT_IDS = {"stripe": "ch_3MmlLrLkdIwHu7ix0snN0B15", "paypal": "2GG279541U471931P", "adyen": "DZ4DPSHB4WD2WN82", "square": "R2B3Z8WMVt3EAmzYWLZvz7Y69EbZY"}
# What each processor's create-refund answer maps to: Adyen only acknowledges (the outcome comes by webhook);
# Square's RefundPayment answers PENDING.
FIRST_STATUS = {"stripe": "succeeded", "paypal": "succeeded", "adyen": "pending", "square": "pending"}
ALL = list(PAYMENT_IDS)


async def seed(app: Any, processors: Processors, name: str, **extra: Any) -> str:
    payment_id = PAYMENT_IDS[name]
    seed_args = {"id": payment_id, "amount_minor": 10000, "currency": "USD", "customer_email": "ana@example.com", **extra}
    processors.fakes[name].add_payment(PaymentSeed(**seed_args))
    if name == "adyen":
        # Adyen has no payment lookup API: a signed AUTHORISATION webhook is how refund-mcp learns of a payment.
        await app.service.apply_event(
            PaymentEvent(processor="adyen", event_id=f"auth-{payment_id}", transaction_id=payment_id, amount_minor=10000,
                         currency="USD", captured_minor=10000, status="authorised", customer_ref="ana@example.com",
                         occurred_at=datetime.now(UTC) - timedelta(days=1))
        )
    return f"{name}:{payment_id}"


def refund_requests(router: HostRouter, name: str) -> int:
    """How many create-refund calls reached this processor's fake."""
    paths = {"stripe": "/v1/refunds", "paypal": "/refund", "adyen": "/refunds", "square": "/v2/refunds"}
    transport = router.transports[f"{name}.fake"]
    return sum(1 for ex in transport.exchanges if ex.request.method == "POST" and ex.path.endswith(paths[name]))


@pytest.fixture
async def world(tmp_path, processors):
    router = HostRouter(processors.fakes)
    async with httpx2.AsyncClient(transport=router, timeout=httpx2.Timeout(5.0, read=0.5)) as http:
        async with make_app(sqlite_url(tmp_path), env=processors.env, http=http) as app, Client(app.server) as client:
            yield app, client, router, processors


@pytest.mark.parametrize("name", ALL)
async def test_lookup_then_partial_then_full_refund(world, name):
    app, client, router, processors = world
    txn_id = await seed(app, processors, name)
    txn = (await client.call_tool("lookup_transaction", {"transaction_id": txn_id})).structured_content
    assert txn["processor"] == name and txn["captured_minor"] == 10000 and txn["refundable_minor"] == 10000
    assert txn["amount_display"] == "USD 100.00"
    part = (await client.call_tool("create_refund", {"transaction_id": txn_id, "reason": "product_defective", "amount_minor": 2550})).structured_content
    assert part["status"] == FIRST_STATUS[name], part
    assert part["processor_refund_id"]
    rest = (await client.call_tool("create_refund", {"transaction_id": txn_id, "reason": "requested_by_customer"})).structured_content
    assert rest["amount_minor"] == 7450
    assert processors.fakes[name].state()["refund_count"] == 2
    assert sum(r["amount_minor"] for r in (await client.call_tool("list_refunds", {"processor": name})).structured_content["refunds"]) == 10000


@pytest.mark.parametrize("name", ALL)
async def test_an_over_refund_is_refused_by_our_guard_before_the_processor_is_called(world, name):
    app, client, router, processors = world
    txn_id = await seed(app, processors, name)
    await client.call_tool("lookup_transaction", {"transaction_id": txn_id})
    before = refund_requests(router, name)
    result = await client.call_tool("create_refund", {"transaction_id": txn_id, "reason": "service_issue", "amount_minor": 10001})
    assert result.is_error and "[amount_exceeds_refundable]" in result.content[0].text
    assert refund_requests(router, name) == before


@pytest.mark.parametrize(("name", "code"), [("stripe", "not_refundable"), ("paypal", "not_refundable"), ("square", "not_refundable")])
async def test_a_refusal_by_the_processor_is_mapped_to_its_code_and_releases_the_amount(world, name, code):
    app, client, router, processors = world
    txn_id = await seed(app, processors, name, disputed=True)
    result = await client.call_tool("create_refund", {"transaction_id": txn_id, "reason": "service_issue", "amount_minor": 1000})
    assert result.is_error, result.structured_content
    assert f"[{code}]" in result.content[0].text
    listed = (await client.call_tool("list_refunds", {"processor": name})).structured_content["refunds"]
    # Stripe's charge already says `disputed`, so our own guard refuses before calling; the others refuse on the wire.
    assert [r["status"] for r in listed] == ([] if name == "stripe" else ["failed"])
    txn = (await client.call_tool("lookup_transaction", {"transaction_id": txn_id})).structured_content
    assert txn["reserved_minor"] == 0
    assert processors.fakes[name].state()["refund_count"] == 0


@pytest.mark.parametrize(("name", "pending_word", "final_word"), [("stripe", "pending", "succeeded"), ("paypal", "PENDING", "COMPLETED"), ("square", "PENDING", "COMPLETED")])
async def test_status_refresh_reads_the_processor(world, name, pending_word, final_word):
    app, client, router, processors = world
    txn_id = await seed(app, processors, name, refund_outcome=pending_word)
    refund = (await client.call_tool("create_refund", {"transaction_id": txn_id, "reason": "service_issue", "amount_minor": 1000})).structured_content
    assert refund["status"] == "pending"
    processors.fakes[name].set_refund_status(refund["processor_refund_id"], final_word)
    fresh = (await client.call_tool("get_refund_status", {"refund_id": refund["refund_id"]})).structured_content
    assert fresh["status"] == "succeeded" and fresh["status_source"] == "processor"


async def test_adyen_status_is_answered_from_records_and_says_so(world):
    app, client, router, processors = world
    txn_id = await seed(app, processors, "adyen")
    refund = (await client.call_tool("create_refund", {"transaction_id": txn_id, "reason": "service_issue", "amount_minor": 1000})).structured_content
    status = (await client.call_tool("get_refund_status", {"refund_id": refund["refund_id"]})).structured_content
    assert status["status"] == "pending" and status["status_source"] == "records"
    assert "webhook" in status["message"]


async def test_an_unknown_adyen_payment_explains_that_adyen_cannot_be_queried(world):
    app, client, router, processors = world
    result = await client.call_tool("lookup_transaction", {"transaction_id": "adyen:NOPE0000NOPE0000"})
    assert "[transaction_not_found]" in result.content[0].text and "webhook" in result.content[0].text


async def test_a_stripe_refund_that_requires_action_is_cancelled_at_stripe(world):
    app, client, router, processors = world
    txn_id = await seed(app, processors, "stripe", refund_outcome="requires_action")
    refund = (await client.call_tool("create_refund", {"transaction_id": txn_id, "reason": "service_issue", "amount_minor": 1000})).structured_content
    assert refund["status"] == "requires_action"
    cancelled = (await client.call_tool("cancel_refund", {"refund_id": refund["refund_id"]})).structured_content
    assert cancelled["status"] == "cancelled"
    assert processors.fakes["stripe"].state()["refunds"][0]["status"] == "canceled"


@pytest.mark.parametrize("name", ["paypal", "adyen", "square"])
async def test_processors_without_cancel_say_not_supported_naming_the_processor(world, name):
    app, client, router, processors = world
    txn_id = await seed(app, processors, name, refund_outcome={"paypal": "PENDING", "square": "PENDING"}.get(name))
    refund = (await client.call_tool("create_refund", {"transaction_id": txn_id, "reason": "service_issue", "amount_minor": 1000})).structured_content
    assert refund["status"] == "pending"
    result = await client.call_tool("cancel_refund", {"refund_id": refund["refund_id"]})
    assert result.is_error and "[not_supported]" in result.content[0].text and name in result.content[0].text


@pytest.mark.parametrize("name", ALL)
async def test_an_idempotent_retry_after_a_timeout_makes_exactly_one_refund(world, name):
    app, client, router, processors = world
    txn_id = await seed(app, processors, name)
    await client.call_tool("lookup_transaction", {"transaction_id": txn_id})
    processors.fakes[name].faults.next_timeout_after_commit = 1
    queued = (await client.call_tool("create_refund", {"transaction_id": txn_id, "reason": "service_issue", "amount_minor": 1234})).structured_content
    assert queued["status"] == "queued", queued
    assert processors.fakes[name].state()["refund_count"] == 1
    processors.fakes[name].release_stalled()
    real_clock = app.service.clock
    app.service.clock = lambda: real_clock() + timedelta(hours=1)
    assert await app.service.process_due() == 1
    app.service.clock = real_clock
    done = (await client.call_tool("get_refund_status", {"refund_id": queued["refund_id"], "refresh": False})).structured_content
    assert done["status"] == FIRST_STATUS[name]
    assert processors.fakes[name].state()["refund_count"] == 1
