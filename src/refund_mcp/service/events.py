"""Applying verified processor events: refund status changes, refunds made elsewhere, payments made known.

Replays are no-ops (each event id is recorded once); final states never regress; a late failure
after success is applied as `failed` and audited (the status rules in domain/models.py). The one
exception is carried by the event itself, not by the status rules: an event that names the earlier
failure it supersedes (`RefundEvent.supersedes_failure`, set by a processor whose documentation says a
later outcome replaces an earlier one: Adyen's REFUND success=false then success=true) turns that
failed refund into `succeeded`, audited as `refund.failure_superseded`.

One case is put off rather than decided: a refund event that names no refund-mcp id (Square's
carry none) for a payment on which one of our refunds of the same amount is still in doubt (sent,
or possibly sent, with no answer yet). Recording it as external could count the same money twice
and would later collide with our own refund's processor id; ignoring it could lose a real
external refund. The event is left unrecorded ("deferred") so the processor delivers it again,
by when our refund has its processor id and the event matches it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.ids import is_refund_id, new_refund_id
from refund_mcp.domain.models import ProcessorRefund, RefundStatus, TransactionInfo
from refund_mcp.observability.tracing import traced_async
from refund_mcp.service import identity
from refund_mcp.service.recording import Recorder
from refund_mcp.store import queries, tables
from refund_mcp.store.database import Database
from refund_mcp.webhooks.events import IgnoredEvent, PaymentEvent, RefundEvent, WebhookEvent


class Events:
    """Applies verified webhook events; a refund's new status goes through the Recorder."""

    def __init__(self, db: Database, recorder: Recorder, now: Callable[[], datetime]) -> None:
        self.db = db
        self.recorder = recorder
        self.now = now

    @traced_async("webhook.apply", lambda outcome: {"refund_mcp.webhook.outcome": outcome})
    async def apply_event(self, event: WebhookEvent) -> str:
        """Record one verified event; returns what happened: applied | replay | ignored | external | unknown."""
        now = self.now()
        async with self.db.write() as conn:
            # The event is recorded first, so a second delivery of it at the same moment (another replica, on
            # PostgreSQL) waits for this one and is then a replay, instead of applying it twice.
            if not await queries.record_event(conn, event.processor, event.event_id, now):
                return "replay"
            if isinstance(event, IgnoredEvent):
                await audit.append(conn, AuditEntry(actor=f"webhook:{event.processor}", action="webhook.ignored", target=None, outcome="ignored", detail={"kind": event.kind, "event_id": event.event_id}))
                outcome = "ignored"
            elif isinstance(event, PaymentEvent):
                outcome = await self._apply_payment_event(conn, event, now)
            else:
                outcome = await self._apply_refund_event(conn, event, now)
            if outcome == "deferred":  # left unrecorded, so the processor delivers it again
                await queries.forget_event(conn, event.processor, event.event_id)
            return outcome

    async def _apply_payment_event(self, conn: Any, event: PaymentEvent, now: Any) -> str:
        canonical = f"{event.processor}:{event.transaction_id}"
        # Read locked, even when the payment is new (then recorded as this event says first), so two events of one
        # payment at the same moment each build on the other's result: a CAPTURE is never undone by its AUTHORISATION.
        existing = await queries.get_transaction(conn, canonical) or await queries.insert_transaction_if_absent(
            conn, canonical, _event_payment(event), now
        )
        captured = max(event.captured_minor, existing.captured_minor)
        info = TransactionInfo(
            processor=event.processor,
            transaction_id=event.transaction_id,
            # A CAPTURE may be partial: the payment's amount never shrinks because of one.
            amount_minor=max(event.amount_minor, existing.amount_minor),
            currency=event.currency,
            captured_minor=captured,
            refunded_minor=existing.processor_refunded_minor,
            status=event.status,
            created_at=existing.created_at or event.occurred_at,
            customer_ref=event.customer_ref or existing.customer_ref,
            description=event.description or existing.description,
            refundable=event.refundable,
        )
        await queries.upsert_transaction(conn, canonical, info, now)
        await audit.append(
            conn,
            AuditEntry(actor=f"webhook:{event.processor}", action="transaction.recorded", target=canonical, outcome=event.status, detail={"event_id": event.event_id, "captured_minor": captured}),
        )
        return "applied"

    async def _apply_refund_event(self, conn: Any, event: RefundEvent, now: Any) -> str:
        row = await queries.get_refund_by_processor_id(conn, event.processor, event.processor_refund_id)
        if row is None and event.our_refund_id and is_refund_id(event.our_refund_id):
            row = await queries.get_refund(conn, event.our_refund_id)
            # Ours only if nothing contradicts it: same processor, and not already tied to another refund there.
            if row is not None and (
                row.processor != event.processor
                or (row.processor_refund_id is not None and row.processor_refund_id != event.processor_refund_id)
            ):
                row = None
        answer = ProcessorRefund(
            processor_refund_id=event.processor_refund_id,
            status=event.status,
            amount_minor=event.amount_minor or 0,
            currency=event.currency or "",
            processor_status=event.processor_status,
            failure_reason=event.failure_reason,
        )
        if row is not None:
            if _supersedes(event, row):
                await self._supersede_failure(conn, row, event, now)
                return "applied"
            await self.recorder.apply_processor_state(conn, row.id, answer, actor=f"webhook:{event.processor}", action="refund.webhook")
            return "applied"
        # Not ours: a refund made elsewhere (e.g. a dashboard). Record it so balances stay right.
        canonical, txn = await self._event_transaction(conn, event)
        if txn is not None and event.our_refund_id is None and await self._in_doubt_twin(conn, txn.id, event):
            await audit.append(
                conn,
                AuditEntry(actor=f"webhook:{event.processor}", action="webhook.deferred", target=txn.id, outcome="deferred",
                           detail={"event_id": event.event_id, "processor_refund_id": event.processor_refund_id,
                                   "why": "a refund-mcp refund of this amount on this payment has no processor answer yet"}),
            )
            return "deferred"
        if txn is None or event.amount_minor is None:
            await audit.append(
                conn,
                AuditEntry(actor=f"webhook:{event.processor}", action="webhook.unknown_refund", target=canonical, outcome="ignored",
                           detail={"event_id": event.event_id, "processor_refund_id": event.processor_refund_id, "why": "payment not on record"}),
            )
            return "unknown"
        refund_id = new_refund_id()
        await queries.insert_refund(
            conn,
            id=refund_id,
            transaction_id=txn.id,
            processor=event.processor,
            processor_refund_id=event.processor_refund_id,
            status=event.status.value,
            amount_minor=event.amount_minor,
            currency=event.currency or txn.currency,
            reason="requested_by_customer",
            note="made outside refund-mcp (recorded from a webhook)",
            actor="external",
            origin="external",
            fingerprint=f"external:{event.processor}:{event.processor_refund_id}"[:64],
            attempts=0,
            maybe_sent=True,
            processor_status=event.processor_status,
            failure_reason=event.failure_reason,
            created_at=event.occurred_at or now,
            updated_at=now,
        )
        await audit.append(
            conn,
            AuditEntry(actor=f"webhook:{event.processor}", action="refund.external", target=refund_id, outcome=event.status.value,
                       detail={"event_id": event.event_id, "processor_refund_id": event.processor_refund_id, "transaction_id": txn.id, "amount_minor": event.amount_minor}),
        )
        return "external"

    async def _supersede_failure(self, conn: Any, row: Any, event: RefundEvent, now: Any) -> None:
        """Record that the processor's later outcome replaced an earlier failure: the refund succeeded."""
        await queries.update_refund(
            conn,
            row.id,
            status=RefundStatus.SUCCEEDED.value,
            processor_refund_id=event.processor_refund_id,
            processor_status=event.processor_status,
            failure_reason=None,
            next_attempt_at=None,
            claimed_until=None,
            updated_at=now,
        )
        await audit.append(
            conn,
            AuditEntry(
                actor=f"webhook:{event.processor}",
                action="refund.failure_superseded",
                target=row.id,
                outcome=RefundStatus.SUCCEEDED.value,
                detail={
                    "event_id": event.event_id,
                    "from": row.status,
                    "to": RefundStatus.SUCCEEDED.value,
                    "superseded": row.processor_status,
                    "superseded_failure_reason": row.failure_reason,
                    "processor_status": event.processor_status,
                },
            ),
        )

    async def _event_transaction(self, conn: Any, event: RefundEvent) -> tuple[str | None, Any]:
        """The payment on record under any of the ids the event names: (canonical id, row or None)."""
        candidates = [tid for tid in (event.transaction_id, *event.other_transaction_ids) if tid]
        for bare_id in candidates:
            # A payment's other names resolve to the record its refunds and balance are kept under.
            canonical = await identity.canonical_of(conn, event.processor, bare_id) or f"{event.processor}:{bare_id}"
            txn = await queries.get_transaction(conn, canonical)
            if txn is not None:
                return txn.id, txn
        return (f"{event.processor}:{candidates[0]}" if candidates else None), None

    async def _in_doubt_twin(self, conn: Any, transaction_id: str, event: RefundEvent) -> bool:
        """Whether one of our refunds on this payment, of the event's amount, may be at the processor
        without our knowing its processor id (an attempt in flight or with an unknown outcome)."""
        R = tables.refunds
        query = select(R.c.id).where(
            R.c.transaction_id == transaction_id,
            R.c.processor_refund_id.is_(None),
            R.c.status == RefundStatus.QUEUED.value,
            or_(R.c.maybe_sent.is_(True), R.c.claimed_until.is_not(None)),
            R.c.amount_minor == event.amount_minor,
            R.c.currency == event.currency,
        )
        return (await conn.execute(query.limit(1))).first() is not None


def _event_payment(event: PaymentEvent) -> TransactionInfo:
    """The payment as this event alone describes it."""
    return TransactionInfo(
        processor=event.processor, transaction_id=event.transaction_id, amount_minor=event.amount_minor, currency=event.currency,
        captured_minor=event.captured_minor, refunded_minor=0, status=event.status, created_at=event.occurred_at,
        customer_ref=event.customer_ref, description=event.description, refundable=event.refundable,
    )


def _supersedes(event: RefundEvent, row: Any) -> bool:
    """Whether this success replaces the refund's recorded failure (only the failure the event names)."""
    return (
        event.status is RefundStatus.SUCCEEDED
        and row.status == RefundStatus.FAILED.value
        and row.processor_status is not None
        and row.processor_status in event.supersedes_failure
        and row.processor_refund_id in (None, event.processor_refund_id)
    )
