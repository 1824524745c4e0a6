"""Which per-currency maps of a policy leave out a currency the policy lets agents refund.

The engine denies by default: a cap that omits the refund's currency denies it, a threshold that
omits it takes the step (confirmation or approval) for every refund in it. That is safe but may not
be what the author meant, so `refund-mcp policy check` shows each such gap as a warning.
"""

from __future__ import annotations

from collections.abc import Iterator

from refund_mcp.policy.schema import Overrides, Policy, Rule

# What a missing currency means, per kind of map.
_EFFECT = {
    "per_refund": "refused",
    "per_actor_daily": "refused",
    "global_daily": "refused",
    "confirmation": "always asked to be confirmed",
    "approval": "always parked for approval",
}


def uncovered_currency_warnings(policy: Policy) -> list[str]:
    """One sentence per map that omits a currency the top-level `limits.per_refund` allows."""
    allowed = list((policy.limits.per_refund if policy.limits else None) or {})
    warnings = []
    for name, kind, named, relevant in _currency_maps(policy, allowed):
        missing = [currency for currency in relevant if currency not in named]
        if missing:
            listed = ", ".join(missing)
            warnings.append(
                f"{name} omits {listed}, which limits.per_refund allows: refunds in {listed} are {_EFFECT[kind]}; "
                "name each currency in this map to set its own amount"
            )
    return warnings


def _currency_maps(policy: Policy, allowed: list[str]) -> Iterator[tuple[str, str, dict[str, int], list[str]]]:
    sources: list[tuple[str, Overrides, list[str]]] = [("", policy, allowed)]
    for index, rule in enumerate(policy.rules):
        sources.append((f"rules[{index}].", rule, _currencies_matched(rule, allowed)))
    sources += [(f"actors.{actor}.", entry, allowed) for actor, entry in policy.actors.items()]
    for prefix, source, relevant in sources:
        limits = source.limits
        if limits is not None:
            # The top-level per_refund map is the list of allowed currencies itself.
            if prefix and limits.per_refund is not None:
                yield f"{prefix}limits.per_refund", "per_refund", limits.per_refund, relevant
            for kind in ("per_actor_daily", "global_daily"):
                caps = getattr(limits, kind)
                if caps is not None:
                    yield f"{prefix}limits.{kind}", kind, caps, relevant
        for kind in ("confirmation", "approval"):
            threshold = getattr(source, kind)
            if threshold is not None:
                yield f"{prefix}{kind}.above", kind, threshold.above, relevant


def _currencies_matched(rule: Rule, allowed: list[str]) -> list[str]:
    # A rule that only applies to some currencies needs to name only those.
    if rule.when.currency is None:
        return allowed
    return [currency for currency in allowed if currency in rule.when.currency]
