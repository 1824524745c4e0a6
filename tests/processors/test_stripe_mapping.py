"""Stripe's pure mapping functions: statuses, reasons, request bodies and error bodies."""

from __future__ import annotations

from typing import Any

import pytest

from refund_mcp.domain.errors import (
    Delivery,
    NotSupported,
    ProcessorError,
    ProcessorUnavailable,
    RefundError,
    RefundNotFound,
    TransactionNotFound,
)
from refund_mcp.domain.models import RefundReason, RefundStatus
from refund_mcp.processors import stripe
from tests.processors.helpers import refund_request


@pytest.mark.parametrize(
    ("wire", "ours"),
    [
        ("pending", RefundStatus.PENDING),
        ("requires_action", RefundStatus.REQUIRES_ACTION),
        ("succeeded", RefundStatus.SUCCEEDED),
        ("failed", RefundStatus.FAILED),
        ("canceled", RefundStatus.CANCELLED),
        ("something_new", RefundStatus.PENDING),
        (None, RefundStatus.PENDING),
    ],
)
def test_stripe_refund_statuses_map_to_ours_and_unknown_ones_stay_pending(wire: str | None, ours: RefundStatus) -> None:
    assert stripe.refund_status(wire) is ours


@pytest.mark.parametrize(
    ("reason", "wire"),
    [
        (RefundReason.DUPLICATE, "duplicate"),
        (RefundReason.FRAUDULENT, "fraudulent"),
        (RefundReason.REQUESTED_BY_CUSTOMER, "requested_by_customer"),
        (RefundReason.PRODUCT_NOT_RECEIVED, "requested_by_customer"),
        (RefundReason.PRODUCT_DEFECTIVE, "requested_by_customer"),
        (RefundReason.SERVICE_ISSUE, "requested_by_customer"),
        (RefundReason.GOODWILL, "requested_by_customer"),
    ],
)
def test_every_reason_maps_to_one_stripe_accepts(reason: RefundReason, wire: str) -> None:
    assert stripe.stripe_reason(reason) == wire


@pytest.mark.parametrize(
    ("transaction_id", "field"),
    [("ch_123", "charge"), ("py_123", "charge"), ("pi_123", "payment_intent")],
)
def test_the_refund_body_names_the_charge_or_the_payment_intent_by_id_prefix(transaction_id: str, field: str) -> None:
    request = refund_request(transaction_id, 1250, reason=RefundReason.GOODWILL, note="line one\nline two")
    form = dict(stripe.build_refund_request(request).to_form())
    assert form[field] == transaction_id
    assert ({"charge", "payment_intent"} - {field}).isdisjoint(form)
    assert form["amount"] == "1250"
    assert form["reason"] == "requested_by_customer"
    assert form["metadata[refund_mcp_id]"] == request.refund_id
    assert form["metadata[refund_mcp_reason]"] == "goodwill"
    assert form["metadata[note]"] == "line one\nline two"


def test_an_id_that_cannot_be_a_stripe_payment_is_not_found_without_asking_stripe() -> None:
    with pytest.raises(TransactionNotFound, match="ch_, py_"):
        stripe.build_refund_request(refund_request("2GG279541U471931P", 100))


def _error(code: str | None = None, type_: str = "invalid_request_error", message: str = "msg") -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "message": message}
    if code:
        error["code"] = code
    return {"error": error}


@pytest.mark.parametrize(
    ("status", "body", "flow", "kind", "code", "delivery"),
    [
        (400, _error("charge_already_refunded"), "create", ProcessorError, "already_refunded", Delivery.DECLINED),
        (400, _error("amount_too_large"), "create", ProcessorError, "amount_exceeds_refundable", Delivery.DECLINED),
        (400, _error("charge_disputed"), "create", ProcessorError, "not_refundable", Delivery.DECLINED),
        (400, _error("charge_not_refundable"), "create", ProcessorError, "not_refundable", Delivery.DECLINED),
        (400, _error(None, "idempotency_error"), "create", ProcessorError, "idempotency_conflict", Delivery.DECLINED),
        (
            409,
            _error("idempotency_key_in_use"),
            "create",
            ProcessorUnavailable,
            "processor_unavailable",
            Delivery.OUTCOME_UNKNOWN,
        ),
        (404, _error("resource_missing"), "create", TransactionNotFound, "transaction_not_found", None),
        (404, _error("resource_missing"), "lookup", TransactionNotFound, "transaction_not_found", None),
        (404, _error("resource_missing"), "get", RefundNotFound, "refund_not_found", None),
        (404, _error("resource_missing"), "cancel", RefundNotFound, "refund_not_found", None),
        (400, _error(None), "cancel", NotSupported, "not_supported", None),
        (400, _error("balance_insufficient"), "create", ProcessorError, "processor_error", Delivery.DECLINED),
        (400, _error("amount_too_small"), "create", ProcessorError, "processor_error", Delivery.DECLINED),
        (402, {"not": "stripe"}, "create", ProcessorError, "processor_error", Delivery.DECLINED),
        (400, None, "create", ProcessorError, "processor_error", Delivery.DECLINED),
    ],
)
def test_stripe_error_bodies_map_to_codes_and_deliveries(
    status: int, body: Any, flow: stripe.Flow, kind: type[RefundError], code: str, delivery: Delivery | None
) -> None:
    error = stripe.error_from_response(status, body, flow=flow, request_id="req_1")
    assert type(error) is kind
    assert error.code == code
    if delivery is not None:
        assert error.delivery is delivery  # type: ignore[attr-defined]
        assert error.request_id == "req_1"  # type: ignore[attr-defined]


def test_a_refused_refund_keeps_stripes_code_and_message_for_the_audit_trail() -> None:
    error = stripe.error_from_response(
        400,
        _error("amount_too_large", message="Refund amount ($40.00) is greater than unrefunded amount ($25.00)"),
        flow="create",
        request_id="req_9",
    )
    assert isinstance(error, ProcessorError)
    assert error.processor_code == "amount_too_large"
    assert "$25.00" in error.message
    assert str(error).startswith("[amount_exceeds_refundable]")


def test_an_uncaptured_or_disputed_charge_is_not_refundable_but_a_fully_refunded_one_is() -> None:
    base = {
        "id": "ch_1",
        "amount": 500,
        "amount_refunded": 0,
        "currency": "usd",
        "status": "succeeded",
        "created": 1_700_000_000,
    }
    uncaptured = stripe.StripeChargeResponse.model_validate({**base, "captured": False, "amount_captured": 0})
    disputed = stripe.StripeChargeResponse.model_validate(
        {**base, "captured": True, "amount_captured": 500, "disputed": True}
    )
    refunded = stripe.StripeChargeResponse.model_validate(
        {**base, "captured": True, "amount_captured": 500, "amount_refunded": 500, "refunded": True}
    )
    assert stripe.transaction_from_charge(uncaptured).refundable is False
    assert stripe.transaction_from_charge(uncaptured).captured_minor == 0
    assert stripe.transaction_from_charge(disputed).refundable is False
    info = stripe.transaction_from_charge(refunded)
    assert (info.refundable, info.refunded_minor, info.captured_minor) == (True, 500, 500)
    assert info.created_at is not None and info.created_at.tzinfo is not None


def test_a_payment_intent_without_a_charge_is_not_refundable() -> None:
    intent = stripe.StripePaymentIntentResponse.model_validate(
        {
            "id": "pi_1",
            "amount": 900,
            "amount_received": 0,
            "currency": "eur",
            "status": "requires_payment_method",
            "latest_charge": None,
        }
    )
    info = stripe.transaction_from_payment_intent(intent)
    assert (info.refundable, info.captured_minor, info.currency) == (False, 0, "EUR")
