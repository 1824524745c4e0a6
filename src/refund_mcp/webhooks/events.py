"""Processor-neutral webhook events, produced by each processor's parser and applied by the service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from refund_mcp.domain.models import RefundStatus


@dataclass(frozen=True, slots=True)
class RefundEvent:
    """A processor says something about a refund (ours or one made elsewhere)."""

    processor: str
    event_id: str  # for replay protection: the processor's event id (or a stable digest of the item)
    processor_refund_id: str
    status: RefundStatus
    processor_status: str
    transaction_id: str | None = None  # the processor's payment id
    # Other ids the same payment may be on record under (Stripe: the charge behind a payment intent).
    other_transaction_ids: tuple[str, ...] = ()
    amount_minor: int | None = None
    currency: str | None = None
    our_refund_id: str | None = None  # from metadata / reference, when the refund is ours
    failure_reason: str | None = None
    occurred_at: datetime | None = None
    # The processor's own words (`processor_status`) for an earlier failure of this same refund that this
    # event overrides when the processor documents that a later outcome replaces it (Adyen: REFUND
    # success=false, then success=true for the same pspReference). Empty: final states stay final.
    supersedes_failure: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """A processor says a payment exists (Adyen AUTHORISATION/CAPTURE): it becomes known for lookups and refunds."""

    processor: str
    event_id: str
    transaction_id: str
    amount_minor: int
    currency: str
    captured_minor: int
    status: str
    refundable: bool = True
    customer_ref: str | None = None
    description: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """A well-formed, verified event of a kind refund-mcp does not act on (acknowledged, recorded)."""

    processor: str
    event_id: str
    kind: str


WebhookEvent = RefundEvent | PaymentEvent | IgnoredEvent
