"""Human approval of refunds parked as `pending_approval`: list, approve, deny, expire.

An approval sends the refund through the normal submission path (same idempotency key).
The actor who asked for a refund can never approve it.
"""

from __future__ import annotations

from datetime import timedelta

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import Forbidden, NotSupported, ValidationFailed
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
        approver = self._check_approver(approver)
        now = self.clock()
        async with self.db.write() as conn:
            row = await self._get_row(conn, refund_id)
            self._check_pending(row)
            if row.actor == approver:
                # Recorded, then refused outside the transaction so the record commits.
                await audit.append(conn, AuditEntry(actor=approver, action="approval.refused", target=refund_id, outcome="denied", error_code="forbidden", detail={"why": "self-approval"}))
                self_approval = True
            else:
                self_approval = False
                claimed = await self._mark_approved(conn, refund_id, approver, note, now)
        if self_approval:
            raise Forbidden(f"{approver} asked for refund {refund_id} and cannot approve it; another person must")
        return await self._submit(refund_id, caller=approver, claimed=claimed)

    async def _mark_approved(self, conn, refund_id: str, approver: str, note: str | None, now):  # type: ignore[no-untyped-def]
        """Queue the approved refund claimed by this call (a new fencing token); returns the claimed row."""
        claimed = await queries.claim(
                conn,
                refund_id,
                now,
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
        return claimed

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
