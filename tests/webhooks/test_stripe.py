"""Stripe-specific webhook behaviour through POST /webhooks/stripe."""

from __future__ import annotations

import time

import pytest

from tests.fakes.common import PaymentSeed
from tests.webhooks.world import PAYMENT_IDS

pytestmark = pytest.mark.anyio


async def _pending_refund(world):
    transaction_id = await world.seed("stripe", refund_outcome="pending")
    return await world.refund(transaction_id, 2500)


@pytest.mark.parametrize("age", [301, 3600, -301])
async def test_a_stale_or_future_timestamp_is_refused_and_changes_nothing(world, age):
    refund = await _pending_refund(world)
    world.fakes["stripe"].set_refund_status(refund["processor_refund_id"], "succeeded")
    delivery = world.stripe_delivery(
        "refund.updated", world.fake_refund("stripe", refund["processor_refund_id"]), timestamp=int(time.time()) - age
    )
    before = await world.snapshot()
    response = await world.send("stripe", delivery)
    assert response.status_code == 401
    assert "300 s" in response.json()["message"]
    assert await world.snapshot() == before


async def test_a_charge_refunded_event_updates_each_listed_refund_of_ours(world):
    refund = await _pending_refund(world)
    fake = world.fakes["stripe"]
    fake.set_refund_status(refund["processor_refund_id"], "succeeded")
    charge = fake.charge_object(fake.payments[PAYMENT_IDS["stripe"]])
    response = await world.send("stripe", world.stripe_delivery("charge.refunded", charge))
    assert response.json()["outcomes"] == ["applied"]
    assert await world.status(refund["refund_id"]) == "succeeded"


async def test_our_refund_is_recognised_by_its_metadata_before_its_stripe_id_is_known(world):
    transaction_id = await world.seed("stripe", refund_outcome="pending")
    fake = world.fakes["stripe"]
    fake.faults.next_timeout_after_commit = 1  # Stripe made the refund; its answer never arrived
    queued = await world.refund(transaction_id, 2500)
    assert queued["status"] == "queued" and queued["processor_refund_id"] is None
    [stripe_refund] = fake.refunds.values()
    fake.set_refund_status(stripe_refund.id, "succeeded")
    response = await world.send("stripe", world.stripe_delivery("refund.updated", fake.refund_object(stripe_refund)))
    assert response.json()["outcomes"] == ["applied"]
    view = await world.tool("get_refund_status", {"refund_id": queued["refund_id"], "refresh": False})
    assert (view["status"], view["processor_refund_id"]) == ("succeeded", stripe_refund.id)
    fake.release_stalled()


async def test_a_dashboard_refund_on_a_payment_intent_is_matched_to_the_charge_the_agent_looked_up(world):
    fake = world.fakes["stripe"]
    ids = fake.add_payment(PaymentSeed(amount_minor=10000, currency="USD", kind="payment_intent"))
    by_charge = f"stripe:{ids['charge']}"
    assert (await world.tool("lookup_transaction", {"transaction_id": by_charge}))["refundable_minor"] == 10000
    obj = fake.dashboard_refund(ids["payment_intent"], 4000, status="succeeded")
    assert obj["payment_intent"] == ids["payment_intent"]
    response = await world.send("stripe", world.stripe_delivery("refund.created", obj))
    assert response.json()["outcomes"] == ["external"]
    transaction = await world.tool("lookup_transaction", {"transaction_id": by_charge})
    assert transaction["refundable_minor"] == 6000
    assert [r["origin"] for r in transaction["refunds"]] == ["external"]


async def test_an_event_of_another_type_is_acknowledged_once_and_ignored(world):
    delivery = world.stripe_delivery("customer.created", {"id": "cus_1", "object": "customer"})
    first = await world.send("stripe", delivery)
    again = await world.send("stripe", delivery)
    assert (first.json()["outcomes"], again.json()["outcomes"]) == (["ignored"], ["replay"])
