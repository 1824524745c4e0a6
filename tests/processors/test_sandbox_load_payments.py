"""The sandbox's load-test payments `demo_load_<n>`: on demand, the same for every n, refundable like a demo payment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mcp import Client
from refund_mcp.domain.errors import AmountExceedsRefundable, TransactionNotFound
from refund_mcp.domain.models import ProcessorRefundRequest, RefundReason, RefundStatus
from refund_mcp.processors.sandbox import SandboxProcessor

pytestmark = pytest.mark.anyio

STARTED = datetime(2026, 3, 4, 15, 30, tzinfo=UTC)


def request(transaction_id: str, amount_minor: int, key: str) -> ProcessorRefundRequest:
    return ProcessorRefundRequest(
        transaction_id=transaction_id, amount_minor=amount_minor, currency="USD", reason=RefundReason("service_issue"), idempotency_key=key,
        refund_id=f"rf_{key}",
    )


@pytest.mark.parametrize("n", [1, 7, 123_456, 1_000_000])
async def test_every_load_payment_is_a_captured_usd_1000_payment_from_the_day_before(n):
    info = await SandboxProcessor(now=STARTED).lookup_transaction(f"demo_load_{n}")
    assert (info.processor, info.transaction_id, info.currency) == ("sandbox", f"demo_load_{n}", "USD")
    assert info.amount_minor == info.captured_minor == 100_000 and info.refunded_minor == 0
    assert info.refundable and info.status == "succeeded"
    assert info.created_at == datetime(2026, 3, 3, tzinfo=UTC)
    assert info.customer_ref == f"load-{n}@example.com"


async def test_a_load_payment_is_the_same_in_every_sandbox_started_that_day():
    first = await SandboxProcessor(now=STARTED).lookup_transaction("demo_load_42")
    later = await SandboxProcessor(now=STARTED + timedelta(hours=5)).lookup_transaction("demo_load_42")
    assert first == later


@pytest.mark.parametrize("bare_id", ["demo_load_0", "demo_load_1000001", "demo_load_01", "demo_load_", "demo_load_1x", "demo_load_-1", "demo_load_１"])
async def test_ids_outside_the_family_are_not_payments(bare_id):
    sandbox = SandboxProcessor(now=STARTED)
    with pytest.raises(TransactionNotFound):
        await sandbox.lookup_transaction(bare_id)
    with pytest.raises(TransactionNotFound):
        await sandbox.create_refund(request(bare_id, 100, "k-outside"))


async def test_load_payments_keep_their_own_balances():
    sandbox = SandboxProcessor(now=STARTED)
    refund = await sandbox.create_refund(request("demo_load_5", 60_000, "k1"))
    assert refund.status is RefundStatus.SUCCEEDED and refund.transaction_id == "demo_load_5"
    with pytest.raises(AmountExceedsRefundable):
        await sandbox.create_refund(request("demo_load_5", 40_001, "k2"))
    assert (await sandbox.lookup_transaction("demo_load_5")).refunded_minor == 60_000
    assert (await sandbox.lookup_transaction("demo_load_6")).refunded_minor == 0
    assert await sandbox.get_refund(refund.processor_refund_id) == refund


async def test_the_demo_payments_are_unchanged():
    sandbox = SandboxProcessor(now=STARTED)
    order = await sandbox.lookup_transaction("demo_usd_order")
    assert (order.amount_minor, order.currency, order.created_at) == (12000, "USD", STARTED - timedelta(days=3))


async def test_a_load_payment_is_refunded_through_the_tools_like_a_demo_payment(app_factory):
    payment = "sandbox:demo_load_77"

    async def refund(client: Client, amount_minor: int, key: str) -> dict:
        arguments = {"transaction_id": payment, "reason": "service_issue", "amount_minor": amount_minor, "idempotency_key": key}
        return (await client.call_tool("create_refund", arguments)).structured_content

    async with app_factory() as app, Client(app.server) as client:
        looked_up = (await client.call_tool("lookup_transaction", {"transaction_id": payment})).structured_content
        assert looked_up["amount_minor"] == 100_000 and looked_up["refundable_minor"] == 100_000
        assert (await refund(client, 2500, "load-77-a"))["status"] == "succeeded"
        pending = await refund(client, 142, "load-77-b")  # the scripted outcomes apply as on a demo payment
        assert pending["status"] == "pending"
        settled = (await client.call_tool("get_refund_status", {"refund_id": pending["refund_id"]})).structured_content
        assert settled["status"] == "succeeded"
        after = (await client.call_tool("lookup_transaction", {"transaction_id": payment})).structured_content
        assert after["refundable_minor"] == 100_000 - 2500 - 142
        other = (await client.call_tool("lookup_transaction", {"transaction_id": "sandbox:demo_load_78"})).structured_content
        assert other["refundable_minor"] == 100_000
