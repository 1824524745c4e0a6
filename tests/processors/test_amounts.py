"""Amounts on each processor's wire: its own decimals per currency, exact both ways, and an answer
that lacks a money field is an error, never 0."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from refund_mcp.domain.errors import (
    Delivery,
    ProcessorCallError,
    ProcessorError,
    ProcessorUnavailable,
    ValidationFailed,
)
from refund_mcp.processors import adyen, paypal, square, stripe
from refund_mcp.processors._amounts import AmountScale, IncompleteAnswer
from refund_mcp.processors.adyen import AdyenProcessor
from refund_mcp.processors.paypal import PayPalProcessor
from refund_mcp.processors.square import SquareProcessor
from refund_mcp.processors.stripe import StripeProcessor
from tests.fakes.adyen import AdyenFake
from tests.fakes.common import PaymentSeed, client_for
from tests.fakes.paypal import PayPalFake
from tests.fakes.square import SquareFake
from tests.fakes.stripe import StripeFake
from tests.processors.helpers import refund_request

pytestmark = pytest.mark.anyio

REFUSED = None

# Our amount (Babel minor units: USD 2, JPY 0, KWD 3, HUF 0, ISK 0, TWD 2, UGX 0, CLP 0) -> the wire.
INTEGER_WIRES: dict[str, dict[str, int | None]] = {
    "stripe": {"USD": 1234, "JPY": 1234, "KWD": REFUSED, "HUF": 123400, "ISK": 123400, "TWD": 1234, "UGX": 123400, "CLP": 1234},
    "adyen": {"USD": 1234, "JPY": 1234, "KWD": 1234, "HUF": 123400, "ISK": 123400, "TWD": 1234, "UGX": 1234, "CLP": 123400},
    "square": {"USD": 1234, "JPY": 1234, "KWD": 1234, "HUF": 123400, "ISK": 1234, "TWD": 1234, "UGX": 1234, "CLP": 1234},
}
SCALES: dict[str, AmountScale] = {"stripe": stripe.AMOUNTS, "adyen": adyen.AMOUNTS, "square": square.AMOUNTS}
PAYPAL_VALUES: dict[str, str | None] = {
    "USD": "12.34",
    "JPY": "1234",
    "KWD": "1.234",
    "HUF": "1234",
    "ISK": "1234",
    "TWD": REFUSED,  # TWD 12.34: PayPal takes no decimals for TWD
    "UGX": "1234",
    "CLP": "1234",
}


@pytest.mark.parametrize(
    ("processor", "currency"), [(p, c) for p, table in INTEGER_WIRES.items() for c in table]
)
def test_each_processor_gets_its_own_wire_amount_for_1234_minor_units(processor: str, currency: str) -> None:
    scale, expected = SCALES[processor], INTEGER_WIRES[processor][currency]
    if expected is REFUSED:
        with pytest.raises(ValidationFailed) as caught:
            scale.to_wire(1234, currency)
        assert str(caught.value).startswith("[validation_error]")
        return
    assert scale.to_wire(1234, currency) == expected
    assert scale.from_wire(expected, currency, what="amount") == 1234


@pytest.mark.parametrize("currency", list(PAYPAL_VALUES))
def test_paypal_gets_its_own_decimal_string_for_1234_minor_units(currency: str) -> None:
    expected = PAYPAL_VALUES[currency]
    if expected is REFUSED:
        with pytest.raises(ValidationFailed, match="0 decimals"):
            paypal.AMOUNTS.to_decimal(1234, currency)
        return
    assert paypal.AMOUNTS.to_decimal(1234, currency) == expected
    assert paypal.AMOUNTS.from_decimal(expected, currency, what="amount") == 1234


def test_stripe_three_decimal_amounts_must_end_in_zero_and_whole_units_pass_everywhere() -> None:
    assert stripe.AMOUNTS.to_wire(1230, "KWD") == 1230
    assert paypal.AMOUNTS.to_decimal(1200, "TWD") == "12"
    with pytest.raises(ValidationFailed, match="steps of 10"):
        stripe.AMOUNTS.to_wire(1, "BHD")


def test_an_amount_a_processor_answers_that_we_cannot_hold_exactly_is_never_rounded() -> None:
    with pytest.raises(IncompleteAnswer):
        stripe.AMOUNTS.from_wire(4010, "ISK", what="amount")  # a fractional króna from before 2023
    with pytest.raises(IncompleteAnswer):
        paypal.AMOUNTS.from_decimal("1.5", "JPY", what="amount")
    with pytest.raises(IncompleteAnswer):
        stripe.AMOUNTS.from_wire(None, "USD", what="amount_refunded")


def test_adyen_refuses_a_currency_whose_decimals_its_table_does_not_settle() -> None:
    with pytest.raises(ValidationFailed, match="will not guess"):
        adyen.AMOUNTS.to_wire(100, "BIF")  # ISO 0, Adyen "most are 2": unknown, so refused
    assert adyen.AMOUNTS.to_wire(100, "EUR") == 100


# ---------------------------------------------------------------------------- through the adapters


async def test_stripe_refunds_isk_x100_and_reads_it_back_in_whole_kronur() -> None:
    fake = StripeFake()
    http, transport = client_for(fake)
    processor = StripeProcessor(api_key=SecretStr(fake.api_key), http=http)
    charge = str(fake.add_payment(PaymentSeed(amount_minor=500_000, currency="ISK"))["id"])  # ISK 5000 at Stripe
    info = await processor.lookup_transaction(charge)
    refund = await processor.create_refund(refund_request(charge, 1234, "ISK"))
    await http.aclose()
    assert (info.amount_minor, info.captured_minor) == (5000, 5000)
    assert dict(httpx2.QueryParams(transport.to("/v1/refunds")[-1].request.content.decode()))["amount"] == "123400"
    assert refund.amount_minor == 1234


async def test_a_refund_no_processor_can_take_is_refused_before_anything_is_sent() -> None:
    fake = PayPalFake()
    http, transport = client_for(fake)
    processor = PayPalProcessor(client_id=fake.client_id, client_secret=SecretStr(fake.client_secret), http=http)
    with pytest.raises(ValidationFailed):
        processor.check_amount(1234, "TWD")
    with pytest.raises(ValidationFailed):
        await processor.create_refund(refund_request("CAPTURE1", 1234, "TWD"))
    await http.aclose()
    assert transport.exchanges == []  # not even a token was fetched


async def test_adyen_sends_clp_with_two_decimals() -> None:
    fake = AdyenFake()
    http, transport = client_for(fake)
    processor = AdyenProcessor(
        api_key=SecretStr(fake.api_key), merchant_account=fake.merchant_account, api_base="https://a.test/v71", http=http
    )
    psp = str(fake.add_payment(PaymentSeed(amount_minor=1_000_000, currency="CLP"))["id"])
    refund = await processor.create_refund(refund_request(psp, 1234, "CLP"))
    await http.aclose()
    assert transport.exchanges[-1].request_json()["amount"] == {"currency": "CLP", "value": 123400}
    assert refund.amount_minor == 1234


async def test_square_sends_huf_in_iso_minor_units() -> None:
    fake = SquareFake()
    http, transport = client_for(fake)
    processor = SquareProcessor(access_token=SecretStr(fake.access_token), http=http)
    payment = str(fake.add_payment(PaymentSeed(amount_minor=1_000_000, currency="HUF"))["id"])
    info = await processor.lookup_transaction(payment)
    refund = await processor.create_refund(refund_request(payment, 1234, "HUF"))
    await http.aclose()
    assert info.amount_minor == 10_000
    assert transport.exchanges[-1].request_json()["amount_money"] == {"amount": 123400, "currency": "HUF"}
    assert refund.amount_minor == 1234


# ---------------------------------------------------------------------------- missing money fields


def _answering(body: dict[str, Any], status: int = 200) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=httpx2.MockTransport(lambda request: httpx2.Response(status, content=json.dumps(body).encode()))
    )


def _stripe_charge(**changes: Any) -> dict[str, Any]:
    fake = StripeFake()
    charge_id = str(fake.add_payment(PaymentSeed(amount_minor=5000, currency="USD"))["id"])
    body = fake.charge_object(fake.payments[charge_id])
    for key, value in changes.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    "missing",
    [{"amount_refunded": None}, {"amount_captured": None, "captured": None}, {"amount": None, "amount_captured": None}],
    ids=["amount_refunded", "amount_captured_and_captured", "amount_and_amount_captured"],
)
async def test_a_stripe_charge_missing_a_money_field_is_a_processor_error_never_zero(missing: dict[str, Any]) -> None:
    async with _answering(_stripe_charge(**missing)) as http:
        processor = StripeProcessor(api_key=SecretStr("sk_test_x"), http=http)
        with pytest.raises(ProcessorError) as caught:
            await processor.lookup_transaction("ch_1")
    assert caught.value.code == "processor_error"
    assert "incomplete" in str(caught.value)


async def test_a_captured_stripe_charge_without_amount_captured_captured_its_amount() -> None:
    async with _answering(_stripe_charge(amount_captured=None)) as http:
        info = await StripeProcessor(api_key=SecretStr("sk_test_x"), http=http).lookup_transaction("ch_1")
    assert (info.captured_minor, info.refunded_minor) == (5000, 0)


@pytest.mark.parametrize("method", ["create", "get"])
async def test_a_stripe_refund_without_an_amount_is_unknown_after_a_create_and_an_error_after_a_read(
    method: str,
) -> None:
    body = {"id": "re_1", "object": "refund", "currency": "usd", "status": "succeeded", "charge": "ch_1"}
    async with _answering(body) as http:
        processor = StripeProcessor(api_key=SecretStr("sk_test_x"), http=http)
        with pytest.raises(ProcessorCallError) as caught:
            if method == "create":
                await processor.create_refund(refund_request("ch_1", 100))
            else:
                await processor.get_refund("re_1")
    expected = Delivery.OUTCOME_UNKNOWN if method == "create" else Delivery.DECLINED
    assert caught.value.delivery is expected


@pytest.mark.parametrize(
    "capture",
    [
        {"id": "C1", "status": "COMPLETED"},
        {"id": "C1", "status": "COMPLETED", "amount": {"currency_code": "USD"}},
    ],
    ids=["no_amount", "no_value"],
)
async def test_a_paypal_capture_missing_its_amount_is_a_processor_error(capture: dict[str, Any]) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/oauth2/token":
            return httpx2.Response(200, json={"access_token": "A21AAtoken", "token_type": "Bearer", "expires_in": 3600})
        return httpx2.Response(200, json=capture)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        processor = PayPalProcessor(client_id="c", client_secret=SecretStr("s"), http=http)
        with pytest.raises(ProcessorError, match="incomplete"):
            await processor.lookup_transaction("C1")


async def test_a_paypal_refund_without_an_amount_after_a_create_is_an_unknown_outcome() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/oauth2/token":
            return httpx2.Response(200, json={"access_token": "A21AAtoken", "token_type": "Bearer", "expires_in": 3600})
        return httpx2.Response(201, json={"id": "R1", "status": "COMPLETED"})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        processor = PayPalProcessor(client_id="c", client_secret=SecretStr("s"), http=http)
        with pytest.raises(ProcessorUnavailable) as caught:
            await processor.create_refund(refund_request("C1", 100))
    assert caught.value.delivery is Delivery.OUTCOME_UNKNOWN


async def test_a_square_payment_without_any_amount_is_a_processor_error() -> None:
    payment = {"payment": {"id": "P1", "status": "COMPLETED", "created_at": "2026-12-01T00:00:00.000Z"}}
    async with _answering(payment) as http:
        with pytest.raises(ProcessorError, match="incomplete"):
            await SquareProcessor(access_token=SecretStr("t"), http=http).lookup_transaction("P1")


async def test_square_counts_completed_refunds_when_refunded_money_is_left_out() -> None:
    fake = SquareFake()
    http, _ = client_for(fake)
    processor = SquareProcessor(access_token=SecretStr(fake.access_token), http=http)
    payment = str(fake.add_payment(PaymentSeed(amount_minor=5000, currency="USD", refund_outcome="PENDING"))["id"])
    first = await processor.create_refund(refund_request(payment, 700))
    assert (await processor.lookup_transaction(payment)).refunded_minor == 0  # pending: not refunded yet
    fake.set_refund_status(first.processor_refund_id, "COMPLETED")
    body = fake.payment_object(fake.payments[payment])
    del body["refunded_money"]  # as an answer that leaves it out would
    fake.payment_object = lambda _payment: body  # type: ignore[method-assign]
    assert (await processor.lookup_transaction(payment)).refunded_minor == 700
    await http.aclose()
