"""Adyen-specific webhook behaviour: payments made known, late failures, batches."""

from __future__ import annotations

import pytest

from tests.fakes.common import PaymentSeed
from tests.webhooks import signing
from tests.webhooks.world import PAYMENT_IDS

pytestmark = pytest.mark.anyio

PSP = PAYMENT_IDS["adyen"]


async def test_an_authorisation_makes_the_payment_known_for_lookup_and_refund(world):
    world.fakes["adyen"].add_payment(PaymentSeed(id=PSP, amount_minor=8000, currency="EUR"))
    unknown = await world.client.call_tool("lookup_transaction", {"transaction_id": f"adyen:{PSP}"})
    assert unknown.is_error and "[transaction_not_found]" in unknown.content[0].text
    item = signing.adyen_item("AUTHORISATION", PSP, value=8000, currency="EUR", merchant_reference="order-77",
                              additional={"shopperEmail": "ana@example.com"})
    response = await world.deliver_adyen(item)
    assert response.status_code == 200 and response.text == "[accepted]"
    transaction = await world.tool("lookup_transaction", {"transaction_id": f"adyen:{PSP}"})
    assert (transaction["amount_minor"], transaction["currency"], transaction["refundable_minor"], transaction["customer_ref"]) == (
        8000, "EUR", 8000, "ana@example.com",
    )
    refund = await world.refund(f"adyen:{PSP}", 3000)
    assert refund["status"] == "pending"
    assert world.fakes["adyen"].state()["refund_count"] == 1


async def test_a_refund_failed_for_a_refund_nobody_knows_is_acknowledged_and_changes_nothing(world):
    before = await world.snapshot()
    response = await world.deliver_adyen(
        signing.adyen_item("REFUND_FAILED", "UNKNOWNREFUND0001", original_reference="UNKNOWNPAYMENT01", reason="Refund Failed")
    )
    assert response.status_code == 200 and response.text == "[accepted]"
    after = await world.snapshot()
    assert after["refunds"] == before["refunds"] and after["transactions"] == before["transactions"]
    assert (await world.audit_actions())[-1] == ("webhook.unknown_refund", "ignored", None)


async def test_a_failed_capture_makes_the_payment_non_refundable(world):
    transaction_id = await world.seed("adyen")
    response = await world.deliver_adyen(signing.adyen_item("CAPTURE", "CAPTUREPSP000001", success=False, value=10000, original_reference=PSP))
    assert response.status_code == 200
    refused = await world.client.call_tool("create_refund", {"transaction_id": transaction_id, "reason": "service_issue", "amount_minor": 100})
    assert refused.is_error and "[not_refundable]" in refused.content[0].text


async def test_every_item_of_a_batch_is_applied_and_the_batch_is_acknowledged_once(world):
    transaction_id = await world.seed("adyen")
    refund = await world.refund(transaction_id, 2500)
    items = [
        signing.adyen_item("REPORT_AVAILABLE", "REPORT0000000001"),
        signing.adyen_item("REFUND", refund["processor_refund_id"], value=2500, original_reference=PSP, merchant_reference=refund["refund_id"]),
    ]
    response = await world.deliver_adyen(*items)
    assert response.text == "[accepted]"
    assert await world.status(refund["refund_id"]) == "succeeded"
    actions = [action for action, _, _ in await world.audit_actions()]
    assert "webhook.ignored" in actions


async def test_a_refund_refused_then_reported_again_as_success_is_succeeded_and_counts_as_refunded(world):
    # Adyen: a later success=true for the same pspReference and event code supersedes the earlier success=false.
    transaction_id = await world.seed("adyen")
    refund = await world.refund(transaction_id, 2500)
    psp = refund["processor_refund_id"]
    refused = signing.adyen_item("REFUND", psp, success=False, value=2500, original_reference=PSP,
                                 merchant_reference=refund["refund_id"], reason="Insufficient balance on payment")
    assert (await world.deliver_adyen(refused)).status_code == 200
    assert await world.status(refund["refund_id"]) == "failed"
    view = await world.tool("get_refund_status", {"refund_id": refund["refund_id"], "refresh": False})
    assert "Insufficient balance" in view["failure_reason"]
    assert await world.refundable(transaction_id) == 10000  # released while it is failed

    accepted = signing.adyen_item("REFUND", psp, success=True, value=2500, original_reference=PSP, merchant_reference=refund["refund_id"])
    assert (await world.deliver_adyen(accepted)).status_code == 200

    view = await world.tool("get_refund_status", {"refund_id": refund["refund_id"], "refresh": False})
    assert (view["status"], view["failure_reason"]) == ("succeeded", None)
    transaction = await world.tool("lookup_transaction", {"transaction_id": transaction_id})
    assert (transaction["refunded_minor"], transaction["refundable_minor"]) == (2500, 7500)
    actions = await world.audit_actions(refund["refund_id"])
    assert ("refund.failure_superseded", "succeeded", None) in actions
    # A replay of either notification changes nothing.
    before = await world.snapshot()
    for item in (refused, accepted):
        assert (await world.deliver_adyen(item)).status_code == 200
    assert await world.snapshot() == before


async def test_a_scheme_failure_is_not_superseded_by_a_late_refund_success(world):
    # REFUND_FAILED (the scheme rejected it after Adyen accepted) is later news than any REFUND success=true.
    transaction_id = await world.seed("adyen")
    refund = await world.refund(transaction_id, 2500)
    psp = refund["processor_refund_id"]
    failed = signing.adyen_item("REFUND_FAILED", psp, value=2500, original_reference=PSP, merchant_reference=refund["refund_id"])
    accepted = signing.adyen_item("REFUND", psp, success=True, value=2500, original_reference=PSP, merchant_reference=refund["refund_id"])
    for item in (failed, accepted):  # delivered out of order
        assert (await world.deliver_adyen(item)).status_code == 200
    assert await world.status(refund["refund_id"]) == "failed"
    assert await world.refundable(transaction_id) == 10000
    assert "refund.failure_superseded" not in [action for action, _, _ in await world.audit_actions(refund["refund_id"])]


async def test_an_event_date_that_cannot_be_stored_is_dropped_rather_than_failing_the_delivery(world):
    item = signing.adyen_item("AUTHORISATION", "PSPYEARONE000001", value=500)
    item["eventDate"] = "0001-01-01T00:00:00+01:00"  # not covered by the HMAC
    response = await world.deliver_adyen(item)
    assert response.status_code == 200
    transaction = await world.tool("lookup_transaction", {"transaction_id": "adyen:PSPYEARONE000001"})
    assert transaction["captured_minor"] == 500 and transaction["created_at"] is None
