"""The policies and JSON Schema shipped in the package: current, valid, and saying what they mean."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from refund_mcp.domain.models import RefundReason
from refund_mcp.domain.money import format_display
from refund_mcp.policy import (
    Outcome,
    PolicyEngine,
    default_policy_path,
    load_policy,
    policy_json_schema,
    render_json_schema,
)

from ._support import request, result

SHIPPED = default_policy_path().parent
POLICIES = ["default.yaml", "strict.yaml"]
_AMOUNT_LINE = re.compile(r"^\s+(?P<currency>[A-Z]{3}):\s+(?P<amount>\d+)\s*(?:#\s*(?P<comment>.*))?$")


def test_schema_json_is_current() -> None:
    stored = (SHIPPED / "schema.json").read_text()

    assert stored == render_json_schema(), (
        "policies/schema.json is stale; regenerate it with: "
        "python -c 'from refund_mcp.policy import render_json_schema as r; print(r(), end=\"\")' "
        "> src/refund_mcp/policies/schema.json"
    )
    assert json.loads(stored) == policy_json_schema()


@pytest.mark.parametrize("name", POLICIES)
def test_the_shipped_policies_satisfy_the_json_schema(name: str) -> None:
    schema = json.loads((SHIPPED / "schema.json").read_text())
    document = yaml.safe_load((SHIPPED / name).read_text())

    jsonschema.Draft202012Validator(schema).validate(document)


def test_the_json_schema_refuses_what_the_loader_refuses() -> None:
    validator = jsonschema.Draft202012Validator(policy_json_schema())

    assert validator.is_valid(
        {"version": 1, "reasons": ["duplicate"], "rules": [{"when": {"reason": "duplicate"}, "deny": True}]}
    )
    assert not validator.is_valid({"version": 1, "limits": {"per_refunds": {"USD": 1}}})
    assert not validator.is_valid({"version": 1, "limits": {"per_refund": {"usd": 1}}})
    assert not validator.is_valid({"version": 1, "limits": {"per_refund": {"USD": 1.5}}})
    assert not validator.is_valid({"version": 1, "reasons": None})


@pytest.mark.parametrize("name", POLICIES)
def test_every_amount_in_a_shipped_policy_is_annotated_with_its_display_string(name: str) -> None:
    # Minor units are easy to mis-scale (JPY has no decimals, KWD three); the comment is the check.
    lines = (SHIPPED / name).read_text().splitlines()
    amounts = [match for line in lines if (match := _AMOUNT_LINE.match(line))]

    assert amounts
    for match in amounts:
        shown = format_display(int(match["amount"]), match["currency"])
        assert match["comment"] is not None and match["comment"].startswith(shown), match.string


def test_the_default_policy_allows_every_reason_and_the_sandbox() -> None:
    default = PolicyEngine(load_policy(default_policy_path()))

    for reason in RefundReason:
        decision = default.evaluate(request(reason=reason.value, processor="sandbox"))
        assert decision.outcome != Outcome.DENY, decision.explain()


def test_the_default_policy_sends_every_fraud_refund_to_an_approver() -> None:
    default = PolicyEngine(load_policy(default_policy_path()))

    for currency in ("USD", "EUR", "GBP", "JPY", "KWD", "CAD", "AUD"):
        decision = default.evaluate(request(reason="fraudulent", currency=currency, amount_minor=1))
        assert decision.outcome == Outcome.NEEDS_APPROVAL, currency


def test_the_default_auditor_bot_is_read_only() -> None:
    default = PolicyEngine(load_policy(default_policy_path()))

    assert default.check_tool("lookup_transaction", "auditor-bot").outcome == Outcome.ALLOW
    assert default.check_tool("create_refund", "auditor-bot").outcome == Outcome.DENY
    assert default.check_tool("cancel_refund", "auditor-bot").outcome == Outcome.DENY


def test_the_strict_policy_confirms_every_refund_and_refuses_goodwill() -> None:
    strict = PolicyEngine(load_policy(SHIPPED / "strict.yaml"))
    matching = {"customer_ref": "jane@example.com", "transaction_customer_ref": "jane@example.com"}

    assert strict.evaluate(request(amount_minor=1, **matching)).outcome == Outcome.NEEDS_CONFIRMATION
    assert strict.evaluate(request(amount_minor=10001, **matching)).outcome == Outcome.NEEDS_APPROVAL
    assert strict.evaluate(request(reason="goodwill", **matching)).outcome == Outcome.DENY
    missing = strict.evaluate(request(customer_ref=None))
    assert result(missing, "require_customer_match").outcome == Outcome.DENY


def test_the_root_policies_folder_is_the_packaged_one() -> None:
    root = Path(__file__).resolve().parents[2] / "policies"

    assert root.resolve() == SHIPPED.resolve()
