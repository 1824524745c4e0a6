"""Balances and daily caps under concurrent writers on PostgreSQL (READ COMMITTED), with no writer lock every
write shares (Database.write() takes none): row locks, the running totals' triggers and the caps' counters
alone must keep a payment from being over-refunded and a cap from being exceeded.

Writers are spread over several engines (separate connection pools, as separate processes would be)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import pytest

from refund_mcp.store import cap_usage, queries
from refund_mcp.store.database import Database
from tests.conftest import make_app
from tests.store.refund_rows import BASE, Refund, add_payment, insert_refund
from tests.test_concurrency import assert_never_over_refunded, fire_concurrent_refunds
from tests.test_policy_enforcement import CAPS, assert_caps_held, two_waves

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
ENGINES = 3
CALLS = 30


@pytest.fixture
async def writers(pg_database: str) -> AsyncIterator[list[Database]]:
    databases = [Database(pg_database) for _ in range(ENGINES)]
    await databases[0].migrate()
    try:
        yield databases
    finally:
        for database in databases:
            await database.dispose()


class Refused(Exception):
    pass


async def _race(writers: list[Database], attempt: Any) -> list[bool]:
    """Run attempt(db, index) CALLS times at once; True where it committed, False where it was refused."""
    accepted = [False] * CALLS

    async def one(index: int) -> None:
        try:
            async with writers[index % len(writers)].write() as conn:
                await attempt(conn, index)
            accepted[index] = True
        except Refused:
            pass

    async with anyio.create_task_group() as group:
        for index in range(CALLS):
            group.start_soon(one, index)
    return accepted


async def test_concurrent_reservations_on_one_payment_never_exceed_its_balance(writers: list[Database]) -> None:
    async with writers[0].write() as conn:
        await add_payment(conn, "sandbox:p", captured_minor=1000)

    async def reserve(conn: Any, index: int) -> None:
        txn = await queries.get_transaction(conn, "sandbox:p", lock=True)
        if (await queries.balance(conn, txn)).refundable_minor < 70:
            raise Refused
        await insert_refund(conn, Refund(f"re_{index}", "sandbox:p", "queued", 70))

    accepted = await _race(writers, reserve)
    assert sum(accepted) == 1000 // 70  # every one that fit, none beyond
    async with writers[0].read() as conn:
        balance = await queries.balance(conn, await queries.get_transaction(conn, "sandbox:p"))
        assert balance.reserved_minor == sum(accepted) * 70 and balance.active_refunds == sum(accepted)
        assert await queries.running_total_mismatches(conn) == []


@pytest.mark.parametrize("which", ["global", "per_actor"])
async def test_concurrent_reservations_on_different_payments_never_exceed_a_daily_cap(writers: list[Database], which: str) -> None:
    """Half the refunds are created in the last instant of an hour, half in the first of the next: takers
    write different buckets and must still see each other."""
    amount, cap = 70, 1000
    async with writers[0].write() as conn:
        for index in range(CALLS):
            await add_payment(conn, f"sandbox:p{index}")

    async def reserve(conn: Any, index: int) -> None:
        actor = "agent-1" if which == "per_actor" or index % 2 else "agent-2"
        created_at = BASE + timedelta(hours=1) + (timedelta(microseconds=-1) if index % 2 else timedelta())
        everyone, mine = cap_usage.scopes(actor)
        caps = {everyone: cap} if which == "global" else {mine: cap}
        await insert_refund(conn, Refund(f"re_{index}", f"sandbox:p{index}", "queued", amount, actor=actor, created_at=created_at), take_cap_usage=False)
        if await queries.take_cap_usage(conn, actor=actor, currency="USD", created_at=created_at, amount_minor=amount, caps=caps) is not None:
            raise Refused

    accepted = await _race(writers, reserve)
    assert sum(accepted) == cap // amount  # the cap is reached exactly: every refund that fit was taken
    async with writers[0].read() as conn:
        totals = await queries.daily_totals(conn, currency="USD", since=BASE + timedelta(hours=2) - timedelta(hours=24), actor="agent-1")
    assert totals[1] == sum(accepted) * amount


async def test_concurrent_refunds_through_the_service_never_exceed_the_balance(pg_database: str) -> None:
    async with make_app(pg_database) as app:
        await assert_never_over_refunded(app, await fire_concurrent_refunds(app))


async def test_concurrent_refunds_through_the_service_never_exceed_the_daily_caps(pg_database: str) -> None:
    async with make_app(pg_database, policy=CAPS) as app:
        assert_caps_held(await two_waves(app))
