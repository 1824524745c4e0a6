"""Square webhooks: the `x-square-hmacsha256-signature` scheme and the refund events.

Signature (square-python-sdk `webhooks_helper.py`): base64 of HMAC-SHA256, keyed with the
subscription's signature key (UTF-8), over the notification URL followed by the raw body. The URL
is the one configured in Square (SQUARE_WEBHOOK_URL) and must match byte for byte, which is why
it comes from configuration and never from the request (a proxy may rewrite host or scheme).

Events: `refund.created` and `refund.updated` carry `data.object.refund` (a PaymentRefund);
the event id is `event_id`. A PaymentRefund does not carry our refund id, so Square refunds are
matched by Square's refund id alone. Every other type is acknowledged and ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

from pydantic import ValidationError

from refund_mcp.processors import square as adapter
from refund_mcp.processors._amounts import IncompleteAnswer
from refund_mcp.webhooks import _common
from refund_mcp.webhooks.errors import WebhookMalformed, WebhookSignatureError
from refund_mcp.webhooks.events import IgnoredEvent, WebhookEvent

PROCESSOR = "square"
SIGNATURE_HEADER = "x-square-hmacsha256-signature"
REFUND_EVENTS = frozenset({"refund.created", "refund.updated"})


def verify_square(
    raw_body: bytes, headers: Mapping[str, str], secret: str, now: datetime | None = None, *, notification_url: str
) -> None:
    """Raises WebhookSignatureError unless the signature header matches. Square signs no
    timestamp, so `now` plays no part (it is taken for a uniform signature)."""
    given = _common.header(headers, SIGNATURE_HEADER)
    if not given:
        raise WebhookSignatureError("the x-square-hmacsha256-signature header is missing")
    digest = hmac.new(secret.encode(), notification_url.encode() + raw_body, hashlib.sha256).digest()
    if not hmac.compare_digest(base64.b64encode(digest), given.strip().encode("utf-8", "replace")):
        raise WebhookSignatureError("the x-square-hmacsha256-signature does not match this body and URL")


def parse_square(raw_body: bytes) -> list[WebhookEvent]:
    """The refund-mcp events in one Square webhook event. Raises WebhookMalformed."""
    body = _common.json_object(raw_body, "Square")
    event_id = _common.text(body.get("event_id"), "the event_id") or ""
    kind = _common.text(body.get("type"), "the event type", limit=100) or ""
    if kind not in REFUND_EVENTS:
        return [IgnoredEvent(PROCESSOR, event_id, kind)]
    data = body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    refund = obj.get("refund") if isinstance(obj, dict) else None
    if not isinstance(refund, dict):
        raise WebhookMalformed("the Square event has no data.object.refund")
    try:
        wire = adapter.SquarePaymentRefund.model_validate(refund)
    except ValidationError as exc:
        raise WebhookMalformed("data.object.refund is not a Square PaymentRefund") from exc
    try:
        answer = adapter.refund_from_wire(wire, request_id=None)
    except IncompleteAnswer as exc:
        raise WebhookMalformed(f"the Square refund's amount cannot be read ({exc})") from exc
    return [
        _common.refund_event(
            PROCESSOR,
            event_id,
            answer,
            our_refund_id=None,
            occurred_at=_common.iso_time(body.get("created_at")),
        )
    ]
