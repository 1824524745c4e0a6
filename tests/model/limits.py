"""Checks of our books against the balance and the policy's daily caps, over rows of the refunds table.

Daily caps are counted as the policy counts them (policy/engine.py, store/queries.daily_totals): agent refunds
in the cap's currency that reserve money or succeeded, created in the last 24 h including the new one. The
check is on windows: for every such refund X, the refunds still counting with created_at in
[X.created_at - 24 h, X.created_at] sum to at most the cap. That is what a correct reservation leaves behind,
whatever order concurrent reservations committed in (the last to commit saw all the others), because a refund
only ever stops counting (failed, cancelled, denied, expired). A refused refund adds nothing, so a conservative
implementation (hourly buckets over 25 h) passes and one that lets a window exceed the exact sum fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from refund_mcp.domain.models import RESERVING_STATUSES, RefundStatus

COUNTING = frozenset({status.value for status in RESERVING_STATUSES} | {RefundStatus.SUCCEEDED.value})
WINDOW = timedelta(hours=24)


def daily_caps(policy: Path) -> tuple[Mapping[str, int], Mapping[str, int]]:
    """(per_actor_daily, global_daily) of a policy file, by currency."""
    limits = yaml.safe_load(policy.read_text())["limits"]
    return limits.get("per_actor_daily") or {}, limits.get("global_daily") or {}


def over_balance(rows: Iterable[Any], payment_of: Callable[[Any], str], captured: Mapping[str, int], skip: set[str]) -> list[str]:
    """Payments whose refunds that hold or took money sum to more than was captured."""
    held: dict[str, int] = {}
    for row in rows:
        if row.status in COUNTING:
            payment = payment_of(row)
            held[payment] = held.get(payment, 0) + int(row.amount_minor)
    return [f"{p}: {total} reserved or refunded of {captured[p]} captured" for p, total in held.items() if p not in skip and total > captured[p]]


def over_daily_caps(rows: Iterable[Any], per_actor: Mapping[str, int], everyone: Mapping[str, int], skip: set[str]) -> list[str]:
    """Every 24-h window (ending at a counting refund) whose counting refunds exceed a cap. `skip`: refunds
    whose money came back after it was released (a processor's failure then success), which no cap can foresee."""
    counting = [r for r in rows if r.origin == "agent" and r.status in COUNTING and r.id not in skip]
    breaches = []
    for last in counting:
        window = [r for r in counting if r.currency == last.currency and last.created_at - WINDOW <= r.created_at <= last.created_at]
        total = sum(int(r.amount_minor) for r in window)
        cap = everyone.get(last.currency)
        if cap is not None and total > cap:
            breaches.append(f"global: {total} {last.currency} in the 24 h up to {last.created_at} (cap {cap}): {[r.id for r in window]}")
        cap = per_actor.get(last.currency)
        mine = [r for r in window if r.actor == last.actor]
        total = sum(int(r.amount_minor) for r in mine)
        if cap is not None and total > cap:
            breaches.append(f"{last.actor}: {total} {last.currency} in the 24 h up to {last.created_at} (cap {cap}): {[r.id for r in mine]}")
    return sorted(set(breaches))
