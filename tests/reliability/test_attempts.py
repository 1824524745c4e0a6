"""Resends, overtaken attempts and durable commits, through the service against ModelProcessor
(Stripe's idempotency semantics, 24 h key pruning; an Adyen-like processor with 31-day keys and no search).

Each test is one way money went wrong before: a resend under a key the processor had forgotten
(two refunds, or a paid refund recorded failed), Stripe's stored 5xx replayed forever, an attempt
that outlived its lease writing over newer state, and commits that a power loss could undo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from refund_mcp.audit import log as audit
from refund_mcp.domain.errors import NotSupported
from refund_mcp.service.refunds import RefundInput, RefundService
from refund_mcp.store import tables
from refund_mcp.store.database import Database
from tests.model.harness import Clock, build_service
from tests.model.processor import ModelProcessor, Payment

pytestmark = pytest.mark.anyio

ACTOR = "agent-a"


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.stripe = ModelProcessor("stripe", self.clock, retention=timedelta(hours=24), searchable=True, status_api=True)
        self.adyen = ModelProcessor("adyen", self.clock, retention=timedelta(days=31), searchable=False, status_api=False)
        self.adyen.arrived = self.stripe.arrived
        self.stripe.add_payment(Payment("ch_1", 10000, "USD"))
        self.stripe.add_payment(Payment("ch_small", 2000, "USD"))  # refunded in full without a confirmation
        self.adyen.add_payment(Payment("psp_1", 8000, "EUR"))
        self.url = f"sqlite+aiosqlite:///{tmp_path / 'attempts.sqlite3'}"
        self.dbs: list[Database] = []

    def service(self, **settings: Any) -> RefundService:
        """Another replica: its own engine on the same database, the same processors and clock."""
        db = Database(self.url)
        self.dbs.append(db)
        return build_service(db, {"stripe": self.stripe, "adyen": self.adyen}, self.clock, **settings)

    def made(self, processor: ModelProcessor, refund_id: str) -> list[Any]:
        return [r for r in processor.refunds.values() if r.refund_mcp_id == refund_id]

    async def row(self, refund_id: str) -> Any:
        async with self.dbs[0].read() as conn:
            return (await conn.execute(select(tables.refunds).where(tables.refunds.c.id == refund_id))).one()

    async def actions(self, refund_id: str) -> list[str]:
        async with self.dbs[0].read() as conn:
            return [record["action"] for record in await audit.trail(conn, refund_id)]


@asynccontextmanager
async def world_at(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path)
    first = Database(world.url)
    await first.migrate()
    await first.dispose()
    try:
        yield world
    finally:
        for db in world.dbs:
            await db.dispose()


def refund(transaction: str, amount: int | None) -> RefundInput:
    return RefundInput(transaction_id=transaction, reason="requested_by_customer", amount_minor=amount)


# ------------------------------------------------------------------ a key the processor may have forgotten


@pytest.mark.parametrize(("transaction", "amount"), [("stripe:ch_1", 2500), ("stripe:ch_small", None)], ids=["partial", "full"])
async def test_a_refund_whose_answer_was_lost_is_never_resent_after_its_key_was_pruned(tmp_path, transaction, amount):
    """Workers down for 25 hours after a lost answer: Stripe has pruned the key, so a resend would be a
    second refund (partial) or be refused and the paid refund recorded failed (full)."""
    async with world_at(tmp_path) as world:
        service = world.service()
        world.stripe.faults.append("lost_answer")
        queued = await service.create_refund(ACTOR, refund(transaction, amount))
        assert queued.status == "queued" and len(world.made(world.stripe, queued.refund_id)) == 1
        world.clock.now += timedelta(hours=25)
        await service.process_due()
        assert len(world.made(world.stripe, queued.refund_id)) == 1
        stuck = await service.stuck_refunds()
        assert [view.refund_id for view in stuck] == [queued.refund_id]  # reserved, waiting for an operator
        # The operator's retry follows the same rule: the refund is searched for, found and recorded.
        await service.resolve_queued(queued.refund_id, outcome="retry", operator="ops")
        await service.process_due()
        row = await world.row(queued.refund_id)
        [made] = world.made(world.stripe, queued.refund_id)
        assert (row.status, row.processor_refund_id) == ("succeeded", made.id)
        assert "refund.found" in await world.actions(queued.refund_id)


async def test_a_key_past_half_its_retention_is_searched_for_before_anything_is_sent(tmp_path):
    async with world_at(tmp_path) as world:
        service = world.service(retry_deadline_seconds=48 * 3600)
        world.stripe.faults.append("lost_answer")
        queued = await service.create_refund(ACTOR, refund("stripe:ch_1", 1000))
        world.clock.now += timedelta(hours=13)  # Stripe still holds the key, but it is past the safe age
        creates = world.stripe.creates
        await service.process_due()
        assert world.stripe.creates == creates  # nothing sent: found by the search
        assert (await world.row(queued.refund_id)).status == "succeeded"


async def test_a_stored_server_error_is_searched_for_and_retried_under_a_new_key(tmp_path):
    """Stripe stores a complete 500 under the key and replays it to every retry with that key."""
    async with world_at(tmp_path) as world:
        service = world.service()
        world.stripe.faults.append("stored_5xx")
        queued = await service.create_refund(ACTOR, refund("stripe:ch_1", 1500))
        assert queued.status == "queued"
        world.clock.now += timedelta(minutes=10)
        await service.process_due()
        row = await world.row(queued.refund_id)
        [made] = world.made(world.stripe, queued.refund_id)
        assert (row.status, row.key_generation, row.processor_refund_id) == ("succeeded", 1, made.id)
        assert ["refund.key_renewed", "refund.submitted"] == (await world.actions(queued.refund_id))[-2:]


async def test_an_old_in_doubt_refund_on_a_processor_that_cannot_be_searched_waits_for_an_operator(tmp_path):
    async with world_at(tmp_path) as world:
        service = world.service()
        world.adyen.faults.append("lost_answer")
        queued = await service.create_refund(ACTOR, refund("adyen:psp_1", 2000))
        world.clock.now += timedelta(days=32)  # Adyen has forgotten the key
        await service.process_due()
        assert len(world.made(world.adyen, queued.refund_id)) == 1
        row = await world.row(queued.refund_id)
        assert (row.status, row.next_attempt_at) == ("queued", None)
        assert "refund.needs_operator" in await world.actions(queued.refund_id)
        with pytest.raises(NotSupported, match="cannot be searched"):
            await service.resolve_queued(queued.refund_id, outcome="retry", operator="ops")
        assert len(world.made(world.adyen, queued.refund_id)) == 1
        with pytest.raises(NotSupported):  # still reserved: it may be at Adyen
            await service.cancel_refund(ACTOR, queued.refund_id)


# ------------------------------------------------------------------ an attempt that outlived its lease


async def an_attempt_outliving_its_lease(world: World, fault: str) -> tuple[RefundService, RefundService, asyncio.Task[Any], str]:
    """Replica A's attempt is held at Stripe (`fault`) until its lease has lapsed: (A, another replica B,
    A's create_refund call, the refund's id)."""
    first, second = world.service(), world.service()
    world.stripe.faults.append(fault)
    slow = asyncio.create_task(first.create_refund(ACTOR, refund("stripe:ch_1", 3000)))
    await world.stripe.arrived.wait()
    [refund_id] = [held.refund_mcp_id for held in world.stripe.held]
    world.clock.now += timedelta(seconds=first.settings.claim_seconds + 1)
    return first, second, slow, refund_id


async def test_an_attempt_overtaken_after_its_lease_lapsed_changes_nothing(tmp_path):
    """A's call is slow and ends with a 429 (nothing done) after B took the refund over and B's answer was
    lost (the refund is at Stripe). A must not make the refund look unsent, so it stays uncancellable."""
    async with world_at(tmp_path) as world:
        first, second, slow, refund_id = await an_attempt_outliving_its_lease(world, "held_429")
        world.stripe.faults.append("lost_answer")
        assert await second.process_due() == 1
        assert len(world.made(world.stripe, refund_id)) == 1
        world.stripe.held.pop().gate.set()
        await slow
        row = await world.row(refund_id)
        assert row.maybe_sent and row.status == "queued"
        assert "refund.stale_attempt" in await world.actions(refund_id)
        with pytest.raises(NotSupported):
            await first.cancel_refund(ACTOR, refund_id)
        world.clock.now += timedelta(minutes=10)
        await second.process_due()
        assert (await world.row(refund_id)).status == "succeeded"
        assert len(world.made(world.stripe, refund_id)) == 1


async def test_an_answer_that_arrives_after_the_claim_was_taken_over_changes_nothing(tmp_path):
    """A's refund is made but its answer is held until after its lease lapsed and B took the refund over
    and recorded the same refund. A's answer finds another token: it is kept as a stale attempt, never
    written over B's state."""
    async with world_at(tmp_path) as world:
        _first, second, slow, refund_id = await an_attempt_outliving_its_lease(world, "hold")
        assert await second.process_due() == 1
        taken_over = await world.row(refund_id)
        assert taken_over.status == "succeeded" and taken_over.claim_token == 2
        world.stripe.held.pop().gate.set()
        view = await slow
        assert view.status == "succeeded"
        row = await world.row(refund_id)
        assert (row.claim_token, row.attempts, row.updated_at) == (2, taken_over.attempts, taken_over.updated_at)
        assert (await world.actions(refund_id)).count("refund.stale_attempt") == 1
        assert len(world.made(world.stripe, refund_id)) == 1


async def test_a_webhook_does_not_end_another_attempts_claim(tmp_path):
    async with world_at(tmp_path) as world:
        service = world.service()
        world.stripe.faults.append("hold")
        held = asyncio.create_task(service.create_refund(ACTOR, refund("stripe:ch_1", 700)))
        await world.stripe.arrived.wait()
        [event] = world.stripe.events
        await service.apply_event(event)
        row = await world.row(event.our_refund_id)
        assert row.status == "succeeded" and row.claimed_until is not None  # the attempt still holds its claim
        world.stripe.held.pop().gate.set()
        view = await held
        assert view.status == "succeeded" and (await world.row(event.our_refund_id)).claimed_until is None


# ------------------------------------------------------------------ durable commits


async def test_sqlite_commits_are_durable_before_the_processor_is_called(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'durable.sqlite3'}")
    try:
        async with db.read() as conn:
            level = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
        assert level == 2  # FULL: a commit has reached the disk when it returns (NORMAL = 1 may lose it)
    finally:
        await db.dispose()
