"""Refund rows written straight to the store, and what the running totals and cap buckets must then hold,
computed in Python from the rows alone (the rules of queries.balance and the daily caps, restated)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.store import cap_usage, tables

STATUSES = ("pending_approval", "queued", "pending", "requires_action", "succeeded", "failed", "cancelled")
RESERVING = {"pending_approval", "queued", "pending", "requires_action"}
BASE = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Refund:
    id: str
    transaction_id: str
    status: str
    amount_minor: int
    maybe_sent: bool = False
    origin: str = "agent"
    actor: str = "agent-1"
    currency: str = "USD"
    created_at: datetime = BASE

    @property
    def counted(self) -> bool:
        return self.origin == "agent" and (self.status in RESERVING or self.status == "succeeded")


def expected_totals(refunds: list[Refund], payments: list[str]) -> dict[str, tuple[int, int, int, int]]:
    """(reserved, succeeded, at_processor, active) per payment."""
    totals = {payment: [0, 0, 0, 0] for payment in payments}
    for refund in refunds:
        row = totals[refund.transaction_id]
        amount, status = refund.amount_minor, refund.status
        row[0] += amount if status in RESERVING else 0
        row[1] += amount if status == "succeeded" else 0
        row[2] += amount if status in ("pending", "requires_action") or (status == "queued" and refund.maybe_sent) else 0
        row[3] += 0 if status in ("failed", "cancelled") else 1
    return {payment: (a, b, c, d) for payment, (a, b, c, d) in totals.items()}


def expected_buckets(refunds: list[Refund]) -> dict[tuple[str, str, datetime], int]:
    buckets: dict[tuple[str, str, datetime], int] = defaultdict(int)
    for refund in refunds:
        if refund.counted:
            for scope in cap_usage.scopes(refund.actor):
                buckets[(scope, refund.currency, cap_usage.hour_of(refund.created_at))] += refund.amount_minor
    return {key: amount for key, amount in buckets.items() if amount}


async def add_payment(conn: AsyncConnection, payment_id: str, captured_minor: int = 10_000, processor_refunded_minor: int = 0) -> None:
    await conn.execute(
        insert(tables.transactions).values(
            id=payment_id, processor="sandbox", processor_transaction_id=payment_id.split(":")[-1], amount_minor=captured_minor,
            currency="USD", captured_minor=captured_minor, processor_refunded_minor=processor_refunded_minor, status="succeeded",
            refundable=True, first_seen_at=BASE, updated_at=BASE,
        )
    )


async def insert_refund(conn: AsyncConnection, refund: Refund, *, take_cap_usage: bool = True) -> None:
    """As the reservation does: the row, then (an agent refund that counts) its cap usage, uncapped.
    `take_cap_usage=False`: the row alone, as before revision 0011."""
    await conn.execute(
        insert(tables.refunds).values(
            id=refund.id, transaction_id=refund.transaction_id, processor="sandbox", status=refund.status,
            amount_minor=refund.amount_minor, currency=refund.currency, reason="duplicate", actor=refund.actor,
            origin=refund.origin, fingerprint=refund.id, attempts=0, maybe_sent=refund.maybe_sent,
            created_at=refund.created_at, updated_at=refund.created_at,
        )
    )
    if refund.counted and take_cap_usage:
        refused = await cap_usage.take(
            conn, actor=refund.actor, currency=refund.currency, created_at=refund.created_at, amount_minor=refund.amount_minor, caps={}
        )
        assert refused is None


async def change_refund(conn: AsyncConnection, refund: Refund, **values: Any) -> Refund:
    await conn.execute(update(tables.refunds).where(tables.refunds.c.id == refund.id).values(**values))
    return replace(refund, **values)


async def delete_refund(conn: AsyncConnection, refund: Refund) -> None:
    await conn.execute(delete(tables.refunds).where(tables.refunds.c.id == refund.id))


async def stored_totals(conn: AsyncConnection) -> dict[str, tuple[int, int, int, int]]:
    T = tables.transactions
    rows = await conn.execute(select(T.c.id, T.c.reserved_minor, T.c.succeeded_minor, T.c.at_processor_minor, T.c.active_refunds))
    return {row[0]: tuple(int(value) for value in row[1:]) for row in rows.all()}  # type: ignore[misc]


async def stored_buckets(conn: AsyncConnection) -> dict[tuple[str, str, datetime], int]:
    C = tables.cap_usage
    rows = await conn.execute(select(C).where(C.c.amount_minor != 0))
    return {(row.scope, row.currency, row.hour_start): int(row.amount_minor) for row in rows.all()}


def hours(n: int) -> timedelta:
    return timedelta(hours=n)
