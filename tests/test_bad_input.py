"""Malformed arguments get a [validation_error] naming the field and change nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from mcp import Client
from refund_mcp.store import tables

pytestmark = pytest.mark.anyio

TXN = "sandbox:demo_usd_order"
BAD_CREATE_ARGS = [
    ({"transaction_id": TXN, "reason": "service_issue", "amount_minor": 0}, "amount_minor"),
    ({"transaction_id": TXN, "reason": "service_issue", "amount_minor": -5}, "amount_minor"),
    ({"transaction_id": TXN, "reason": "service_issue", "amount_minor": 2**63}, "amount_minor"),
    ({"transaction_id": TXN, "reason": "service_issue", "amount_minor": "100"}, "amount_minor"),
    ({"transaction_id": TXN, "reason": "service_issue", "amount_minor": 1.5}, "amount_minor"),
    ({"transaction_id": TXN, "reason": "service_issue", "amount_minor": True}, "amount_minor"),
    ({"transaction_id": TXN, "reason": "service_issue", "currency": "US"}, "currency"),
    ({"transaction_id": TXN, "reason": "service_issue", "currency": "ZZZ"}, "currency"),
    ({"transaction_id": TXN, "reason": "service_issue", "currency": 840}, "currency"),
    ({"transaction_id": TXN, "reason": 7}, "reason"),
    ({"transaction_id": TXN}, "reason"),
    ({"transaction_id": "", "reason": "service_issue"}, "transaction_id"),
    ({"transaction_id": "x" * 500, "reason": "service_issue"}, "transaction_id"),
    ({"transaction_id": "sandbox:", "reason": "service_issue"}, "transaction_id"),
    ({"transaction_id": "has space", "reason": "service_issue"}, "transaction_id"),
    ({"transaction_id": "stripe:ch_1", "reason": "service_issue"}, "transaction_id"),
    ({"transaction_id": TXN, "reason": "service_issue", "processor": "bank"}, "processor"),
    ({"transaction_id": TXN, "reason": "service_issue", "idempotency_key": "bad key!"}, "idempotency_key"),
    ({"transaction_id": TXN, "reason": "service_issue", "surprise": 1}, "surprise"),
    ({"transaction_id": TXN, "reason": "service_issue", "note": "n" * 5000}, "note"),
]


async def count(app, table) -> int:
    async with app.db.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


@pytest.mark.parametrize(("args", "field"), BAD_CREATE_ARGS)
async def test_bad_create_refund_arguments_are_validation_errors_that_change_nothing(app_factory, args, field):
    async with app_factory() as app, Client(app.server) as client:
        result = await client.call_tool("create_refund", args)
        assert result.is_error
        text = result.content[0].text
        assert "[validation_error]" in text, text
        assert field in text, text
        assert await count(app, tables.refunds) == 0
        assert await count(app, tables.idempotency_keys) == 0


@pytest.mark.parametrize(
    ("tool", "args", "field"),
    [
        ("get_refund_status", {"refund_id": "re_123"}, "refund_id"),
        ("get_refund_status", {"refund_id": "rf_" + "0" * 26 + "'; DROP TABLE refunds;--"}, "refund_id"),
        ("cancel_refund", {"refund_id": 12}, "refund_id"),
        ("list_refunds", {"limit": 0}, "limit"),
        ("list_refunds", {"limit": 10_000}, "limit"),
        ("list_refunds", {"status": "done"}, "status"),
        ("list_refunds", {"since": "yesterday"}, "since"),
        ("check_refund_policy", {"transaction_id": TXN, "reason": "service_issue", "amount_minor": -1}, "amount_minor"),
        ("lookup_transaction", {"transaction_id": None}, "transaction_id"),
    ],
)
async def test_bad_arguments_on_other_tools_are_validation_errors(app_factory, tool, args, field):
    async with app_factory() as app, Client(app.server) as client:
        result = await client.call_tool(tool, args)
        assert result.is_error
        assert "[validation_error]" in result.content[0].text and field in result.content[0].text
        assert await count(app, tables.refunds) == 0


async def test_an_unknown_refund_id_is_refund_not_found(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        result = await client.call_tool("get_refund_status", {"refund_id": "rf_" + "0" * 26})
        assert "[refund_not_found]" in result.content[0].text


async def test_an_uncaptured_payment_is_not_refundable(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        result = await client.call_tool("create_refund", {"transaction_id": "sandbox:demo_usd_uncaptured", "reason": "service_issue"})
        assert "[not_refundable]" in result.content[0].text
        assert await count(app, tables.refunds) == 0


async def test_a_payment_older_than_the_policy_allows_is_denied(app_factory):
    async with app_factory() as app, Client(app.server) as client:
        result = await client.call_tool("create_refund", {"transaction_id": "sandbox:demo_usd_old", "reason": "service_issue"})
        assert "[policy_denied]" in result.content[0].text
        assert "max_transaction_age_days" in result.content[0].text
