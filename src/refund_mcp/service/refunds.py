"""The refund service, transport-free: a façade over collaborators with one job each.

create_refund: validate -> route the transaction id to its account and ask the processor about it
(service/resolving.py) -> reserve it in one serialized write transaction (service/reserving.py: the
name checked against our aliases, the payment's row, idempotency and duplicates,
balance and currency, policy, `queued` or `pending_approval`, audit) -> submit to the processor
outside any transaction (service/submitting.py, one attempt by service/attempts.py) -> record the
answer (service/recording.py) -> the view. A processor that cannot be reached leaves the refund
`queued`, reserved, for the worker to retry; what may be re-sent under which key is in service/resend.py.

The MCP tools, CLI, console, webhooks and worker call this class; its collaborators are:
Resolver, Reserver, Submitter, Recorder, Approvals, Events, OperatorActions, Cancellations, Reads, Gate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp import failpoints
from refund_mcp.domain.errors import ConfirmationDeclined, RefundError
from refund_mcp.domain.models import ProcessorRefund
from refund_mcp.policy import PolicyHolder
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.service import views
from refund_mcp.service.approvals import Approvals
from refund_mcp.service.cancelling import Cancellations
from refund_mcp.service.circuit import CircuitBreaker
from refund_mcp.service.confirmation import ConfirmedTerms, Prefetched, Preview
from refund_mcp.service.daily_caps import CounterPruner
from refund_mcp.service.events import Events
from refund_mcp.service.gate import Gate
from refund_mcp.service.operators import OperatorActions
from refund_mcp.service.reading import Reads
from refund_mcp.service.recording import Recorder
from refund_mcp.service.reserving import Confirmation, RefundInput, Reservation, Reserver, request_record, validate_input
from refund_mcp.service.resolving import Fetched, Resolver, TransactionRef
from refund_mcp.service.submitting import Submitter
from refund_mcp.settings import Settings
from refund_mcp.store.database import Database
from refund_mcp.webhooks.events import WebhookEvent

__all__ = ["Confirmation", "RefundInput", "RefundService", "TransactionRef"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RefundService:
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
        # Read at every use, not captured: the service's clock may be replaced while it runs (tests move time).
        now = self._now
        self.gate = Gate(db, policy)
        self.resolver = Resolver(db, processors, self.breaker, now)
        self.recorder = Recorder(settings, now)
        self.reserver = Reserver(db, self.resolver, processors, policy, settings, self.breaker, now)
        self.submitter = Submitter(db, processors, self.resolver, self.recorder, self.breaker, settings, now)
        self.approvals = Approvals(db, self.submitter, settings, now)
        self.events = Events(db, self.recorder, now)
        self.operator_actions = OperatorActions(db, processors, settings, now)
        self.cancellations = Cancellations(db, processors, self.gate, self.recorder, now)
        self.reads = Reads(db, processors, policy, self.gate, self.resolver, self.reserver, self.recorder)
        self.cap_counters = CounterPruner(db, now)

    def _now(self) -> datetime:
        return self.clock()

    # ----------------------------------------------------------------- create_refund

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
        request = request_record(req)
        await self.gate.guard_tool("create_refund", actor, request)
        try:
            currency, _reason = validate_input(req)
            ref, resolved = await self.resolver.route(req.transaction_id, req.processor)
            fetched = await self.resolver.fetch_named(ref, resolved=resolved, prefetched=prefetched)

            async def reserve(fetched: Fetched) -> Reservation:
                return await self.reserver.reserve(
                    actor, req, fetched.ref, fetched.info, currency, confirmation, request, confirmed, unchecked=fetched.unchecked
                )

            reservation = await self.resolver.on_canonical(fetched, reserve)
        except RefundError as exc:
            if not getattr(exc, "_audited", False):
                await self.gate.audit_error(actor, "refund.create", req.transaction_id[:200], exc, request)
            raise
        if not reservation.submit:
            return reservation.view
        failpoints.hit("after_reserve")
        # The attempt records the processor's answer through the Recorder and returns the refund's view.
        return await self.submitter.submit(reservation.view.refund_id, caller=actor, raise_declined=True, claimed=reservation.row)

    async def record_declined_confirmation(self, actor: str, req: RefundInput, action: str) -> ConfirmationDeclined:
        error = ConfirmationDeclined(
            f"the human {action} the refund of {req.transaction_id}; nothing was refunded. Ask them what they want instead."
        )
        await self.gate.audit_error(actor, "refund.create", req.transaction_id[:200], error, request_record(req))
        return error

    # ----------------------------------------------------------------- the rest, delegated

    async def guard_tool(self, tool: str, actor: str, request: dict[str, Any]) -> None:
        await self.gate.guard_tool(tool, actor, request)

    async def resolve_transaction_id(self, transaction_id: str, processor: str | None = None) -> TransactionRef:
        return await self.resolver.resolve_transaction_id(transaction_id, processor)

    async def lookup_transaction(self, actor: str, transaction_id: str, processor: str | None = None) -> views.TransactionView:
        return await self.reads.lookup_transaction(actor, transaction_id, processor)

    async def check_refund_policy(
        self, actor: str, transaction_id: str, reason: str, amount_minor: int | None = None, currency: str | None = None
    ) -> views.PolicyCheckView:
        return await self.reads.check_refund_policy(actor, transaction_id, reason, amount_minor, currency)

    def may_need_confirmation(self, amount_minor: int | None) -> bool:
        return self.reads.may_need_confirmation(amount_minor)

    async def preview(self, actor: str, req: RefundInput) -> Preview | None:
        return await self.reads.preview(actor, req)

    async def get_refund_status(self, actor: str, refund_id: str, refresh: bool = True) -> views.RefundView:
        return await self.reads.get_refund_status(actor, refund_id, refresh)

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
        return await self.reads.list_refunds(
            actor, status=status, processor=processor, transaction_id=transaction_id, since=since, limit=limit, cursor=cursor
        )

    async def refund_with_trail(self, refund_id: str) -> dict[str, Any]:
        return await self.reads.refund_with_trail(refund_id)

    async def refund_for_agent(self, actor: str, refund_id: str) -> dict[str, Any]:
        return await self.reads.refund_for_agent(actor, refund_id)

    async def read_policy(self, actor: str) -> str:
        return await self.reads.read_policy(actor)

    async def record_prompt(self, actor: str, name: str) -> None:
        await self.reads.record_prompt(actor, name)

    async def cancel_refund(self, actor: str, refund_id: str, reason: str | None = None, *, operator: bool = False) -> views.RefundView:
        return await self.cancellations.cancel_refund(actor, refund_id, reason, operator=operator)

    async def apply_processor_state(
        self, conn: AsyncConnection, refund_id: str, answer: ProcessorRefund, *, actor: str, action: str, claim_token: int | None = None
    ) -> views.RefundView:
        return await self.recorder.apply_processor_state(conn, refund_id, answer, actor=actor, action=action, claim_token=claim_token)

    async def process_due(self, limit: int = 20) -> int:
        return await self.submitter.process_due(limit)

    async def sync_statuses(self, limit: int = 20) -> int:
        return await self.submitter.sync_statuses(limit)

    async def prune_cap_counters(self) -> int:
        """The worker's hourly clean-up of the daily caps' counters (service/daily_caps.py)."""
        return await self.cap_counters.prune_if_due()

    async def pending_approvals(self, limit: int = 200) -> list[views.RefundView]:
        return await self.approvals.pending_approvals(limit)

    async def approve(self, refund_id: str, *, approver: str, note: str | None = None) -> views.RefundView:
        return await self.approvals.approve(refund_id, approver=approver, note=note)

    async def deny(self, refund_id: str, *, approver: str, note: str | None = None) -> views.RefundView:
        return await self.approvals.deny(refund_id, approver=approver, note=note)

    async def expire_approvals(self) -> int:
        return await self.approvals.expire_approvals()

    def approval_is_expired(self, approval: views.ApprovalInfo | None) -> bool:
        return self.approvals.approval_is_expired(approval)

    async def apply_event(self, event: WebhookEvent) -> str:
        return await self.events.apply_event(event)

    async def stuck_refunds(self) -> list[views.RefundView]:
        return await self.operator_actions.stuck_refunds()

    async def resolve_queued(
        self, refund_id: str, *, outcome: Literal["failed", "retry"], operator: str, note: str | None = None
    ) -> views.RefundView:
        return await self.operator_actions.resolve_queued(refund_id, outcome=outcome, operator=operator, note=note)
