"""Human approval of refunds parked as `pending_approval`: list, approve, deny, expire.

An approval sends the refund through the normal submission path (same idempotency key).
The actor who asked for a refund can never approve it. Where the policy asks for two approvers
(`approval: {above: …, approvers: 2}`), the first approval is recorded on the refund and a second,
different person must approve before it is sent; both are audited.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import Forbidden, NotSupported, RefundError, ValidationFailed
from refund_mcp.domain.models import RefundStatus
from refund_mcp.service import views
from refund_mcp.store import queries


class ApprovalsMixin:
    """Mixed into RefundService; uses its db, clock, settings, _get_row, _refund_view and _submit."""

    async def pending_approvals(self, limit: int = 200) -> list[views.RefundView]:
        async with self.db.read() as conn:
            rows = await queries.list_refunds(
                conn, status=RefundStatus.PENDING_APPROVAL.value, processor=None, transaction_ids=None,
                since=None, after=None, limit=limit, approval_state="pending",
            )
        return [self._refund_view(row) for row in rows]

    def _check_approver(self, approver: str) -> str:
        approver = (approver or "").strip()
        if not approver or len(approver) > 200:
            raise ValidationFailed("--by must name the approver", fields=["by"])
        return approver

    async def approve(self, refund_id: str, *, approver: str, note: str | None = None) -> views.RefundView:
        """Approve, or record the first of two approvals (two-person approval): the refund then stays
        `pending_approval` until a second, different person approves. The requester never counts."""
        approver = self._check_approver(approver)
        now = self.clock()
        waiting: views.RefundView | None = None
        async with self.db.write() as conn:
            row = await self._get_row(conn, refund_id)
            self._check_pending(row)
            refusal = self._approval_refusal(row, approver, now)
            if refusal is not None:
                # Recorded, then refused outside the transaction so the record commits.
                await audit.append(conn, AuditEntry(actor=approver, action="approval.refused", target=refund_id, outcome="denied", error_code=refusal[1].code, detail={"why": refusal[0]}))
            elif (row.approvals_required or 1) > 1 and row.approval_first_by is None:
                await queries.update_refund(
                    conn, refund_id, approval_first_by=approver, approval_first_at=now, approval_first_note=note, updated_at=now
                )
                await audit.append(
                    conn,
                    AuditEntry(
                        actor=approver, action="approval.recorded", target=refund_id, outcome=RefundStatus.PENDING_APPROVAL.value,
                        detail={"note": note, "approvals": 1, "approvals_required": row.approvals_required},
                    ),
                )
                waiting = self._refund_view(await queries.get_refund(conn, refund_id))
            else:
                await self._mark_approved(conn, refund_id, approver, note, now)
        if refusal is not None:
            raise refusal[1]
        if waiting is not None:
            waiting.message = f"Approved by {approver}; a second approver (not {approver}, not {row.actor}) must approve before it is sent."
            return waiting
        return await self._submit(refund_id, caller=approver)

    @staticmethod
    def _approval_refusal(row: Any, approver: str, now: datetime) -> tuple[str, RefundError] | None:
        """Why `approver` may not approve this pending refund now, or None."""
        if row.actor == approver:
            return "self-approval", Forbidden(f"{approver} asked for refund {row.id} and cannot approve it; another person must")
        if row.approval_first_by == approver:
            return "second-approval-by-same-person", Forbidden(
                f"{approver} already approved refund {row.id}; two-person approval needs a different second approver"
            )
        if row.approval_expires_at is not None and row.approval_expires_at <= now:
            return "expired", NotSupported(
                f"the approval of refund {row.id} expired at {row.approval_expires_at:%Y-%m-%d %H:%M}Z; it can no longer be approved"
            )
        return None

    async def _mark_approved(self, conn, refund_id: str, approver: str, note: str | None, now) -> None:  # type: ignore[no-untyped-def]
        await queries.update_refund(
                conn,
                refund_id,
                status=RefundStatus.QUEUED.value,
                approval_state="approved",
                approval_decided_by=approver,
                approval_decided_at=now,
                approval_note=note,
                next_attempt_at=now,
                claimed_until=now + timedelta(seconds=self.settings.claim_seconds),
                retry_deadline_at=now + timedelta(seconds=self.settings.retry_deadline_seconds),
                updated_at=now,
            )
        await audit.append(conn, AuditEntry(actor=approver, action="approval.approved", target=refund_id, outcome="queued", detail={"note": note}))

    async def deny(self, refund_id: str, *, approver: str, note: str | None = None) -> views.RefundView:
        approver = self._check_approver(approver)
        now = self.clock()
        async with self.db.write() as conn:
            row = await self._get_row(conn, refund_id)
            self._check_pending(row)
            await queries.update_refund(
                conn,
                refund_id,
                status=RefundStatus.CANCELLED.value,
                approval_state="denied",
                approval_decided_by=approver,
                approval_decided_at=now,
                approval_note=note,
                failure_reason=f"denied by {approver}" + (f": {note}" if note else ""),
                updated_at=now,
            )
            await audit.append(conn, AuditEntry(actor=approver, action="approval.denied", target=refund_id, outcome="cancelled", detail={"note": note}))
            view = self._refund_view(await queries.get_refund(conn, refund_id))
        view.message = f"Denied by {approver}; nothing was refunded and the amount is released."
        return view

    async def expire_approvals(self) -> int:
        now = self.clock()
        async with self.db.write() as conn:
            rows = await queries.expired_approvals(conn, now)
            for row in rows:
                await queries.update_refund(
                    conn, row.id, status=RefundStatus.CANCELLED.value, approval_state="expired",
                    failure_reason="approval expired before anyone decided", updated_at=now,
                )
                await audit.append(conn, AuditEntry(actor="refund-mcp", action="approval.expired", target=row.id, outcome="cancelled"))
        return len(rows)

    @staticmethod
    def _check_pending(row: object) -> None:
        if getattr(row, "status") != RefundStatus.PENDING_APPROVAL.value or getattr(row, "approval_state") != "pending":
            raise NotSupported(f"refund {getattr(row, 'id')} is {getattr(row, 'status')}, not waiting for approval")
