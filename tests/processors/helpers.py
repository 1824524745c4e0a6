"""Small builders shared by the adapter tests."""

from __future__ import annotations

import itertools

from refund_mcp.domain.errors import Delivery, RefundError
from refund_mcp.domain.models import ProcessorRefundRequest, RefundReason

_counter = itertools.count(1)


def refund_request(
    transaction_id: str,
    amount_minor: int,
    currency: str = "USD",
    *,
    reason: RefundReason = RefundReason.REQUESTED_BY_CUSTOMER,
    key: str | None = None,
    note: str | None = None,
) -> ProcessorRefundRequest:
    """A refund as the service sends it: the idempotency key is the refund id."""
    refund_id = key or f"rf_TEST{next(_counter):022d}"
    return ProcessorRefundRequest(
        refund_id=refund_id,
        transaction_id=transaction_id,
        amount_minor=amount_minor,
        currency=currency,
        reason=reason,
        idempotency_key=refund_id,
        note=note,
        metadata={"refund_mcp_id": refund_id},
    )


def assert_error(exc: RefundError, code: str, delivery: Delivery | None = None) -> None:
    assert exc.code == code, f"expected [{code}], got {exc}"
    if delivery is not None:
        assert getattr(exc, "delivery", None) is delivery, f"expected {delivery}, got {getattr(exc, 'delivery', None)}"
