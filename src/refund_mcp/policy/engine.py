"""Decide whether a refund request is allowed, and explain the decision.

Settings come from three sources: the top of the policy, each rule whose `when` matches, and the
caller's entry under `actors`. Each source is checked on its own and the decision is the strictest
outcome of all checks. That equals merging the sources strictest-wins (lowest limit, intersection of
lists, require_customer_match if any source requires it) while keeping, for every outcome, the name of
the exact setting that produced it: `limits.per_refund`, `rules[0].approval.above`,
`actors.tier1-bot.limits.per_refund`.

Deny by default, everywhere: a currency that a map does not name is never "no limit". A cap
(`per_refund` in a rule or an actor, `per_actor_daily`, `global_daily`) that omits the refund's
currency denies it; a threshold (`confirmation.above`, `approval.above`) that omits it treats the
refund as above the threshold, so the step is taken. Leaving a whole map out is how a policy says
"no such limit"; naming some currencies and not others is not.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from refund_mcp.domain.errors import ValidationFailed
from refund_mcp.domain.money import format_display
from refund_mcp.observability.tracing import traced
from refund_mcp.policy.schema import Limits, Overrides, Policy, When

if TYPE_CHECKING:
    from refund_mcp.policy.loader import LoadedPolicy

DEFAULT_APPROVAL_EXPIRY_HOURS = 72
# evaluate() answers "may this refund be made?", so it checks the permission to call create_refund
# even for a check_refund_policy dry run: a dry run that allowed what create_refund then refuses
# would mislead.
_REFUND_TOOL = "create_refund"
_DRY_RUN_TOOL = "check_refund_policy"


DAILY_CAP_KINDS = ("per_actor_daily", "global_daily")


class Outcome(enum.StrEnum):
    """What the policy says about a request. Strictness: DENY > NEEDS_APPROVAL > NEEDS_CONFIRMATION > ALLOW."""

    ALLOW = "allow"
    DENY = "deny"
    NEEDS_CONFIRMATION = "needs_confirmation"
    NEEDS_APPROVAL = "needs_approval"

    @property
    def strictness(self) -> int:
        """Rank for combining outcomes: higher is stricter."""
        return _STRICTNESS[self]


_STRICTNESS = {
    Outcome.ALLOW: 0,
    Outcome.NEEDS_CONFIRMATION: 1,
    Outcome.NEEDS_APPROVAL: 2,
    Outcome.DENY: 3,
}


def strictest(outcomes: Iterable[Outcome]) -> Outcome:
    """The strictest of some outcomes; ALLOW when there are none."""
    return max(outcomes, key=lambda outcome: outcome.strictness, default=Outcome.ALLOW)


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """A refund as the policy sees it, with the history the limits need. Amounts are minor units."""

    tool: str  # "create_refund", or "check_refund_policy" for a dry run about the same refund
    actor: str
    processor: str
    transaction_id: str  # "processor:id"
    reason: str
    amount_minor: int  # > 0, already resolved (a full refund is the remaining balance)
    currency: str  # upper-case ISO 4217
    customer_ref: str | None  # given by the caller
    transaction_customer_ref: str | None  # from the payment (email or customer id)
    transaction_created_at: datetime | None  # tz-aware UTC
    refunds_on_transaction: int  # existing refunds on this transaction that are not failed/cancelled
    actor_daily_minor: int  # this actor's reserved+succeeded refunds in `currency`, last 24 h (from the top of the hour), excluding this one
    global_daily_minor: int  # all actors, same
    now: datetime
    # The processor behind the account in `processor` (stripe for stripe@eu, ucs for checkout): a policy
    # naming the processor covers all of its accounts.
    processor_kind: str | None = None

    def processor_names(self) -> tuple[str, ...]:
        return (self.processor,) if self.processor_kind in (None, self.processor) else (self.processor, self.processor_kind)


@dataclass(frozen=True, slots=True)
class RuleResult:
    """One evaluated setting: its stable name, what it says, and a sentence why."""

    name: str
    outcome: Outcome
    detail: str
    approvers: int = 1  # for an approval threshold that asked: how many different humans must approve
    cap_minor: int | None = None  # for a daily cap that applied: the cap in the refund's currency


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer to a request, with every setting that was evaluated (passing ones too)."""

    outcome: Outcome
    rules: tuple[RuleResult, ...]
    policy_version: str

    @property
    def deciding(self) -> tuple[RuleResult, ...]:
        """The evaluated settings whose outcome is the decision's outcome."""
        return tuple(result for result in self.rules if result.outcome == self.outcome)

    @property
    def approvers_required(self) -> int:
        """For NEEDS_APPROVAL: the most approvers any setting that asked for approval wants (strictest wins)."""
        return max((result.approvers for result in self.deciding if result.outcome is Outcome.NEEDS_APPROVAL), default=1)

    def daily_caps(self) -> dict[str, RuleResult]:
        """The tightest daily cap of each kind that applied ("per_actor_daily", "global_daily"): the evaluated
        setting with the smallest cap. The reservation re-checks these under its lock (store/cap_usage.py)."""
        tightest: dict[str, RuleResult] = {}
        for result in self.rules:
            kind = result.name.rsplit(".", 1)[-1]
            if kind in DAILY_CAP_KINDS and result.cap_minor is not None:
                if kind not in tightest or result.cap_minor < tightest[kind].cap_minor:  # type: ignore[operator]
                    tightest[kind] = result
        return tightest

    def explain(self) -> str:
        """The deciding settings as one line ("name: detail; name: detail"), for error messages."""
        return "; ".join(f"{result.name}: {result.detail}" for result in self.deciding)


class PolicyEngine:
    """Evaluates requests against one loaded policy. Immutable; reloading makes a new engine."""

    def __init__(self, loaded: LoadedPolicy) -> None:
        self._loaded = loaded
        self._policy: Policy = loaded.policy

    @property
    def version(self) -> str:
        """The loaded policy's version (a hash of the file content)."""
        return self._loaded.version

    @property
    def loaded(self) -> LoadedPolicy:
        """The policy as loaded, with its path and raw text."""
        return self._loaded

    @traced("policy.decision", lambda decision: {"refund_mcp.policy.outcome": decision.outcome.value, "refund_mcp.policy.version": decision.policy_version})
    def evaluate(self, request: PolicyRequest) -> Decision:
        """Decide a refund request; the outcome is the strictest of all evaluated settings."""
        results = list(_source_checks(self._policy, "", request, top_level=True))
        for index, rule in enumerate(self._policy.rules):
            name = f"rules[{index}]"
            applies, why = _match(rule.when, request)
            if not applies:
                results.append(RuleResult(name, Outcome.ALLOW, f"does not apply: {why}"))
                continue
            if rule.deny:
                results.append(RuleResult(name, Outcome.DENY, rule.message or f"denies refunds where {why}"))
            else:
                results.append(RuleResult(name, Outcome.ALLOW, f"applies: {why}"))
            results.extend(_source_checks(rule, f"{name}.", request, top_level=False))
        actor = self._policy.actors.get(request.actor)
        if actor is not None:
            results.extend(_source_checks(actor, f"actors.{request.actor}.", request, top_level=False))
        outcome = strictest(result.outcome for result in results)
        return Decision(outcome=outcome, rules=tuple(results), policy_version=self.version)

    def check_tool(self, tool: str, actor: str) -> RuleResult:
        """Whether `actor` may call `tool` (ALLOW or DENY).

        Considers the top level, the actor's entry, and rules whose `when` names only actors (other
        conditions cannot be judged before a refund is known).
        """
        results = [_tools_check(self._policy.tools, "tools", tool)]
        for prefix, source in self._actor_sources(actor):
            if source.tools is not None:
                results.append(_tools_check(source.tools, f"{prefix}tools", tool))
        denied = [result for result in results if result.outcome == Outcome.DENY]
        return denied[0] if denied else results[0]

    def duplicate_window_seconds(self, actor: str) -> int:
        """Seconds within which an identical request returns the earlier refund; the largest applicable, else 0."""
        windows = [self._policy.duplicate_window_seconds]
        windows += [source.duplicate_window_seconds for _, source in self._actor_sources(actor)]
        return max((window for window in windows if window is not None), default=0)

    def approval_ttl_seconds(self) -> int:
        """How long a refund may wait for approval (`approval.expires_after_hours`, default 72 h)."""
        approval = self._policy.approval
        hours = approval.expires_after_hours if approval is not None else DEFAULT_APPROVAL_EXPIRY_HOURS
        return hours * 3600

    def _actor_sources(self, actor: str) -> Iterator[tuple[str, Overrides]]:
        # Sources that apply to an actor regardless of the refund: actor-only rules and the actor entry.
        for index, rule in enumerate(self._policy.rules):
            if rule.when.actor_only and (rule.when.actor is None or actor in rule.when.actor):
                yield f"rules[{index}].", rule
        entry = self._policy.actors.get(actor)
        if entry is not None:
            yield f"actors.{actor}.", entry


# --- checks of one source ---------------------------------------------------------------------------


def _source_checks(source: Overrides, prefix: str, request: PolicyRequest, *, top_level: bool) -> Iterator[RuleResult]:
    """Every check one source configures, in a stable order.

    At the top level the deny-by-default checks (reasons, currencies) and the allow-all defaults
    (tools, processors, customer match) are always listed; in a rule or an actor entry only the
    settings it gives are, since a missing setting there changes nothing.
    """
    if top_level or source.tools is not None:
        yield _tools_check(source.tools, f"{prefix}tools", _REFUND_TOOL)
    if top_level or source.processors is not None:
        yield _processors_check(source.processors, f"{prefix}processors", request)
    if top_level or source.reasons is not None:
        yield _reasons_check(source.reasons, f"{prefix}reasons", request)
    limits = source.limits or Limits()
    if top_level:
        yield _currencies_check(limits.per_refund, "currencies", request)
    yield from _limit_checks(limits, f"{prefix}limits.", request, top_level=top_level)
    if top_level or source.require_customer_match:
        yield _customer_check(bool(source.require_customer_match), f"{prefix}require_customer_match", request)
    if source.confirmation is not None:
        yield _threshold_check(
            source.confirmation.above,
            f"{prefix}confirmation.above",
            request,
            Outcome.NEEDS_CONFIRMATION,
            "confirmation threshold",
        )
    if source.approval is not None:
        result = _threshold_check(
            source.approval.above, f"{prefix}approval.above", request, Outcome.NEEDS_APPROVAL, "approval threshold"
        )
        if result.outcome is Outcome.NEEDS_APPROVAL and source.approval.approvers > 1:
            result = RuleResult(
                result.name, result.outcome, f"{result.detail}, by {source.approval.approvers} different approvers", source.approval.approvers
            )
        yield result


def _limit_checks(limits: Limits, prefix: str, request: PolicyRequest, *, top_level: bool) -> Iterator[RuleResult]:
    currency = request.currency
    # At the top level a currency without a per-refund limit is already denied by "currencies".
    if limits.per_refund is not None and (currency in limits.per_refund or not top_level):
        yield _per_refund_check(limits.per_refund, f"{prefix}per_refund", request)
    if limits.per_actor_daily is not None:
        yield _daily_check(
            limits.per_actor_daily, f"{prefix}per_actor_daily", request, request.actor_daily_minor, "per-actor"
        )
    if limits.global_daily is not None:
        yield _daily_check(limits.global_daily, f"{prefix}global_daily", request, request.global_daily_minor, "global")
    if limits.max_refunds_per_transaction is not None:
        yield _refund_count_check(limits.max_refunds_per_transaction, f"{prefix}max_refunds_per_transaction", request)
    if limits.max_transaction_age_days is not None:
        yield _age_check(limits.max_transaction_age_days, f"{prefix}max_transaction_age_days", request)


def _tools_check(allowed: Sequence[str] | None, name: str, tool: str) -> RuleResult:
    if allowed is None:
        # Only reachable at the top level: a missing list allows every tool, so small files stay usable.
        return RuleResult(name, Outcome.ALLOW, f"no tools list, so every tool is allowed, {tool} included")
    if tool in allowed:
        return RuleResult(name, Outcome.ALLOW, f"{tool} is an allowed tool")
    return RuleResult(name, Outcome.DENY, f"{tool} is not among the allowed tools ({', '.join(allowed)})")


def _processors_check(allowed: Sequence[str] | None, name: str, request: PolicyRequest) -> RuleResult:
    processor = request.processor
    if allowed is None:
        return RuleResult(
            name, Outcome.ALLOW, f"no processors list, so every processor is allowed, {processor} included"
        )
    if any(candidate in allowed for candidate in request.processor_names()):
        return RuleResult(name, Outcome.ALLOW, f"processor {processor} is allowed")
    return RuleResult(
        name, Outcome.DENY, f"processor {processor} is not among the allowed processors ({', '.join(allowed)})"
    )


def _reasons_check(allowed: Sequence[str] | None, name: str, request: PolicyRequest) -> RuleResult:
    reason = request.reason
    if allowed is None:
        return RuleResult(name, Outcome.DENY, "the policy lists no reasons, so no refund reason is allowed")
    if reason in allowed:
        return RuleResult(name, Outcome.ALLOW, f"reason {reason} is allowed")
    listed = ", ".join(allowed) or "none"
    return RuleResult(name, Outcome.DENY, f"reason {reason} is not among the allowed reasons ({listed})")


def _currencies_check(per_refund: dict[str, int] | None, name: str, request: PolicyRequest) -> RuleResult:
    currency = request.currency
    if per_refund is None:
        return RuleResult(name, Outcome.DENY, "the policy sets no per-refund limits, so no currency is allowed")
    if currency in per_refund:
        return RuleResult(name, Outcome.ALLOW, f"{currency} has a per-refund limit, so it may be refunded")
    listed = ", ".join(per_refund) or "none"
    return RuleResult(
        name, Outcome.DENY, f"{currency} has no per-refund limit, so it may not be refunded (allowed: {listed})"
    )


def _per_refund_check(limits: dict[str, int], name: str, request: PolicyRequest) -> RuleResult:
    currency, amount = request.currency, request.amount_minor
    if currency not in limits:
        return RuleResult(name, Outcome.DENY, f"{currency} has no per-refund limit here, so it may not be refunded{_naming(limits)}")
    limit = limits[currency]
    if amount > limit:
        return RuleResult(
            name,
            Outcome.DENY,
            f"{_display(amount, currency)} is above the per-refund limit {_display(limit, currency)}",
        )
    return RuleResult(
        name, Outcome.ALLOW, f"{_display(amount, currency)} is within the per-refund limit {_display(limit, currency)}"
    )


def _daily_check(caps: dict[str, int], name: str, request: PolicyRequest, so_far: int, scope: str) -> RuleResult:
    currency, amount = request.currency, request.amount_minor
    if currency not in caps:
        return RuleResult(name, Outcome.DENY, f"{currency} has no {scope} daily cap, so it may not be refunded{_naming(caps)}")
    cap = caps[currency]
    total = so_far + amount
    if total > cap:
        return RuleResult(
            name,
            Outcome.DENY,
            f"{_display(so_far, currency)} refunded in the last 24 h plus {_display(amount, currency)} "
            f"is above the {scope} daily cap {_display(cap, currency)}",
            cap_minor=cap,
        )
    return RuleResult(
        name,
        Outcome.ALLOW,
        f"{_display(total, currency)} in the last 24 h including this refund is within the {scope} daily cap "
        f"{_display(cap, currency)}",
        cap_minor=cap,
    )


def _refund_count_check(maximum: int, name: str, request: PolicyRequest) -> RuleResult:
    existing = request.refunds_on_transaction
    refunds = "refund" if existing == 1 else "refunds"
    if existing >= maximum:
        return RuleResult(
            name,
            Outcome.DENY,
            f"the transaction already has {existing} {refunds}, and at most {maximum} are allowed",
        )
    return RuleResult(
        name, Outcome.ALLOW, f"the transaction has {existing} {refunds}, fewer than the {maximum} allowed"
    )


def _age_check(max_days: int, name: str, request: PolicyRequest) -> RuleResult:
    created = request.transaction_created_at
    if created is None:
        return RuleResult(
            name, Outcome.ALLOW, f"the transaction's age is unknown, so the {max_days}-day limit could not be checked"
        )
    age = _as_utc(request.now) - _as_utc(created)
    if age > timedelta(days=max_days):
        return RuleResult(
            name,
            Outcome.DENY,
            f"the transaction is {age.days} days old, older than the {max_days}-day limit",
        )
    return RuleResult(name, Outcome.ALLOW, f"the transaction is {max(age.days, 0)} days old, within {max_days} days")


def _customer_check(required: bool, name: str, request: PolicyRequest) -> RuleResult:
    # Details never echo the references themselves: they are personal data and end up in the audit log.
    if not required:
        return RuleResult(name, Outcome.ALLOW, "customer_ref is not required to match the transaction")
    given = _customer_key(request.customer_ref)
    expected = _customer_key(request.transaction_customer_ref)
    if expected is None:
        return RuleResult(
            name, Outcome.DENY, "the transaction has no customer reference, so the customer cannot be matched"
        )
    if given is None:
        if request.tool == _DRY_RUN_TOOL:
            # check_refund_policy takes no customer_ref; say what create_refund will need instead of denying.
            return RuleResult(
                name, Outcome.ALLOW, "create_refund must carry a customer_ref matching the transaction's customer"
            )
        return RuleResult(name, Outcome.DENY, "customer_ref is required and must match the transaction's customer")
    if given != expected:
        return RuleResult(name, Outcome.DENY, "customer_ref does not match the transaction's customer")
    return RuleResult(name, Outcome.ALLOW, "customer_ref matches the transaction's customer")


def _threshold_check(
    thresholds: dict[str, int], name: str, request: PolicyRequest, outcome: Outcome, label: str
) -> RuleResult:
    currency, amount = request.currency, request.amount_minor
    if currency not in thresholds:
        return RuleResult(name, outcome, f"{currency} has no {label}, so every {currency} refund is treated as above it{_naming(thresholds)}")
    threshold = thresholds[currency]
    if amount > threshold:
        return RuleResult(
            name, outcome, f"{_display(amount, currency)} is above the {label} {_display(threshold, currency)}"
        )
    return RuleResult(
        name, Outcome.ALLOW, f"{_display(amount, currency)} is not above the {label} {_display(threshold, currency)}"
    )


# --- rule conditions --------------------------------------------------------------------------------


def _match(when: When, request: PolicyRequest) -> tuple[bool, str]:
    """Whether a rule's conditions all hold, and a phrase saying why (the first failing one if not)."""
    conditions: list[tuple[bool, str, str]] = []
    for label, wanted, actual in (
        ("reason", when.reason, request.reason),
        ("processor", when.processor, request.processor),
        ("currency", when.currency, request.currency),
        ("actor", when.actor, request.actor),
    ):
        if wanted is not None:
            options = " or ".join(str(option) for option in wanted)
            holds = any(name in wanted for name in request.processor_names()) if label == "processor" else actual in wanted
            conditions.append((holds, f"{label} is {options}", f"{label} {actual} is not {options}"))
    if when.amount is not None:
        conditions.extend(_amount_conditions(when.amount.above, when.amount.at_most, request))
    for holds, _, failing in conditions:
        if not holds:
            return False, failing
    if not conditions:
        return True, "every request"
    return True, " and ".join(passing for _, passing, _ in conditions)


def _amount_conditions(
    above: dict[str, int] | None, at_most: dict[str, int] | None, request: PolicyRequest
) -> list[tuple[bool, str, str]]:
    currency, amount = request.currency, request.amount_minor
    shown = _display(amount, currency)
    conditions = []
    for bounds, relation, holds in ((above, "above", int.__gt__), (at_most, "at most", int.__le__)):
        if bounds is None:
            continue
        if currency not in bounds:
            conditions.append((False, "", f"amount {relation} names no {currency} amount"))
            continue
        bound = _display(bounds[currency], currency)
        conditions.append(
            (holds(amount, bounds[currency]), f"amount is {relation} {bound}", f"{shown} is not {relation} {bound}")
        )
    return conditions


# --- helpers ----------------------------------------------------------------------------------------


def _customer_key(reference: str | None) -> str | None:
    """Customer references compare after trimming; emails also ignore case (ids stay exact)."""
    if reference is None:
        return None
    trimmed = reference.strip()
    if not trimmed:
        return None
    return trimmed.casefold() if "@" in trimmed else trimmed


def _as_utc(moment: datetime) -> datetime:
    # A naive time is taken as UTC rather than crashing the comparison.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _naming(amounts: dict[str, int]) -> str:
    return f" (this map names only {', '.join(amounts)})" if amounts else " (this map names no currency)"


def _display(amount_minor: int, currency: str) -> str:
    try:
        return format_display(amount_minor, currency)
    except ValidationFailed:
        # An unknown currency is denied by "currencies"; its amount still needs showing.
        return f"{currency} {amount_minor} (minor units)"
