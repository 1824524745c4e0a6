"""Which audit records become notifications, and writing them to the outbox.

Every state change a human must hear about is already an audit record written in the change's own
transaction, so the outbox row is decided right there too (`audit.log.append`): one place covers every
path that can fail, park or decide a refund, and the notification commits or rolls back with the change
it announces. On SQLite the row is written at once; on PostgreSQL it is written when the
record is sealed into the chain (audit/sealing.py), so its `audit_seq` is the record's real seq.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.store import tables

APPROVAL_REQUESTED = "refund.approval_requested"
APPROVAL_DECIDED = "refund.approval_decided"
STUCK = "refund.stuck"
FAILED = "refund.failed"
RECONCILE_NEEDS_HUMAN = "reconcile.needs_human"
EVENT_TYPES = (APPROVAL_REQUESTED, APPROVAL_DECIDED, STUCK, FAILED, RECONCILE_NEEDS_HUMAN)

_BY_ACTION = {
    "refund.pending_approval": APPROVAL_REQUESTED,
    "approval.recorded": APPROVAL_REQUESTED,  # the first of two approvals: a second approver is needed
    "approval.approved": APPROVAL_DECIDED,
    "approval.denied": APPROVAL_DECIDED,
    "approval.expired": APPROVAL_DECIDED,
    "refund.retry_exhausted": STUCK,
    "refund.failed": FAILED,
    "refund.resolved_failed": FAILED,
}


def event_type(action: str, outcome: str, detail: Mapping[str, Any] | None) -> str | None:
    """The notification an audit record calls for, or None (most records call for none)."""
    if action in _BY_ACTION:
        return _BY_ACTION[action]
    if action == "reconcile.run":
        return RECONCILE_NEEDS_HUMAN if outcome == "attention" else None
    # A processor answer, status sync, webhook or reconciliation that moved a refund to failed.
    if detail is not None and detail.get("applied") is True and detail.get("to") == "failed":
        return FAILED
    return None


def new_event_id() -> str:
    return "msg_" + secrets.token_hex(12)


@dataclass(frozen=True)
class PendingNotification:
    """The outbox row an audit record calls for, read while the record's change is current; it gets
    the record's seq (`audit_seq`) when written. On PostgreSQL it waits, as JSON, for the record to be
    sealed (audit/sealing.py); on SQLite it is written at once."""

    type: str
    refund_id: str | None
    body: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"type": self.type, "refund_id": self.refund_id, "body": self.body}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PendingNotification:
        data = json.loads(text)
        return cls(type=data["type"], refund_id=data["refund_id"], body=data["body"])


async def notification_for(
    conn: AsyncConnection, *, at: datetime, actor: str, action: str, target: str | None, outcome: str,
    detail: Mapping[str, Any] | None,
) -> PendingNotification | None:
    """The notification this audit record calls for, or None (most records call for none)."""
    kind = event_type(action, outcome, detail)
    if kind is None:
        return None
    body: dict[str, Any] = {"type": kind, "actor": actor, "action": action, "occurred_at": at.isoformat()}
    refund_id = None
    if kind == RECONCILE_NEEDS_HUMAN:
        summary = (detail or {}).get("summary")
        body |= {"refund_id": None, "transaction_id": None, "amount_minor": None, "currency": None, "amount_display": None, "reason": None}
        if isinstance(summary, Mapping):
            body["summary"] = {str(key): value for key, value in summary.items() if isinstance(value, int)}
    else:
        refund_id = target
        row = (await conn.execute(select(tables.refunds).where(tables.refunds.c.id == target))).first() if target else None
        if row is None:
            return None
        from refund_mcp.domain.money import format_display

        body |= {
            "refund_id": row.id,
            "transaction_id": row.transaction_id,
            "processor": row.processor,
            "amount_minor": row.amount_minor,
            "currency": row.currency,
            "amount_display": format_display(row.amount_minor, row.currency),
            "reason": row.reason,
            "requested_by": row.actor,
            "status": row.status,
        }
        if kind == APPROVAL_REQUESTED:
            body["approvals_required"] = row.approvals_required or 1
            body["approved_by"] = [row.approval_first_by] if row.approval_first_by else []
            body["expires_at"] = row.approval_expires_at.isoformat() if row.approval_expires_at else None
        if kind == APPROVAL_DECIDED:
            body["decision"] = row.approval_state
    return PendingNotification(type=kind, refund_id=refund_id, body=body)


def outbox_row(notification: PendingNotification, *, seq: int, at: datetime) -> dict[str, Any]:
    """The notifications row for `notification`, announcing audit record `seq` (appended at `at`)."""
    return {
        "id": new_event_id(),
        "type": notification.type,
        "refund_id": notification.refund_id,
        "audit_seq": seq,
        "body": json.dumps(notification.body | {"audit_seq": seq}, sort_keys=True, separators=(",", ":")),
        "created_at": at,
        "delivered_channels": "",
        "attempts": 0,
        "next_attempt_at": at,
    }
