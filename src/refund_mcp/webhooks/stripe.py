"""Stripe webhooks: the `Stripe-Signature` scheme and the refund events.

Signature (stripe-python `_webhook.py`): the header is `t=<unix time>,v1=<hex>[,v1=<hex>…]`
(other schemes such as `v0` are ignored); each v1 is the hex HMAC-SHA256, keyed with the
endpoint secret, of `"{t}." + raw body`. Any matching v1 passes (Stripe sends several while a
secret is being rolled). A timestamp more than 300 s old is refused (replays of captured
deliveries), and so is one more than 300 s ahead (a clock that far off cannot be trusted).

Events: `refund.created`, `refund.updated`, `refund.failed` and `charge.refund.updated` carry a
Refund in `data.object`; `charge.refunded` carries the Charge with its `refunds.data` (one event
per listed refund, ids `{event id}:{refund id}`). Which object it is comes from `object`, so
either shape works for any of these types. Our refund id is `metadata.refund_mcp_id` (set by the
adapter). Every other type is acknowledged and ignored.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from refund_mcp.processors import stripe as adapter
from refund_mcp.processors._amounts import IncompleteAnswer
from refund_mcp.webhooks import _common
from refund_mcp.webhooks.errors import WebhookMalformed, WebhookSignatureError
from refund_mcp.webhooks.events import IgnoredEvent, RefundEvent, WebhookEvent

PROCESSOR = "stripe"
SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300
REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed", "charge.refund.updated", "charge.refunded"})


def _parse_header(value: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(","):
        key, sep, found = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(found)
            except ValueError:
                timestamp = None
        elif key == "v1" and found:
            signatures.append(found)
    if timestamp is None or not signatures:
        raise WebhookSignatureError("the Stripe-Signature header has no timestamp or no v1 signature")
    return timestamp, signatures


def verify_stripe(
    raw_body: bytes, headers: Mapping[str, str], secret: str, now: datetime, *, tolerance: int = TOLERANCE_SECONDS
) -> None:
    """Raises WebhookSignatureError unless one v1 signature matches and the timestamp is fresh."""
    value = _common.header(headers, SIGNATURE_HEADER)
    if not value:
        raise WebhookSignatureError("the Stripe-Signature header is missing")
    timestamp, signatures = _parse_header(value)
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest().encode()
    if not any(hmac.compare_digest(expected, candidate.encode("utf-8", "replace")) for candidate in signatures):
        raise WebhookSignatureError("no v1 signature in Stripe-Signature matches this body")
    age = now.timestamp() - timestamp
    if age > tolerance:
        raise WebhookSignatureError(f"the Stripe-Signature timestamp is more than {tolerance} s old")
    if age < -tolerance:
        raise WebhookSignatureError(f"the Stripe-Signature timestamp is more than {tolerance} s in the future")


def _occurred_at(created: Any) -> datetime | None:
    if isinstance(created, int) and not isinstance(created, bool) and 0 <= created < 2**33:
        return datetime.fromtimestamp(created, UTC)
    return None


def _refund_event(event_id: str, obj: Any, occurred_at: datetime | None) -> RefundEvent:
    try:
        refund = adapter.StripeRefundResponse.model_validate(obj)
    except ValidationError as exc:
        raise WebhookMalformed("a refund in the Stripe event is not a Stripe Refund object") from exc
    try:
        answer = adapter.refund_from_wire(refund, request_id=None)
    except IncompleteAnswer as exc:
        raise WebhookMalformed(f"the Stripe refund's amount cannot be read ({exc})") from exc
    # The payment may be on record as its payment intent or as its charge, whichever the agent used.
    other = (refund.charge,) if refund.payment_intent and refund.charge else ()
    return _common.refund_event(
        PROCESSOR,
        event_id,
        answer,
        our_refund_id=refund.metadata.get("refund_mcp_id"),
        occurred_at=occurred_at,
        other_transaction_ids=other,
    )


def parse_stripe(raw_body: bytes) -> list[WebhookEvent]:
    """The refund-mcp events in one Stripe Event. Raises WebhookMalformed."""
    body = _common.json_object(raw_body, "Stripe")
    event_id = _common.text(body.get("id"), "the event id") or ""
    kind = _common.text(body.get("type"), "the event type", limit=100) or ""
    if kind not in REFUND_EVENTS:
        return [IgnoredEvent(PROCESSOR, event_id, kind)]
    data = body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise WebhookMalformed("the Stripe event has no data.object")
    occurred_at = _occurred_at(body.get("created"))
    if obj.get("object") == "refund":
        return [_refund_event(event_id, obj, occurred_at)]
    if obj.get("object") == "charge":
        refunds = obj.get("refunds")
        listed = refunds.get("data") if isinstance(refunds, dict) else None
        if not isinstance(listed, list):
            # Charges stopped embedding refunds in API version 2022-11-15; the refund.* events carry them.
            return [IgnoredEvent(PROCESSOR, event_id, f"{kind} without refunds.data")]
        events: list[WebhookEvent] = []
        for item in listed:
            refund_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(refund_id, str):
                raise WebhookMalformed("a refund in the charge's refunds.data has no id")
            events.append(_refund_event(f"{event_id}:{refund_id}", item, occurred_at))
        return events or [IgnoredEvent(PROCESSOR, event_id, f"{kind} with no refunds listed")]
    raise WebhookMalformed("the Stripe event's data.object is neither a refund nor a charge")
