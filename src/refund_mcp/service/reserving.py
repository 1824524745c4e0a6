"""Reserving a refund: one serialized write that decides whether money may move, and holds it if so.

In order, in one transaction: the name the payment was asked about checked against our aliases (a name
that turns out to be another payment's alias rolls back and starts again from that payment,
Resolver.on_canonical); the payment's row (refreshed from the processor's answer, then locked),
so that two identical requests for one payment queue behind each other and the second sees what the
first committed; the idempotency key or the duplicate window; balance and currency; policy; the
human's confirmed terms; then the refund is inserted (`queued`, claimed by this call, or
`pending_approval`) with its idempotency key and audit record.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import (
    AlreadyRefunded,
    AmountExceedsRefundable,
    CurrencyMismatch,
    IdempotencyConflict,
    NotRefundable,
    PolicyDenied,
    RefundError,
    ValidationFailed,
)
from refund_mcp.domain.ids import new_refund_id
from refund_mcp.domain.models import RefundReason, RefundStatus, TransactionInfo
from refund_mcp.domain.money import MAX_AMOUNT_MINOR, format_display, normalize_currency
from refund_mcp.observability.tracing import traced_async
from refund_mcp.policy import Decision, Outcome, PolicyHolder, PolicyRequest
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.service import daily_caps, rendering, views
from refund_mcp.service.circuit import CircuitBreaker
from refund_mcp.service.confirmation import ConfirmedTerms
from refund_mcp.service.gate import decision_record
from refund_mcp.service.metadata import encode as encode_metadata
from refund_mcp.service.metadata import validate_metadata
from refund_mcp.service.resolving import Resolver, TransactionRef
from refund_mcp.settings import Settings
from refund_mcp.store import cap_usage, queries
from refund_mcp.store.database import Database


class Confirmation(enum.Enum):
    """What the human in the MCP client said, as far as the transport could ask."""

    NOT_ASKED = "not_asked"  # no confirmation was needed when the call started
    CONFIRMED = "confirmed"
    UNAVAILABLE = "unavailable"  # the client cannot ask its human: the refund waits for an approver


@dataclass(frozen=True)
class RefundInput:
    transaction_id: str
    reason: str
    amount_minor: int | None = None
    currency: str | None = None
    note: str | None = None
    idempotency_key: str | None = None
    processor: str | None = None
    customer_ref: str | None = None
    metadata: dict[str, str] | None = None  # the caller's, bounded by service/metadata.py


@dataclass(frozen=True)
class Evaluation:
    """Everything decided about one refund request from the payment's row, its balance and the policy."""

    txn: Row[Any]
    amount_minor: int
    balance: queries.Balance
    decision: Decision | None  # None when a balance/currency error came first
    error: RefundError | None
    window: cap_usage.WindowRead | None = None  # the daily caps' buckets the decision read


@dataclass(frozen=True)
class Reservation:
    """The reserve transaction's result: the refund, and whether this call claimed it to submit now."""

    view: views.RefundView
    row: Row[Any]
    submit: bool


def _sha(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, separators=(",", ":")).encode()).hexdigest()


def validate_input(req: RefundInput) -> tuple[str | None, RefundReason]:
    try:
        reason = RefundReason(req.reason)
    except ValueError:
        raise ValidationFailed(
            f"reason {req.reason[:40]!r} is not one of: {', '.join(r.value for r in RefundReason)}", fields=["reason"]
        ) from None
    currency = normalize_currency(req.currency) if req.currency is not None else None
    validate_metadata(req.metadata)
    if req.amount_minor is not None and not 0 < req.amount_minor <= MAX_AMOUNT_MINOR:
        raise ValidationFailed("amount_minor must be a positive whole number of minor units", fields=["amount_minor"])
    return currency, reason


def request_record(req: RefundInput) -> dict[str, Any]:
    return {
        "transaction_id": req.transaction_id,
        "reason": req.reason,
        "amount_minor": req.amount_minor,
        "currency": req.currency,
        "note": req.note,
        "idempotency_key": req.idempotency_key,
        "processor": req.processor,
        "customer_ref": req.customer_ref,
        "metadata": req.metadata,
    }


def policy_view(ev: Evaluation, policy: PolicyHolder) -> views.PolicyCheckView:
    return rendering.policy_view(ev.txn, ev.amount_minor, ev.balance, ev.decision, ev.error, policy_version=policy.engine().version)


class Reserver:
    """Decides a refund request against the payment's balance and the policy, and reserves it."""

    def __init__(
        self,
        db: Database,
        resolver: Resolver,
        processors: ProcessorRegistry,
        policy: PolicyHolder,
        settings: Settings,
        breaker: CircuitBreaker,
        now: Callable[[], datetime],
    ) -> None:
        self.db = db
        self.resolver = resolver
        self.processors = processors
        self.policy = policy
        self.settings = settings
        self.breaker = breaker
        self.now = now

    async def evaluate(
        self, conn: AsyncConnection, actor: str, tool: str, txn: Row[Any], req: RefundInput, currency: str | None
    ) -> Evaluation:
        """Balance, currency and policy for this request on the payment row `txn` (shared by create, check and preview)."""
        bal = await queries.balance(conn, txn)
        refundable = bal.refundable_minor
        amount = req.amount_minor if req.amount_minor is not None else refundable
        where = f"on {txn.id}"
        error: RefundError | None = None
        if currency is not None and currency != txn.currency:
            error = CurrencyMismatch(f"{txn.id} is in {txn.currency}, not {currency}; ask again in {txn.currency}")
        elif not txn.refundable:
            error = NotRefundable(f"{txn.id} cannot be refunded (payment status {txn.status!r})")
        elif refundable <= 0:
            error = AlreadyRefunded(
                f"nothing left to refund {where}: {format_display(bal.refunded_minor, txn.currency)} refunded, "
                f"{format_display(bal.reserved_minor, txn.currency)} reserved by refunds in progress"
            )
        elif amount > refundable:
            error = AmountExceedsRefundable(
                f"{format_display(amount, txn.currency)} requested, {format_display(refundable, txn.currency)} refundable {where}"
            )
        if error is not None:
            return Evaluation(txn, amount, bal, None, error)
        now = self.now()
        window = await queries.daily_window(conn, currency=txn.currency, at=now, actor=actor)
        everyone, mine = cap_usage.scopes(actor)
        actor_daily, global_daily = window.total(mine), window.total(everyone)
        decision = self.policy.engine().evaluate(
            PolicyRequest(
                tool=tool,
                actor=actor,
                processor=txn.processor,
                processor_kind=self.processors.kind(txn.processor),
                transaction_id=txn.id,
                reason=req.reason,
                amount_minor=amount,
                currency=txn.currency,
                customer_ref=req.customer_ref,
                transaction_customer_ref=txn.customer_ref,
                transaction_created_at=txn.created_at,
                refunds_on_transaction=bal.active_refunds,
                actor_daily_minor=actor_daily,
                global_daily_minor=global_daily,
                now=now,
            )
        )
        return Evaluation(txn, amount, bal, decision, None, window)

    @traced_async("refund.reserve", lambda reserved: {"refund_mcp.refund_id": reserved.view.refund_id, "refund_mcp.refund_status": str(reserved.view.status)})
    async def reserve(
        self,
        actor: str,
        req: RefundInput,
        ref: TransactionRef,
        info: TransactionInfo | None,
        currency: str | None,
        confirmation: Confirmation,
        request: dict[str, Any],
        confirmed: ConfirmedTerms | None = None,
        *,
        unchecked: TransactionRef | None = None,
    ) -> Reservation:
        """The one serialized write: the refund, and whether to submit it now. `unchecked`: the name the
        processor was asked about, when it is still to be checked against our aliases (Resolver.confirm_name).

        The same idempotency key committed meanwhile for another payment (which this payment's row lock does
        not serialize with) fails the key's insert: the whole reservation is taken once more, and then sees
        that key, so the caller gets the original refund or [idempotency_conflict], never an internal error."""
        for last in (False, True):
            try:
                return await self._reserve_once(actor, req, ref, info, currency, confirmation, request, confirmed, unchecked)
            except IntegrityError:
                if last or req.idempotency_key is None:
                    raise
        raise AssertionError("unreachable")

    async def _reserve_once(
        self, actor: str, req: RefundInput, ref: TransactionRef, info: TransactionInfo | None, currency: str | None,
        confirmation: Confirmation, request: dict[str, Any], confirmed: ConfirmedTerms | None, unchecked: TransactionRef | None,
    ) -> Reservation:
        now = self.now()
        engine = self.policy.engine()
        fingerprint = _sha(actor, ref.canonical, req.amount_minor, currency, req.reason)
        caller_metadata = validate_metadata(req.metadata)
        # Metadata joins the hash only when given, so keys stored before it existed still replay.
        request_hash = _sha(ref.canonical, req.amount_minor, currency, req.reason, req.customer_ref, *([caller_metadata] if caller_metadata else []))
        async with self.db.write() as conn:
            await self.resolver.confirm_name(conn, unchecked, ref)
            # The payment's row first: identical requests serialize on it, so the key and duplicate checks
            # below see a refund the other one committed.
            txn = await self.resolver.known_transaction(conn, ref, info, lock=True)
            if req.idempotency_key is not None:
                seen = await queries.get_idempotency(conn, actor, req.idempotency_key)
                if seen is not None:
                    if seen.request_hash != request_hash:
                        raise IdempotencyConflict(
                            f"idempotency_key {req.idempotency_key!r} was used for a different request (refund {seen.refund_id}); "
                            "use a new key for a new refund"
                        )
                    # Only shown, never changed: not locked, so a replay never waits on that refund's writers nor
                    # takes a refund's lock after its payment's (the order everywhere is refund, then payment).
                    row = await queries.get_refund(conn, seen.refund_id, lock=False)
                    await audit.append(conn, AuditEntry(actor=actor, action="refund.replay", target=row.id, outcome="ok", request=request))
                    view = rendering.refund_view(row)
                    view.message = "This idempotency_key was used before: the original refund is returned, nothing new was created."
                    return Reservation(view, row, False)
            else:
                window = engine.duplicate_window_seconds(actor)
                if window > 0:
                    dup = await queries.find_duplicate(conn, fingerprint, now - timedelta(seconds=window))
                    if dup is not None:
                        await audit.append(conn, AuditEntry(actor=actor, action="refund.duplicate", target=dup.id, outcome="ok", request=request))
                        view = rendering.refund_view(dup)
                        view.duplicate_of = dup.id
                        view.message = (
                            f"An identical refund was requested {int((now - dup.created_at).total_seconds())} s ago: "
                            "it is returned instead of refunding twice. Pass a new idempotency_key if a second refund is really meant."
                        )
                        return Reservation(view, dup, False)

            ev = await self.evaluate(conn, actor, "create_refund", txn, req, currency)
            if ev.error is not None:
                raise ev.error
            assert ev.decision is not None
            decision = ev.decision
            if decision.outcome is Outcome.DENY:
                denied = PolicyDenied(decision.explain())
                denied.decision = decision  # type: ignore[attr-defined]  # recorded by the audit of the refusal
                raise denied
            # Checked under the lock: what is reserved is what the human confirmed, or nothing is.
            if confirmation is Confirmation.CONFIRMED and confirmed is not None and confirmed.differs_from(
                ev.txn.id, ev.amount_minor, ev.txn.currency, req.reason
            ):
                raise confirmed.refusal(ev.txn.id, ev.amount_minor, ev.txn.currency)

            needs_human = decision.outcome is Outcome.NEEDS_APPROVAL or (
                decision.outcome is Outcome.NEEDS_CONFIRMATION and confirmation is not Confirmation.CONFIRMED
            )
            refund_id = new_refund_id()
            values: dict[str, Any] = {
                "id": refund_id,
                "transaction_id": ev.txn.id,
                "processor": ev.txn.processor,
                "amount_minor": ev.amount_minor,
                "currency": ev.txn.currency,
                "reason": req.reason,
                "note": req.note,
                "actor": actor,
                "customer_ref": req.customer_ref,
                "origin": "agent",
                "fingerprint": fingerprint,
                "attempts": 0,
                "maybe_sent": False,
                "policy_version": decision.policy_version,
                "refund_metadata": encode_metadata(caller_metadata),
                "created_at": now,
                "updated_at": now,
            }
            message: str
            submit = False
            if needs_human:
                if decision.outcome is Outcome.NEEDS_APPROVAL:
                    why = "; ".join(f"{r.name}: {r.detail}" for r in decision.deciding)
                else:
                    why = "confirmation required but this MCP client cannot ask its human (no elicitation support)"
                values |= {
                    "status": RefundStatus.PENDING_APPROVAL.value,
                    "approval_state": "pending",
                    "approval_reason": why,
                    "approval_expires_at": now + timedelta(seconds=engine.approval_ttl_seconds()),
                    "approvals_required": decision.approvers_required if decision.outcome is Outcome.NEEDS_APPROVAL else 1,
                }
                message = (
                    f"Waiting for a human approver ({why}). The amount is reserved. "
                    f"Check back with get_refund_status({refund_id!r})."
                )
                action = "refund.pending_approval"
            else:
                values |= {
                    "status": RefundStatus.QUEUED.value,
                    "retry_deadline_at": now + timedelta(seconds=self.settings.retry_deadline_seconds),
                }
                if self.breaker.is_open(ev.txn.processor):
                    values["next_attempt_at"] = now + timedelta(seconds=self.settings.circuit_open_seconds)
                    message = (
                        f"{ev.txn.processor} is unavailable right now: the refund is accepted and reserved, and will be "
                        "sent automatically when it is back (same idempotency key, so never twice)."
                    )
                else:
                    # Claimed by this call: the worker leaves it alone unless this process dies mid-way.
                    values["next_attempt_at"] = now
                    values["claimed_until"] = now + timedelta(seconds=self.settings.claim_seconds)
                    values["claim_token"] = 1
                    values["key_first_sent_at"] = now
                    submit = True
                    message = "Accepted and reserved; submitting to the processor."
                action = "refund.reserved"
            # Claimed by this call and committed: the submitter uses this row without reading it again.
            row = await queries.insert_refund(conn, **values)
            if req.idempotency_key is not None:
                await queries.insert_idempotency(conn, actor, req.idempotency_key, request_hash, refund_id, now)
            await audit.append(
                conn,
                AuditEntry(
                    actor=actor,
                    action=action,
                    target=refund_id,
                    outcome=values["status"],
                    request=request,
                    decision=decision_record(decision),
                    detail={"transaction_id": ev.txn.id, "amount_minor": ev.amount_minor, "currency": ev.txn.currency},
                ),
            )
            # Last, so the daily caps' counters are locked only until the commit that follows.
            await daily_caps.take(
                conn, decision, actor=actor, currency=ev.txn.currency, amount_minor=ev.amount_minor, created_at=now, seen=ev.window
            )
        view = rendering.refund_view(row)
        view.message = message
        return Reservation(view, row, submit)
