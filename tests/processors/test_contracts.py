"""Contract tests: what the adapters send and what the fakes answer, checked against the
processors' official OpenAPI specs (PayPal, Adyen, Square) and Stripe's own fixture objects.

Each scenario drives an adapter against its fake through a recording transport; every exchange
whose path the spec knows is validated: the JSON request body against the operation's
requestBody schema, the JSON response against the schema of its status code.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import pytest
from pydantic import SecretStr

from refund_mcp.domain.errors import RefundError
from refund_mcp.domain.models import RefundReason, RefundStatus
from refund_mcp.processors import stripe as stripe_adapter
from refund_mcp.processors.adyen import AdyenProcessor
from refund_mcp.processors.paypal import PayPalProcessor
from refund_mcp.processors.square import SquareProcessor
from refund_mcp.processors.stripe import StripeProcessor
from tests.fakes.adyen import AdyenFake
from tests.fakes.common import Exchange, PaymentSeed, client_for
from tests.fakes.paypal import PayPalFake
from tests.fakes.square import SquareFake
from tests.fakes.stripe import StripeFake
from tests.processors.helpers import refund_request
from tests.processors.specs import Spec, assert_valid, load_spec, spec_path

pytestmark = pytest.mark.anyio


async def _attempt(call: Any) -> None:
    """Run an adapter call whose refusal is part of the scenario."""
    with contextlib.suppress(RefundError):
        await call


def validate_exchanges(
    spec: Spec, exchanges: Iterable[Exchange], *, strip_prefix: str = "", error_status_uses: str | None = None
) -> set[tuple[str, str, str]]:
    """Validate every exchange the spec describes; returns (template, method, status) checked.

    `error_status_uses`: Square documents only the 200 answer, and its errors come in that same
    envelope (`{"errors": [...]}`), so non-2xx answers are validated against that status."""
    checked: set[tuple[str, str, str]] = set()
    for exchange in exchanges:
        template = spec.template_for(exchange.path, strip_prefix=strip_prefix)
        if template is None:
            continue
        method = exchange.request.method
        where = f"{method} {exchange.path}"
        if method == "POST":
            assert_valid(spec.request_validator(template, method), exchange.request_json(), f"request body of {where}")
            checked.add((template, method, "request"))
        if exchange.response is None:
            continue
        status = str(exchange.response.status_code)
        if error_status_uses and not exchange.response.is_success:
            status = error_status_uses
        validator = spec.response_validator(template, method, status)
        if validator is None:
            continue
        assert_valid(validator, exchange.response_json(), f"{exchange.response.status_code} answer to {where}")
        checked.add((template, method, str(exchange.response.status_code)))
    return checked


# ---------------------------------------------------------------------------- PayPal


async def test_paypal_requests_and_the_fakes_answers_match_the_payments_v2_spec() -> None:
    spec = load_spec("paypal-payments-v2.json")
    fake = PayPalFake()
    http, transport = client_for(fake)
    processor = PayPalProcessor(client_id=fake.client_id, client_secret=SecretStr(fake.client_secret), http=http)
    usd = str(fake.add_payment(PaymentSeed(amount_minor=10_000, currency="USD", description="INV-1"))["id"])
    jpy = str(fake.add_payment(PaymentSeed(amount_minor=5000, currency="JPY"))["id"])
    kwd = str(fake.add_payment(PaymentSeed(amount_minor=5000, currency="KWD", refund_outcome="PENDING"))["id"])

    await processor.lookup_transaction(usd)
    refund = await processor.create_refund(
        refund_request(usd, 1050, "USD", reason=RefundReason.PRODUCT_DEFECTIVE, note="two\nlines")
    )
    await processor.get_refund(refund.processor_refund_id)
    await processor.create_refund(refund_request(jpy, 1500, "JPY"))
    await processor.create_refund(refund_request(kwd, 1250, "KWD"))
    await _attempt(processor.create_refund(refund_request(usd, 9_000, "USD")))  # 422 REFUND_AMOUNT_EXCEEDED
    await _attempt(processor.create_refund(refund_request(usd, 100, "EUR")))  # 422 currency mismatch
    await processor.create_refund(refund_request(jpy, 3500, "JPY"))
    await _attempt(processor.create_refund(refund_request(jpy, 1, "JPY")))  # 422 CAPTURE_FULLY_REFUNDED
    await _attempt(processor.create_refund(refund_request("UNKNOWNCAPTURE1", 100)))  # 404
    await _attempt(processor.get_refund("UNKNOWNREFUND1"))  # 404
    await _attempt(processor.lookup_transaction("UNKNOWNCAPTURE1"))  # 404
    fake.reject_all_tokens = True
    await _attempt(processor.lookup_transaction(usd))  # 401

    checked = validate_exchanges(spec, transport.exchanges)
    await http.aclose()
    refund_op = "/v2/payments/captures/{capture_id}/refund"
    assert {
        (refund_op, "POST", "request"),
        (refund_op, "POST", "201"),
        (refund_op, "POST", "422"),
        (refund_op, "POST", "404"),
        ("/v2/payments/captures/{capture_id}", "GET", "200"),
        ("/v2/payments/captures/{capture_id}", "GET", "404"),
        ("/v2/payments/captures/{capture_id}", "GET", "401"),
        ("/v2/payments/refunds/{refund_id}", "GET", "200"),
        ("/v2/payments/refunds/{refund_id}", "GET", "404"),
    } <= checked


# ---------------------------------------------------------------------------- Adyen


async def test_adyen_requests_and_the_fakes_answers_match_the_checkout_v71_spec() -> None:
    spec = load_spec("adyen-checkout-v71-refunds.json")
    fake = AdyenFake()
    http, transport = client_for(fake)
    processor = AdyenProcessor(
        api_key=SecretStr(fake.api_key),
        merchant_account=fake.merchant_account,
        api_base="https://adyen.test/v71",
        http=http,
    )
    psp = str(fake.add_payment(PaymentSeed(amount_minor=10_000, currency="EUR"))["id"])
    for reason in RefundReason:
        await processor.create_refund(refund_request(psp, 100, "EUR", reason=reason))
    first = refund_request(psp, 100, "EUR")
    await processor.create_refund(first)
    await _attempt(processor.create_refund(refund_request(psp, 200, "EUR", key=first.idempotency_key)))  # 422 704
    await _attempt(processor.create_refund(refund_request(psp, 0, "EUR")))  # 422 137
    fake.faults.next_500 = 1
    await _attempt(processor.create_refund(refund_request(psp, 100, "EUR")))  # 500
    wrong_account = AdyenProcessor(
        api_key=SecretStr(fake.api_key), merchant_account="Other", api_base="https://adyen.test/v71", http=http
    )
    await _attempt(wrong_account.create_refund(refund_request(psp, 100, "EUR")))  # 403
    wrong_key = AdyenProcessor(
        api_key=SecretStr("wrong"), merchant_account="M", api_base="https://adyen.test/v71", http=http
    )
    await _attempt(wrong_key.create_refund(refund_request(psp, 100, "EUR")))  # 401

    checked = validate_exchanges(spec, transport.exchanges, strip_prefix="/v71")
    await http.aclose()
    op = "/payments/{paymentPspReference}/refunds"
    assert {(op, "POST", s) for s in ("request", "201", "422", "500", "403", "401")} <= checked


# ---------------------------------------------------------------------------- Square


async def test_square_requests_and_the_fakes_answers_match_the_refunds_and_payments_spec() -> None:
    spec = load_spec("square-refunds-payments.json")
    fake = SquareFake()
    http, transport = client_for(fake)
    processor = SquareProcessor(access_token=SecretStr(fake.access_token), http=http)
    payment = str(
        fake.add_payment(
            PaymentSeed(amount_minor=5000, currency="USD", customer_email="a@example.com", description="n")
        )["id"]
    )
    await processor.lookup_transaction(payment)
    refund = await processor.create_refund(refund_request(payment, 1000, note="x" * 300))
    fake.set_refund_status(refund.processor_refund_id, "COMPLETED")
    await processor.get_refund(refund.processor_refund_id)
    await processor.lookup_transaction(payment)  # now with refunded_money and refund_ids
    assert await processor.find_refund(refund_request(payment, 1000)) is None  # reads the payment and its refunds
    await _attempt(processor.create_refund(refund_request(payment, 99_999)))  # 400 REFUND_AMOUNT_INVALID
    await _attempt(processor.create_refund(refund_request("NOPE", 100)))  # 404
    await _attempt(processor.get_refund("NOPE"))  # 404
    fake.faults.next_429 = 1
    await _attempt(processor.lookup_transaction(payment))  # 429

    checked = validate_exchanges(spec, transport.exchanges, error_status_uses="200")
    await http.aclose()
    assert {
        ("/v2/refunds", "POST", "request"),
        ("/v2/refunds", "POST", "200"),
        ("/v2/refunds", "POST", "400"),
        ("/v2/refunds", "POST", "404"),
        ("/v2/refunds/{refund_id}", "GET", "200"),
        ("/v2/refunds/{refund_id}", "GET", "404"),
        ("/v2/payments/{payment_id}", "GET", "200"),
        ("/v2/payments/{payment_id}", "GET", "429"),
    } <= checked


# ---------------------------------------------------------------------------- Stripe

# Keys Stripe adds to a refund only in some states (failure details, the action to take).
_STRIPE_CONDITIONAL_KEYS = {"failure_reason", "failure_balance_transaction", "next_action", "instructions_email"}


def _stripe_fixture(name: str) -> dict[str, Any]:
    return json.loads(spec_path("stripe-fixtures-refund-charge.json").read_text())["resources"][name]


def assert_same_shape(fixture: Any, ours: Any, where: str = "") -> None:
    """Every fixture key is present with the same JSON type (null matches anything); extra keys
    are allowed only where Stripe adds them conditionally."""
    if isinstance(fixture, dict) and isinstance(ours, dict):
        missing = set(fixture) - set(ours)
        assert not missing, f"{where or '/'}: the fake lacks Stripe's keys {sorted(missing)}"
        if not where:
            extra = set(ours) - set(fixture) - _STRIPE_CONDITIONAL_KEYS
            assert not extra, f"the fake adds keys Stripe's object lacks: {sorted(extra)}"
        for key, value in fixture.items():
            assert_same_shape(value, ours[key], f"{where}/{key}")
        return
    if fixture is None or ours is None:
        return
    if isinstance(fixture, list) and isinstance(ours, list):
        if fixture and ours:
            assert_same_shape(fixture[0], ours[0], f"{where}[0]")
        return
    kinds = (bool, int, float, str, list, dict)
    fixture_kind = next(k for k in kinds if isinstance(fixture, k))
    assert isinstance(ours, fixture_kind) and isinstance(ours, bool) == isinstance(fixture, bool), (
        f"{where}: Stripe has {type(fixture).__name__}, the fake {type(ours).__name__}"
    )


@pytest.mark.parametrize("outcome", ["succeeded", "pending", "requires_action", "failed"])
async def test_the_stripe_fakes_refunds_have_the_keys_and_types_of_stripes_fixture(outcome: str) -> None:
    fixture = _stripe_fixture("refund")
    fake = StripeFake()
    http, _ = client_for(fake)
    processor = StripeProcessor(api_key=SecretStr(fake.api_key), http=http)
    charge = str(fake.add_payment(PaymentSeed(amount_minor=1000, currency="USD", refund_outcome=outcome))["id"])
    refund = await processor.create_refund(refund_request(charge, 100))
    await http.aclose()
    assert_same_shape(fixture, fake.refund_object(fake.refunds[refund.processor_refund_id]))


async def test_the_stripe_fakes_refund_lists_have_stripes_list_envelope_and_refund_objects() -> None:
    fake = StripeFake()
    http, transport = client_for(fake)
    processor = StripeProcessor(api_key=SecretStr(fake.api_key), http=http)
    intent = str(fake.add_payment(PaymentSeed(amount_minor=1000, currency="USD", kind="payment_intent"))["id"])
    request = refund_request(intent, 100)
    await processor.create_refund(request)
    assert await processor.find_refund(request) is not None
    await http.aclose()
    listed = transport.to("/v1/refunds")[-1].response_json()
    assert set(listed) == {"object", "data", "has_more", "url"} and listed["object"] == "list"
    assert_same_shape(_stripe_fixture("refund"), listed["data"][0])


async def test_the_stripe_fakes_charges_and_payment_intents_have_the_keys_and_types_of_stripes_fixtures() -> None:
    fake = StripeFake()
    ids = fake.add_payment(
        PaymentSeed(amount_minor=1000, currency="USD", kind="payment_intent", customer_email="a@b.co")
    )
    payment = fake.payments[str(ids["id"])]
    assert_same_shape(_stripe_fixture("charge"), fake.charge_object(payment))
    assert_same_shape(_stripe_fixture("payment_intent"), fake.payment_intent_object(payment, expand_charge=False))
    expanded = fake.payment_intent_object(payment, expand_charge=True)
    assert_same_shape(_stripe_fixture("charge"), expanded["latest_charge"], "latest_charge")


def test_the_stripe_adapter_reads_stripes_own_fixture_objects() -> None:
    refund = stripe_adapter.refund_from_wire(
        stripe_adapter.StripeRefundResponse.model_validate(_stripe_fixture("refund")), request_id=None
    )
    assert (refund.processor_refund_id, refund.status, refund.amount_minor, refund.currency) == (
        "re_1Pgc72B7WZ01zgkWqPvrRrPE",
        RefundStatus.SUCCEEDED,
        100,
        "USD",
    )
    assert refund.transaction_id == "ch_1PgafuB7WZ01zgkWXYmPNZs8"
    assert refund.created_at is not None and refund.created_at.utcoffset() is not None

    charge = stripe_adapter.transaction_from_charge(
        stripe_adapter.StripeChargeResponse.model_validate(_stripe_fixture("charge"))
    )
    # The fixture charge is authorised but not captured: nothing can be refunded yet.
    assert (charge.amount_minor, charge.captured_minor, charge.refundable, charge.status) == (
        100,
        0,
        False,
        "succeeded",
    )
    assert charge.description == "My First Test Charge (created for API docs)"

    intent = stripe_adapter.transaction_from_payment_intent(
        stripe_adapter.StripePaymentIntentResponse.model_validate(_stripe_fixture("payment_intent"))
    )
    assert (intent.amount_minor, intent.refundable, intent.status) == (1099, False, "requires_payment_method")


# Documented parameters of POST /v1/refunds (stripe/params/_refund_create_params.py).
_STRIPE_REFUND_PARAMS = {
    "amount",
    "charge",
    "currency",
    "customer",
    "instructions_email",
    "origin",
    "payment_intent",
    "reason",
    "refund_application_fee",
    "reverse_transfer",
}


async def test_the_stripe_refund_request_uses_only_documented_parameters_and_values() -> None:
    fake = StripeFake()
    http, transport = client_for(fake)
    processor = StripeProcessor(api_key=SecretStr(fake.api_key), http=http)
    charge = str(fake.add_payment(PaymentSeed(amount_minor=10_000, currency="USD"))["id"])
    for reason in RefundReason:
        await processor.create_refund(refund_request(charge, 100, reason=reason, note="n"))
    await http.aclose()
    for exchange in transport.to("/v1/refunds"):
        params = parse_qsl(exchange.request.content.decode(), keep_blank_values=True)
        for key, value in params:
            if key.startswith("metadata["):
                assert key.endswith("]") and len(key) - 10 <= 40 and len(value) <= 500  # Stripe's metadata limits
            else:
                assert key in _STRIPE_REFUND_PARAMS, key
        form = dict(params)
        assert form["reason"] in {"duplicate", "fraudulent", "requested_by_customer"}
        assert form["amount"].isdigit()
        assert len(exchange.request.headers["Idempotency-Key"]) <= 255
