"""Square-specific webhook behaviour: Square refunds carry no refund-mcp id."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from refund_mcp.store import tables

pytestmark = pytest.mark.anyio


async def test_an_event_for_a_refund_whose_answer_was_lost_is_deferred_until_ours_knows_its_id(world):
    """A timeout after Square made the refund leaves ours queued with no Square id. An event about
    that refund must neither become a second (external) refund nor be dropped: it is refused with
    503 so Square delivers it again, and then it matches ours."""
    transaction_id = await world.seed("square")
    fake = world.fakes["square"]
    fake.faults.next_timeout_after_commit = 1
    queued = await world.refund(transaction_id, 2500)
    assert queued["status"] == "queued"
    [square_refund] = fake.refunds.values()
    delivery = world.square_delivery("refund.created", fake.refund_object(square_refund))
    before = await world.snapshot()
    deferred = await world.send("square", delivery)
    assert deferred.status_code == 503 and deferred.json()["outcomes"] == ["deferred"]
    after = await world.snapshot()
    assert (after["refunds"], after["webhook_events"]) == (before["refunds"], before["webhook_events"])

    fake.release_stalled()
    real_clock = world.app.service.clock
    world.app.service.clock = lambda: real_clock() + timedelta(hours=1)
    assert await world.app.service.process_due() == 1  # the retry with the same key returns Square's refund
    world.app.service.clock = real_clock

    redelivered = await world.send("square", delivery)
    assert redelivered.status_code == 200 and redelivered.json()["outcomes"] == ["applied"]
    async with world.app.db.read() as conn:
        rows = (await conn.execute(select(tables.refunds.c.id, tables.refunds.c.origin, tables.refunds.c.processor_refund_id))).all()
    assert [tuple(row) for row in rows] == [(queued["refund_id"], "agent", square_refund.id)]


async def test_an_unrelated_refund_of_another_amount_is_not_deferred(world):
    transaction_id = await world.seed("square")
    fake = world.fakes["square"]
    fake.faults.next_timeout_after_commit = 1
    await world.refund(transaction_id, 2500)
    other = fake.dashboard_refund(next(iter(fake.payments)), 1200)
    response = await world.send("square", world.square_delivery("refund.created", other))
    assert response.json()["outcomes"] == ["external"]
    fake.release_stalled()
