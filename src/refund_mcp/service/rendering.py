"""Rows and decisions -> the typed results of service/views.py. Pure functions: no database, no clock."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Row

from refund_mcp.domain.errors import RefundError
from refund_mcp.domain.models import RefundStatus
from refund_mcp.domain.money import format_display
from refund_mcp.policy import Decision
from refund_mcp.service import views
from refund_mcp.service.metadata import decode as decode_metadata
from refund_mcp.store import queries


def refund_view(row: Row[Any]) -> views.RefundView:
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


def status_message(view: views.RefundView) -> str:
    return {
        "succeeded": f"Refunded {view.amount_display}.",
        "pending": "The processor accepted the refund; it is not final yet. Check again later with get_refund_status.",
        "requires_action": "The processor needs action before this refund can complete; it can be cancelled with cancel_refund.",
        "failed": "The refund failed; nothing was refunded and the amount is released.",
        "cancelled": "The refund was cancelled; the amount is released.",
        "queued": "Reserved and waiting to be sent to the processor; it will be retried automatically.",
        "pending_approval": "Waiting for a human approver.",
    }[view.status]


def transaction_view(
    txn: Row[Any], bal: queries.Balance, refunds: list[Row[Any]], *, processor_kind: str | None, source: str, message: str | None = None
) -> views.TransactionView:
    if source == "records" and message is None and processor_kind == "adyen":
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
        refunds=[refund_view(row) for row in refunds],
    )


_POLICY_MESSAGES = {
    "allow": "create_refund would proceed without asking anyone.",
    "needs_confirmation": "create_refund would ask the human in your MCP client to confirm first.",
    "needs_approval": "create_refund would park the refund as pending_approval until a human approver decides.",
    "deny": "create_refund would be refused: see the rules with outcome deny.",
}


def policy_view(
    txn: Row[Any], amount_minor: int, bal: queries.Balance, decision: Decision | None, error: RefundError | None, *, policy_version: str
) -> views.PolicyCheckView:
    """`policy_version` is the current policy's, shown when a balance error came before any decision."""
    currency = txn.currency
    rules: list[views.RuleView] = []
    if error is not None:
        rules.append(views.RuleView(name="balance", outcome="deny", detail=f"[{error.code}] {error.message}"))
        outcome = "deny"
        version = policy_version
    else:
        assert decision is not None
        rules.append(
            views.RuleView(
                name="balance",
                outcome="allow",
                detail=f"{format_display(amount_minor, currency)} of {format_display(bal.refundable_minor, currency)} refundable",
            )
        )
        rules.extend(views.RuleView(name=r.name, outcome=r.outcome.value, detail=r.detail) for r in decision.rules)
        outcome = decision.outcome.value
        version = decision.policy_version
    return views.PolicyCheckView(
        decision=outcome,  # type: ignore[arg-type]
        rules=rules,
        transaction_id=txn.id,
        amount_minor=amount_minor,
        currency=currency,
        amount_display=format_display(amount_minor, currency),
        refundable_minor=bal.refundable_minor,
        policy_version=version,
        message=_POLICY_MESSAGES[outcome],
        customer_ref=txn.customer_ref,
    )
