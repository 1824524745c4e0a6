"""Decisions only a human operator may take about a queued refund the worker could not complete.

After the retry deadline a refund stays `queued` (reserved) and the worker stops: whether the
processor created it is unknown, so nobody but a person who checked the processor may say so.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import NotSupported, ValidationFailed
from refund_mcp.domain.models import RefundStatus
from refund_mcp.service import views
from refund_mcp.store import queries


class OperatorActionsMixin:
    """Mixed into RefundService."""

    async def stuck_refunds(self) -> list[views.RefundView]:
        """Queued refunds the worker gave up on (retry deadline passed): they wait for an operator."""
        from sqlalchemy import select

        from refund_mcp.store import tables

        refunds = tables.refunds
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(refunds).where(refunds.c.status == RefundStatus.QUEUED.value, refunds.c.next_attempt_at.is_(None))
                    .order_by(refunds.c.created_at)
                )
            ).all()
        return [self._refund_view(row) for row in rows]

    async def resolve_queued(
        self, refund_id: str, *, outcome: Literal["failed", "retry"], operator: str, note: str | None = None
    ) -> views.RefundView:
        """`failed`: the operator checked the processor and nothing was refunded, so release the amount.
        `retry`: start a fresh retry window (same idempotency key, so still at most one refund)."""
        operator = (operator or "").strip()
        if not operator:
            raise ValidationFailed("--by must name the operator", fields=["by"])
        now = self.clock()
        async with self.db.write() as conn:
            row = await self._get_row(conn, refund_id)
            if row.status != RefundStatus.QUEUED.value:
                raise NotSupported(f"refund {refund_id} is {row.status}; only a queued refund can be resolved by hand")
            if row.claimed_until is not None and row.claimed_until > now:
                raise NotSupported(f"refund {refund_id} is being submitted right now; try again in a minute")
            if outcome == "failed":
                values = {
                    "status": RefundStatus.FAILED.value,
                    "failure_reason": f"marked failed by {operator} after checking the processor" + (f": {note}" if note else ""),
                    "next_attempt_at": None,
                }
            else:
                values = {
                    "next_attempt_at": now,
                    "retry_deadline_at": now + timedelta(seconds=self.settings.retry_deadline_seconds),
                    "last_error": None,
                }
            await queries.update_refund(conn, refund_id, updated_at=now, **values)
            await audit.append(
                conn,
                AuditEntry(
                    actor=operator,
                    action=f"refund.resolved_{outcome}",
                    target=refund_id,
                    outcome=values.get("status", RefundStatus.QUEUED.value),
                    detail={"note": note, "maybe_sent": bool(row.maybe_sent), "attempts": row.attempts},
                ),
            )
            view = self._refund_view(await queries.get_refund(conn, refund_id))
        view.message = (
            "Marked failed; the amount is released." if outcome == "failed" else "Retrying with the same idempotency key."
        )
        return view
