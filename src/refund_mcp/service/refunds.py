"""The refund flow, transport-free.

create_refund: validate -> resolve the transaction -> (one serialized write transaction:
idempotency and duplicates -> balance and currency -> policy -> reserve as `queued` or
`pending_approval` -> audit) -> submit to the processor outside any transaction -> record the
answer -> audit. A processor that cannot be reached leaves the refund `queued`, reserved, for
the worker to retry; attempts and the writes after them are in service/attempts.py, what may be
re-sent under which key in service/resend.py.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp import failpoints
from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import (
    AlreadyRefunded,
    AmountExceedsRefundable,
    ConfirmationDeclined,
    CurrencyMismatch,
    Forbidden,
    IdempotencyConflict,
    NotRefundable,
    NotSupported,
    PolicyDenied,
    ProcessorCallError,
    ProcessorUnavailable,
    RefundError,
    RefundNotFound,
    TransactionNotFound,
    ValidationFailed,
)
from refund_mcp.domain.ids import is_refund_id, new_refund_id
from refund_mcp.domain.models import (
    ProcessorRefund,
    ProcessorRefundRequest,
    RefundReason,
    RefundStatus,
    TransactionInfo,
    may_transition,
)
from refund_mcp.domain.money import MAX_AMOUNT_MINOR, format_display, normalize_currency
from refund_mcp.observability.tracing import traced_async
from refund_mcp.policy import Decision, Outcome, PolicyHolder, PolicyRequest
from refund_mcp.processors.base import Processor
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.service import attempts, daily_caps, identity, views
from refund_mcp.service.approvals import ApprovalsMixin
from refund_mcp.service.circuit import CircuitBreaker
from refund_mcp.service.confirmation import ConfirmedTerms, Prefetched, Preview
from refund_mcp.service.events import EventsMixin
from refund_mcp.service.metadata import decode as decode_metadata
from refund_mcp.service.metadata import encode as encode_metadata
from refund_mcp.service.metadata import validate_metadata
from refund_mcp.service.operators import OperatorActionsMixin
from refund_mcp.service.untrusted import untrusted_tree
from refund_mcp.settings import Settings
from refund_mcp.store import queries
from refund_mcp.store.database import Database

logger = logging.getLogger("refund_mcp.service")

STRIPE_PREFIXES = ("ch_", "pi_", "py_")
# Names that are a processor even when not configured here, so "paypal:ID" is an error rather than a bare id.
KNOWN_PROCESSOR_NAMES = ("stripe", "paypal", "adyen", "square", "sandbox", "ucs")


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
class TransactionRef:
    processor: str
    bare_id: str

    @property
    def canonical(self) -> str:
        return f"{self.processor}:{self.bare_id}"


@dataclass(frozen=True)
class Evaluation:
    """Everything decided inside the locked transaction about one refund request."""

    txn: Row[Any]
    amount_minor: int
    balance: queries.Balance
    decision: Decision | None  # None when a balance/currency error came first
    error: RefundError | None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _sha(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, default=str, separators=(",", ":")).encode()).hexdigest()


def _decision_record(decision: Decision) -> dict[str, Any]:
    return {
        "outcome": decision.outcome.value,
        "rules": [rule.name for rule in decision.deciding],
        "policy_version": decision.policy_version,
    }


class RefundService(ApprovalsMixin, OperatorActionsMixin, EventsMixin):
    def __init__(
        self,
        db: Database,
        processors: ProcessorRegistry,
        policy: PolicyHolder,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = _utcnow,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.db = db
        self.processors = processors
        self.policy = policy
        self.settings = settings
        self.clock = clock
        self.breaker = breaker or CircuitBreaker(settings.circuit_failure_threshold, settings.circuit_open_seconds)
        self._just_reserved: dict[str, Row[Any]] = {}

    # ----------------------------------------------------------------- routing and lookups

    async def resolve_transaction_id(self, transaction_id: str, processor: str | None = None) -> TransactionRef:
        """Apply the contract's id rules, find the one account a payment belongs to, then resolve the name
        to the payment's canonical id there (service/identity.py).

        `processor` (and a `prefix:` on the id) may name an account (`stripe@eu`, `checkout`) or a
        processor (`stripe`). A processor with several accounts is resolved through our records; when
        they cannot tell, the answer is a validation error listing the candidates, never a guess."""
        configured = self.processors.names()
        raw = transaction_id.strip()
        if not raw or len(raw) > 200 or any(ch.isspace() or ord(ch) < 32 for ch in raw):
            raise ValidationFailed("transaction_id must be a non-empty id without spaces", fields=["transaction_id"])
        if processor is not None and not self._names_accounts(processor):
            raise ValidationFailed(
                f"processor {processor[:40]!r} is not configured; configured: {', '.join(configured)}", fields=["processor"]
            )
        prefix, sep, rest = raw.partition(":")
        if sep and (self._names_accounts(prefix) or prefix in KNOWN_PROCESSOR_NAMES or "@" in prefix):
            if not self._names_accounts(prefix):
                raise ValidationFailed(
                    f"processor {prefix[:40]!r} is not configured; configured: {', '.join(configured)}", fields=["transaction_id"]
                )
            if processor is not None and not (set(self._candidates(prefix)) & set(self._candidates(processor))):
                raise ValidationFailed(
                    f"transaction_id names {prefix} but processor says {processor}", fields=["transaction_id", "processor"]
                )
            if not rest:
                raise ValidationFailed("transaction_id has no id after the processor name", fields=["transaction_id"])
            candidates = [name for name in self._candidates(prefix) if processor is None or name in self._candidates(processor)]
            return await self._canonical_ref(await self._one_account(candidates, rest))
        if processor is not None:
            return await self._canonical_ref(await self._one_account(self._candidates(processor), raw))
        if raw.startswith(STRIPE_PREFIXES) and self.processors.accounts_of("stripe"):
            return await self._canonical_ref(await self._one_account(self.processors.accounts_of("stripe"), raw))
        async with self.db.read() as conn:
            known = [row.id for row in await queries.find_transactions_by_bare_id(conn, raw) if row.processor in configured]
            known += [
                canonical for canonical in await identity.canonical_ids_of_bare(conn, raw)
                if canonical.partition(":")[0] in configured
            ]
        if len(known) == 1:
            account, _, canonical_bare = known[0].partition(":")
            return TransactionRef(account, canonical_bare)
        if len(known) > 1:
            raise self._ambiguous([canonical.partition(":")[0] for canonical in known], raw)
        raise ValidationFailed(
            f"cannot tell which processor {raw[:40]!r} belongs to; write it as processor:id or pass processor "
            f"(configured: {', '.join(configured)})",
            fields=["transaction_id"],
        )

    def _names_accounts(self, name: str) -> bool:
        return bool(self._candidates(name))

    def _candidates(self, name: str) -> list[str]:
        """The accounts a name stands for: itself when it is an account, else every account of that processor."""
        if name in self.processors:
            return [name]
        return self.processors.accounts_of(name)

    async def _one_account(self, candidates: list[str], bare_id: str) -> TransactionRef:
        """The account among `candidates` that holds `bare_id`: the only one, or the only one our records know."""
        if len(candidates) == 1:
            return TransactionRef(candidates[0], bare_id)
        async with self.db.read() as conn:
            known = {row.processor for row in await queries.find_transactions_by_bare_id(conn, bare_id)}
            known |= {canonical.partition(":")[0] for canonical in await identity.canonical_ids_of_bare(conn, bare_id)}
        known &= set(candidates)
        if len(known) == 1:
            return TransactionRef(known.pop(), bare_id)
        raise self._ambiguous(candidates, bare_id)

    @staticmethod
    def _ambiguous(candidates: list[str], bare_id: str) -> ValidationFailed:
        listed = ", ".join(f"{name}:{bare_id[:40]}" for name in candidates)
        return ValidationFailed(
            f"{bare_id[:40]!r} could belong to several accounts; name the account: {listed}", fields=["transaction_id"]
        )

    async def _canonical_ref(self, ref: TransactionRef) -> TransactionRef:
        """The payment's canonical id when this name is a recorded alias of it; else the name as given."""
        async with self.db.read() as conn:
            canonical = await identity.canonical_of(conn, ref.processor, ref.bare_id)
        return ref if canonical is None else TransactionRef(ref.processor, canonical.partition(":")[2])

    @staticmethod
    def _as_named_by_processor(ref: TransactionRef, info: TransactionInfo | None) -> tuple[TransactionRef, TransactionInfo | None]:
        """Re-key to the id the processor's answer calls canonical, keeping the name asked about as an alias."""
        if info is None or info.transaction_id == ref.bare_id:
            return ref, info
        return TransactionRef(ref.processor, info.transaction_id), identity.with_requested_name(info, ref.bare_id)

    def _processor(self, name: str) -> Processor:
        processor = self.processors.get(name)
        if processor is None:
            raise ValidationFailed(f"processor {name!r} is not configured", fields=["processor"])
        return processor

    async def _fetch_transaction(self, ref: TransactionRef) -> tuple[TransactionInfo | None, str | None]:
        """Ask the processor; fall back to our record when it cannot answer. Returns (fresh info, note).

        Raises:
            ProcessorUnavailable: the processor cannot answer and we have no record of the payment:
                that is an outage, never a payment that does not exist.
        """
        processor = self._processor(ref.processor)
        if self.breaker.is_open(ref.processor):
            await self._require_record(ref, "is unavailable right now (too many recent failures)")
            return None, f"{ref.processor} is unavailable right now; showing refund-mcp's records"
        try:
            info = await processor.lookup_transaction(ref.bare_id)
            info = replace(info, processor=ref.processor)  # recorded under the account, e.g. stripe@eu
        except ProcessorCallError as exc:
            if exc.retryable:
                self.breaker.record_failure(ref.processor)
                await self._require_record(ref, f"could not be reached ({exc.code})")
                return None, f"{ref.processor} could not be reached ({exc.code}); showing refund-mcp's records"
            raise
        except (TransactionNotFound, NotSupported):
            # Adyen cannot be queried: a transaction it told us about by webhook is still known.
            return None, None
        self.breaker.record_success(ref.processor)
        return info, None

    async def _require_record(self, ref: TransactionRef, what: str) -> None:
        async with self.db.read() as conn:
            known = await queries.get_transaction(conn, ref.canonical)
        if known is None:
            raise ProcessorUnavailable(
                f"{ref.processor} {what} and {ref.canonical} is not in refund-mcp's records yet, so it cannot be "
                "checked now. This says nothing about whether the payment exists; try again later.",
                processor=ref.processor,
            )

    async def _fetch_transaction_once(self, ref: TransactionRef, prefetched: Prefetched | None) -> tuple[TransactionInfo | None, str | None]:
        # A confirmation preview of this same call looked the payment up moments ago: reuse that answer
        # instead of asking the processor twice for one tool call.
        if prefetched is not None and prefetched.usable_for(ref.canonical):
            return prefetched.info, prefetched.note
        return await self._fetch_transaction(ref)

    async def _known_transaction(self, conn: AsyncConnection, ref: TransactionRef, info: TransactionInfo | None) -> Row[Any]:
        if info is not None:
            await queries.upsert_transaction(conn, ref.canonical, info, self.clock())
            await identity.record_aliases(conn, ref.processor, info, self.clock())
        txn = await queries.get_transaction(conn, ref.canonical, lock=True)
        if txn is None:
            hint = (
                " Adyen has no payment lookup API: its payments become known from AUTHORISATION/CAPTURE webhooks."
                if self.processors.kind(ref.processor) == "adyen"
                else ""
            )
            raise TransactionNotFound(f"{ref.canonical} was not found at {ref.processor}.{hint}")
        return txn

    # ----------------------------------------------------------------- audit helpers

    async def _audit_error(self, actor: str, action: str, target: str | None, error: RefundError, request: dict[str, Any] | None, decision: Decision | None = None) -> None:
        decision = decision or getattr(error, "decision", None)
        async with self.db.write() as conn:
            await audit.append(
                conn,
                AuditEntry(
                    actor=actor,
                    action=action,
                    target=target,
                    outcome="denied" if isinstance(error, (PolicyDenied, ConfirmationDeclined)) else "error",
                    error_code=error.code,
                    request=request,
                    decision=_decision_record(decision) if decision else None,
                    detail={"message": error.message},
                ),
            )

    def _check_tool(self, tool: str, actor: str) -> None:
        result = self.policy.engine().check_tool(tool, actor)
        if result.outcome is Outcome.DENY:
            raise PolicyDenied(f"{result.name}: {result.detail}")

    async def guard_tool(self, tool: str, actor: str, request: dict[str, Any]) -> None:
        """Refuse a tool the policy does not give this actor; the refusal is audited."""
        try:
            self._check_tool(tool, actor)
        except PolicyDenied as exc:
            await self._audit_error(actor, f"{tool}.denied", None, exc, request)
            raise

    # ----------------------------------------------------------------- lookup

    async def lookup_transaction(self, actor: str, transaction_id: str, processor: str | None = None) -> views.TransactionView:
        request = {"transaction_id": transaction_id, "processor": processor}
        await self.guard_tool("lookup_transaction", actor, request)
        try:
            ref = await self.resolve_transaction_id(transaction_id, processor)
            info, note = await self._fetch_transaction(ref)
            ref, info = self._as_named_by_processor(ref, info)
            async with self.db.write() as conn:
                txn = await self._known_transaction(conn, ref, info)
                view = await self._transaction_view(conn, txn, source="processor" if info else "records", message=note)
                await audit.append(conn, AuditEntry(actor=actor, action="transaction.lookup", target=ref.canonical, outcome="ok", request=request))
            return view
        except RefundError as exc:
            await self._audit_error(actor, "transaction.lookup", transaction_id[:200], exc, request)
            raise

    async def _transaction_view(self, conn: AsyncConnection, txn: Row[Any], *, source: str, message: str | None = None) -> views.TransactionView:
        bal = await queries.balance(conn, txn)
        refunds = await queries.refunds_for_transaction(conn, txn.id)
        if source == "records" and message is None and self.processors.kind(txn.processor) == "adyen":
            message = "Adyen cannot be queried: this is refund-mcp's record, kept current by Adyen's webhooks"
        return views.TransactionView(
            transaction_id=txn.id,
            processor=txn.processor,
            amount_minor=txn.amount_minor,
            currency=txn.currency,
            amount_display=format_display(txn.amount_minor, txn.currency),
            captured_minor=txn.captured_minor,
            refunded_minor=bal.refunded_minor,
            reserved_minor=bal.reserved_minor,
            refundable_minor=bal.refundable_minor if txn.refundable else 0,
            refundable_display=format_display(bal.refundable_minor if txn.refundable else 0, txn.currency),
            status=txn.status,
            refundable=bool(txn.refundable),
            customer_ref=txn.customer_ref,
            created_at=txn.created_at,
            description=txn.description,
            source=source,  # type: ignore[arg-type]
            message=message,
            refunds=[self._refund_view(row) for row in refunds],
        )

    # ----------------------------------------------------------------- evaluation (shared by create and check)

    def _validate_input(self, req: RefundInput) -> tuple[str | None, RefundReason]:
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

    async def _evaluate(
        self, conn: AsyncConnection, actor: str, tool: str, ref: TransactionRef, info: TransactionInfo | None, req: RefundInput, currency: str | None
    ) -> Evaluation:
        txn = await self._known_transaction(conn, ref, info)
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
        now = self.clock()
        actor_daily, global_daily = await queries.daily_totals(conn, currency=txn.currency, since=now - timedelta(hours=24), actor=actor)
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
        return Evaluation(txn, amount, bal, decision, None)

    # ----------------------------------------------------------------- check_refund_policy

    async def check_refund_policy(
        self, actor: str, transaction_id: str, reason: str, amount_minor: int | None = None, currency: str | None = None
    ) -> views.PolicyCheckView:
        request = {"transaction_id": transaction_id, "reason": reason, "amount_minor": amount_minor, "currency": currency}
        await self.guard_tool("check_refund_policy", actor, request)
        req = RefundInput(transaction_id=transaction_id, reason=reason, amount_minor=amount_minor, currency=currency)
        try:
            cur, _ = self._validate_input(req)
            ref = await self.resolve_transaction_id(transaction_id)
            info, _note = await self._fetch_transaction(ref)
            ref, info = self._as_named_by_processor(ref, info)
            async with self.db.write() as conn:
                ev = await self._evaluate(conn, actor, "check_refund_policy", ref, info, req, cur)
                view = self._policy_view(ev)
                await audit.append(
                    conn,
                    AuditEntry(
                        actor=actor,
                        action="policy.check",
                        target=ev.txn.id,
                        outcome=view.decision,
                        request=request,
                        decision={"outcome": view.decision, "rules": [r.name for r in view.rules if r.outcome == view.decision], "policy_version": view.policy_version},
                    ),
                )
            return view
        except RefundError as exc:
            await self._audit_error(actor, "policy.check", transaction_id[:200], exc, request)
            raise

    def _policy_view(self, ev: Evaluation) -> views.PolicyCheckView:
        currency = ev.txn.currency
        rules: list[views.RuleView] = []
        if ev.error is not None:
            rules.append(views.RuleView(name="balance", outcome="deny", detail=f"[{ev.error.code}] {ev.error.message}"))
            decision = "deny"
            version = self.policy.engine().version
        else:
            assert ev.decision is not None
            rules.append(
                views.RuleView(
                    name="balance",
                    outcome="allow",
                    detail=f"{format_display(ev.amount_minor, currency)} of {format_display(ev.balance.refundable_minor, currency)} refundable",
                )
            )
            rules.extend(views.RuleView(name=r.name, outcome=r.outcome.value, detail=r.detail) for r in ev.decision.rules)
            decision = ev.decision.outcome.value
            version = ev.decision.policy_version
        messages = {
            "allow": "create_refund would proceed without asking anyone.",
            "needs_confirmation": "create_refund would ask the human in your MCP client to confirm first.",
            "needs_approval": "create_refund would park the refund as pending_approval until a human approver decides.",
            "deny": "create_refund would be refused: see the rules with outcome deny.",
        }
        return views.PolicyCheckView(
            decision=decision,  # type: ignore[arg-type]
            rules=rules,
            transaction_id=ev.txn.id,
            amount_minor=ev.amount_minor,
            currency=currency,
            amount_display=format_display(ev.amount_minor, currency),
            refundable_minor=ev.balance.refundable_minor,
            policy_version=version,
            message=messages[decision],
            customer_ref=ev.txn.customer_ref,
        )

    def may_need_confirmation(self, amount_minor: int | None) -> bool:
        """Whether the policy could ask to confirm this refund; False lets create_refund skip the preview.

        Confirmation applies strictly above a threshold, so an amount at or below every threshold of every
        currency never needs one; an omitted amount (the whole balance) always has to be previewed, and so
        does any amount when a confirmation map leaves out a refundable currency (it asks for all of them)."""
        policy = self.policy.engine().loaded.policy
        maps = [
            source.confirmation.above
            for source in (policy, *policy.rules, *policy.actors.values())
            if source.confirmation is not None
        ]
        if not maps:
            return False
        refundable = set((policy.limits.per_refund if policy.limits else None) or {})
        if any(not refundable <= set(above) for above in maps):
            return True
        thresholds = [threshold for above in maps for threshold in above.values()]
        return amount_minor is None or amount_minor > min(thresholds)

    async def preview(self, actor: str, req: RefundInput) -> Preview | None:
        """The decision create_refund would reach now, without recording anything; None if it cannot be evaluated.

        Used to decide whether to ask the human to confirm before the call proceeds, and what to show them:
        the amount and payment come from our records here. The real decision is taken again under the lock,
        and a confirmation holds only for exactly the terms this preview showed (see service/confirmation.py).
        """
        try:
            cur, _ = self._validate_input(req)
            ref = await self.resolve_transaction_id(req.transaction_id, req.processor)
            requested = ref.canonical
            info, note = await self._fetch_transaction(ref)
            ref, info = self._as_named_by_processor(ref, info)
            prefetched = Prefetched(requested, info, note, time.monotonic())
            async with self.db.read() as conn:
                ev = await self._evaluate(conn, actor, "create_refund", ref, info, req, cur)
                # Nothing is recorded by a preview: rolling back undoes the transaction upsert too.
                raise _Rollback(self._policy_view(ev))
        except _Rollback as done:
            return Preview(done.view, prefetched)
        except RefundError:
            return None

    # ----------------------------------------------------------------- create_refund

    async def record_declined_confirmation(self, actor: str, req: RefundInput, action: str) -> ConfirmationDeclined:
        error = ConfirmationDeclined(
            f"the human {action} the refund of {req.transaction_id}; nothing was refunded. Ask them what they want instead."
        )
        await self._audit_error(actor, "refund.create", req.transaction_id[:200], error, self._request_record(req))
        return error

    @staticmethod
    def _request_record(req: RefundInput) -> dict[str, Any]:
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

    async def create_refund(
        self,
        actor: str,
        req: RefundInput,
        confirmation: Confirmation = Confirmation.NOT_ASKED,
        *,
        confirmed: ConfirmedTerms | None = None,
        prefetched: Prefetched | None = None,
    ) -> views.RefundView:
        """Refund all or part of a payment. With `confirmation` CONFIRMED, `confirmed` says what the human
        confirmed; the reservation must be exactly that or it is refused ([confirmation_declined]).
        `prefetched`: this call's preview lookup, reused while fresh."""
        if confirmation is Confirmation.CONFIRMED and confirmed is None:
            raise ValueError("a confirmed refund must carry the terms the human confirmed")
        request = self._request_record(req)
        await self.guard_tool("create_refund", actor, request)
        try:
            currency, reason = self._validate_input(req)
            ref = await self.resolve_transaction_id(req.transaction_id, req.processor)
            info, _note = await self._fetch_transaction_once(ref, prefetched)
            ref, info = self._as_named_by_processor(ref, info)
            view, submit = await self._reserve(actor, req, ref, info, currency, confirmation, request, confirmed)
        except RefundError as exc:
            if not getattr(exc, "_audited", False):
                await self._audit_error(actor, "refund.create", req.transaction_id[:200], exc, request)
            raise
        if submit:
            failpoints.hit("after_reserve")
            return await self._submit(view.refund_id, caller=actor, raise_declined=True)
        return view

    @traced_async("refund.reserve", lambda reserved: {"refund_mcp.refund_id": reserved[0].refund_id, "refund_mcp.refund_status": str(reserved[0].status)})
    async def _reserve(
        self,
        actor: str,
        req: RefundInput,
        ref: TransactionRef,
        info: TransactionInfo | None,
        currency: str | None,
        confirmation: Confirmation,
        request: dict[str, Any],
        confirmed: ConfirmedTerms | None = None,
    ) -> tuple[views.RefundView, bool]:
        """The one serialized write: returns (the refund, whether to submit it now)."""
        now = self.clock()
        engine = self.policy.engine()
        fingerprint = _sha(actor, ref.canonical, req.amount_minor, currency, req.reason)
        caller_metadata = validate_metadata(req.metadata)
        # Metadata joins the hash only when given, so keys stored before it existed still replay.
        request_hash = _sha(ref.canonical, req.amount_minor, currency, req.reason, req.customer_ref, *([caller_metadata] if caller_metadata else []))
        async with self.db.write() as conn:
            if req.idempotency_key is not None:
                seen = await queries.get_idempotency(conn, actor, req.idempotency_key)
                if seen is not None:
                    if seen.request_hash != request_hash:
                        raise IdempotencyConflict(
                            f"idempotency_key {req.idempotency_key!r} was used for a different request (refund {seen.refund_id}); "
                            "use a new key for a new refund"
                        )
                    row = await queries.get_refund(conn, seen.refund_id)
                    await audit.append(conn, AuditEntry(actor=actor, action="refund.replay", target=row.id, outcome="ok", request=request))
                    view = self._refund_view(row)
                    view.message = "This idempotency_key was used before: the original refund is returned, nothing new was created."
                    return view, False
            else:
                window = engine.duplicate_window_seconds(actor)
                if window > 0:
                    dup = await queries.find_duplicate(conn, fingerprint, now - timedelta(seconds=window))
                    if dup is not None:
                        await audit.append(conn, AuditEntry(actor=actor, action="refund.duplicate", target=dup.id, outcome="ok", request=request))
                        view = self._refund_view(dup)
                        view.duplicate_of = dup.id
                        view.message = (
                            f"An identical refund was requested {int((now - dup.created_at).total_seconds())} s ago: "
                            "it is returned instead of refunding twice. Pass a new idempotency_key if a second refund is really meant."
                        )
                        return view, False

            ev = await self._evaluate(conn, actor, "create_refund", ref, info, req, currency)
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
            await queries.insert_refund(conn, **values)
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
                    decision=_decision_record(decision),
                    detail={"transaction_id": ev.txn.id, "amount_minor": ev.amount_minor, "currency": ev.txn.currency},
                ),
            )
            row = await queries.get_refund(conn, refund_id)
            # Last, so the daily caps' counters are locked only until the commit that follows.
            await daily_caps.take(conn, decision, actor=actor, currency=ev.txn.currency, amount_minor=ev.amount_minor, created_at=now)
        if submit:
            # Claimed by this call and committed: _submit can use this row without reading it again.
            self._just_reserved[refund_id] = row
        view = self._refund_view(row)
        view.message = message
        return view, submit

    # ----------------------------------------------------------------- submission and processor answers

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """Exponential backoff with full jitter, never sooner than the processor's Retry-After."""
        ceiling = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * (2 ** max(0, attempts - 1)))
        delay = random.uniform(ceiling / 2, ceiling)
        return max(delay, retry_after or 0.0)

    async def _submit(
        self, refund_id: str, *, caller: str, raise_declined: bool = False, claimed: Row[Any] | None = None
    ) -> views.RefundView:
        """Run one attempt for a refund this caller has just claimed (service/attempts.py), outside any transaction.

        `claimed` is the row as the claiming transaction returned it: its fencing token is the attempt's."""
        row = claimed or self._just_reserved.pop(refund_id, None)
        if row is None:
            async with self.db.read() as conn:
                row = await queries.get_refund(conn, refund_id)
        if row.status != RefundStatus.QUEUED.value:
            return self._refund_view(row)  # settled meanwhile (e.g. by a webhook): nothing to send
        return await attempts.run(self, attempts.Claim(row), caller=caller, raise_declined=raise_declined)

    async def apply_processor_state(
        self, conn: AsyncConnection, refund_id: str, answer: ProcessorRefund, *, actor: str, action: str,
        claim_token: int | None = None,
    ) -> views.RefundView:
        """Record what the processor says about one of our refunds, following the status rules.

        `claim_token` is given by an attempt (service/attempts.py): the write then happens only if the attempt
        still holds its claim, and ends it. Webhooks, status syncs and reconciliation are not attempts: they
        apply the processor's truth at any time but never end another attempt's claim."""
        now = self.clock()
        row = await queries.get_refund(conn, refund_id)
        if claim_token is not None and int(row.claim_token) != claim_token:
            return await attempts.stale_attempt(self, conn, refund_id, claim_token, attempts.answer_record(answer))
        current = RefundStatus(row.status)
        values: dict[str, Any] = {
            "processor_refund_id": answer.processor_refund_id,
            "processor_status": answer.processor_status,
            "updated_at": now,
        }
        if claim_token is not None:
            values["claimed_until"] = None
            if current is RefundStatus.QUEUED:
                values["attempts"] = row.attempts + 1
        if answer.request_id:
            values["processor_request_id"] = answer.request_id
        changed = may_transition(current, answer.status)
        if changed:
            values["status"] = answer.status.value
            values["failure_reason"] = answer.failure_reason
            # Not final: the status sync polls it; final: nothing more to do.
            values["next_attempt_at"] = None if answer.status.is_final else now + timedelta(seconds=self.settings.retry_base_seconds)
            values["last_error"] = None
        elif current is RefundStatus.QUEUED and claim_token is not None:
            values["next_attempt_at"] = None
        if claim_token is not None:
            updated = await queries.update_claimed(conn, refund_id, claim_token, queued_only=False, **values)
            if updated is None:  # unreachable inside the serialized transaction; kept as the write's own guard
                return await attempts.stale_attempt(self, conn, refund_id, claim_token, attempts.answer_record(answer))
        else:
            updated = await queries.update_refund_returning(conn, refund_id, **values)
        await audit.append(
            conn,
            AuditEntry(
                actor=actor,
                action=action,
                target=refund_id,
                outcome=answer.status.value if changed else current.value,
                processor_request_id=answer.request_id,
                detail={
                    "from": current.value,
                    "to": answer.status.value,
                    "applied": changed,
                    "processor_status": answer.processor_status,
                    "processor_refund_id": answer.processor_refund_id,
                },
            ),
        )
        view = self._refund_view(updated)
        view.status_source = "processor"
        view.message = self._status_message(view)
        return view

    @staticmethod
    def _status_message(view: views.RefundView) -> str:
        return {
            "succeeded": f"Refunded {view.amount_display}.",
            "pending": "The processor accepted the refund; it is not final yet. Check again later with get_refund_status.",
            "requires_action": "The processor needs action before this refund can complete; it can be cancelled with cancel_refund.",
            "failed": "The refund failed; nothing was refunded and the amount is released.",
            "cancelled": "The refund was cancelled; the amount is released.",
            "queued": "Reserved and waiting to be sent to the processor; it will be retried automatically.",
            "pending_approval": "Waiting for a human approver.",
        }[view.status]

    # ----------------------------------------------------------------- status, cancel, list

    async def _get_row(self, conn: AsyncConnection, refund_id: str) -> Row[Any]:
        if not is_refund_id(refund_id):
            raise ValidationFailed("refund_id must look like rf_ followed by 26 letters and digits", fields=["refund_id"])
        row = await queries.get_refund(conn, refund_id)
        if row is None:
            raise RefundNotFound(f"no refund {refund_id}; list_refunds shows existing refunds")
        return row

    async def get_refund_status(self, actor: str, refund_id: str, refresh: bool = True) -> views.RefundView:
        request = {"refund_id": refund_id, "refresh": refresh}
        await self.guard_tool("get_refund_status", actor, request)
        try:
            async with self.db.read() as conn:
                row = await self._get_row(conn, refund_id)
            status = RefundStatus(row.status)
            processor = self.processors.get(row.processor)
            note: str | None = None
            if refresh and not status.is_final and row.processor_refund_id and processor is not None:
                if not processor.capabilities.status_api:
                    note = f"{row.processor} has no refund status API: this is refund-mcp's record, updated by its webhooks."
                else:
                    try:
                        answer = await processor.get_refund(row.processor_refund_id)
                    except ProcessorCallError as exc:
                        note = f"Could not refresh from {row.processor} ({exc.code}); showing refund-mcp's record."
                    else:
                        async with self.db.write() as conn:
                            view = await self.apply_processor_state(conn, refund_id, answer, actor=actor, action="refund.status")
                        return view
            async with self.db.write() as conn:
                row = await self._get_row(conn, refund_id)
                await audit.append(conn, AuditEntry(actor=actor, action="refund.status", target=refund_id, outcome=row.status, request=request))
            view = self._refund_view(row)
            view.message = note or self._status_message(view)
            return view
        except RefundError as exc:
            await self._audit_error(actor, "refund.status", refund_id[:40], exc, request)
            raise

    async def cancel_refund(
        self, actor: str, refund_id: str, reason: str | None = None, *, operator: bool = False
    ) -> views.RefundView:
        """Cancel a refund. Its own actor may; anyone else needs `operator` (the refunds:operate scope),
        and such a cancel is audited as an operator's, naming the refund's actor."""
        request = {"refund_id": refund_id, "reason": reason}
        await self.guard_tool("cancel_refund", actor, request)
        try:
            async with self.db.write() as conn:
                row = await self._get_row(conn, refund_id)
                if row.actor != actor and not operator:
                    raise Forbidden(
                        f"refund {refund_id} was requested by another actor; only its own actor may cancel it, "
                        "or an operator whose token has scope refunds:operate"
                    )
                # An operator's cancel of someone else's refund is recorded as such, naming whose it was.
                action = "refund.cancel" if row.actor == actor else "refund.operator_cancel"
                whose = None if row.actor == actor else {"refund_actor": row.actor}
                status = RefundStatus(row.status)
                now = self.clock()
                if status is RefundStatus.CANCELLED:
                    await audit.append(conn, AuditEntry(actor=actor, action=action, target=refund_id, outcome="cancelled", request=request, detail={"already": True, **(whose or {})}))
                    view = self._refund_view(row)
                    view.message = "Already cancelled."
                    return view
                # A queued refund may be cancelled here only if no attempt can have reached the processor:
                # none had an unknown outcome, and none is in flight or was cut off by a crash (its claim
                # is cleared only when an attempt ends with a known result).
                local = status is RefundStatus.PENDING_APPROVAL or (
                    status is RefundStatus.QUEUED and not row.maybe_sent and row.claimed_until is None
                )
                if local:
                    values: dict[str, Any] = {"status": RefundStatus.CANCELLED.value, "next_attempt_at": None, "updated_at": now, "failure_reason": reason}
                    if status is RefundStatus.PENDING_APPROVAL:
                        values |= {"approval_state": "cancelled", "approval_decided_by": actor, "approval_decided_at": now}
                    await queries.update_refund(conn, refund_id, **values)
                    await audit.append(conn, AuditEntry(actor=actor, action=action, target=refund_id, outcome="cancelled", request=request, detail=whose))
                    view = self._refund_view(await queries.get_refund(conn, refund_id))
                    view.message = "Cancelled before it reached the processor; the amount is released."
                    return view
            if status is RefundStatus.QUEUED:
                raise NotSupported(
                    f"refund {refund_id} may already be at {row.processor} (an earlier attempt had an unknown outcome or one is in "
                    "flight); it cannot be cancelled locally. It will be completed with the same idempotency key; check get_refund_status."
                )
            processor = self.processors.get(row.processor)
            if status is not RefundStatus.REQUIRES_ACTION or processor is None or not processor.capabilities.cancel or not row.processor_refund_id:
                raise NotSupported(
                    f"a {status.value} refund on {row.processor} cannot be cancelled: {row.processor} cancels only refunds that "
                    "require action" if processor is not None and processor.capabilities.cancel else
                    f"a {status.value} refund on {row.processor} cannot be cancelled: {row.processor} has no cancel call once it accepted a refund"
                )
            answer = await processor.cancel_refund(row.processor_refund_id)
            async with self.db.write() as conn:
                return await self.apply_processor_state(conn, refund_id, answer, actor=actor, action=action)
        except RefundError as exc:
            await self._audit_error(actor, "refund.cancel", refund_id[:40], exc, request)
            raise

    async def list_refunds(
        self,
        actor: str,
        *,
        status: str | None = None,
        processor: str | None = None,
        transaction_id: str | None = None,
        since: datetime | None = None,
        limit: int = 25,
        cursor: str | None = None,
    ) -> views.RefundPage:
        request = {"status": status, "processor": processor, "transaction_id": transaction_id, "since": since, "limit": limit, "cursor": cursor}
        await self.guard_tool("list_refunds", actor, request)
        try:
            after = _decode_cursor(cursor) if cursor else None
            if since is not None and since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
            async with self.db.write() as conn:
                txn_ids: list[str] | None = None
                if transaction_id is not None:
                    # Any name of a payment lists its refunds: they are recorded under its canonical id.
                    prefix, sep, rest = transaction_id.partition(":")
                    if sep and rest:
                        txn_ids = [await identity.canonical_of(conn, prefix, rest) or transaction_id]
                    else:
                        txn_ids = [row.id for row in await queries.find_transactions_by_bare_id(conn, transaction_id)]
                        txn_ids += await identity.canonical_ids_of_bare(conn, transaction_id)
                # A processor's name lists all its accounts; an account name, that account.
                accounts = self._candidates(processor) if processor is not None and processor not in self.processors else None
                rows = await queries.list_refunds(
                    conn, status=status, processor=accounts or processor, transaction_ids=txn_ids, since=since, after=after, limit=limit + 1
                )
                await audit.append(conn, AuditEntry(actor=actor, action="refund.list", target=None, outcome="ok", request=request))
            page = rows[:limit]
            next_cursor = _encode_cursor(page[-1]) if len(rows) > limit and page else None
            return views.RefundPage(refunds=[self._refund_view(row) for row in page], next_cursor=next_cursor)
        except RefundError as exc:
            await self._audit_error(actor, "refund.list", None, exc, request)
            raise

    async def refund_with_trail(self, refund_id: str) -> dict[str, Any]:
        """A refund with its whole audit trail, for operators (the CLI)."""
        async with self.db.read() as conn:
            row = await self._get_row(conn, refund_id)
            trail = await audit.trail(conn, refund_id)
        return {"refund": self._refund_view(row).model_dump(mode="json"), "audit_trail": trail}

    async def refund_for_agent(self, actor: str, refund_id: str) -> dict[str, Any]:
        """The refunds://refund/{id} resource: gated and audited like get_refund_status, which it mirrors.

        The trail is shown without other actors' private request fields, and its text made safe."""
        request = {"refund_id": refund_id}
        await self.guard_tool("get_refund_status", actor, request)
        try:
            async with self.db.write() as conn:
                row = await self._get_row(conn, refund_id)
                trail = await audit.trail(conn, refund_id)
                await audit.append(conn, AuditEntry(actor=actor, action="refund.read", target=refund_id, outcome="ok", request=request))
        except RefundError as exc:
            await self._audit_error(actor, "refund.read", refund_id[:40], exc, request)
            raise
        shown = [untrusted_tree(_without_private_fields(record, actor)) for record in trail]
        return {"refund": self._refund_view(row).model_dump(mode="json"), "audit_trail": shown}

    async def read_policy(self, actor: str) -> str:
        """The refunds://policy resource: gated and audited like check_refund_policy, which it mirrors."""
        request = {"resource": "refunds://policy"}
        await self.guard_tool("check_refund_policy", actor, request)
        engine = self.policy.engine()
        async with self.db.write() as conn:
            await audit.append(conn, AuditEntry(actor=actor, action="policy.read", target=None, outcome="ok", request=request, detail={"policy_version": engine.version}))
        return f"# policy version {engine.version}\n{engine.loaded.text}"

    async def record_prompt(self, actor: str, name: str) -> None:
        """A prompt is gated by the first tool its procedure uses (lookup_transaction) and audited."""
        request = {"prompt": name}
        await self.guard_tool("lookup_transaction", actor, request)
        async with self.db.write() as conn:
            await audit.append(conn, AuditEntry(actor=actor, action="prompt.get", target=None, outcome="ok", request=request))

    # ----------------------------------------------------------------- worker steps

    async def process_due(self, limit: int = 20) -> int:
        """Run an attempt for each queued refund whose retry is due. Returns how many were attempted."""
        now = self.clock()
        async with self.db.write() as conn:
            rows = await queries.claim_due(conn, now, now + timedelta(seconds=self.settings.claim_seconds), limit)
        open_processors = {row.processor for row in rows if self.breaker.is_open(row.processor)}
        attempted = 0
        for row in rows:
            if row.processor in open_processors or self.processors.get(row.processor) is None:
                async with self.db.write() as conn:
                    await queries.update_claimed(
                        conn, row.id, row.claim_token, claimed_until=None,
                        next_attempt_at=now + timedelta(seconds=self.settings.circuit_open_seconds),
                    )
                continue
            await self._submit(row.id, caller="refund-mcp", claimed=row)
            attempted += 1
        return attempted

    async def sync_statuses(self, limit: int = 20) -> int:
        """Poll the processor for refunds it accepted but has not finished. Returns how many were polled."""
        now = self.clock()
        with_api = [name for name in self.processors.names() if self.processors.get(name).capabilities.status_api]  # type: ignore[union-attr]
        async with self.db.read() as conn:
            rows = await queries.due_for_sync(conn, now, with_api, limit)
        for row in rows:
            processor = self._processor(row.processor)
            try:
                answer = await processor.get_refund(row.processor_refund_id)
            except RefundError as exc:
                delay = self._backoff(row.attempts + 1, getattr(exc, "retry_after", None))
                async with self.db.write() as conn:
                    await queries.update_refund(conn, row.id, next_attempt_at=now + timedelta(seconds=delay), last_error=str(exc))
                continue
            async with self.db.write() as conn:
                view = await self.apply_processor_state(conn, row.id, answer, actor="refund-mcp", action="refund.sync")
                if not RefundStatus(view.status).is_final:
                    polls = row.attempts + 1
                    await queries.update_refund(
                        conn, row.id, attempts=polls, next_attempt_at=now + timedelta(seconds=self._backoff(polls, None))
                    )
        return len(rows)

    # ----------------------------------------------------------------- views

    def _refund_view(self, row: Row[Any]) -> views.RefundView:
        approval = None
        if row.approval_state:
            approval = views.ApprovalInfo(
                state=row.approval_state,
                reason=row.approval_reason,
                decided_by=row.approval_decided_by,
                decided_at=row.approval_decided_at,
                note=row.approval_note,
                expires_at=row.approval_expires_at,
                approvals_required=row.approvals_required or 1,
                approved_by=[name for name in (row.approval_first_by, row.approval_decided_by if row.approval_state == "approved" else None) if name],
            )
        retry = None
        if row.status == RefundStatus.QUEUED.value or row.attempts > 1 or row.last_error:
            retry = views.RetryInfo(attempts=row.attempts, last_error=row.last_error, next_attempt_at=row.next_attempt_at)
        return views.RefundView(
            refund_id=row.id,
            transaction_id=row.transaction_id,
            processor=row.processor,
            processor_refund_id=row.processor_refund_id,
            status=row.status,
            amount_minor=row.amount_minor,
            currency=row.currency,
            amount_display=format_display(row.amount_minor, row.currency),
            reason=row.reason,
            note=row.note,
            actor=row.actor,
            origin=row.origin,
            created_at=row.created_at,
            updated_at=row.updated_at,
            approval=approval,
            retry=retry,
            failure_reason=row.failure_reason,
            processor_request_id=row.processor_request_id,
            metadata=decode_metadata(row.refund_metadata),
        )


# What a caller wrote for themselves: shown in a trail only to that same actor.
PRIVATE_REQUEST_FIELDS = ("note", "customer_ref", "idempotency_key")


def _without_private_fields(record: dict[str, Any], viewer: str) -> dict[str, Any]:
    request = record.get("request")
    if record.get("actor") == viewer or not isinstance(request, dict):
        return record
    return {**record, "request": {key: value for key, value in request.items() if key not in PRIVATE_REQUEST_FIELDS}}


class _Rollback(Exception):
    def __init__(self, view: views.PolicyCheckView) -> None:
        self.view = view


def _encode_cursor(row: Row[Any]) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, refund_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        when = datetime.fromisoformat(created)
        if not isinstance(refund_id, str) or when.tzinfo is None:
            raise ValueError
        return when, refund_id
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor is not one that list_refunds returned", fields=["cursor"]) from exc
