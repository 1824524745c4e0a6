"""PayPal webhooks: verification through PayPal's own API, and the capture-refund events.

Verification (option A of the reference, the official one): `POST
/v1/notifications/verify-webhook-signature` with a Bearer token, the five PAYPAL-* headers, the
configured webhook id and the event; PayPal answers `verification_status` SUCCESS or FAILURE.
The offline alternative (RSA over `transmission_id|time|webhook_id|crc32(body)` with a
certificate downloaded from `cert_url`) is confirmed only by secondary sources, so it is not used.
Before asking PayPal, deliveries that cannot be genuine are refused here: a missing header, a
value over the spec's length limits, or a `cert_url` that is not a plain https URL on one of
PayPal's API hosts (an exact allow-list, read by a strict pattern rather than a lenient URL parser:
`https://evil.example\\@api.paypal.com/c` is refused). Asking PayPal is an outbound call made for a
delivery nobody has authenticated yet, so it passes the route's VerificationGate (limits.py) first.

Events: `PAYMENT.CAPTURE.REFUNDED` (the merchant refunded a capture) and
`PAYMENT.CAPTURE.REVERSED` (PayPal reversed it) carry the refund in `resource`; `custom_id` is
our refund id (set by the adapter), the capture id comes from the `up` link. Every other type is
acknowledged and ignored.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping

from pydantic import ValidationError

from refund_mcp.domain.errors import ProcessorError, RefundError, ValidationFailed
from refund_mcp.processors import paypal as adapter
from refund_mcp.processors._amounts import IncompleteAnswer
from refund_mcp.webhooks import _common
from refund_mcp.webhooks.errors import WebhookMalformed, WebhookSignatureError, WebhookVerificationUnavailable
from refund_mcp.webhooks.events import IgnoredEvent, WebhookEvent
from refund_mcp.webhooks.limits import VerificationGate

PROCESSOR = "paypal"
REFUND_EVENTS = frozenset({"PAYMENT.CAPTURE.REFUNDED", "PAYMENT.CAPTURE.REVERSED"})
# header -> (field of verify_webhook_signature, maxLength in the spec)
SIGNATURE_HEADERS = {
    "PAYPAL-AUTH-ALGO": ("auth_algo", 100),
    "PAYPAL-CERT-URL": ("cert_url", 500),
    "PAYPAL-TRANSMISSION-ID": ("transmission_id", 50),
    "PAYPAL-TRANSMISSION-SIG": ("transmission_sig", 500),
    "PAYPAL-TRANSMISSION-TIME": ("transmission_time", 100),
}
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
# The hosts PayPal serves webhook certificates from; nothing else is ever passed on to PayPal.
CERT_HOSTS = frozenset({"api.paypal.com", "api-m.paypal.com", "api.sandbox.paypal.com", "api-m.sandbox.paypal.com"})
# scheme, host, optional :443, then a path of unreserved characters and slashes: no userinfo, no
# backslash, no query or fragment, nothing two URL parsers could read differently.
_CERT_URL = re.compile(r"^https://(?P<host>[A-Za-z0-9.-]+)(?::443)?(?P<path>/[A-Za-z0-9._~/-]*)$")


def cert_url_allowed(url: str) -> bool:
    match = _CERT_URL.fullmatch(url)
    return match is not None and match.group("host").lower() in CERT_HOSTS


def signature_fields(headers: Mapping[str, str]) -> dict[str, str]:
    """The verify-webhook-signature fields from the delivery's headers. Raises WebhookSignatureError."""
    fields: dict[str, str] = {}
    for name, (field, limit) in SIGNATURE_HEADERS.items():
        value = (_common.header(headers, name) or "").strip()
        if not value:
            raise WebhookSignatureError(f"the {name} header is missing")
        if len(value) > limit or not _PRINTABLE.match(value):
            raise WebhookSignatureError(f"the {name} header is not a PayPal value")
        fields[field] = value
    if not cert_url_allowed(fields["cert_url"]):
        raise WebhookSignatureError("PAYPAL-CERT-URL is not an https URL on one of PayPal's API hosts")
    return fields


async def verify_paypal(
    raw_body: bytes,
    headers: Mapping[str, str],
    webhook_id: str,
    processor: adapter.PayPalProcessor,
    *,
    gate: VerificationGate | None = None,
    source: str = "unknown",
) -> None:
    """Raises WebhookSignatureError unless PayPal says SUCCESS, WebhookMalformed for a body that
    is not a JSON object, WebhookVerificationUnavailable when PayPal cannot be asked,
    WebhookRateLimited when `gate` does not admit another verification for `source` now."""
    fields = signature_fields(headers)
    _common.json_object(raw_body, "PayPal")  # sent to PayPal verbatim, so it must be one
    admitted = gate.admit(source) if gate is not None else contextlib.nullcontext()
    try:
        async with admitted:
            authentic = await processor.verify_webhook_signature(webhook_id=webhook_id, raw_event=raw_body, **fields)
    except ProcessorError as exc:
        if exc.http_status in (400, 422):
            raise WebhookSignatureError("PayPal refused to verify these PAYPAL-* values") from exc
        raise WebhookVerificationUnavailable(f"PayPal could not verify the delivery now ({exc.code})") from exc
    except RefundError as exc:
        raise WebhookVerificationUnavailable(f"PayPal could not verify the delivery now ({exc.code})") from exc
    if not authentic:
        raise WebhookSignatureError("PayPal says the signature does not verify")


def parse_paypal(raw_body: bytes) -> list[WebhookEvent]:
    """The refund-mcp events in one PayPal webhook event. Raises WebhookMalformed."""
    body = _common.json_object(raw_body, "PayPal")
    event_id = _common.text(body.get("id"), "the event id") or ""
    kind = _common.text(body.get("event_type"), "the event type", limit=100) or ""
    if kind not in REFUND_EVENTS:
        return [IgnoredEvent(PROCESSOR, event_id, kind)]
    resource = body.get("resource")
    if not isinstance(resource, dict):
        raise WebhookMalformed("the PayPal event has no resource")
    try:
        refund = adapter.PayPalRefundResponse.model_validate(resource)
        answer = adapter.refund_from_wire(refund, request_id=None)
    except (ValidationError, ValidationFailed, IncompleteAnswer) as exc:
        raise WebhookMalformed("the PayPal event's resource is not a refund with an amount") from exc
    return [
        _common.refund_event(
            PROCESSOR,
            event_id,
            answer,
            our_refund_id=refund.custom_id,
            occurred_at=_common.iso_time(body.get("create_time")),
        )
    ]
