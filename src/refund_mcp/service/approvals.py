"""Human approval of refunds parked as `pending_approval`: list, approve, deny, expire.

An approval sends the refund through the normal submission path (same idempotency key).
The actor who asked for a refund can never approve it. Where the policy asks for two approvers
(`approval: {above: …, approvers: 2}`), the first approval is recorded on the refund and a second,
different person must approve before it is sent; both are audited.

Expiry is checked when a decision is taken, not only by the worker's sweep: a decision on a refund
whose approval has expired expires it there and then (cancelled, released, audited) and is refused,
so an approver acting after the deadline cannot move money the policy meant to time out.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import Forbidden, NotSupported, RefundError, ValidationFailed
from refund_mcp.domain.models import RefundStatus
from refund_mcp.service import rendering, views
from refund_mcp.service.rows import refund_row
from refund_mcp.service.submitting import Submitter
from refund_mcp.settings import Settings
from refund_mcp.store import queries
from refund_mcp.store.database import Database


class Approvals:
    """Parks, approves, denies and expires refunds waiting for a human; an approved refund goes to the Submitter."""

    def __init__(self, db: Database, submitter: Submitter, settings: Settings, now: Callable[[], datetime]) -> None:
        self.db = db
        self.submitter = submitter
        self.settings = settings
        self.now = now

    async def pending_approvals(self, limit: int = 200) -> list[views.RefundView]:
        async with self.db.read() as conn:
            rows = await queries.list_refunds(
                conn, status=RefundStatus.PENDING_APPROVAL.value, processor=None, transaction_ids=None,
                since=None, after=None, limit=limit, approval_state="pending",
            )
        return [rendering.refund_view(row) for row in rows]

    def _check_approver(self, approver: str) -> str:
        approver = (approver or "").strip()
        if not approver or len(approver) > 200:
            raise ValidationFailed("--by must name the approver", fields=["by"])
        return approver

    async def approve(self, refund_id: str, *, approver: str, note: str | None = None) -> views.RefundView:
        """Approve, or record the first of two approvals (two-person approval): the refund then stays
        `pending_approval` until a second, different person approves. The requester never counts.
        Raises Forbidden (own refund, or the same person twice), NotSupported (not waiting, or its approval
        expired: then it is expired now, released and audited)."""
        approver = self._check_approver(approver)
        now = self.now()
        waiting: views.RefundView | None = None
        claimed = None
        async with self.db.write() as conn:
            row = await refund_row(conn, refund_id)
            self._check_pending(row)
            expired = await self._expire_if_due(conn, row, now, attempted_by=approver, attempted="approve")
            refusal = None if expired is not None else self._approval_refusal(row, approver)
            if refusal is not None:
                # Recorded, then refused outside the transaction so the record commits.
                await audit.append(conn, AuditEntry(actor=approver, action="approval.refused", target=refund_id, outcome="denied", error_code=refusal[1].code, detail={"why": refusal[0]}))
            elif expired is None and (row.approvals_required or 1) > 1 and row.approval_first_by is None:
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
                waiting = rendering.refund_view(await queries.get_refund(conn, refund_id))
            elif expired is None:
                claimed = await self._mark_approved(conn, refund_id, approver, note, now)
        if expired is not None:
            raise expired
        if refusal is not None:
            raise refusal[1]
        if waiting is not None:
            waiting.message = f"Approved by {approver}; a second approver (not {approver}, not {row.actor}) must approve before it is sent."
            return waiting
        return await self.submitter.submit(refund_id, caller=approver, claimed=claimed)

    @staticmethod
    def _approval_refusal(row: Any, approver: str) -> tuple[str, RefundError] | None:
        """Why `approver` may not approve this pending refund (expiry is checked apart), or None."""
        if row.actor == approver:
            return "self-approval", Forbidden(f"{approver} asked for refund {row.id} and cannot approve it; another person must")
        if row.approval_first_by == approver:
            return "second-approval-by-same-person", Forbidden(
                f"{approver} already approved refund {row.id}; two-person approval needs a different second approver"
            )
        return None

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
        """Deny a parked refund, releasing its amount. Raises NotSupported when it is not waiting, or
        when its approval expired (then it is expired now, released and audited)."""
        approver = self._check_approver(approver)
        now = self.now()
        async with self.db.write() as conn:
            row = await refund_row(conn, refund_id)
            self._check_pending(row)
            expired = await self._expire_if_due(conn, row, now, attempted_by=approver, attempted="deny")
            if expired is None:
                await self._mark_denied(conn, refund_id, approver, note, now)
                view = rendering.refund_view(await queries.get_refund(conn, refund_id))
        if expired is not None:
            raise expired
        view.message = f"Denied by {approver}; nothing was refunded and the amount is released."
        return view

    async def _mark_denied(self, conn, refund_id: str, approver: str, note: str | None, now) -> None:  # type: ignore[no-untyped-def]
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

    async def expire_approvals(self) -> int:
        """Expire every approval past its deadline; returns how many were expired here.

        One refund per transaction: expiring one moves its payment's running totals and the caps' counters,
        so a sweep of several in one transaction would hold those and then wait for the next payment, which a
        reservation may hold while it waits for the same counters. Each refund is read again locked, so one
        decided meanwhile (approved, denied, cancelled) is left alone."""
        now = self.now()
        async with self.db.read() as conn:
            due = [row.id for row in await queries.expired_approvals(conn, now)]
        expired = 0
        for refund_id in due:
            async with self.db.write() as conn:
                row = await refund_row(conn, refund_id)
                if row.status != RefundStatus.PENDING_APPROVAL.value or not approval_expired(row.approval_expires_at, now):
                    continue
                await self._mark_expired(conn, refund_id, now, detail=None)
                expired += 1
        return expired

    async def _mark_expired(self, conn: Any, refund_id: str, now: datetime, *, detail: dict[str, Any] | None) -> None:
        await queries.update_refund(
            conn, refund_id, status=RefundStatus.CANCELLED.value, approval_state="expired",
            failure_reason="approval expired before anyone decided", updated_at=now,
        )
        await audit.append(conn, AuditEntry(actor="refund-mcp", action="approval.expired", target=refund_id, outcome="cancelled", detail=detail))

    async def _expire_if_due(self, conn: Any, row: Any, now: datetime, *, attempted_by: str, attempted: str) -> RefundError | None:
        """Expire a refund whose approval deadline has passed (in the caller's transaction, so it commits
        with the refusal's record); returns the error to raise once committed, or None if still open."""
        if not approval_expired(row.approval_expires_at, now):
            return None
        await self._mark_expired(conn, row.id, now, detail={"on_decision": attempted, "by": attempted_by})
        error = NotSupported(
            f"the approval of refund {row.id} expired at {row.approval_expires_at:%Y-%m-%d %H:%M}Z, before it was decided; "
            "it is now cancelled and its amount released, and nothing was refunded. Ask for a new refund if it is still wanted."
        )
        error._audited = True  # type: ignore[attr-defined]  # the approval.expired record says what happened
        return error

    def approval_is_expired(self, approval: views.ApprovalInfo | None) -> bool:
        """Whether an approval has expired, including one still shown as pending because the sweep has not run yet."""
        if approval is None:
            return False
        return approval.state == "expired" or (approval.state == "pending" and approval_expired(approval.expires_at, self.now()))

    @staticmethod
    def _check_pending(row: object) -> None:
        if getattr(row, "status") != RefundStatus.PENDING_APPROVAL.value or getattr(row, "approval_state") != "pending":
            raise NotSupported(f"refund {getattr(row, 'id')} is {getattr(row, 'status')}, not waiting for approval")


def approval_expired(expires_at: datetime | None, now: datetime) -> bool:
    """True once an approval deadline has passed (at the deadline itself, too: the sweep agrees)."""
    if expires_at is None:
        return False
    return (expires_at if expires_at.tzinfo else expires_at.replace(tzinfo=UTC)) <= now
