"""Properties over random policies and requests.

The oracle below reads the policy the way the contract states it: merge every applicable source
strictest-wins (lowest limit, intersected lists, customer match if any source asks) and compare. It
works on the plain YAML data, independently of the engine's per-source evaluation.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refund_mcp.domain.models import RefundReason
from refund_mcp.policy import Outcome, PolicyEngine, PolicyRequest, parse_policy, strictest
from refund_mcp.policy.schema import KNOWN_PROCESSORS, KNOWN_TOOLS

from ._support import NOW, request

PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

REASONS = tuple(reason.value for reason in RefundReason)
CURRENCIES = ("USD", "EUR", "JPY", "KWD")
ACTORS = ("alice", "bob", "tier1-bot")
CUSTOMERS = (None, "jane@example.com", " JANE@Example.com", "cus_1", "CUS_1", "joe@example.com")
MAP_LIMITS = ("per_refund", "per_actor_daily", "global_daily")
COUNT_LIMITS = ("max_refunds_per_transaction", "max_transaction_age_days")

Policy = dict[str, Any]

# --- strategies -------------------------------------------------------------------------------------

amount_maps = st.dictionaries(st.sampled_from(CURRENCIES), st.integers(0, 20_000), max_size=len(CURRENCIES))


def _one_or_many(values: tuple[str, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values) | st.lists(st.sampled_from(values), min_size=1, max_size=3, unique=True)


limits = st.fixed_dictionaries(
    {},
    optional={
        "per_refund": amount_maps,
        "per_actor_daily": amount_maps,
        "global_daily": amount_maps,
        "max_refunds_per_transaction": st.integers(0, 4),
        "max_transaction_age_days": st.integers(0, 365),
    },
)
settings_ = st.fixed_dictionaries(
    {},
    optional={
        "reasons": st.lists(st.sampled_from(REASONS), unique=True),
        "limits": limits,
        "confirmation": st.fixed_dictionaries({"above": amount_maps}),
        "approval": st.fixed_dictionaries({"above": amount_maps}),
        "require_customer_match": st.booleans(),
        "tools": st.lists(st.sampled_from(KNOWN_TOOLS), unique=True),
        "processors": st.lists(st.sampled_from(KNOWN_PROCESSORS), unique=True),
    },
)
whens = st.fixed_dictionaries(
    {},
    optional={
        "reason": _one_or_many(REASONS),
        "processor": _one_or_many(KNOWN_PROCESSORS),
        "currency": _one_or_many(CURRENCIES),
        "actor": _one_or_many(ACTORS),
        "amount": st.fixed_dictionaries({}, optional={"above": amount_maps, "at_most": amount_maps}),
    },
)
rules = st.builds(
    lambda when, chosen, deny: {"when": when, **chosen, **({"deny": True} if deny else {})},
    whens,
    settings_,
    st.sampled_from([False, False, False, True]),
).filter(lambda rule: rule.get("deny") or len(rule) > 1)
policies = st.builds(
    lambda top, rule_list, actors: {"version": 1, **top, "rules": rule_list, "actors": actors},
    settings_,
    st.lists(rules, max_size=3),
    st.dictionaries(st.sampled_from(ACTORS), settings_, max_size=2),
)
requests = st.builds(
    request,
    tool=st.sampled_from(["create_refund", "check_refund_policy"]),
    actor=st.sampled_from(ACTORS),
    processor=st.sampled_from(KNOWN_PROCESSORS),
    reason=st.sampled_from(REASONS),
    amount_minor=st.integers(1, 20_000),
    currency=st.sampled_from((*CURRENCIES, "GBP")),
    customer_ref=st.sampled_from(CUSTOMERS),
    transaction_customer_ref=st.sampled_from(CUSTOMERS),
    transaction_created_at=st.none() | st.integers(0, 400).map(lambda days: NOW - timedelta(days=days, hours=1)),
    refunds_on_transaction=st.integers(0, 5),
    actor_daily_minor=st.integers(0, 20_000),
    global_daily_minor=st.integers(0, 40_000),
)

# --- the oracle -------------------------------------------------------------------------------------


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _rule_applies(when: dict[str, Any], req: PolicyRequest) -> bool:
    for key, actual in (("reason", req.reason), ("processor", req.processor), ("currency", req.currency), ("actor", req.actor)):
        if key in when and actual not in _listed(when[key]):
            return False
    amount = when.get("amount", {})
    if "above" in amount and not req.amount_minor > amount["above"].get(req.currency, float("inf")):
        return False
    if "at_most" in amount and not req.amount_minor <= amount["at_most"].get(req.currency, -1):
        return False
    return True


def _customer(reference: str | None) -> str | None:
    trimmed = (reference or "").strip()
    return (trimmed.casefold() if "@" in trimmed else trimmed) or None


def violations(policy: Policy, req: PolicyRequest) -> dict[str, Outcome]:
    """Every constraint the request breaks under a merged, strictest-wins reading, with its outcome."""
    matching = [rule for rule in policy["rules"] if _rule_applies(rule["when"], req)]
    sources = [policy, *matching]
    if req.actor in policy["actors"]:
        sources.append(policy["actors"][req.actor])
    broken: dict[str, Outcome] = {}

    def lowest(section: str, key: str) -> Any:
        values = [source.get(section, {}).get(key) for source in sources]
        values = [value.get(req.currency) if isinstance(value, dict) else value for value in values]
        return min((value for value in values if value is not None), default=None)

    if any(rule.get("deny") for rule in matching):
        broken["deny rule"] = Outcome.DENY
    for key, wanted in (("reasons", req.reason), ("tools", "create_refund"), ("processors", req.processor)):
        if any(key in source and wanted not in source[key] for source in sources):
            broken[key] = Outcome.DENY
    if "reasons" not in policy:
        broken["reasons"] = Outcome.DENY
    if req.currency not in policy.get("limits", {}).get("per_refund", {}):
        broken["currencies"] = Outcome.DENY
    checks = {
        "per_refund": (lowest("limits", "per_refund"), lambda cap: req.amount_minor > cap),
        "per_actor_daily": (lowest("limits", "per_actor_daily"), lambda cap: req.actor_daily_minor + req.amount_minor > cap),
        "global_daily": (lowest("limits", "global_daily"), lambda cap: req.global_daily_minor + req.amount_minor > cap),
        "count": (lowest("limits", "max_refunds_per_transaction"), lambda most: req.refunds_on_transaction >= most),
        "age": (
            lowest("limits", "max_transaction_age_days"),
            lambda days: req.transaction_created_at is not None
            and NOW - req.transaction_created_at > timedelta(days=days),
        ),
    }
    for name, (bound, breaks) in checks.items():
        if bound is not None and breaks(bound):
            broken[name] = Outcome.DENY
    if any(source.get("require_customer_match") for source in sources):
        given, expected = _customer(req.customer_ref), _customer(req.transaction_customer_ref)
        dry_run_without_ref = given is None and req.tool == "check_refund_policy"
        if expected is None or (given != expected and not dry_run_without_ref):
            broken["customer"] = Outcome.DENY
    for section, outcome in (("confirmation", Outcome.NEEDS_CONFIRMATION), ("approval", Outcome.NEEDS_APPROVAL)):
        threshold = lowest(section, "above")
        if threshold is not None and req.amount_minor > threshold:
            broken[section] = outcome
    return broken


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _engine(policy: Policy) -> PolicyEngine:
    # Through YAML text, so the loader is exercised on every generated policy too.
    return PolicyEngine(parse_policy(yaml.dump(policy, Dumper=_DUMPER, sort_keys=False)))


# --- properties -------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(policies, requests)
def test_an_allowed_refund_never_breaks_a_configured_limit(policy: Policy, req: PolicyRequest) -> None:
    decision = _engine(policy).evaluate(req)

    if decision.outcome == Outcome.ALLOW:
        assert violations(policy, req) == {}
    if decision.outcome != Outcome.DENY:
        assert Outcome.DENY not in violations(policy, req).values()


@PROPERTY_SETTINGS
@given(policies, requests)
def test_the_decision_equals_merging_all_applicable_settings_strictest_wins(policy: Policy, req: PolicyRequest) -> None:
    decision = _engine(policy).evaluate(req)

    assert decision.outcome == strictest(violations(policy, req).values()), decision.rules
    assert decision.deciding, "a decision is always explained by at least one rule"


def _tightenings(policy: Policy) -> list[tuple[list[Any], str]]:
    """Paths to settings that can be made stricter: (path, kind)."""
    found: list[tuple[list[Any], str]] = []
    sources: list[list[Any]] = [[]]
    sources += [["rules", index] for index in range(len(policy["rules"]))]
    sources += [["actors", name] for name in policy["actors"]]
    for base in sources:
        source = _get(policy, base)
        for reason in source.get("reasons", []):
            found.append(([*base, "reasons", reason], "remove"))
        for key in MAP_LIMITS:
            for currency, value in source.get("limits", {}).get(key, {}).items():
                if value > 0:
                    found.append(([*base, "limits", key, currency], "lower"))
        for key in COUNT_LIMITS:
            if source.get("limits", {}).get(key, 0) > 0:
                found.append(([*base, "limits", key], "lower"))
        for section in ("confirmation", "approval"):
            for currency, value in source.get(section, {}).get("above", {}).items():
                if value > 0:
                    found.append(([*base, section, "above", currency], "lower"))
    return found


def _get(data: Any, path: list[Any]) -> Any:
    for step in path:
        data = data[step]
    return data


@PROPERTY_SETTINGS
@given(policies, requests, st.data())
def test_tightening_one_setting_never_makes_a_decision_less_strict(
    policy: Policy, req: PolicyRequest, data: st.DataObject
) -> None:
    moves = _tightenings(policy)
    if not moves:
        return
    path, kind = data.draw(st.sampled_from(moves), label="tightened setting")
    tighter = copy.deepcopy(policy)
    parent = _get(tighter, path[:-1])
    if kind == "remove":
        parent.remove(path[-1])
    else:
        parent[path[-1]] = data.draw(st.integers(0, parent[path[-1]] - 1), label="new value")

    before = _engine(policy).evaluate(req).outcome
    after = _engine(tighter).evaluate(req).outcome

    assert after.strictness >= before.strictness, f"{path} {kind}: {before} became {after}"
