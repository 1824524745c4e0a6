"""Many concurrent partial refunds on one payment never exceed its balance (SQLite and PostgreSQL)."""

from __future__ import annotations

import anyio
import pytest

from mcp import Client
from refund_mcp.audit import log as audit
from tests.conftest import make_app

pytestmark = pytest.mark.anyio

TXN = "sandbox:demo_usd_order"  # USD 120.00 captured
CALLS = 60
AMOUNT = 700  # 60 x USD 7.00 = USD 420.00 asked for, USD 120.00 available: at most 17 can succeed


async def fire_concurrent_refunds(app) -> list:
    results: list = [None] * CALLS

    async def one(index: int) -> None:
        async with Client(app.server) as client:
            results[index] = await client.call_tool(
                "create_refund",
                {"transaction_id": TXN, "reason": "service_issue", "amount_minor": AMOUNT, "idempotency_key": f"c-{index}"},
            )

    async with anyio.create_task_group() as tg:
        for index in range(CALLS):
            tg.start_soon(one, index)
    return results


async def assert_never_over_refunded(app, results) -> None:
    accepted = [r.structured_content for r in results if not r.is_error]
    refused = [r.content[0].text for r in results if r.is_error]
    assert len(accepted) == 12000 // AMOUNT
    assert all(refund["status"] == "succeeded" for refund in accepted)
    assert all("[amount_exceeds_refundable]" in text or "[already_refunded]" in text for text in refused)
    async with Client(app.server) as client:
        txn = (await client.call_tool("lookup_transaction", {"transaction_id": TXN})).structured_content
    assert txn["refunded_minor"] + txn["reserved_minor"] <= txn["captured_minor"]
    assert txn["refunded_minor"] == len(accepted) * AMOUNT
    assert (await audit.verify(app.db.engine)).ok


async def test_concurrent_partial_refunds_never_exceed_the_balance_on_sqlite(app_factory):
    async with app_factory() as app:
        await assert_never_over_refunded(app, await fire_concurrent_refunds(app))


@pytest.mark.postgres
async def test_concurrent_partial_refunds_never_exceed_the_balance_on_postgresql(pg_database):
    async with make_app(pg_database) as app:
        await assert_never_over_refunded(app, await fire_concurrent_refunds(app))
