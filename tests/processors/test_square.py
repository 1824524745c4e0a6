"""Square: pure mapping functions, then SquareProcessor against the wire-faithful Square fake."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
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
    RefundError,
    RefundNotFound,
    TransactionNotFound,
)
from refund_mcp.domain.models import RefundReason, RefundStatus
from refund_mcp.processors import square
from refund_mcp.processors.square import SquareProcessor
from tests.fakes.common import FakeTransport, PaymentSeed, client_for
from tests.fakes.square import SquareFake
from tests.processors.helpers import assert_error, refund_request

pytestmark = pytest.mark.anyio

# ---------------------------------------------------------------------------- pure mapping


@pytest.mark.parametrize(
    ("wire", "ours"),
    [
        ("PENDING", RefundStatus.PENDING),
        ("COMPLETED", RefundStatus.SUCCEEDED),
        ("REJECTED", RefundStatus.FAILED),
        ("FAILED", RefundStatus.FAILED),
        ("NEW_STATUS", RefundStatus.PENDING),
        (None, RefundStatus.PENDING),
    ],
)
def test_square_refund_statuses_map_to_ours(wire: str | None, ours: RefundStatus) -> None:
    assert square.refund_status(wire) is ours


def test_the_refund_body_carries_the_key_the_payment_minor_units_and_a_reason() -> None:
    request = refund_request("PAYMENT1", 1250, "KWD", reason=RefundReason.SERVICE_ISSUE, note="late\ndelivery")
    body = square.build_refund_request(request).to_json()
    assert body == {
        "idempotency_key": request.idempotency_key,
        "payment_id": "PAYMENT1",
        "amount_money": {"amount": 1250, "currency": "KWD"},
        "reason": f"Service issue: late delivery ({request.refund_id})",
    }


def test_an_idempotency_key_longer_than_square_accepts_is_refused_before_sending() -> None:
    with pytest.raises(ValueError, match="45"):
        square.build_refund_request(refund_request("P", 1, key="k" * 46))


def _errors(code: str, category: str = "REFUND_ERROR") -> dict[str, Any]:
    return {"errors": [{"category": category, "code": code, "detail": f"{code} detail"}]}


@pytest.mark.parametrize(
    ("status", "body", "flow", "kind", "code"),
    [
        (400, _errors("REFUND_AMOUNT_INVALID"), "create", ProcessorError, "amount_exceeds_refundable"),
        (
            400,
            _errors("VALUE_TOO_HIGH", "INVALID_REQUEST_ERROR"),
            "create",
            ProcessorError,
            "amount_exceeds_refundable",
        ),
        (400, _errors("PAYMENT_NOT_REFUNDABLE"), "create", ProcessorError, "not_refundable"),
        (400, _errors("PAYMENT_NOT_REFUNDABLE_DUE_TO_DISPUTE"), "create", ProcessorError, "not_refundable"),
        (400, _errors("REFUND_ALREADY_PENDING"), "create", ProcessorError, "processor_error"),
        (
            400,
            _errors("IDEMPOTENCY_KEY_REUSED", "INVALID_REQUEST_ERROR"),
            "create",
            ProcessorError,
            "idempotency_conflict",
        ),
        (400, _errors("UNSUPPORTED_CURRENCY", "INVALID_REQUEST_ERROR"), "create", ProcessorError, "currency_mismatch"),
        (400, _errors("REFUND_DECLINED"), "create", ProcessorError, "processor_error"),
        (404, _errors("NOT_FOUND", "INVALID_REQUEST_ERROR"), "create", TransactionNotFound, "transaction_not_found"),
        (404, _errors("NOT_FOUND", "INVALID_REQUEST_ERROR"), "lookup", TransactionNotFound, "transaction_not_found"),
        (404, _errors("NOT_FOUND", "INVALID_REQUEST_ERROR"), "get", RefundNotFound, "refund_not_found"),
        (400, {"unexpected": True}, "create", ProcessorError, "processor_error"),
    ],
)
def test_square_error_bodies_map_to_codes(
    status: int, body: Any, flow: square.Flow, kind: type[RefundError], code: str
) -> None:
    error = square.error_from_response(status, body, flow=flow, request_id=None)
    assert type(error) is kind
    assert error.code == code
    if isinstance(error, ProcessorError):
        assert error.delivery is Delivery.DECLINED


@pytest.mark.parametrize(
    ("status", "captured", "refundable"),
    [
        ("COMPLETED", 800, True),
        ("APPROVED", 0, False),
        ("PENDING", 0, False),
        ("CANCELED", 0, False),
        ("FAILED", 0, False),
    ],
)
def test_only_a_completed_payment_is_refundable(status: str, captured: int, refundable: bool) -> None:
    payment = square.SquarePayment.model_validate(
        {
            "id": "P",
            "status": status,
            "total_money": {"amount": 800, "currency": "USD"},
            "created_at": "2025-01-02T03:04:05.678Z",
        }
    )
    info = square.transaction_from_payment(payment)
    assert (info.captured_minor, info.refundable, info.status) == (captured, refundable, status.lower())
    assert info.created_at is not None and info.created_at.utcoffset() is not None


# ---------------------------------------------------------------------------- against the fake


@dataclass
class Setup:
    fake: SquareFake
    processor: SquareProcessor
    transport: FakeTransport


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    fake = SquareFake()
    http, transport = client_for(fake, read_timeout=0.25)
    processor = SquareProcessor(
        access_token=SecretStr(fake.access_token), api_base="https://connect.squareup.test", http=http
    )
    yield Setup(fake, processor, transport)
    fake.release_stalled()
    await processor.aclose()
    await http.aclose()


def seed(setup: Setup, amount: int = 5000, currency: str = "USD", **fields: object) -> str:
    return str(setup.fake.add_payment(PaymentSeed(amount_minor=amount, currency=currency, **fields))["id"])  # type: ignore[arg-type]


async def test_looking_up_a_payment_reports_total_refunded_status_and_buyer(setup: Setup) -> None:
    payment_id = seed(setup, 4200, customer_email="bo@example.com", description="Table 4", refunded_minor=200)
    info = await setup.processor.lookup_transaction(payment_id)
    assert (info.processor, info.transaction_id, info.amount_minor, info.currency) == (
        "square",
        payment_id,
        4200,
        "USD",
    )
    assert (info.captured_minor, info.refunded_minor, info.status, info.refundable) == (4200, 200, "completed", True)
    assert (info.customer_ref, info.description) == ("bo@example.com", "Table 4")
    assert info.created_at is not None and info.created_at.utcoffset() is not None


async def test_the_customer_id_is_the_customer_reference_when_there_is_no_email(setup: Setup) -> None:
    payment_id = seed(setup, customer_id="CUST123")
    assert (await setup.processor.lookup_transaction(payment_id)).customer_ref == "CUST123"


async def test_a_refund_starts_pending_and_is_read_again_once_square_completes_it(setup: Setup) -> None:
    payment_id = seed(setup, 3000)
    refund = await setup.processor.create_refund(refund_request(payment_id, 3000))
    assert (refund.status, refund.amount_minor, refund.transaction_id) == (RefundStatus.PENDING, 3000, payment_id)
    setup.fake.set_refund_status(refund.processor_refund_id, "COMPLETED")
    again = await setup.processor.get_refund(refund.processor_refund_id)
    assert (again.status, again.processor_status) == (RefundStatus.SUCCEEDED, "COMPLETED")
    assert (await setup.processor.lookup_transaction(payment_id)).refunded_minor == 3000


async def test_a_rejected_refund_is_failed(setup: Setup) -> None:
    payment_id = seed(setup)
    refund = await setup.processor.create_refund(refund_request(payment_id, 100))
    setup.fake.set_refund_status(refund.processor_refund_id, "REJECTED")
    again = await setup.processor.get_refund(refund.processor_refund_id)
    assert (again.status, again.failure_reason) == (RefundStatus.FAILED, "REJECTED")


@pytest.mark.parametrize(
    ("fields", "amount", "currency", "code"),
    [
        ({}, 5001, "USD", "amount_exceeds_refundable"),
        ({"refunded_minor": 5000}, 1, "USD", "amount_exceeds_refundable"),
        ({"disputed": True}, 100, "USD", "not_refundable"),
        ({"status": "APPROVED"}, 100, "USD", "not_refundable"),
        ({"status": "CANCELED"}, 100, "USD", "not_refundable"),
        ({}, 100, "EUR", "currency_mismatch"),
    ],
)
async def test_square_refusals_map_to_our_codes(
    setup: Setup, fields: dict[str, object], amount: int, currency: str, code: str
) -> None:
    payment_id = seed(setup, 5000, "USD", **fields)
    with pytest.raises(ProcessorCallError) as caught:
        await setup.processor.create_refund(refund_request(payment_id, amount, currency))
    assert_error(caught.value, code, Delivery.DECLINED)
    assert setup.fake.state()["refund_count"] == 0


async def test_an_unknown_payment_and_an_unknown_refund_are_not_found(setup: Setup) -> None:
    with pytest.raises(TransactionNotFound):
        await setup.processor.lookup_transaction("NOPE")
    with pytest.raises(TransactionNotFound):
        await setup.processor.create_refund(refund_request("NOPE", 100))
    with pytest.raises(RefundNotFound):
        await setup.processor.get_refund("NOPE_REFUND")


async def test_square_refunds_cannot_be_cancelled(setup: Setup) -> None:
    with pytest.raises(NotSupported, match="square"):
        await setup.processor.cancel_refund("ANY")


async def test_every_call_carries_bearer_auth_and_the_pinned_square_version(setup: Setup) -> None:
    payment_id = seed(setup)
    await setup.processor.lookup_transaction(payment_id)
    await setup.processor.create_refund(refund_request(payment_id, 100))
    assert setup.fake.square_versions == ["2025-08-20", "2025-08-20"]
    for exchange in setup.transport.exchanges:
        assert exchange.request.headers["Authorization"] == f"Bearer {setup.fake.access_token}"


async def test_a_too_long_idempotency_key_sends_nothing(setup: Setup) -> None:
    payment_id = seed(setup)
    with pytest.raises(ValueError):
        await setup.processor.create_refund(refund_request(payment_id, 100, key="k" * 46))
    assert setup.transport.exchanges == []


async def test_a_wrong_access_token_is_processor_auth_failed_without_the_token_in_the_message() -> None:
    fake = SquareFake()
    http, _ = client_for(fake)
    token = "EAAAwrong_token_3310"
    processor = SquareProcessor(access_token=SecretStr(token), http=http)
    with pytest.raises(ProcessorAuthFailed) as caught:
        await processor.lookup_transaction("P")
    for text in (str(caught.value), repr(caught.value), repr(processor)):
        assert token not in text
    await http.aclose()


async def test_rate_limiting_and_server_errors_are_classified(setup: Setup) -> None:
    payment_id = seed(setup)
    setup.fake.faults.next_429 = 1
    setup.fake.faults.retry_after = "Wed, 21 Oct 2015 07:28:00 GMT"  # a date in the past: retry at once
    with pytest.raises(RateLimited) as limited:
        await setup.processor.create_refund(refund_request(payment_id, 100))
    assert limited.value.retry_after == 0.0
    setup.fake.faults.next_503 = 1
    with pytest.raises(ProcessorUnavailable) as unavailable:
        await setup.processor.create_refund(refund_request(payment_id, 100))
    assert unavailable.value.delivery is Delivery.OUTCOME_UNKNOWN
    assert setup.fake.state()["refund_count"] == 0


async def test_a_timeout_after_square_accepted_is_outcome_unknown_and_the_retry_returns_the_one_refund(
    setup: Setup,
) -> None:
    payment_id = seed(setup)
    request = refund_request(payment_id, 900)
    setup.fake.faults.next_timeout_after_commit = 1
    with pytest.raises(ProcessorUnavailable) as caught:
        await setup.processor.create_refund(request)
    assert caught.value.delivery is Delivery.OUTCOME_UNKNOWN

    refund = await setup.processor.create_refund(request)

    state = setup.fake.state()
    assert state["refund_count"] == 1
    assert refund.processor_refund_id == state["refunds"][0]["id"]
    first, second = setup.transport.to("/v2/refunds")
    assert first.response is None  # timed out
    assert second.response is not None and second.response.status_code == 200


async def test_reusing_an_idempotency_key_for_another_amount_is_an_idempotency_conflict(setup: Setup) -> None:
    payment_id = seed(setup)
    first = refund_request(payment_id, 100)
    await setup.processor.create_refund(first)
    with pytest.raises(ProcessorCallError) as caught:
        await setup.processor.create_refund(refund_request(payment_id, 200, key=first.idempotency_key))
    assert_error(caught.value, "idempotency_conflict", Delivery.DECLINED)
    assert setup.fake.state()["refund_count"] == 1


async def test_a_replayed_request_gets_the_first_answer_byte_for_byte(setup: Setup) -> None:
    payment_id = seed(setup)
    request = refund_request(payment_id, 100)
    await setup.processor.create_refund(request)
    setup.fake.set_refund_status(setup.fake.state()["refunds"][0]["id"], "COMPLETED")
    await setup.processor.create_refund(request)
    first, second = (e.response for e in setup.transport.to("/v2/refunds"))
    assert first is not None and second is not None
    assert (first.status_code, first.content) == (second.status_code, second.content)
