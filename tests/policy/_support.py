"""Builders shared by the policy tests."""

from __future__ import annotations

import dataclasses
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

from refund_mcp.policy import Decision, PolicyEngine, PolicyRequest, RuleResult, parse_policy

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

_BASE_REQUEST = PolicyRequest(
    tool="create_refund",
    actor="alice",
    processor="stripe",
    transaction_id="stripe:ch_123",
    reason="requested_by_customer",
    amount_minor=1000,
    currency="USD",
    customer_ref=None,
    transaction_customer_ref="jane@example.com",
    transaction_created_at=NOW - timedelta(days=10),
    refunds_on_transaction=0,
    actor_daily_minor=0,
    global_daily_minor=0,
    now=NOW,
)


def request(**changes: Any) -> PolicyRequest:
    """A modest USD refund on a 10-day-old Stripe charge, with the given fields changed."""
    return dataclasses.replace(_BASE_REQUEST, **changes)


def engine(policy_yaml: str) -> PolicyEngine:
    """An engine for policy YAML written inline (indentation is removed)."""
    return PolicyEngine(parse_policy(textwrap.dedent(policy_yaml), "test.yaml"))


def result(decision: Decision, name: str) -> RuleResult:
    """The evaluated rule called `name`; fails the test if it was not evaluated."""
    matches = [rule for rule in decision.rules if rule.name == name]
    assert matches, f"{name} was not evaluated; evaluated: {[rule.name for rule in decision.rules]}"
    return matches[0]


def names(decision: Decision) -> list[str]:
    return [rule.name for rule in decision.rules]
