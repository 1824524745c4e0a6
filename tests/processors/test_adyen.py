"""Adyen: pure mapping functions, then AdyenProcessor against the wire-faithful Adyen fake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from refund_mcp.domain.errors import (
    Delivery,
    NotSupported,
    ProcessorAuthFailed,
    ProcessorCallError,
    ProcessorError,
    ProcessorUnavailable,
    RateLimited,
    TransactionNotFound,
)
from refund_mcp.domain.models import RefundReason, RefundStatus, TransactionInfo
from refund_mcp.processors import adyen
from refund_mcp.processors.adyen import AdyenProcessor
from tests.fakes.adyen import AdyenFake
from tests.fakes.common import FakeTransport, PaymentSeed, client_for
from tests.processors.helpers import assert_error, refund_request

pytestmark = pytest.mark.anyio

# ---------------------------------------------------------------------------- pure mapping


@pytest.mark.parametrize(
    ("reason", "wire"),
    [
        (RefundReason.DUPLICATE, "DUPLICATE"),
        (RefundReason.FRAUDULENT, "FRAUD"),
        (RefundReason.REQUESTED_BY_CUSTOMER, "CUSTOMER REQUEST"),
        (RefundReason.PRODUCT_NOT_RECEIVED, "CUSTOMER REQUEST"),
        (RefundReason.PRODUCT_DEFECTIVE, "RETURN"),
        (RefundReason.SERVICE_ISSUE, "OTHER"),
        (RefundReason.GOODWILL, "OTHER"),
    ],
)
def test_every_reason_maps_to_adyens_enum(reason: RefundReason, wire: str) -> None:
    assert adyen.adyen_reason(reason) == wire


def test_the_refund_body_has_the_merchant_account_minor_units_and_our_reference() -> None:
    request = refund_request("PSP0000000000001", 1500, "JPY", reason=RefundReason.FRAUDULENT)
    body = adyen.build_refund_request(request, merchant_account="ShopECOM").to_json()
    assert body == {
        "merchantAccount": "ShopECOM",
        "amount": {"currency": "JPY", "value": 1500},
        "reference": request.refund_id,
        "merchantRefundReason": "FRAUD",
    }


def test_an_idempotency_key_longer_than_adyen_accepts_is_a_bug_not_a_request() -> None:
    with pytest.raises(ValueError, match="64"):
        adyen.build_refund_request(refund_request("PSP1", 100, key="k" * 65), merchant_account="M")


def test_a_received_refund_is_pending_and_named_by_its_psp_reference() -> None:
    wire = adyen.AdyenRefundResponse.model_validate(
        {
            "merchantAccount": "M",
            "paymentPspReference": "PAY1",
            "pspReference": "REF1",
            "status": "received",
            "amount": {"currency": "eur", "value": 10},
        }
    )
    refund = adyen.refund_from_wire(wire)
    assert (refund.status, refund.processor_status) == (RefundStatus.PENDING, "received")
    assert (refund.processor_refund_id, refund.request_id, refund.transaction_id) == ("REF1", "REF1", "PAY1")
    assert refund.currency == "EUR"


def _service_error(code: str, status: int = 422) -> dict[str, Any]:
    return {"status": status, "errorCode": code, "message": "m", "errorType": "validation", "pspReference": "PSPERR"}


@pytest.mark.parametrize(
    ("status", "body", "transient", "kind", "code", "delivery"),
    [
        (422, _service_error("704"), True, ProcessorUnavailable, "processor_unavailable", Delivery.OUTCOME_UNKNOWN),
        (
            409,
            _service_error("704", 409),
            True,
            ProcessorUnavailable,
            "processor_unavailable",
            Delivery.OUTCOME_UNKNOWN,
        ),
        (422, _service_error("704"), False, ProcessorError, "idempotency_conflict", Delivery.DECLINED),
        (422, _service_error("137"), False, ProcessorError, "processor_error", Delivery.DECLINED),
        (422, _service_error("100"), False, ProcessorError, "processor_error", Delivery.DECLINED),
        (422, _service_error("138"), False, ProcessorError, "currency_mismatch", Delivery.DECLINED),
        (422, _service_error("14_030"), False, ProcessorError, "processor_error", Delivery.DECLINED),
        (400, _service_error("702", 400), False, ProcessorError, "processor_error", Delivery.DECLINED),
        (422, ["not", "an", "object"], False, ProcessorError, "processor_error", Delivery.DECLINED),
    ],
)
def test_adyen_service_errors_map_to_codes_and_deliveries(
    status: int, body: Any, transient: bool, kind: type, code: str, delivery: Delivery
) -> None:
    error = adyen.error_from_response(status, body, transient=transient, request_id=None)
    assert type(error) is kind
    assert (error.code, error.delivery) == (code, delivery)  # type: ignore[attr-defined]


def test_an_invalid_amount_keeps_adyens_error_code() -> None:
    error = adyen.error_from_response(422, _service_error("137"), transient=False, request_id=None)
    assert isinstance(error, ProcessorError)
    assert (error.processor_code, error.request_id) == ("137", "PSPERR")


# ---------------------------------------------------------------------------- against the fake

@dataclass
class Setup:
    fake: AdyenFake
    processor: AdyenProcessor
    transport: FakeTransport
    known: dict[str, TransactionInfo]


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    fake = AdyenFake()
    http, transport = client_for(fake, read_timeout=0.25)
    known: dict[str, TransactionInfo] = {}

    async def known_transactions(transaction_id: str) -> TransactionInfo | None:
        return known.get(transaction_id)

    processor = AdyenProcessor(
        api_key=SecretStr(fake.api_key),
        merchant_account=fake.merchant_account,
        api_base="https://checkout-test.adyen.test/v71",
        http=http,
        known_transactions=known_transactions,
    )
    yield Setup(fake, processor, transport, known)
    fake.release_stalled()
    await processor.aclose()
    await http.aclose()


def seed(setup: Setup, amount: int = 5000, currency: str = "EUR", **fields: object) -> str:
    return str(setup.fake.add_payment(PaymentSeed(amount_minor=amount, currency=currency, **fields))["id"])  # type: ignore[arg-type]


async def test_a_refund_is_received_as_pending_with_adyens_references(setup: Setup) -> None:
    psp = seed(setup)
    request = refund_request(psp, 1200, "EUR", reason=RefundReason.PRODUCT_DEFECTIVE)
    refund = await setup.processor.create_refund(request)
    assert (refund.status, refund.processor_status, refund.amount_minor, refund.currency) == (
        RefundStatus.PENDING,
        "received",
        1200,
        "EUR",
    )
    assert refund.transaction_id == psp
    assert refund.request_id == refund.processor_refund_id
    sent = setup.transport.to("/v71/payments/")[-1]
    assert str(sent.request.url) == f"https://checkout-test.adyen.test/v71/payments/{psp}/refunds"
    assert sent.request.headers["X-API-Key"] == setup.fake.api_key
    assert sent.request.headers["Idempotency-Key"] == request.idempotency_key
    assert sent.request_json()["merchantRefundReason"] == "RETURN"
    assert sent.response is not None and sent.response.status_code == 201


async def test_an_over_refund_is_received_and_only_refused_later_by_webhook_like_adyen_does(setup: Setup) -> None:
    psp = seed(setup, 1000)
    refund = await setup.processor.create_refund(refund_request(psp, 1001, "EUR"))
    assert refund.status is RefundStatus.PENDING
    [recorded] = setup.fake.state()["refunds"]
    assert (recorded["outcome"], recorded["reason"]) == ("failed", "Insufficient balance on payment")


async def test_an_invalid_amount_is_refused_at_once_with_adyens_code(setup: Setup) -> None:
    psp = seed(setup)
    with pytest.raises(ProcessorCallError) as caught:
        await setup.processor.create_refund(refund_request(psp, 0, "EUR"))
    assert_error(caught.value, "processor_error", Delivery.DECLINED)
    assert caught.value.processor_code == "137"


async def test_adyen_has_no_refund_status_api_nor_cancel(setup: Setup) -> None:
    with pytest.raises(NotSupported, match="webhook"):
        await setup.processor.get_refund("ANY")
    with pytest.raises(NotSupported):
        await setup.processor.cancel_refund("ANY")
    assert setup.processor.capabilities.status_api is False
    assert setup.processor.capabilities.lookup_api is False
    assert setup.processor.capabilities.webhooks is True


async def test_a_transaction_known_from_webhooks_is_returned_and_an_unknown_one_explains_why(setup: Setup) -> None:
    info = TransactionInfo(
        processor="adyen",
        transaction_id="PAY1",
        amount_minor=900,
        currency="EUR",
        captured_minor=900,
        refunded_minor=0,
        status="captured",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    setup.known["PAY1"] = info
    assert await setup.processor.lookup_transaction("PAY1") is info
    with pytest.raises(TransactionNotFound, match="AUTHORISATION / CAPTURE webhooks"):
        await setup.processor.lookup_transaction("PAY2")
    assert setup.transport.exchanges == []  # nothing to ask Adyen


async def test_without_a_callback_every_lookup_is_not_found() -> None:
    processor = AdyenProcessor(api_key=SecretStr("k"), merchant_account="M")
    with pytest.raises(TransactionNotFound, match="no API to look up"):
        await processor.lookup_transaction("PAY1")
    await processor.aclose()


async def test_a_wrong_api_key_or_merchant_account_is_processor_auth_failed() -> None:
    fake = AdyenFake()
    http, _ = client_for(fake)
    psp = str(fake.add_payment(PaymentSeed(amount_minor=100, currency="EUR"))["id"])
    wrong_key = AdyenProcessor(api_key=SecretStr("AQE_wrong_5521"), merchant_account=fake.merchant_account, http=http)
    with pytest.raises(ProcessorAuthFailed) as caught:
        await wrong_key.create_refund(refund_request(psp, 100, "EUR"))
    assert "5521" not in str(caught.value) and "5521" not in repr(wrong_key)
    wrong_account = AdyenProcessor(api_key=SecretStr(fake.api_key), merchant_account="OtherECOM", http=http)
    with pytest.raises(ProcessorAuthFailed) as forbidden:
        await wrong_account.create_refund(refund_request(psp, 100, "EUR"))
    assert forbidden.value.http_status == 403
    assert fake.state()["refund_count"] == 0
    await http.aclose()


async def test_rate_limiting_and_server_errors_are_classified(setup: Setup) -> None:
    psp = seed(setup)
    setup.fake.faults.next_429 = 1
    with pytest.raises(RateLimited) as limited:
        await setup.processor.create_refund(refund_request(psp, 100, "EUR"))
    assert limited.value.retry_after == 1.0
    setup.fake.faults.next_500 = 1
    with pytest.raises(ProcessorUnavailable) as unavailable:
        await setup.processor.create_refund(refund_request(psp, 100, "EUR"))
    assert unavailable.value.delivery is Delivery.OUTCOME_UNKNOWN
    assert unavailable.value.request_id is not None  # the ServiceError's pspReference


async def test_a_timeout_after_adyen_received_is_outcome_unknown_and_the_retry_returns_the_one_refund(
    setup: Setup,
) -> None:
    psp = seed(setup)
    request = refund_request(psp, 700, "EUR")
    setup.fake.faults.next_timeout_after_commit = 1
    with pytest.raises(ProcessorUnavailable) as caught:
        await setup.processor.create_refund(request)
    assert caught.value.delivery is Delivery.OUTCOME_UNKNOWN

    refund = await setup.processor.create_refund(request)

    state = setup.fake.state()
    assert state["refund_count"] == 1
    assert refund.processor_refund_id == state["refunds"][0]["pspReference"]


async def test_reusing_an_idempotency_key_for_another_amount_is_an_idempotency_conflict(setup: Setup) -> None:
    psp = seed(setup)
    first = refund_request(psp, 100, "EUR")
    await setup.processor.create_refund(first)
    with pytest.raises(ProcessorCallError) as caught:
        await setup.processor.create_refund(refund_request(psp, 300, "EUR", key=first.idempotency_key))
    assert_error(caught.value, "idempotency_conflict", Delivery.DECLINED)
    assert caught.value.processor_code == "704"
    assert setup.fake.state()["refund_count"] == 1
