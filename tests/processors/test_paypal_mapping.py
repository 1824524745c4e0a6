"""PayPal's pure mapping functions: statuses, payer notes, amounts, tokens and error bodies."""

from __future__ import annotations

from typing import Any

import pytest

from refund_mcp.domain.errors import (
    Delivery,
    ProcessorError,
    ProcessorUnavailable,
    RefundError,
    RefundNotFound,
    TransactionNotFound,
)
from refund_mcp.domain.models import RefundReason, RefundStatus
from refund_mcp.processors import paypal
from tests.processors.helpers import refund_request


@pytest.mark.parametrize(
    ("wire", "ours"),
    [
        ("COMPLETED", RefundStatus.SUCCEEDED),
        ("PENDING", RefundStatus.PENDING),
        ("FAILED", RefundStatus.FAILED),
        ("CANCELLED", RefundStatus.CANCELLED),
        ("SOMETHING_NEW", RefundStatus.PENDING),
        (None, RefundStatus.PENDING),
    ],
)
def test_paypal_refund_statuses_map_to_ours(wire: str | None, ours: RefundStatus) -> None:
    assert paypal.refund_status(wire) is ours


@pytest.mark.parametrize(
    ("amount_minor", "currency", "value"),
    [(1050, "USD", "10.50"), (5, "USD", "0.05"), (1500, "JPY", "1500"), (1250, "KWD", "1.250"), (7, "KWD", "0.007")],
)
def test_amounts_are_sent_as_decimal_strings_in_the_currency_exponent(
    amount_minor: int, currency: str, value: str
) -> None:
    body = paypal.build_refund_request(refund_request("CAP1", amount_minor, currency)).to_json()
    assert body["amount"] == {"currency_code": currency, "value": value}


def test_the_refund_carries_our_refund_id_as_custom_id_and_a_one_line_payer_note() -> None:
    request = refund_request("CAP1", 100, reason=RefundReason.PRODUCT_DEFECTIVE, note="screen\ncracked  on arrival")
    body = paypal.build_refund_request(request).to_json()
    assert body["custom_id"] == request.refund_id
    assert body["note_to_payer"] == "Product defective: screen cracked on arrival"
    assert "invoice_id" not in body


def test_the_payer_note_is_cut_to_paypals_255_characters() -> None:
    note = paypal.note_to_payer(RefundReason.GOODWILL, "x" * 400)
    assert len(note) == 255
    assert note.startswith("Goodwill refund: xxx")


@pytest.mark.parametrize(("expires_in", "lifetime"), [(32400, 32280.0), (100, 50.0), (0, 0.0)])
def test_a_token_is_reused_until_shortly_before_it_expires(expires_in: int, lifetime: float) -> None:
    assert paypal.token_lifetime(expires_in) == lifetime


def test_the_token_response_never_shows_the_token_in_its_repr() -> None:
    token = paypal.PayPalTokenResponse(access_token="A21AAsecret-token", expires_in=10)
    assert "A21AAsecret-token" not in repr(token)


def _issue(issue: str, name: str = "UNPROCESSABLE_ENTITY") -> dict[str, Any]:
    return {
        "name": name,
        "message": "m",
        "debug_id": "dbg123",
        "details": [{"issue": issue, "description": f"{issue} said"}],
    }


@pytest.mark.parametrize(
    ("status", "body", "flow", "kind", "code"),
    [
        (422, _issue("CAPTURE_FULLY_REFUNDED"), "create", ProcessorError, "already_refunded"),
        (422, _issue("REFUND_AMOUNT_EXCEEDED"), "create", ProcessorError, "amount_exceeds_refundable"),
        (422, _issue("REFUND_CAPTURE_CURRENCY_MISMATCH"), "create", ProcessorError, "currency_mismatch"),
        (422, _issue("REFUND_NOT_ALLOWED"), "create", ProcessorError, "not_refundable"),
        (422, _issue("REFUND_TIME_LIMIT_EXCEEDED"), "create", ProcessorError, "not_refundable"),
        (422, _issue("TRANSACTION_DISPUTED"), "create", ProcessorError, "not_refundable"),
        (422, _issue("REFUND_NOT_PERMITTED_DUE_TO_CHARGEBACK"), "create", ProcessorError, "not_refundable"),
        (422, _issue("REFUND_FAILED_INSUFFICIENT_FUNDS"), "create", ProcessorError, "processor_error"),
        (422, _issue("DUPLICATE_INVOICE_ID"), "create", ProcessorError, "processor_error"),
        (400, _issue("INVALID_PARAMETER_SYNTAX", "INVALID_REQUEST"), "create", ProcessorError, "processor_error"),
        (
            404,
            _issue("INVALID_RESOURCE_ID", "RESOURCE_NOT_FOUND"),
            "create",
            TransactionNotFound,
            "transaction_not_found",
        ),
        (
            404,
            _issue("INVALID_RESOURCE_ID", "RESOURCE_NOT_FOUND"),
            "lookup",
            TransactionNotFound,
            "transaction_not_found",
        ),
        (404, _issue("INVALID_RESOURCE_ID", "RESOURCE_NOT_FOUND"), "get", RefundNotFound, "refund_not_found"),
        (
            409,
            _issue("PREVIOUS_REQUEST_IN_PROGRESS", "RESOURCE_CONFLICT"),
            "create",
            ProcessorUnavailable,
            "processor_unavailable",
        ),
        (422, "not json", "create", ProcessorError, "processor_error"),
    ],
)
def test_paypal_error_bodies_map_to_codes(
    status: int, body: Any, flow: paypal.Flow, kind: type[RefundError], code: str
) -> None:
    error = paypal.error_from_response(status, body, flow=flow, request_id=None)
    assert type(error) is kind
    assert error.code == code


def test_a_conflict_with_a_request_in_progress_is_outcome_unknown_and_keeps_the_debug_id() -> None:
    error = paypal.error_from_response(
        409, _issue("PREVIOUS_REQUEST_IN_PROGRESS", "RESOURCE_CONFLICT"), flow="create", request_id=None
    )
    assert isinstance(error, ProcessorUnavailable)
    assert error.delivery is Delivery.OUTCOME_UNKNOWN
    assert error.request_id == "dbg123"


def test_a_refused_refund_names_the_first_issue_that_decides_it() -> None:
    body = {"name": "UNPROCESSABLE_ENTITY", "details": [{"issue": "SOMETHING"}, {"issue": "REFUND_AMOUNT_EXCEEDED"}]}
    error = paypal.error_from_response(422, body, flow="create", request_id="d1")
    assert isinstance(error, ProcessorError)
    assert (error.code, error.processor_code) == ("amount_exceeds_refundable", "REFUND_AMOUNT_EXCEEDED")


@pytest.mark.parametrize(
    ("status", "captured", "refunded", "refundable"),
    [
        ("COMPLETED", 1000, 0, True),
        ("PARTIALLY_REFUNDED", 1000, 0, True),
        ("REFUNDED", 1000, 1000, True),
        ("PENDING", 0, 0, False),
        ("DECLINED", 0, 0, False),
        ("FAILED", 0, 0, False),
    ],
)
def test_a_capture_maps_to_a_transaction_by_status(status: str, captured: int, refunded: int, refundable: bool) -> None:
    capture = paypal.PayPalCaptureResponse.model_validate(
        {
            "id": "CAP1",
            "status": status,
            "amount": {"currency_code": "USD", "value": "10.00"},
            "create_time": "2024-05-01T10:00:00Z",
        }
    )
    info = paypal.transaction_from_capture(capture)
    assert (info.captured_minor, info.refunded_minor, info.refundable) == (captured, refunded, refundable)
    assert info.status == status.lower()
    assert info.created_at is not None and info.created_at.utcoffset() is not None
