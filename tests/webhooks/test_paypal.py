"""PayPal-specific webhook behaviour: verification through the fake's verify-webhook-signature."""

from __future__ import annotations

import json

import pytest

from tests.processors.specs import assert_valid, load_spec
from tests.webhooks import signing
from tests.webhooks.world import PAYMENT_IDS, PAYPAL_WEBHOOK_ID

pytestmark = pytest.mark.anyio


async def _pending_refund(world):
    transaction_id = await world.seed("paypal", refund_outcome="PENDING")
    return await world.refund(transaction_id, 2500)


def _completed(world, refund):
    world.fakes["paypal"].set_refund_status(refund["processor_refund_id"], "COMPLETED")
    return world.fake_refund("paypal", refund["processor_refund_id"])


async def test_paypal_is_asked_with_the_webhook_id_and_the_event_exactly_as_delivered(world):
    refund = await _pending_refund(world)
    # Spacing, escapes and a trailing zero that a parse-and-dump round trip would change.
    event = signing.paypal_event("WH-VERBATIM-1", "PAYMENT.CAPTURE.REFUNDED", _completed(world, refund))
    body = json.dumps(event, indent=3, ensure_ascii=True).replace('"1.0"', '"1.0" ').encode()
    body = body.replace(b'"summary": "', b'"summary": "caf\\u00e9 \\/ ')
    response = await world.post("paypal", body, signing.paypal_headers(body, PAYPAL_WEBHOOK_ID))
    assert response.status_code == 200, response.text
    assert await world.status(refund["refund_id"]) == "succeeded"
    sent = world.fakes["paypal"].verify_requests[-1]
    assert sent["webhook_id"] == PAYPAL_WEBHOOK_ID and sent["transmission_id"] == "69cd13f0-d67a-11e5-baa3-778b53f4ae55"


async def test_the_verification_request_matches_paypals_schema(world):
    refund = await _pending_refund(world)
    await world.send("paypal", world.paypal_delivery("PAYMENT.CAPTURE.REFUNDED", _completed(world, refund)))
    validator = load_spec("paypal-webhooks-v1-verify.json").schema_validator("verify_webhook_signature")
    assert_valid(validator, world.fakes["paypal"].verify_requests[-1], "verify-webhook-signature request")


async def test_the_fake_paypal_says_failure_for_a_delivery_signed_for_another_webhook(world):
    refund = await _pending_refund(world)
    body, _ = world.paypal_delivery("PAYMENT.CAPTURE.REFUNDED", _completed(world, refund))
    response = await world.post("paypal", body, signing.paypal_headers(body, "SOMEONEELSESWEBHOOK"))
    assert response.status_code == 401
    assert len(world.fakes["paypal"].verify_requests) == 1  # PayPal was asked, and said FAILURE


async def test_when_paypal_cannot_verify_the_delivery_is_refused_with_503_and_succeeds_later(world):
    refund = await _pending_refund(world)
    delivery = world.paypal_delivery("PAYMENT.CAPTURE.REFUNDED", _completed(world, refund))
    world.fakes["paypal"].faults.next_503 = 1
    before = await world.snapshot()
    refused = await world.send("paypal", delivery)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert await world.snapshot() == before
    assert (await world.send("paypal", delivery)).status_code == 200
    assert await world.status(refund["refund_id"]) == "succeeded"


async def test_a_cert_url_off_paypal_com_is_refused_without_asking_paypal(world):
    refund = await _pending_refund(world)
    body, _ = world.paypal_delivery("PAYMENT.CAPTURE.REFUNDED", _completed(world, refund))
    headers = signing.paypal_headers(body, PAYPAL_WEBHOOK_ID, cert_url="https://attacker.example/cert.pem")
    response = await world.post("paypal", body, headers)
    assert response.status_code == 401
    assert world.fakes["paypal"].verify_requests == []


async def test_a_capture_reversed_by_paypal_is_recorded_as_an_external_refund(world):
    transaction_id = await world.seed("paypal")
    assert await world.refundable(transaction_id) == 10000  # the capture is on record once looked up
    reversal = world.fakes["paypal"].dashboard_refund(PAYMENT_IDS["paypal"], 10000)
    response = await world.send("paypal", world.paypal_delivery("PAYMENT.CAPTURE.REVERSED", reversal))
    assert response.json()["outcomes"] == ["external"]
    assert await world.refundable(transaction_id) == 0
