"""Decisions only a human operator may take about a queued refund the worker could not complete.

After the retry deadline a refund stays `queued` (reserved) and the worker stops: whether the
processor created it is unknown, so nobody but a person who checked the processor may say so.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import NotSupported, ValidationFailed
from refund_mcp.domain.models import RefundStatus
from refund_mcp.processors.registry import ProcessorRegistry
from refund_mcp.service import rendering, resend, views
from refund_mcp.service.rows import refund_row
from refund_mcp.settings import Settings
from refund_mcp.store import queries
from refund_mcp.store.database import Database


class OperatorActions:
    """An operator's decisions about queued refunds the worker stopped on, and the list of them."""

    def __init__(self, db: Database, processors: ProcessorRegistry, settings: Settings, now: Callable[[], datetime]) -> None:
        self.db = db
        self.processors = processors
        self.settings = settings
        self.now = now

    async def stuck_refunds(self) -> list[views.RefundView]:
        """Queued refunds the worker will not send on its own (retry deadline passed, or an earlier attempt may have
        reached a processor that cannot be searched and the key may have expired): they wait for an operator."""
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
        return [rendering.refund_view(row) for row in rows]

    async def resolve_queued(
        self, refund_id: str, *, outcome: Literal["failed", "retry"], operator: str, note: str | None = None
    ) -> views.RefundView:
        """`failed`: the operator checked the processor and nothing was refunded, so release the amount.
        `retry`: start a fresh retry window under the same rule as every attempt (service/resend.py): a key that
        may have expired at the processor is never sent again; the refund is searched for first, and where the
        processor cannot be searched the retry is refused (check the processor, then `--failed`).

        Either decision takes a new fencing token, so an overtaken attempt still running can write nothing."""
        operator = (operator or "").strip()
        if not operator:
            raise ValidationFailed("--by must name the operator", fields=["by"])
        now = self.now()
        async with self.db.write() as conn:
            row = await refund_row(conn, refund_id)
            if row.status != RefundStatus.QUEUED.value:
                raise NotSupported(f"refund {refund_id} is {row.status}; only a queued refund can be resolved by hand")
            if row.claimed_until is not None and row.claimed_until > now:
                raise NotSupported(f"refund {refund_id} is being submitted right now; try again in a minute")
            lapsed_claim = row.claimed_until is not None
            values: dict[str, Any]
            if outcome == "failed":
                values = {
                    "status": RefundStatus.FAILED.value,
                    "failure_reason": f"marked failed by {operator} after checking the processor" + (f": {note}" if note else ""),
                    "next_attempt_at": None,
                }
            else:
                deadline = now + timedelta(seconds=self.settings.retry_deadline_seconds)
                plan = self._resend_plan(row, now, deadline, may_have_reached=bool(row.maybe_sent) or lapsed_claim)
                if plan.step is resend.Step.OPERATOR:
                    raise NotSupported(
                        f"refund {refund_id} cannot be retried: {plan.why}. If {row.processor} holds no refund with "
                        f"metadata refund_mcp_id={refund_id}, resolve it --failed and create a new refund"
                    )
                values = {
                    "next_attempt_at": now,
                    "retry_deadline_at": deadline,
                    "last_error": None,
                    "maybe_sent": bool(row.maybe_sent) or lapsed_claim,
                }
            values |= {"claimed_until": None, "claim_token": int(row.claim_token) + 1}
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
            view = rendering.refund_view(await queries.get_refund(conn, refund_id))
        if outcome == "failed":
            view.message = "Marked failed; the amount is released."
        elif plan.step is resend.Step.SEARCH:
            view.message = f"Retrying: {plan.why}, so {row.processor} is searched first and it is sent again only if absent, under a new key."
        else:
            view.message = "Retrying with the same idempotency key."
        return view

    def _resend_plan(self, row: Any, now: datetime, deadline: datetime, *, may_have_reached: bool) -> resend.Plan:
        processor = self.processors.get(row.processor)
        if processor is None:
            raise NotSupported(f"processor {row.processor!r} is not configured; refund {row.id} cannot be retried")
        history = resend.AttemptHistory(
            may_have_reached=may_have_reached,
            key_first_sent_at=row.key_first_sent_at or row.created_at,
            lookup_first=bool(row.lookup_first),
            retry_deadline_at=deadline,
        )
        caps = processor.capabilities
        return resend.plan_attempt(history, now=now, retention=caps.idempotency_key_retention, searchable=caps.refund_search)
