"""The engine's decisions: each setting on its own, how sources combine, and what is reported."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from refund_mcp.policy import Outcome, PolicyEngine, default_policy_path, load_policy, strictest

from ._support import NOW, engine, names, request, result

ALLOW, DENY = Outcome.ALLOW, Outcome.DENY
CONFIRM, APPROVE = Outcome.NEEDS_CONFIRMATION, Outcome.NEEDS_APPROVAL

BASE = engine(
    """
    version: 1
    reasons: [duplicate, fraudulent, requested_by_customer, goodwill]
    limits:
      per_refund: {USD: 50000, JPY: 70000}
      per_actor_daily: {USD: 100000}
      global_daily: {USD: 300000}
      max_refunds_per_transaction: 3
      max_transaction_age_days: 180
    confirmation: {above: {USD: 5000}}
    approval: {above: {USD: 20000}}
    tools: [lookup_transaction, create_refund, check_refund_policy]
    processors: [stripe, paypal, sandbox]
    """
)

# (changes to the base request, the rule that decides, its outcome, words in its detail)
SINGLE_RULES: list[Any] = [
    pytest.param({}, "reasons", ALLOW, "reason requested_by_customer is allowed", id="listed-reason"),
    pytest.param({"reason": "product_defective"}, "reasons", DENY, "not among the allowed", id="unlisted-reason"),
    pytest.param({"reason": "because"}, "reasons", DENY, "reason because is not", id="unknown-reason"),
    pytest.param({"currency": "EUR"}, "currencies", DENY, "EUR has no per-refund limit", id="currency-without-limit"),
    pytest.param(
        {"currency": "JPY", "amount_minor": 70000}, "limits.per_refund", ALLOW, "JPY 70000", id="jpy-at-limit"
    ),
    pytest.param(
        {"amount_minor": 50000}, "limits.per_refund", ALLOW, "USD 500.00 is within", id="amount-at-per-refund-limit"
    ),
    pytest.param(
        {"amount_minor": 50001},
        "limits.per_refund",
        DENY,
        "USD 500.01 is above the per-refund limit USD 500.00",
        id="amount-over-per-refund-limit",
    ),
    pytest.param(
        {"actor_daily_minor": 99000, "amount_minor": 1000},
        "limits.per_actor_daily",
        ALLOW,
        "USD 1000.00 in the last 24 h",
        id="actor-reaches-daily-cap",
    ),
    pytest.param(
        {"actor_daily_minor": 99000, "amount_minor": 1001},
        "limits.per_actor_daily",
        DENY,
        "USD 990.00 refunded in the last 24 h plus USD 10.01 is above the per-actor daily cap USD 1000.00",
        id="actor-over-daily-cap",
    ),
    pytest.param(
        {"global_daily_minor": 299000, "amount_minor": 1001},
        "limits.global_daily",
        DENY,
        "global daily cap USD 3000.00",
        id="everyone-over-daily-cap",
    ),
    pytest.param(
        {"currency": "JPY", "actor_daily_minor": 0, "amount_minor": 1},
        "limits.per_actor_daily",
        DENY,
        "JPY has no per-actor daily cap, so it may not be refunded (this map names only USD)",
        id="daily-cap-denies-an-unlisted-currency",
    ),
    pytest.param(
        {"currency": "JPY", "amount_minor": 1},
        "confirmation.above",
        CONFIRM,
        "JPY has no confirmation threshold, so every JPY refund is treated as above it",
        id="confirmation-asks-for-an-unlisted-currency",
    ),
    pytest.param(
        {"currency": "JPY", "amount_minor": 1},
        "approval.above",
        APPROVE,
        "JPY has no approval threshold",
        id="approval-parks-an-unlisted-currency",
    ),
    pytest.param(
        {"refunds_on_transaction": 2}, "limits.max_refunds_per_transaction", ALLOW, "has 2 refunds", id="below-count"
    ),
    pytest.param(
        {"refunds_on_transaction": 3},
        "limits.max_refunds_per_transaction",
        DENY,
        "already has 3 refunds, and at most 3",
        id="at-count",
    ),
    pytest.param(
        {"transaction_created_at": NOW - timedelta(days=180)},
        "limits.max_transaction_age_days",
        ALLOW,
        "180 days old",
        id="exactly-max-age",
    ),
    pytest.param(
        {"transaction_created_at": NOW - timedelta(days=180, seconds=1)},
        "limits.max_transaction_age_days",
        DENY,
        "older than the 180-day limit",
        id="over-max-age",
    ),
    pytest.param(
        {"transaction_created_at": None},
        "limits.max_transaction_age_days",
        ALLOW,
        "age is unknown",
        id="unknown-age",
    ),
    pytest.param({"amount_minor": 5000}, "confirmation.above", ALLOW, "not above", id="at-confirmation-threshold"),
    pytest.param(
        {"amount_minor": 5001},
        "confirmation.above",
        CONFIRM,
        "USD 50.01 is above the confirmation threshold USD 50.00",
        id="over-confirmation-threshold",
    ),
    pytest.param({"amount_minor": 20000}, "approval.above", ALLOW, "not above", id="at-approval-threshold"),
    pytest.param(
        {"amount_minor": 20001},
        "approval.above",
        APPROVE,
        "USD 200.01 is above the approval threshold USD 200.00",
        id="over-approval-threshold",
    ),
    pytest.param({"processor": "paypal"}, "processors", ALLOW, "paypal is allowed", id="listed-processor"),
    pytest.param({"processor": "adyen"}, "processors", DENY, "adyen is not among", id="unlisted-processor"),
]


@pytest.mark.parametrize(("changes", "name", "outcome", "detail"), SINGLE_RULES)
def test_each_setting_decides_exactly_at_its_boundary(
    changes: dict[str, Any], name: str, outcome: Outcome, detail: str
) -> None:
    decision = BASE.evaluate(request(**changes))

    decided = result(decision, name)
    assert decided.outcome == outcome
    assert detail in decided.detail


@pytest.mark.parametrize(
    ("changes", "outcome"),
    [
        ({}, ALLOW),
        ({"amount_minor": 5001}, CONFIRM),
        ({"amount_minor": 20001}, APPROVE),
        ({"amount_minor": 60000}, DENY),
        ({"amount_minor": 20001, "reason": "product_defective"}, DENY),
    ],
)
def test_the_decision_is_the_strictest_outcome_of_all_evaluated_rules(
    changes: dict[str, Any], outcome: Outcome
) -> None:
    decision = BASE.evaluate(request(**changes))

    assert decision.outcome == outcome
    assert decision.outcome == strictest(rule.outcome for rule in decision.rules)
    assert decision.policy_version == BASE.version


def test_every_evaluated_rule_is_listed_in_a_stable_order_allowing_ones_too() -> None:
    decision = PolicyEngine(load_policy(default_policy_path())).evaluate(request(reason="fraudulent"))

    assert names(decision) == [
        "tools",
        "processors",
        "reasons",
        "currencies",
        "limits.per_refund",
        "limits.per_actor_daily",
        "limits.global_daily",
        "limits.max_refunds_per_transaction",
        "limits.max_transaction_age_days",
        "require_customer_match",
        "confirmation.above",
        "approval.above",
        "rules[0]",
        "rules[0].approval.above",
    ]
    assert decision.outcome == APPROVE
    assert [rule.name for rule in decision.deciding] == ["rules[0].approval.above"]


def test_deciding_and_explain_name_every_rule_with_the_decisions_outcome() -> None:
    decision = BASE.evaluate(request(amount_minor=60000, reason="goodwill", refunds_on_transaction=5))

    assert {rule.name for rule in decision.deciding} == {"limits.per_refund", "limits.max_refunds_per_transaction"}
    assert decision.explain() == (
        "limits.per_refund: USD 600.00 is above the per-refund limit USD 500.00; "
        "limits.max_refunds_per_transaction: the transaction already has 5 refunds, and at most 3 are allowed"
    )


def test_deny_by_default_when_reasons_or_per_refund_are_missing() -> None:
    bare = engine("version: 1\n")

    decision = bare.evaluate(request())

    assert decision.outcome == DENY
    assert result(decision, "reasons").outcome == DENY
    assert result(decision, "currencies").outcome == DENY
    assert result(decision, "tools").outcome == ALLOW
    assert result(decision, "processors").outcome == ALLOW


def test_an_empty_reasons_list_allows_no_reason() -> None:
    decision = engine("version: 1\nreasons: []\nlimits: {per_refund: {USD: 100000}}\n").evaluate(request())

    assert result(decision, "reasons").outcome == DENY


def test_a_small_file_without_tools_or_processors_allows_them_all() -> None:
    small = engine("version: 1\nreasons: [requested_by_customer]\nlimits: {per_refund: {USD: 100000}}\n")

    assert small.evaluate(request(processor="square")).outcome == ALLOW
    assert small.check_tool("cancel_refund", "anyone").outcome == ALLOW


def test_an_unknown_currency_is_denied_and_still_explained() -> None:
    decision = BASE.evaluate(request(currency="ZZZ", amount_minor=123))

    assert decision.outcome == DENY
    assert "ZZZ has no per-refund limit" in result(decision, "currencies").detail


def test_a_naive_creation_time_is_read_as_utc() -> None:
    created = (NOW - timedelta(days=200)).replace(tzinfo=None)

    decision = BASE.evaluate(request(transaction_created_at=created))

    assert result(decision, "limits.max_transaction_age_days").outcome == DENY


# --- rules ------------------------------------------------------------------------------------------

RULES = engine(
    """
    version: 1
    reasons: [duplicate, fraudulent, requested_by_customer, goodwill]
    limits:
      per_refund: {USD: 50000, EUR: 50000}
    rules:
      - when: {reason: fraudulent}
        approval: {above: {USD: 0}}
      - when: {processor: paypal}
        reasons: [duplicate, requested_by_customer]
        limits: {per_refund: {USD: 10000}}
      - when: {reason: goodwill, amount: {above: {USD: 2000}}}
        deny: true
        message: goodwill refunds above USD 20.00 need a supervisor
      - when: {currency: [USD, EUR], amount: {at_most: {USD: 500}}}
        confirmation: {above: {USD: 0}}
      - when: {actor: [night-bot, weekend-bot]}
        limits: {per_refund: {USD: 90000}}
        require_customer_match: true
    """
)


@pytest.mark.parametrize(
    ("changes", "outcome", "deciding"),
    [
        pytest.param({}, ALLOW, None, id="no-rule-tightens"),
        pytest.param({"reason": "fraudulent"}, APPROVE, {"rules[0].approval.above"}, id="fraud-needs-approval"),
        pytest.param(
            {"processor": "paypal", "reason": "goodwill"}, DENY, {"rules[1].reasons"}, id="rule-narrows-reasons"
        ),
        pytest.param(
            {"processor": "paypal", "amount_minor": 10001}, DENY, {"rules[1].limits.per_refund"}, id="rule-lowers-limit"
        ),
        pytest.param(
            {"processor": "stripe", "amount_minor": 10001}, ALLOW, None, id="rule-limit-only-where-it-matches"
        ),
        pytest.param({"reason": "goodwill", "amount_minor": 2001}, DENY, {"rules[2]"}, id="deny-rule"),
        pytest.param({"reason": "goodwill", "amount_minor": 2000}, ALLOW, None, id="deny-rule-amount-boundary"),
        pytest.param({"amount_minor": 500}, CONFIRM, {"rules[3].confirmation.above"}, id="at-most-matches"),
        pytest.param({"currency": "EUR", "amount_minor": 100}, ALLOW, None, id="amount-condition-needs-the-currency"),
        pytest.param(
            {"actor": "night-bot", "amount_minor": 60000, "customer_ref": "jane@example.com"},
            DENY,
            {"limits.per_refund"},
            id="rule-cannot-loosen",
        ),
        pytest.param(
            {"actor": "night-bot", "customer_ref": None},
            DENY,
            {"rules[4].require_customer_match"},
            id="rule-requires-customer",
        ),
        pytest.param(
            {"reason": "fraudulent", "processor": "paypal", "amount_minor": 300},
            DENY,
            {"rules[1].reasons"},
            id="every-matching-rule-applies",
        ),
    ],
)
def test_matching_rules_apply_and_the_strictest_wins(
    changes: dict[str, Any], outcome: Outcome, deciding: set[str] | None
) -> None:
    decision = RULES.evaluate(request(**changes))

    assert decision.outcome == outcome
    if deciding is not None:
        assert {rule.name for rule in decision.deciding} == deciding


def test_a_deny_rule_reports_its_message() -> None:
    decision = RULES.evaluate(request(reason="goodwill", amount_minor=5000))

    assert decision.explain() == "rules[2]: goodwill refunds above USD 20.00 need a supervisor"


def test_every_rule_is_listed_with_whether_it_applies() -> None:
    decision = RULES.evaluate(request(reason="fraudulent", amount_minor=300))

    assert result(decision, "rules[0]").detail == "applies: reason is fraudulent"
    assert result(decision, "rules[1]").detail == "does not apply: processor stripe is not paypal"
    assert result(decision, "rules[2]").detail == "does not apply: reason fraudulent is not goodwill"
    assert result(decision, "rules[3]").detail == "applies: currency is USD or EUR and amount is at most USD 5.00"
    assert result(decision, "rules[4]").detail == "does not apply: actor alice is not night-bot or weekend-bot"
    assert all(
        rule.outcome == ALLOW for rule in decision.rules if rule.name.startswith("rules[") and "." not in rule.name
    )
    assert "rules[1].limits.per_refund" not in names(decision)  # settings of rules that do not apply are not evaluated


def test_a_deny_rule_without_a_message_says_when_it_denies() -> None:
    decision = engine(
        """
        version: 1
        reasons: [goodwill]
        limits: {per_refund: {USD: 50000}}
        rules:
          - when: {reason: goodwill, processor: paypal}
            deny: true
        """
    ).evaluate(request(reason="goodwill", processor="paypal"))

    assert decision.explain() == "rules[0]: denies refunds where reason is goodwill and processor is paypal"


def test_an_empty_when_applies_to_every_request() -> None:
    decision = engine(
        """
        version: 1
        reasons: [requested_by_customer]
        limits: {per_refund: {USD: 50000}}
        rules:
          - when: {}
            approval: {above: {USD: 100}}
        """
    ).evaluate(request(amount_minor=101))

    assert result(decision, "rules[0]").detail == "applies: every request"
    assert decision.outcome == APPROVE


# --- actors -----------------------------------------------------------------------------------------

ACTORS = engine(
    """
    version: 1
    reasons: [duplicate, requested_by_customer, goodwill]
    limits:
      per_refund: {USD: 50000}
    duplicate_window_seconds: 900
    tools: [lookup_transaction, create_refund, get_refund_status, list_refunds, check_refund_policy]
    rules:
      - when: {actor: tier1-bot}
        duplicate_window_seconds: 3600
        tools: [lookup_transaction, create_refund, check_refund_policy]
      - when: {actor: tier1-bot, reason: goodwill}
        duplicate_window_seconds: 86400
    actors:
      tier1-bot:
        limits: {per_refund: {USD: 10000}}
        reasons: [duplicate, requested_by_customer]
        duplicate_window_seconds: 60
      generous-bot:
        limits: {per_refund: {USD: 900000}}
      auditor-bot:
        tools: [lookup_transaction, get_refund_status, list_refunds]
    """
)


@pytest.mark.parametrize(
    ("changes", "outcome", "deciding"),
    [
        pytest.param({"actor": "tier1-bot", "amount_minor": 10000}, ALLOW, None, id="actor-at-own-limit"),
        pytest.param(
            {"actor": "tier1-bot", "amount_minor": 10001},
            DENY,
            {"actors.tier1-bot.limits.per_refund"},
            id="actor-over-own-limit",
        ),
        pytest.param({"actor": "alice", "amount_minor": 10001}, ALLOW, None, id="other-actors-unaffected"),
        pytest.param(
            {"actor": "tier1-bot", "reason": "goodwill"}, DENY, {"actors.tier1-bot.reasons"}, id="actor-narrows-reasons"
        ),
        pytest.param(
            {"actor": "generous-bot", "amount_minor": 60000}, DENY, {"limits.per_refund"}, id="actor-cannot-loosen"
        ),
        pytest.param({"actor": "auditor-bot"}, DENY, {"actors.auditor-bot.tools"}, id="read-only-actor-cannot-refund"),
        pytest.param(
            {"actor": "auditor-bot", "tool": "check_refund_policy"},
            DENY,
            {"actors.auditor-bot.tools"},
            id="dry-run-predicts-create-refund",
        ),
    ],
)
def test_an_actors_settings_only_tighten_its_own_requests(
    changes: dict[str, Any], outcome: Outcome, deciding: set[str] | None
) -> None:
    decision = ACTORS.evaluate(request(**changes))

    assert decision.outcome == outcome
    if deciding is not None:
        assert {rule.name for rule in decision.deciding} == deciding


@pytest.mark.parametrize(
    ("tool", "actor", "outcome", "name"),
    [
        ("create_refund", "alice", ALLOW, "tools"),
        ("cancel_refund", "alice", DENY, "tools"),
        ("list_refunds", "auditor-bot", ALLOW, "tools"),
        ("create_refund", "auditor-bot", DENY, "actors.auditor-bot.tools"),
        ("list_refunds", "tier1-bot", DENY, "rules[0].tools"),
        ("create_refund", "tier1-bot", ALLOW, "tools"),
    ],
)
def test_check_tool_applies_the_top_level_actor_only_rules_and_the_actor(
    tool: str, actor: str, outcome: Outcome, name: str
) -> None:
    checked = ACTORS.check_tool(tool, actor)

    assert (checked.outcome, checked.name) == (outcome, name)
    assert tool in checked.detail


def test_the_duplicate_window_is_the_largest_that_applies_to_the_actor() -> None:
    # rules[1] also names a reason, so it cannot apply before a refund is known.
    assert ACTORS.duplicate_window_seconds("tier1-bot") == 3600
    assert ACTORS.duplicate_window_seconds("alice") == 900
    assert engine("version: 1\n").duplicate_window_seconds("alice") == 0


def test_the_approval_lifetime_comes_from_the_policy_or_defaults_to_72_hours() -> None:
    configured = engine("version: 1\napproval: {above: {USD: 100}, expires_after_hours: 4}\n")

    assert configured.approval_ttl_seconds() == 4 * 3600
    assert engine("version: 1\n").approval_ttl_seconds() == 72 * 3600


# --- customer match ---------------------------------------------------------------------------------

MATCHING = engine(
    """
    version: 1
    reasons: [requested_by_customer]
    limits: {per_refund: {USD: 50000}}
    require_customer_match: true
    """
)


@pytest.mark.parametrize(
    ("given", "on_transaction", "outcome"),
    [
        pytest.param("jane@example.com", "jane@example.com", ALLOW, id="same-email"),
        pytest.param("  Jane@Example.COM ", "jane@example.com", ALLOW, id="email-ignores-case-and-spaces"),
        pytest.param("jane+vip@example.com", "jane@example.com", DENY, id="email-plus-tag-is-a-different-address"),
        pytest.param("cus_123", "cus_123", ALLOW, id="same-id"),
        pytest.param(" cus_123\n", "cus_123", ALLOW, id="id-ignores-surrounding-spaces"),
        pytest.param("CUS_123", "cus_123", DENY, id="id-is-case-sensitive"),
        pytest.param("other@example.com", "jane@example.com", DENY, id="different-customer"),
        pytest.param(None, "jane@example.com", DENY, id="not-given"),
        pytest.param("   ", "jane@example.com", DENY, id="blank"),
        pytest.param("jane@example.com", None, DENY, id="transaction-without-customer"),
    ],
)
def test_customer_match_compares_trimmed_references_and_emails_without_case(
    given: str | None, on_transaction: str | None, outcome: Outcome
) -> None:
    decision = MATCHING.evaluate(request(customer_ref=given, transaction_customer_ref=on_transaction))

    checked = result(decision, "require_customer_match")
    assert checked.outcome == outcome
    assert "jane" not in checked.detail  # personal data stays out of explanations and the audit log


def test_a_dry_run_without_customer_ref_says_create_refund_will_need_one() -> None:
    decision = MATCHING.evaluate(request(tool="check_refund_policy", customer_ref=None))

    checked = result(decision, "require_customer_match")
    assert checked.outcome == ALLOW
    assert "create_refund must carry a customer_ref" in checked.detail


def test_customer_match_is_not_checked_when_not_required() -> None:
    decision = BASE.evaluate(request(customer_ref="someone@else.com"))

    assert result(decision, "require_customer_match").outcome == ALLOW


def test_outcomes_rank_deny_over_approval_over_confirmation_over_allow() -> None:
    assert strictest([ALLOW, CONFIRM]) == CONFIRM
    assert strictest([CONFIRM, APPROVE, ALLOW]) == APPROVE
    assert strictest([APPROVE, DENY]) == DENY
    assert strictest([]) == ALLOW


def test_requests_at_the_same_instant_in_other_time_zones_are_equal() -> None:
    tokyo = timezone(timedelta(hours=9))
    created: datetime = (NOW - timedelta(days=180)).astimezone(tokyo)

    decision = BASE.evaluate(request(transaction_created_at=created))

    assert result(decision, "limits.max_transaction_age_days").outcome == ALLOW
