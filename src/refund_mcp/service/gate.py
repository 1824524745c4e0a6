"""Which tools the policy gives an actor, and the audit record of every refusal and error."""

from __future__ import annotations

from typing import Any

from refund_mcp.audit import log as audit
from refund_mcp.audit.log import AuditEntry
from refund_mcp.domain.errors import ConfirmationDeclined, PolicyDenied, RefundError
from refund_mcp.policy import Decision, Outcome, PolicyHolder
from refund_mcp.store.database import Database


def decision_record(decision: Decision) -> dict[str, Any]:
    return {
        "outcome": decision.outcome.value,
        "rules": [rule.name for rule in decision.deciding],
        "policy_version": decision.policy_version,
    }


class Gate:
    """Refuses tools by policy and audits errors, each in its own short write."""

    def __init__(self, db: Database, policy: PolicyHolder) -> None:
        self.db = db
        self.policy = policy

    async def audit_error(self, actor: str, action: str, target: str | None, error: RefundError, request: dict[str, Any] | None, decision: Decision | None = None) -> None:
        decision = decision or getattr(error, "decision", None)
        async with self.db.write() as conn:
            await audit.append(
                conn,
                AuditEntry(
                    actor=actor,
                    action=action,
                    target=target,
                    outcome="denied" if isinstance(error, (PolicyDenied, ConfirmationDeclined)) else "error",
                    error_code=error.code,
                    request=request,
                    decision=decision_record(decision) if decision else None,
                    detail={"message": error.message},
                ),
            )

    def _check_tool(self, tool: str, actor: str) -> None:
        result = self.policy.engine().check_tool(tool, actor)
        if result.outcome is Outcome.DENY:
            raise PolicyDenied(f"{result.name}: {result.detail}")

    async def guard_tool(self, tool: str, actor: str, request: dict[str, Any]) -> None:
        """Refuse a tool the policy does not give this actor; the refusal is audited."""
        try:
            self._check_tool(tool, actor)
        except PolicyDenied as exc:
            await self.audit_error(actor, f"{tool}.denied", None, exc, request)
            raise
