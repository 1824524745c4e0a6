"""How many transactions and statements each hot tool call sends (SQLite), pinned so a regression shows.

A count, not a time: one create_refund (sandbox, with an idempotency key, under caps), one
lookup_transaction, one check_refund_policy and one get_refund_status without refresh, each after a
warm-up call. When a change adds a statement on purpose, update the numbers here and say why; the
statements themselves are printed when a count differs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from refund_mcp.service.refunds import RefundInput
from tests.conftest import make_app

pytestmark = pytest.mark.anyio

# The benchmark's policy: every limit present (caps included), none of them refusing 1-unit refunds.
THROUGHPUT_POLICY = Path(__file__).resolve().parents[1] / "bench" / "policies" / "throughput.yaml"
PAYMENT = "sandbox:demo_usd_large"
ACTOR = "agent-1"


@dataclass
class Recorded:
    transactions: list[list[str]] = field(default_factory=list)

    @property
    def statements(self) -> int:
        return sum(len(txn) for txn in self.transactions)

    def shape(self) -> list[int]:
        return [len(txn) for txn in self.transactions]

    def __str__(self) -> str:
        return "\n".join(f"txn {i}:\n" + "\n".join(f"  {s[:140]}" for s in txn) for i, txn in enumerate(self.transactions))


@asynccontextmanager
async def recording(app: Any) -> AsyncIterator[Recorded]:
    """Every statement the driver gets, grouped by transaction (BEGIN and PRAGMAs left out)."""
    recorded = Recorded()
    engine = app.db.engine.sync_engine

    def on_begin(_conn: Any) -> None:
        recorded.transactions.append([])

    def on_statement(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        text = " ".join(statement.split())
        if not text.upper().startswith(("BEGIN", "PRAGMA")):
            recorded.transactions[-1].append(text)

    listeners = [(engine, "begin", on_begin), (engine, "before_cursor_execute", on_statement)]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        yield recorded
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)


async def counted(app: Any, call: Awaitable[Any]) -> tuple[Any, Recorded]:
    async with recording(app) as recorded:
        result = await call
    return result, recorded


@pytest.fixture
async def app(app_factory: Any) -> AsyncIterator[Any]:
    async with app_factory(policy=THROUGHPUT_POLICY) as app:
        service = app.service
        # Warm-up: the payment is on record and every statement compiled once.
        warm = await service.create_refund(ACTOR, RefundInput(transaction_id=PAYMENT, reason="service_issue", amount_minor=1, idempotency_key="warm"))
        await service.lookup_transaction(ACTOR, PAYMENT)
        await service.check_refund_policy(ACTOR, PAYMENT, "service_issue", 1)
        await service.get_refund_status(ACTOR, warm.refund_id, refresh=False)
        yield app


def expect(recorded: Recorded, shape: list[int]) -> None:
    assert recorded.shape() == shape, f"statements per transaction {recorded.shape()}, pinned {shape}:\n{recorded}"


async def test_create_refund(app: Any) -> None:
    request = RefundInput(transaction_id=PAYMENT, reason="service_issue", amount_minor=1, idempotency_key="counted")
    view, recorded = await counted(app, app.service.create_refund(ACTOR, request))
    assert view.status == "succeeded"
    # the reservation (alias check, payment upsert, key, window, refund, key, audit head and record, cap take x2);
    # the answer (conditional update, audit head and record)
    expect(recorded, [10, 3])


async def test_lookup_transaction(app: Any) -> None:
    _view, recorded = await counted(app, app.service.lookup_transaction(ACTOR, PAYMENT))
    expect(recorded, [4, 2])  # the alias check, payment upsert and audit (head, record); the view (payment, refunds)


async def test_check_refund_policy(app: Any) -> None:
    _view, recorded = await counted(app, app.service.check_refund_policy(ACTOR, PAYMENT, "service_issue", 1))
    expect(recorded, [2, 2, 2])  # the alias check and payment upsert; the evaluation (payment, window); audit


async def test_get_refund_status_without_refresh(app: Any) -> None:
    refund = await app.service.create_refund(ACTOR, RefundInput(transaction_id=PAYMENT, reason="service_issue", amount_minor=1, idempotency_key="s"))
    _view, recorded = await counted(app, app.service.get_refund_status(ACTOR, refund.refund_id, refresh=False))
    expect(recorded, [1, 2])  # the refund; audit (head, record)
