"""The verifiers against the processors' published examples and an independent signer, and the
parsers against the processors' own example payloads (shared specs)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from refund_mcp.domain.models import RefundStatus
from refund_mcp.webhooks.adyen import parse_adyen, verify_adyen
from refund_mcp.webhooks.errors import WebhookMalformed, WebhookSignatureError
from refund_mcp.webhooks.events import IgnoredEvent, PaymentEvent, RefundEvent
from refund_mcp.webhooks.paypal import parse_paypal, signature_fields
from refund_mcp.webhooks.square import parse_square, verify_square
from refund_mcp.webhooks.stripe import parse_stripe, verify_stripe
from tests.processors.specs import spec_path
from tests.webhooks import signing

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "whsec_unit_test_secret"

# Adyen's published HMAC test vector (docs: verify-hmac-signatures, "test the HMAC verification").
ADYEN_DOC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
ADYEN_DOC_ITEM = {
    "additionalData": {"hmacSignature": "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0="},
    "amount": {"value": 1130, "currency": "EUR"},
    "pspReference": "7914073381342284",
    "eventCode": "AUTHORISATION",
    "eventDate": "2019-05-06T17:15:34.121+02:00",
    "merchantAccountCode": "TestMerchant",
    "merchantReference": "TestPayment-1407325143704",
    "operations": ["CANCEL", "CAPTURE", "REFUND"],
    "paymentMethod": "visa",
    "success": "true",
}

# Square's published example (square-python-sdk tests, webhooks_helper).
SQUARE_DOC_BODY = (
    b'{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f",'
    b'"created_at":"2022-07-13T20:30:59.037339943Z","data":{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}'
)
SQUARE_DOC_SIGNATURE = "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="
SQUARE_DOC_KEY = "Ibxx_5AKakO-3qeNVR61Dw"
SQUARE_DOC_URL = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9"


def _stripe_header(body: bytes, timestamp: int, secret: str = SECRET) -> dict[str, str]:
    return {"Stripe-Signature": signing.stripe_signature(body, secret, timestamp)}


# --------------------------------------------------------------------------- Stripe


def test_a_stripe_signature_within_the_tolerance_verifies_on_either_side_of_now():
    body = b'{"id":"evt_1"}'
    for offset in (-300, 0, 300):
        verify_stripe(body, _stripe_header(body, int(NOW.timestamp()) + offset), SECRET, NOW)


@pytest.mark.parametrize("offset", [-301, 301, -86400])
def test_a_stripe_timestamp_outside_300_seconds_is_refused(offset):
    body = b'{"id":"evt_1"}'
    with pytest.raises(WebhookSignatureError, match="300 s"):
        verify_stripe(body, _stripe_header(body, int(NOW.timestamp()) + offset), SECRET, NOW)


def test_any_matching_v1_signature_is_enough_while_a_secret_is_rolled():
    body = b'{"id":"evt_1"}'
    timestamp = int(NOW.timestamp())
    header = f"t={timestamp},v1={signing.stripe_v1(body, 'whsec_old', timestamp)},v1={signing.stripe_v1(body, SECRET, timestamp)}"
    verify_stripe(body, {"stripe-signature": header}, SECRET, NOW)


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", "t=notanumber,v1=abc", "t=1772366400", "t=1772366400,v0=abc", "t=1772366400,v1=\u00e9\u00e9", "garbage"],
)
def test_a_malformed_stripe_signature_header_is_a_signature_error(header):
    with pytest.raises(WebhookSignatureError):
        verify_stripe(b"{}", {"Stripe-Signature": header}, SECRET, NOW)


def test_the_stripe_fixture_refund_parses_into_a_refund_event_and_other_events_are_ignored():
    fixtures = json.loads(spec_path("stripe-fixtures-refund-charge.json").read_text())["resources"]
    refund = fixtures["refund"]
    event = {**fixtures["event"], "type": "refund.updated", "data": {"object": refund}}
    [parsed] = parse_stripe(json.dumps(event).encode())
    assert isinstance(parsed, RefundEvent)
    assert (parsed.processor_refund_id, parsed.status, parsed.amount_minor, parsed.currency, parsed.transaction_id) == (
        refund["id"], RefundStatus.SUCCEEDED, 100, "USD", refund["charge"],
    )
    [ignored] = parse_stripe(json.dumps(fixtures["event"]).encode())
    assert ignored == IgnoredEvent("stripe", fixtures["event"]["id"], "plan.created")


def test_a_stripe_charge_refunded_event_yields_one_event_per_listed_refund():
    fixtures = json.loads(spec_path("stripe-fixtures-refund-charge.json").read_text())["resources"]
    refunds = [{**fixtures["refund"], "id": f"re_{n}", "metadata": {"refund_mcp_id": f"rf_{n}"}} for n in range(2)]
    charge = {**fixtures["charge"], "refunds": {**fixtures["charge"]["refunds"], "data": refunds}}
    events = parse_stripe(json.dumps({**fixtures["event"], "type": "charge.refunded", "data": {"object": charge}}).encode())
    assert [(e.event_id, e.processor_refund_id, e.our_refund_id) for e in events] == [  # type: ignore[union-attr]
        (f"{fixtures['event']['id']}:re_0", "re_0", "rf_0"),
        (f"{fixtures['event']['id']}:re_1", "re_1", "rf_1"),
    ]


# --------------------------------------------------------------------------- Adyen


def test_adyens_published_hmac_example_verifies():
    body = json.dumps(signing.adyen_notification(ADYEN_DOC_ITEM)).encode()
    verify_adyen(body, {}, ADYEN_DOC_KEY)
    [payment] = parse_adyen(body)
    assert isinstance(payment, PaymentEvent)
    assert (payment.transaction_id, payment.amount_minor, payment.currency, payment.captured_minor) == ("7914073381342284", 1130, "EUR", 1130)


@pytest.mark.parametrize("field", ["pspReference", "merchantReference", "eventCode", "success", "amount"])
def test_changing_any_signed_adyen_field_breaks_the_signature(field):
    item = json.loads(json.dumps(ADYEN_DOC_ITEM))
    if field == "amount":
        item["amount"]["value"] = 1131
    elif field == "success":
        item["success"] = "false"
    else:
        item[field] = item[field] + "X"
    with pytest.raises(WebhookSignatureError):
        verify_adyen(json.dumps(signing.adyen_notification(item)).encode(), {}, ADYEN_DOC_KEY)


def test_one_badly_signed_item_refuses_the_whole_adyen_delivery():
    good = signing.adyen_signed(signing.adyen_item("REFUND", "PSPGOOD0000000001"), ADYEN_DOC_KEY)
    bad = signing.adyen_signed(signing.adyen_item("REFUND", "PSPBAD00000000001"), "11" * 32)
    with pytest.raises(WebhookSignatureError):
        verify_adyen(json.dumps(signing.adyen_notification(good, bad)).encode(), {}, ADYEN_DOC_KEY)


def test_adyens_example_notifications_parse_as_documented():
    spec = json.loads(spec_path("adyen-webhooks-v1-refunds.json").read_text())
    examples = {name.split("-", 2)[1]: example["value"] for name, example in spec["components"]["examples"].items()}
    parsed = {code: parse_adyen(json.dumps(body).encode())[0] for code, body in examples.items()}
    assert isinstance(parsed["AUTHORISATION"], PaymentEvent) and parsed["AUTHORISATION"].captured_minor == 1000
    assert isinstance(parsed["CAPTURE"], PaymentEvent) and parsed["CAPTURE"].transaction_id == "9913140798220028"
    cancel = parsed["CANCEL_OR_REFUND"]  # modification.action=cancel: cancelled before capture
    assert isinstance(cancel, PaymentEvent) and not cancel.refundable
    refused = parsed["REFUND"]  # success=false: "Transaction hasn't been captured"
    assert isinstance(refused, RefundEvent) and refused.status is RefundStatus.FAILED and "captured" in (refused.failure_reason or "")
    for late in ("REFUND_FAILED", "REFUNDED_REVERSED"):
        event = parsed[late]
        assert isinstance(event, RefundEvent) and event.status is RefundStatus.FAILED and event.transaction_id == "9913140798220028"
    ids = {event.event_id for event in parsed.values()}
    assert len(ids) == len(parsed)


def test_an_adyen_event_id_depends_on_psp_reference_event_code_and_success_only():
    first = signing.adyen_item("REFUND", "PSP0000000000001", value=100)
    again = {**first, "eventDate": "2030-01-01T00:00:00Z", "reason": "retried"}
    flipped = {**first, "success": "false"}
    ids = [parse_adyen(json.dumps(signing.adyen_notification(item)).encode())[0].event_id for item in (first, again, flipped)]
    assert ids[0] == ids[1] != ids[2]


# --------------------------------------------------------------------------- Square


def test_squares_published_signature_example_verifies_and_parses_as_ignored():
    verify_square(SQUARE_DOC_BODY, {"X-Square-HmacSha256-Signature": SQUARE_DOC_SIGNATURE}, SQUARE_DOC_KEY, notification_url=SQUARE_DOC_URL)
    assert parse_square(SQUARE_DOC_BODY) == [IgnoredEvent("square", "ac3ac95b-f97d-458c-a6e6-18981597e05f", "webhooks.test_notification")]


@pytest.mark.parametrize("url", [SQUARE_DOC_URL + "/", SQUARE_DOC_URL.replace("https", "http"), "https://webhook.site/other"])
def test_a_square_signature_for_another_notification_url_is_refused(url):
    with pytest.raises(WebhookSignatureError):
        verify_square(SQUARE_DOC_BODY, {"x-square-hmacsha256-signature": SQUARE_DOC_SIGNATURE}, SQUARE_DOC_KEY, notification_url=url)


# --------------------------------------------------------------------------- PayPal


def _paypal_headers(**changes: str) -> dict[str, str]:
    headers = signing.paypal_headers(b"{}", "WEBHOOK1")
    headers.update(changes)
    return headers


@pytest.mark.parametrize(
    "cert_url",
    [
        "http://api.paypal.com/v1/notifications/certs/CERT-1",
        "https://api.paypal.com.evil.example/certs/CERT-1",
        "https://evilpaypal.com/certs/CERT-1",
        "https://example.com/?u=https://api.paypal.com/",
    ],
)
def test_a_paypal_cert_url_off_paypal_com_is_refused_before_paypal_is_asked(cert_url):
    with pytest.raises(WebhookSignatureError, match="CERT-URL"):
        signature_fields(_paypal_headers(**{"PAYPAL-CERT-URL": cert_url}))


@pytest.mark.parametrize("header", ["PAYPAL-AUTH-ALGO", "PAYPAL-CERT-URL", "PAYPAL-TRANSMISSION-ID", "PAYPAL-TRANSMISSION-SIG", "PAYPAL-TRANSMISSION-TIME"])
def test_every_paypal_transmission_header_is_required(header):
    headers = {key: value for key, value in _paypal_headers().items() if key != header}
    with pytest.raises(WebhookSignatureError, match=header):
        signature_fields(headers)


def test_a_paypal_event_whose_resource_is_not_a_refund_is_malformed():
    body = json.dumps({"id": "WH-1", "event_type": "PAYMENT.CAPTURE.REFUNDED", "resource": {"id": "R1"}}).encode()
    with pytest.raises(WebhookMalformed):
        parse_paypal(body)


def test_the_hand_written_rsa_signature_is_standard_pkcs1_v1_5():
    """Cross-check of tests/webhooks/signing.py against a crypto library, where one is installed."""
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    public = rsa.RSAPublicNumbers(signing.PAYPAL_TEST_KEY_E, signing.PAYPAL_TEST_KEY_N).public_key()
    message = b"69cd13f0|2026-01-02T10:00:00Z|WEBHOOK1|12345"
    public.verify(signing.rsa_sha256_sign(message), message, padding.PKCS1v15(), hashes.SHA256())
