"""Recording what a processor says about one of our refunds, following the status rules.

The one place a processor's answer becomes the refund's state, whoever brings it: an attempt (only while it
still holds its claim), a webhook, a status sync, reconciliation, an operator's cancel.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.models import ProcessorRefund, RefundStatus, may_transition
from refund_mcp.service import rendering, views
from refund_mcp.settings import Settings
from refund_mcp.store import queries


class Recorder:
    """Writes a processor's answer into the caller's transaction, conditional on owning the attempt when it is one."""

    def __init__(self, settings: Settings, now: Callable[[], datetime]) -> None:
        self.settings = settings
        self.now = now

    async def apply_processor_state(
        self, conn: AsyncConnection, refund_id: str, answer: ProcessorRefund, *, actor: str, action: str,
        claim_token: int | None = None, status_seen: RefundStatus | None = None,
    ) -> views.RefundView:
        """Record what the processor says about one of our refunds, following the status rules.

        `claim_token` is given by an attempt (service/attempts.py): the write then happens only if the attempt
        still holds its claim, and ends it. Webhooks, status syncs and reconciliation are not attempts: they
        apply the processor's truth at any time but never end another attempt's claim.

        `status_seen` (with `claim_token`): the status the attempt's claimed row had. The write is then tried
        first as one conditional update on that status and token, without reading the row; only when it
        changes nothing (the claim was lost, or the refund moved meanwhile) is the row read and the answer
        recorded as below."""
        if claim_token is not None and status_seen is not None:
            done = await self._write(conn, refund_id, answer, actor=actor, action=action, current=status_seen, claim_token=claim_token)
            if done is not None:
                return done
        row = await queries.get_refund(conn, refund_id)
        if claim_token is not None and int(row.claim_token) != claim_token:
            return await stale_attempt(conn, refund_id, claim_token, answer_record(answer))
        done = await self._write(conn, refund_id, answer, actor=actor, action=action, current=RefundStatus(row.status), claim_token=claim_token)
        if done is None:  # unreachable: the refund was just read locked in this write; kept as the write's own guard
            assert claim_token is not None  # only a claimed write is conditional
            return await stale_attempt(conn, refund_id, claim_token, answer_record(answer))
        return done

    async def _write(
        self, conn: AsyncConnection, refund_id: str, answer: ProcessorRefund, *, actor: str, action: str,
        current: RefundStatus, claim_token: int | None,
    ) -> views.RefundView | None:
        """The answer applied to a refund in status `current`; with `claim_token`, only if the refund is still
        in that status under that token (None: nothing was written)."""
        now = self.now()
        values: dict[str, Any] = {
            "processor_refund_id": answer.processor_refund_id,
            "processor_status": answer.processor_status,
            "updated_at": now,
        }
        if claim_token is not None:
            values["claimed_until"] = None
            if current is RefundStatus.QUEUED:
                values["attempts"] = queries.R.c.attempts + 1
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
            updated = await queries.update_claimed(conn, refund_id, claim_token, in_status=current.value, **values)
            if updated is None:
                return None
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
        view = rendering.refund_view(updated)
        view.status_source = "processor"
        view.message = rendering.status_message(view)
        return view


async def stale_attempt(conn: Any, refund_id: str, token: int, answered: dict[str, Any]) -> views.RefundView:
    """The attempt lost its claim: record what it learned, change nothing, return the current state."""
    current = await queries.get_refund(conn, refund_id)
    if int(current.claim_token) == token:
        # Still ours, but no longer queued: a webhook or status sync settled it meanwhile. Leave that alone.
        view = rendering.refund_view(current)
        view.message = rendering.status_message(view)
        return view
    await audit.append(
        conn,
        AuditEntry(
            actor="refund-mcp", action="refund.stale_attempt", target=refund_id, outcome=current.status,
            detail={"claim_token": token, "current_claim_token": int(current.claim_token), "processor": answered},
        ),
    )
    view = rendering.refund_view(current)
    view.message = "This attempt was overtaken by a newer one; the refund's current state is shown."
    return view


def answer_record(answer: ProcessorRefund) -> dict[str, Any]:
    return {
        "processor_refund_id": answer.processor_refund_id,
        "status": answer.status.value,
        "amount_minor": answer.amount_minor,
        "currency": answer.currency,
        "processor_status": answer.processor_status,
    }
