"""Helpers shared by the per-processor webhook modules: headers, JSON, and bounds on what a
signed event may put into the store (column sizes, amounts), so that even an authentic but
odd event is refused as malformed (400) rather than failing in the database (500)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from refund_mcp.domain.models import ProcessorRefund
from refund_mcp.domain.money import MAX_AMOUNT_MINOR
from refund_mcp.webhooks.errors import WebhookMalformed
from refund_mcp.webhooks.events import RefundEvent

# Column sizes in store/tables.py.
ID_MAX = 200  # webhook_events.event_id, refunds.processor_refund_id
TRANSACTION_ID_MAX = 180  # transactions.processor_transaction_id
STATUS_MAX = 40  # refunds.processor_status, transactions.status
REASON_MAX = 500
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, case-insensitively, from Starlette's Headers or a plain dict."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, found in headers.items():
        if key.lower() == wanted:
            return found
    return None


def json_object(raw_body: bytes, what: str) -> dict[str, Any]:
    """The body as a JSON object. Raises WebhookMalformed."""
    try:
        text = raw_body.decode("utf-8")
        value = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WebhookMalformed(f"the {what} body is not UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise WebhookMalformed(f"the {what} body is not a JSON object")
    return value


def text(value: Any, what: str, *, limit: int = ID_MAX, required: bool = True) -> str | None:
    """A non-empty string of at most `limit` characters without control characters."""
    if value is None or value == "":
        if required:
            raise WebhookMalformed(f"{what} is missing")
        return None
    if not isinstance(value, str) or len(value) > limit or any(ord(ch) < 32 for ch in value):
        raise WebhookMalformed(f"{what} is not a string of at most {limit} printable characters")
    return value


def iso_time(value: Any) -> datetime | None:
    """An RFC 3339 time with its offset, or None: a missing or odd time never refuses an event."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
        # In UTC here, so a time that cannot be stored (year 1 at +01:00) is dropped, not a 500 later.
        return moment.astimezone(UTC) if moment.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None


def amount(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_AMOUNT_MINOR:
        raise WebhookMalformed(f"{what} is not a whole number of minor units")
    return value


def currency(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise WebhookMalformed(f"{what} is not a 3-letter currency code")
    return value.upper()


def refund_event(
    processor: str,
    event_id: str,
    answer: ProcessorRefund,
    *,
    our_refund_id: str | None,
    occurred_at: datetime | None,
    other_transaction_ids: tuple[str, ...] = (),
    supersedes_failure: tuple[str, ...] = (),
) -> RefundEvent:
    """A RefundEvent from an adapter's mapping of the processor's refund object, bounds-checked.
    Raises WebhookMalformed."""
    transaction_ids = tuple(
        tid for tid in (answer.transaction_id, *other_transaction_ids) if tid is not None
    )
    for tid in transaction_ids:
        text(tid, "the payment id", limit=TRANSACTION_ID_MAX)
    return RefundEvent(
        processor=processor,
        event_id=text(event_id, "the event id") or "",
        processor_refund_id=text(answer.processor_refund_id, "the refund id") or "",
        status=answer.status,
        processor_status=answer.processor_status[:STATUS_MAX],
        transaction_id=transaction_ids[0] if transaction_ids else None,
        other_transaction_ids=transaction_ids[1:],
        amount_minor=amount(answer.amount_minor, "the refund amount"),
        currency=currency(answer.currency, "the refund currency"),
        our_refund_id=our_refund_id if isinstance(our_refund_id, str) and len(our_refund_id) <= ID_MAX else None,
        failure_reason=answer.failure_reason[:REASON_MAX] if answer.failure_reason else None,
        occurred_at=occurred_at,
        supersedes_failure=supersedes_failure,
    )
