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
from hypothesis import given, settings
from hypothesis import strategies as st

from refund_mcp.domain.models import RefundReason
from refund_mcp.policy import Outcome, PolicyEngine, PolicyRequest, parse_policy, strictest
from refund_mcp.policy.schema import KNOWN_PROCESSORS, KNOWN_TOOLS

from ._support import NOW, request

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, database=None)

REASONS = tuple(reason.value for reason in RefundReason)
CURRENCIES = ("USD", "EUR", "JPY", "KWD")
ACTORS = ("alice", "bob", "tier1-bot")
CUSTOMERS = (None, "jane@example.com", " JANE@Example.com", "cus_1", "CUS_1", "joe@example.com")
MAP_LIMITS = ("per_refund", "per_actor_daily", "global_daily")
COUNT_LIMITS = ("max_refunds_per_transaction", "max_transaction_age_days")

Policy = dict[str, Any]

# --- strategies -------------------------------------------------------------------------------------


def _most_of(values: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    """Lists holding most of `values`: narrow enough to deny sometimes, open enough to pass often."""
    removed = st.sets(st.sampled_from(values), max_size=max(len(values) // 3, 1))
    return removed.map(lambda gone: [value for value in values if value not in gone])


amount_maps = st.dictionaries(st.sampled_from(CURRENCIES), st.integers(0, 30_000), max_size=len(CURRENCIES))
LIMIT_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "per_refund": amount_maps,
    "per_actor_daily": amount_maps,
    "global_daily": amount_maps,
    "max_refunds_per_transaction": st.integers(2, 6) | st.integers(0, 6),
    "max_transaction_age_days": st.integers(100, 400) | st.integers(0, 400),
}
SETTING_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "reasons": _most_of(REASONS),
    "limits": st.fixed_dictionaries({}, optional=LIMIT_STRATEGIES),
    "confirmation": st.fixed_dictionaries({"above": amount_maps}),
    "approval": st.fixed_dictionaries({"above": amount_maps}),
    "require_customer_match": st.booleans(),
    "tools": _most_of(KNOWN_TOOLS),
    "processors": _most_of(KNOWN_PROCESSORS),
}
WHEN_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "reason": st.sampled_from(REASONS) | st.lists(st.sampled_from(REASONS), min_size=1, max_size=3, unique=True),
    "processor": st.sampled_from(KNOWN_PROCESSORS)
    | st.lists(st.sampled_from(KNOWN_PROCESSORS), min_size=1, unique=True),
    "currency": st.sampled_from(CURRENCIES) | st.lists(st.sampled_from(CURRENCIES), min_size=1, unique=True),
    "actor": st.sampled_from(ACTORS) | st.lists(st.sampled_from(ACTORS), min_size=1, unique=True),
    "amount": st.fixed_dictionaries({}, optional={"above": amount_maps, "at_most": amount_maps}),
}
_PRESENT_MOSTLY = st.sampled_from([True] * 9 + [False])


@st.composite
def _some_of(draw: st.DrawFn, strategies: dict[str, st.SearchStrategy[Any]], min_size: int = 0) -> dict[str, Any]:
    # A few keys at a time: sparse overrides leave room for requests that pass.
    keys = draw(st.lists(st.sampled_from(sorted(strategies)), unique=True, min_size=min_size, max_size=3))
    return {key: draw(strategies[key]) for key in keys}


@st.composite
def _top_level(draw: st.DrawFn) -> Policy:
    # Mostly permissive, so that rules, actors and thresholds get to decide often; sometimes without
    # `reasons` or `per_refund`, so that deny-by-default is exercised too.
    top: Policy = {"version": 1}
    if draw(_PRESENT_MOSTLY):
        top["reasons"] = draw(_most_of(REASONS))
    generous = st.dictionaries(st.sampled_from(CURRENCIES), st.integers(10_000, 60_000) | st.integers(0, 60_000))
    limits = draw(
        st.fixed_dictionaries({}, optional={**LIMIT_STRATEGIES, "per_actor_daily": generous, "global_daily": generous})
    )
    if draw(_PRESENT_MOSTLY):
        limits["per_refund"] = draw(
            st.fixed_dictionaries(
                {currency: st.integers(5_000, 30_000) | st.integers(0, 30_000) for currency in CURRENCIES}
            )
        )
    top["limits"] = limits
    # As in real policies, confirmation usually starts below approval.
    for step, lowest, highest in (("confirmation", 0, 20_000), ("approval", 2_000, 25_000)):
        if draw(st.sampled_from([True, True, False])):
            above = st.fixed_dictionaries({currency: st.integers(lowest, highest) for currency in CURRENCIES})
            top[step] = {"above": draw(above)}
    optional = ("require_customer_match", "tools", "processors")
    top.update(draw(_some_of({key: SETTING_STRATEGIES[key] for key in optional})))
    return top


@st.composite
def _rule(draw: st.DrawFn) -> Policy:
    rule: Policy = {"when": draw(_some_of(WHEN_STRATEGIES))}
    if draw(st.integers(0, 4)) == 0:
        rule["deny"] = True
        rule.update(draw(_some_of(SETTING_STRATEGIES)))
    else:
        rule.update(draw(_some_of(SETTING_STRATEGIES, min_size=1)))  # a rule must do something
    return rule


policies = st.builds(
    lambda top, rule_list, actors: {**top, "rules": rule_list, "actors": actors},
    _top_level(),
    st.lists(_rule(), max_size=3),
    st.dictionaries(st.sampled_from(ACTORS), _some_of(SETTING_STRATEGIES), max_size=2),
)
# Requests lean towards ordinary ones (recent, few refunds, the right customer), so that a good share
# of decisions is not a deny and the ALLOW side of every property gets exercised.
requests = st.builds(
    request,
    tool=st.sampled_from(["create_refund", "create_refund", "check_refund_policy"]),
    actor=st.sampled_from(ACTORS),
    processor=st.sampled_from(KNOWN_PROCESSORS),
    reason=st.sampled_from(REASONS),
    amount_minor=st.integers(1, 20_000),
    currency=st.sampled_from((*CURRENCIES, *CURRENCIES, "GBP")),
    customer_ref=st.sampled_from((*CUSTOMERS, *["jane@example.com"] * 4)),
    transaction_customer_ref=st.sampled_from(("jane@example.com",) * 4 + ("cus_1", None)),
    transaction_created_at=st.none() | st.integers(0, 400).map(lambda days: NOW - timedelta(days=days, hours=1)),
    refunds_on_transaction=st.integers(0, 2) | st.integers(0, 5),
    actor_daily_minor=st.integers(0, 5_000) | st.integers(0, 20_000),
    global_daily_minor=st.integers(0, 10_000) | st.integers(0, 40_000),
)

# --- the oracle -------------------------------------------------------------------------------------


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _rule_applies(when: dict[str, Any], req: PolicyRequest) -> bool:
    for key, actual in (
        ("reason", req.reason),
        ("processor", req.processor),
        ("currency", req.currency),
        ("actor", req.actor),
    ):
        if key in when and actual not in _listed(when[key]):
            return False
    amount = when.get("amount", {})
    if "above" in amount and not req.amount_minor > amount["above"].get(req.currency, float("inf")):
        return False
    return "at_most" not in amount or req.amount_minor <= amount["at_most"].get(req.currency, -1)


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
        # Deny by default: a map that omits the currency is a bound no amount passes (-1).
        values = [source.get(section, {}).get(key) for source in sources]
        values = [value.get(req.currency, -1) if isinstance(value, dict) else value for value in values]
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
        "per_actor_daily": (
            lowest("limits", "per_actor_daily"),
            lambda cap: req.actor_daily_minor + req.amount_minor > cap,
        ),
        "global_daily": (lowest("limits", "global_daily"), lambda cap: req.global_daily_minor + req.amount_minor > cap),
        "count": (lowest("limits", "max_refunds_per_transaction"), lambda most: req.refunds_on_transaction >= most),
        "age": (
            lowest("limits", "max_transaction_age_days"),
            lambda days: (
                req.transaction_created_at is not None and NOW - req.transaction_created_at > timedelta(days=days)
            ),
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


def _source_paths(policy: Policy) -> list[list[Any]]:
    """Paths to every place settings can be given: the top level, each rule, each actor."""
    return [[], *(["rules", index] for index in range(len(policy["rules"]))), *(["actors", name] for name in policy["actors"])]


def _tightenings(policy: Policy) -> list[tuple[list[Any], str]]:
    """Paths to settings that can be made stricter: (path, kind)."""
    found: list[tuple[list[Any], str]] = []
    for base in _source_paths(policy):
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


def _currency_maps(policy: Policy) -> list[list[Any]]:
    """Paths to every per-currency map that limits or steps up a refund (not `when.amount` conditions)."""
    found: list[list[Any]] = []
    for base in _source_paths(policy):
        source = _get(policy, base)
        found += [[*base, "limits", key] for key in MAP_LIMITS if key in source.get("limits", {})]
        found += [[*base, section, "above"] for section in ("confirmation", "approval") if section in source]
    return found


@PROPERTY_SETTINGS
@given(policies, requests, st.data())
def test_a_map_that_omits_a_currency_is_never_looser_than_one_that_names_it(
    policy: Policy, req: PolicyRequest, data: st.DataObject
) -> None:
    maps = _currency_maps(policy)
    if not maps:
        return
    path = data.draw(st.sampled_from(maps), label="map")
    named, omitted = copy.deepcopy(policy), copy.deepcopy(policy)
    _get(named, path)[req.currency] = data.draw(st.integers(0, 2**40), label="named value")
    _get(omitted, path).pop(req.currency, None)

    with_value = _engine(named).evaluate(req).outcome
    without = _engine(omitted).evaluate(req).outcome

    assert without.strictness >= with_value.strictness, f"{path} without {req.currency}: {without}, with it: {with_value}"
