"""Processor faults injected through the wire-faithful Stripe fake (in process): the refund stays
reserved as `queued`, is retried with the same idempotency key, and the fake ends with exactly one."""

from __future__ import annotations

from datetime import timedelta

import httpx2
import pytest

from mcp import Client
from refund_mcp.domain.errors import Delivery
from tests.conftest import make_app, sqlite_url
from tests.fakes.common import FakeTransport, PaymentSeed
from tests.fakes.stripe import DEFAULT_API_KEY, StripeFake

pytestmark = pytest.mark.anyio

TXN = "stripe:ch_faults"
ARGS = {"transaction_id": TXN, "reason": "requested_by_customer", "amount_minor": 3000}


def stripe_env(base: str = "http://stripe.fake") -> dict[str, str]:
    return {"STRIPE_API_KEY": DEFAULT_API_KEY, "STRIPE_API_BASE": base, "REFUND_MCP_SANDBOX": "0"}


@pytest.fixture
def fake() -> StripeFake:
    stripe = StripeFake()
    stripe.add_payment(PaymentSeed(id="ch_faults", amount_minor=10000, currency="USD"))
    return stripe


def client_for(fake: StripeFake, read_timeout: float = 0.5) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=FakeTransport(fake.app), timeout=httpx2.Timeout(5.0, read=read_timeout))


async def retry_when_due(app) -> None:
    """Run the worker as if the backoff had passed."""
    real_clock = app.service.clock
    app.service.clock = lambda: real_clock() + timedelta(hours=1)
    try:
        await app.service.process_due()
    finally:
        app.service.clock = real_clock


async def test_a_timeout_after_the_processor_accepted_keeps_the_reservation_and_the_retry_makes_no_second_refund(tmp_path, fake):
    async with client_for(fake) as http, make_app(sqlite_url(tmp_path), env=stripe_env(), http=http) as app, Client(app.server) as client:
        await client.call_tool("lookup_transaction", {"transaction_id": TXN})
        fake.faults.next_timeout_after_commit = 1
        queued = (await client.call_tool("create_refund", ARGS)).structured_content
        assert queued["status"] == "queued"
        assert "processor_unavailable" in queued["retry"]["last_error"]
        assert fake.state()["refund_count"] == 1  # the processor has it; we do not know yet
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": TXN})).structured_content
        assert txn["refundable_minor"] == 7000  # never freed while the outcome is unknown
        cancel = await client.call_tool("cancel_refund", {"refund_id": queued["refund_id"]})
        assert cancel.is_error and "[not_supported]" in cancel.content[0].text  # it may be at Stripe already
        fake.release_stalled()
        await retry_when_due(app)
        done = (await client.call_tool("get_refund_status", {"refund_id": queued["refund_id"]})).structured_content
        assert done["status"] == "succeeded"
        assert fake.state()["refund_count"] == 1
        keys = {ex.request.headers.get("Idempotency-Key") for ex in http._transport.exchanges if ex.path == "/v1/refunds"}
        assert keys == {queued["refund_id"]}


@pytest.mark.parametrize("fault", ["next_500", "next_503"])
async def test_a_server_error_leaves_the_refund_queued_until_a_retry_succeeds(tmp_path, fake, fault):
    async with client_for(fake) as http, make_app(sqlite_url(tmp_path), env=stripe_env(), http=http) as app, Client(app.server) as client:
        await client.call_tool("lookup_transaction", {"transaction_id": TXN})
        setattr(fake.faults, fault, 2)  # the lookup inside create_refund, then the refund itself
        queued = (await client.call_tool("create_refund", ARGS)).structured_content
        assert queued["status"] == "queued" and "will be retried" in queued["message"]
        await retry_when_due(app)
        done = (await client.call_tool("get_refund_status", {"refund_id": queued["refund_id"], "refresh": False})).structured_content
        assert done["status"] == "succeeded"
        assert fake.state()["refund_count"] == 1


async def test_a_rate_limit_is_retried_no_sooner_than_retry_after(tmp_path, fake):
    async with client_for(fake) as http, make_app(sqlite_url(tmp_path), env=stripe_env(), http=http) as app, Client(app.server) as client:
        await client.call_tool("lookup_transaction", {"transaction_id": TXN})
        fake.faults.next_429 = 2
        fake.faults.retry_after = "600"
        queued = (await client.call_tool("create_refund", ARGS)).structured_content
        assert queued["status"] == "queued"
        assert "[rate_limited]" in queued["retry"]["last_error"]
        from datetime import datetime

        next_at = datetime.fromisoformat(queued["retry"]["next_attempt_at"])
        assert (next_at - datetime.fromisoformat(queued["updated_at"])).total_seconds() >= 600
        assert fake.state()["refund_count"] == 0
        await retry_when_due(app)
        assert fake.state()["refund_count"] == 1


async def test_an_unreachable_processor_queues_the_refund_which_can_still_be_cancelled(tmp_path, fake):
    # Nothing listens on port 9 of loopback: the connection is refused before anything is sent.
    async with make_app(sqlite_url(tmp_path), env=stripe_env("http://127.0.0.1:9")) as app, Client(app.server) as client:
        async with client_for(fake) as http, make_app(sqlite_url(tmp_path), env=stripe_env(), http=http) as seeded, Client(seeded.server) as seeder:
            await seeder.call_tool("lookup_transaction", {"transaction_id": TXN})  # the payment is on record
        queued = (await client.call_tool("create_refund", ARGS)).structured_content
        assert queued["status"] == "queued"
        assert "processor is down" in queued["message"] or "retried" in queued["message"]
        cancelled = (await client.call_tool("cancel_refund", {"refund_id": queued["refund_id"]})).structured_content
        assert cancelled["status"] == "cancelled"
    assert fake.state()["refund_count"] == 0


async def test_a_processor_that_keeps_failing_opens_the_circuit_and_new_refunds_are_queued_without_calling_it(tmp_path, fake):
    async with client_for(fake) as http, make_app(sqlite_url(tmp_path), env=stripe_env(), http=http) as app, Client(app.server) as client:
        await client.call_tool("lookup_transaction", {"transaction_id": TXN})
        fake.faults.next_503 = 1000
        for number in range(3):
            await client.call_tool("create_refund", {**ARGS, "amount_minor": 100 + number})
        assert app.service.breaker.is_open("stripe")
        calls_before = fake.request_count
        queued = (await client.call_tool("create_refund", {**ARGS, "amount_minor": 500})).structured_content
        assert queued["status"] == "queued"
        assert "unavailable right now" in queued["message"]
        assert fake.request_count == calls_before  # not hammered
        assert fake.state()["refund_count"] == 0


def test_transport_errors_are_classified_by_what_they_mean_for_money():
    from refund_mcp.domain.errors import ProcessorUnavailable, RateLimited

    assert ProcessorUnavailable("x", processor="stripe").delivery is Delivery.OUTCOME_UNKNOWN
    assert RateLimited("x", processor="stripe").delivery is Delivery.NOT_SENT
    assert ProcessorUnavailable("x", processor="stripe").retryable and RateLimited("x", processor="stripe").retryable
