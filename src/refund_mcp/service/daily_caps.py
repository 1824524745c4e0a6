"""Counting a reserved refund against the daily caps, at the end of its reservation.

The policy decided on totals read without a lock; this takes the refund's room under the tightest
per-actor and global caps that applied, atomically (store/cap_usage.py). When a concurrent refund used
that room in between, the reservation is refused and rolled back whole.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.domain.errors import PolicyDenied
from refund_mcp.domain.money import format_display
from refund_mcp.policy.engine import Decision
from refund_mcp.store import cap_usage, queries
from refund_mcp.store.database import Database

_SCOPE_WORDS = {"per_actor_daily": "per-actor", "global_daily": "global"}


async def take(
    conn: AsyncConnection, decision: Decision, *, actor: str, currency: str, amount_minor: int, created_at: datetime,
    seen: cap_usage.WindowRead | None = None,
) -> None:
    """The reservation's last statement: raises PolicyDenied, naming the cap, if the refund no longer fits.

    `seen`: the window the policy decided on, read earlier in this transaction (reused where safe)."""
    applied = decision.daily_caps()
    everyone, mine = cap_usage.scopes(actor)
    rules = {everyone: applied.get("global_daily"), mine: applied.get("per_actor_daily")}
    caps = {scope: rule.cap_minor if rule is not None else None for scope, rule in rules.items()}
    refused = await queries.take_cap_usage(
        conn, actor=actor, currency=currency, created_at=created_at, amount_minor=amount_minor, caps=caps, seen=seen
    )
    if refused is None:
        return
    rule = rules[refused]
    assert rule is not None and rule.cap_minor is not None
    kind = rule.name.rsplit(".", 1)[-1]
    raise PolicyDenied(
        f"{rule.name}: {format_display(amount_minor, currency)} no longer fits under the {_SCOPE_WORDS[kind]} daily cap "
        f"{format_display(rule.cap_minor, currency)}: other refunds reserved at the same time used the room left. "
        "Nothing was reserved; check the policy again before retrying."
    )


class CounterPruner:
    """Keeps the caps' counters bounded: once an hour (per process), the hours no window reaches are deleted.

    Without it the table would grow by (actors + 1) x currencies rows an hour, forever."""

    def __init__(self, db: Database, now: Callable[[], datetime]) -> None:
        self.db = db
        self.now = now
        self._last_hour: datetime | None = None

    async def prune_if_due(self) -> int:
        hour = cap_usage.hour_of(self.now())
        if hour == self._last_hour:
            return 0
        async with self.db.write() as conn:
            pruned = await cap_usage.prune(conn, now=self.now())
        self._last_hour = hour
        return pruned
