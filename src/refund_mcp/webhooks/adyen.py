"""Adyen standard webhooks: per-item HMAC signatures, refund outcomes and payments made known.

Signature (Adyen python library `util.py`, the same in connector-service): each
NotificationRequestItem is signed on its own. The signed string is `pspReference`,
`originalReference`, `merchantAccountCode`, `merchantReference`, `amount.value`,
`amount.currency`, `eventCode` and `success` joined with `:` (a missing field is empty); the key
is the HEX-DECODED HMAC key; the base64 HMAC-SHA256 must equal `additionalData.hmacSignature`.
A delivery is accepted only if every item verifies: one bad item refuses the whole delivery
(401), so Adyen resends it whole and nothing is applied twice or half.

The signature covers only those eight fields. `eventDate`, `reason` and `additionalData`
(`modification.action`, `shopperEmail`) are trusted as far as TLS protects the delivery; none of
them can move money on its own (a changed `modification.action` can only block refunds of a
payment or mark one of our refunds succeeded, never release an amount).

Adyen has no event id. An item is identified by (pspReference, eventCode, success), which Adyen
documents as unique per notification (`success` may flip on a later notification for the same
modification), so the id is a digest of those three.

A flipped outcome. Adyen's webhook documentation (docs.adyen.com, "Handle webhook events" and
"Webhook structure and types") identifies an event by eventCode and pspReference, and warns that the
same event can be sent again with a different `success`: a REFUND with `success=false` followed by
one with `success=true` for the same pspReference means the refund did go through after all; the
later outcome is the one to act on. So a REFUND (or CANCEL_OR_REFUND refund) with success=true
supersedes an earlier failure of the same refund *that came from success=false of the same event
code*: the refund becomes `succeeded` and counts as refunded, and the flip is audited
(`refund.failure_superseded`). Nothing else reopens a final state: a failure from REFUND_FAILED or
REFUNDED_REVERSED (the scheme rejected or reversed the refund after Adyen accepted it) is later news
than any REFUND success and is never superseded, and other processors' events never carry this.

Mapping:
    REFUND success=true          our/their refund -> succeeded (also over an earlier REFUND success=false)
    REFUND success=false         -> failed (Adyen refused it; `reason` says why)
    REFUND_FAILED, REFUNDED_REVERSED (success=true)
                                 -> failed, even after success (the status rules apply it and audit it)
    CANCEL_OR_REFUND             modification.action=refund: like REFUND (success=true supersedes an
                                 earlier CANCEL_OR_REFUND success=false); =cancel: the payment was
                                 cancelled before capture, so it becomes non-refundable
    AUTHORISATION success=true   the payment becomes known, counted as CAPTURED: Adyen captures
                                 immediately unless the merchant account is set to delayed/manual
                                 capture. With manual capture, a refund of an uncaptured payment is
                                 refused by Adyen in its REFUND webhook (success=false), so money is
                                 never at risk; only the refundable figure is optimistic until then.
    CAPTURE success=true         confirms the capture (of `originalReference`)
    CAPTURE success=false        the payment is marked non-refundable (money never arrived)
    AUTHORISATION success=false, REFUND_FAILED/REFUNDED_REVERSED success=false, anything else
                                 acknowledged and ignored
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from refund_mcp.domain.models import ProcessorRefund, RefundStatus
from refund_mcp.processors import adyen as adapter
from refund_mcp.processors._amounts import IncompleteAnswer
from refund_mcp.webhooks import _common
from refund_mcp.webhooks.errors import WebhookMalformed, WebhookNotConfigured, WebhookSignatureError
from refund_mcp.webhooks.events import IgnoredEvent, PaymentEvent, WebhookEvent

PROCESSOR = "adyen"
ACKNOWLEDGEMENT = "[accepted]"  # the body Adyen expects with the 2xx
SIGNED_FIELDS = (
    "pspReference",
    "originalReference",
    "merchantAccountCode",
    "merchantReference",
    "value",
    "currency",
    "eventCode",
    "success",
)
CUSTOMER_REF_MAX = 320
DESCRIPTION_MAX = 500


def hmac_key(hex_key: str) -> bytes:
    """The configured key, hex-decoded. Raises WebhookNotConfigured (503) when it is not hex."""
    try:
        return binascii.unhexlify(hex_key.strip())
    except (binascii.Error, ValueError) as exc:
        raise WebhookNotConfigured("ADYEN_HMAC_KEY is not a hexadecimal key", status_code=503) from exc


def notification_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The NotificationRequestItems of a delivery. Raises WebhookMalformed."""
    wrapped = body.get("notificationItems")
    if not isinstance(wrapped, list) or not wrapped:
        raise WebhookMalformed("the Adyen delivery has no notificationItems")
    items = []
    for entry in wrapped:
        item = entry.get("NotificationRequestItem") if isinstance(entry, dict) else None
        if not isinstance(item, dict):
            raise WebhookMalformed("a notificationItems entry has no NotificationRequestItem")
        items.append(item)
    return items


def signing_string(item: Mapping[str, Any]) -> str:
    """The `:`-joined signed fields of one item. Raises WebhookMalformed for a field of the wrong type."""
    money = item.get("amount", {})
    if not isinstance(money, dict):
        raise WebhookMalformed("an item's amount is not an object")
    values = {**item, "value": money.get("value"), "currency": money.get("currency")}
    parts = []
    for name in SIGNED_FIELDS:
        value = values.get(name)
        if value is None:
            parts.append("")
        elif isinstance(value, str) or (name == "value" and isinstance(value, int) and not isinstance(value, bool)):
            parts.append(str(value))
        else:
            raise WebhookMalformed(f"an item's {name} is not a string")
    return ":".join(parts)


def verify_adyen(raw_body: bytes, headers: Mapping[str, str], secret: str, now: datetime | None = None) -> None:
    """Raises WebhookSignatureError unless every item's hmacSignature verifies, WebhookMalformed
    for a body without items, WebhookNotConfigured for a key that is not hex. Adyen signs no
    timestamp, so `now` and `headers` play no part (they are taken for a uniform signature)."""
    key = hmac_key(secret)
    for item in notification_items(_common.json_object(raw_body, "Adyen")):
        additional = item.get("additionalData")
        given = additional.get("hmacSignature") if isinstance(additional, dict) else None
        if not isinstance(given, str) or not given:
            raise WebhookSignatureError("an Adyen notification item carries no hmacSignature")
        digest = hmac.new(key, signing_string(item).encode("utf-8"), hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(digest), given.encode("utf-8", "replace")):
            raise WebhookSignatureError("an Adyen notification item's hmacSignature does not match")


def event_id(psp_reference: str, event_code: str, success: bool) -> str:
    digest = hashlib.sha256(json.dumps([psp_reference, event_code, success]).encode()).hexdigest()
    return f"adyen-{digest}"


def _success(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise WebhookMalformed("an item's success is not \"true\" or \"false\"")


def _item_event(item: dict[str, Any]) -> WebhookEvent:
    code = _common.text(item.get("eventCode"), "the eventCode", limit=60) or ""
    success = _success(item.get("success"))
    psp = _common.text(item.get("pspReference"), "the pspReference") or ""
    eid = event_id(psp, code, success)
    original = _common.text(item.get("originalReference"), "the originalReference", limit=_common.TRANSACTION_ID_MAX, required=False)
    additional = item.get("additionalData") if isinstance(item.get("additionalData"), dict) else {}
    occurred_at = _common.iso_time(item.get("eventDate"))
    money = item.get("amount")
    if not isinstance(money, dict):
        raise WebhookMalformed("an item has no amount")
    currency = _common.currency(money.get("currency"), "the amount currency")
    try:  # Adyen's minor units are not always ours (CLP, ISK: two decimals at Adyen)
        value = adapter.AMOUNTS.from_wire(_common.amount(money.get("value"), "the amount value"), currency, what="amount")
    except IncompleteAnswer as exc:
        raise WebhookMalformed(f"an item's amount cannot be read ({exc})") from exc
    merchant_reference = item.get("merchantReference") if isinstance(item.get("merchantReference"), str) else None
    reason = item.get("reason") if isinstance(item.get("reason"), str) else None

    def refund(status: RefundStatus) -> WebhookEvent:
        # A success=true outcome replaces a success=false one for the same event code (see the module docstring).
        supersedes = (f"{code}:false",) if status is RefundStatus.SUCCEEDED else ()
        answer = ProcessorRefund(
            processor_refund_id=psp,
            status=status,
            amount_minor=value,
            currency=currency,
            processor_status=f"{code}:{'true' if success else 'false'}",
            failure_reason=(reason or code) if status is RefundStatus.FAILED else None,
            transaction_id=original,
        )
        # The adapter sends our refund id as the refund's `reference`, which comes back as merchantReference.
        return _common.refund_event(
            PROCESSOR, eid, answer, our_refund_id=merchant_reference, occurred_at=occurred_at, supersedes_failure=supersedes
        )

    def payment(transaction_id: str | None, *, captured: int, status: str, refundable: bool) -> WebhookEvent:
        if transaction_id is None:
            raise WebhookMalformed(f"a {code} item does not name the payment")
        shopper = additional.get("shopperEmail") or additional.get("shopperReference")
        return PaymentEvent(
            processor=PROCESSOR,
            event_id=eid,
            transaction_id=_common.text(transaction_id, "the payment pspReference", limit=_common.TRANSACTION_ID_MAX) or "",
            amount_minor=value,
            currency=currency,
            captured_minor=captured,
            status=status,
            refundable=refundable,
            customer_ref=shopper[:CUSTOMER_REF_MAX] if isinstance(shopper, str) and shopper else None,
            description=merchant_reference[:DESCRIPTION_MAX] if merchant_reference else None,
            occurred_at=occurred_at,
        )

    if code == "REFUND":
        return refund(RefundStatus.SUCCEEDED if success else RefundStatus.FAILED)
    if code in ("REFUND_FAILED", "REFUNDED_REVERSED") and success:
        return refund(RefundStatus.FAILED)
    if code == "CANCEL_OR_REFUND":
        action = additional.get("modification.action")
        if action == "refund":
            return refund(RefundStatus.SUCCEEDED if success else RefundStatus.FAILED)
        if action == "cancel" and success:
            return payment(original, captured=0, status="cancelled", refundable=False)
    if code == "AUTHORISATION" and success:
        return payment(psp, captured=value, status="authorised", refundable=True)
    if code == "CAPTURE":
        if success:
            return payment(original, captured=value, status="captured", refundable=True)
        return payment(original, captured=0, status="capture_failed", refundable=False)
    return IgnoredEvent(PROCESSOR, eid, f"{code}:{'true' if success else 'false'}")


def parse_adyen(raw_body: bytes) -> list[WebhookEvent]:
    """One event per NotificationRequestItem. Raises WebhookMalformed."""
    return [_item_event(item) for item in notification_items(_common.json_object(raw_body, "Adyen"))]
