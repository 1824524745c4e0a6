"""Cancelling a refund: locally while no attempt can have reached the processor, else at the processor if it can."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import Forbidden, NotSupported, RefundError
from refund_mcp.domain.models import RefundStatus
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.service import rendering, views
from refund_mcp.service.gate import Gate
from refund_mcp.service.recording import Recorder
from refund_mcp.service.rows import refund_row
from refund_mcp.store import queries
from refund_mcp.store.database import Database


class Cancellations:
    """Cancels a refund for its own actor, or for an operator (audited as an operator's)."""

    def __init__(self, db: Database, processors: ProcessorRegistry, gate: Gate, recorder: Recorder, now: Callable[[], datetime]) -> None:
        self.db = db
        self.processors = processors
        self.gate = gate
        self.recorder = recorder
        self.now = now

    async def cancel_refund(
        self, actor: str, refund_id: str, reason: str | None = None, *, operator: bool = False
    ) -> views.RefundView:
        """Cancel a refund. Its own actor may; anyone else needs `operator` (the refunds:operate scope),
        and such a cancel is audited as an operator's, naming the refund's actor."""
        request = {"refund_id": refund_id, "reason": reason}
        await self.gate.guard_tool("cancel_refund", actor, request)
        try:
            async with self.db.write() as conn:
                row = await refund_row(conn, refund_id)
                if row.actor != actor and not operator:
                    raise Forbidden(
                        f"refund {refund_id} was requested by another actor; only its own actor may cancel it, "
                        "or an operator whose token has scope refunds:operate"
                    )
                # An operator's cancel of someone else's refund is recorded as such, naming whose it was.
                action = "refund.cancel" if row.actor == actor else "refund.operator_cancel"
                whose = None if row.actor == actor else {"refund_actor": row.actor}
                status = RefundStatus(row.status)
                now = self.now()
                if status is RefundStatus.CANCELLED:
                    await audit.append(conn, AuditEntry(actor=actor, action=action, target=refund_id, outcome="cancelled", request=request, detail={"already": True, **(whose or {})}))
                    view = rendering.refund_view(row)
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
                    view = rendering.refund_view(await queries.get_refund(conn, refund_id))
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
                return await self.recorder.apply_processor_state(conn, refund_id, answer, actor=actor, action=action)
        except RefundError as exc:
            await self.gate.audit_error(actor, "refund.cancel", refund_id[:40], exc, request)
            raise
