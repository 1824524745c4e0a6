"""Domain values shared by the service, the processors and the store. Amounts are minor units."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta


class RefundStatus(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"
    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def reserves(self) -> bool:
        """Non-final statuses hold their amount against the transaction's refundable balance."""
        return self in RESERVING_STATUSES


FINAL_STATUSES = frozenset({RefundStatus.SUCCEEDED, RefundStatus.FAILED, RefundStatus.CANCELLED})
RESERVING_STATUSES = frozenset(
    {RefundStatus.PENDING_APPROVAL, RefundStatus.QUEUED, RefundStatus.PENDING, RefundStatus.REQUIRES_ACTION}
)


def may_transition(current: RefundStatus, new: RefundStatus) -> bool:
    """Final states are sticky, except that a late failure overrides a success (e.g. Adyen REFUND_FAILED)."""
    if current == new:
        return False
    if current.is_final:
        return current is RefundStatus.SUCCEEDED and new is RefundStatus.FAILED
    return True


class RefundReason(enum.StrEnum):
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    REQUESTED_BY_CUSTOMER = "requested_by_customer"
    PRODUCT_NOT_RECEIVED = "product_not_received"
    PRODUCT_DEFECTIVE = "product_defective"
    SERVICE_ISSUE = "service_issue"
    GOODWILL = "goodwill"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a processor can do; shown to users and used by the service to pick a path."""

    cancel: bool  # can cancel a refund after the processor accepted it
    status_api: bool  # has an API to read a refund's current status
    lookup_api: bool  # has an API to read the original payment
    partial_refunds: bool
    webhooks: bool
    # How long the processor is documented to keep an idempotency key (Stripe 24 h, Adyen 31 days, PayPal
    # 45 days). None: not published (Square) or not applicable. A create request is never re-sent under a
    # key that may have expired: past a safe share of this age the refund is looked up first (find_refund).
    idempotency_key_retention: timedelta | None = None
    # find_refund can say authoritatively whether the processor holds a given refund of ours.
    refund_search: bool = False


@dataclass(frozen=True, slots=True)
class TransactionInfo:
    """The original payment as a processor reports it. Never carries card data."""

    processor: str
    transaction_id: str  # the processor's own id, without the "processor:" prefix
    amount_minor: int
    currency: str
    captured_minor: int
    refunded_minor: int  # refunded so far according to the processor (ours included)
    status: str  # the processor's payment status, lower-cased
    created_at: datetime | None = None
    customer_ref: str | None = None  # an email or customer id, for require_customer_match
    description: str | None = None  # free text from the processor: data, never instructions
    refundable: bool = True  # False when the processor says the payment cannot be refunded at all
    # Other ids the processor knows this same payment by (Stripe: a charge's payment intent, a payment
    # intent's charges). `transaction_id` is the one canonical id; every alias resolves to it before
    # anything (balance, limits, duplicates) is counted.
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessorRefundRequest:
    """A refund as sent to a processor. `idempotency_key` is derived from our refund id."""

    refund_id: str
    transaction_id: str  # the processor's own id
    amount_minor: int
    currency: str
    reason: RefundReason
    idempotency_key: str
    note: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProcessorRefund:
    """A refund as a processor reports it, mapped to the unified status."""

    processor_refund_id: str
    status: RefundStatus
    amount_minor: int
    currency: str
    processor_status: str  # the processor's own word, kept for the audit trail
    request_id: str | None = None  # Request-Id / Paypal-Debug-Id / pspReference / Square's
    failure_reason: str | None = None
    transaction_id: str | None = None
    created_at: datetime | None = None
