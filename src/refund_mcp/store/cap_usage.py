"""The daily caps' counters (table cap_usage): hourly buckets per scope and currency.

A scope is "*" (every actor) or "actor:<name>". Triggers keep a refund's amount in its creation hour's
buckets while it counts (revision 0011); a new agent refund is added here by `take`, the last statement
of its reservation, and only if it fits under the caps.

Why `take` is race-free without any global lock (PostgreSQL READ COMMITTED, several processes):
- Every taker of a (scope, currency) first takes a transaction-scoped advisory lock on it, so takers of
  one scope run one after the other from there to COMMIT, and each reads the buckets committed by the
  ones before it (a new statement sees every commit made before it started). That holds across an hour
  boundary and across replicas whose clocks disagree, where two takers write different buckets.
- The lock is taken at the very end of the reservation, so it is held for a few statements and a commit.
- Trigger updates take no advisory lock: they only move a refund out of a bucket (failed, cancelled,
  approval denied or expired), which can only leave more room than a taker saw, or back in after the
  processor actually refunded it (a failure superseded by a success), which no cap may undo.
- The bucket upsert re-checks the cap on the row's latest version (ON CONFLICT DO UPDATE ... WHERE locks
  it first); the Python check before it covers the INSERT path, where no row exists to check.
SQLite serializes writers (BEGIN IMMEDIATE) and needs no lock; the same statements run there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.store import tables, upsert

C = tables.cap_usage
EVERYONE = "*"
DAY = timedelta(hours=24)
_ADVISORY_NAMESPACE = 0x52464350  # "RFCP": the two-key advisory lock space, apart from the migration lock


def actor_scope(actor: str) -> str:
    return f"actor:{actor}"


def scopes(actor: str) -> tuple[str, str]:
    """(everyone's scope, the actor's scope), in the order every taker locks them."""
    return EVERYONE, actor_scope(actor)


def hour_of(moment: datetime) -> datetime:
    """The start of `moment`'s hour (UTC): the bucket a refund created at `moment` counts in."""
    return moment.replace(minute=0, second=0, microsecond=0)


def _lock_key(scope: str, currency: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{scope}\0{currency}".encode(), digest_size=4).digest(), "big", signed=True)


async def _lock_scopes(conn: AsyncConnection, currency: str, ordered: list[str]) -> None:
    if conn.dialect.name != "postgresql":
        return
    locks = [func.pg_advisory_xact_lock(_ADVISORY_NAMESPACE, _lock_key(scope, currency)) for scope in ordered]
    await conn.execute(select(*locks))  # evaluated left to right: always "*" before an actor


async def take(
    conn: AsyncConnection,
    *,
    actor: str,
    currency: str,
    created_at: datetime,
    amount_minor: int,
    caps: Mapping[str, int | None],
    window: timedelta = DAY,
) -> str | None:
    """Add a new agent refund to its hour's buckets, both scopes, if it fits under `caps` ({scope: cap or
    None}, a missing scope has no cap). Returns None when added, else the first scope whose cap it would
    exceed (nothing is added then; the caller must roll its transaction back)."""
    ordered = list(scopes(actor))
    current = hour_of(created_at)
    await _lock_scopes(conn, currency, ordered)
    rows = await conn.execute(
        select(
            C.c.scope,
            func.coalesce(func.sum(C.c.amount_minor), 0),
            func.coalesce(func.sum(case((C.c.hour_start == current, C.c.amount_minor), else_=0)), 0),
        )
        .where(C.c.scope.in_(ordered), C.c.currency == currency, C.c.hour_start >= hour_of(created_at - window))
        .group_by(C.c.scope)
    )
    # Per scope: every bucket of the window but the current hour's (read under the scope's lock).
    others = {scope: int(total) - int(this_hour) for scope, total, this_hour in rows.all()}
    for scope in ordered:
        cap = caps.get(scope)
        past = others.get(scope, 0)
        statement = upsert.insert(conn, C).values(scope=scope, currency=currency, hour_start=current, amount_minor=amount_minor)
        added = C.c.amount_minor + statement.excluded.amount_minor
        conflict: dict[str, Any] = {"index_elements": [C.c.scope, C.c.currency, C.c.hour_start], "set_": {"amount_minor": added}}
        if cap is not None:
            if past + amount_minor > cap:  # the INSERT path (no row for this hour yet) does not check
                return scope
            conflict["where"] = added + past <= cap  # checked on the row's latest version, locked
        statement = statement.on_conflict_do_update(**conflict)
        if (await conn.execute(statement.returning(C.c.amount_minor))).first() is None:
            return scope
    return None


async def window_sums(conn: AsyncConnection, *, currency: str, since: datetime, actor: str) -> tuple[int, int]:
    """(the actor's, everyone's) counted amount in `currency` since the start of `since`'s hour."""
    everyone, mine = scopes(actor)
    query = (
        select(C.c.scope, func.coalesce(func.sum(C.c.amount_minor), 0))
        .where(C.c.scope.in_([everyone, mine]), C.c.currency == currency, C.c.hour_start >= hour_of(since))
        .group_by(C.c.scope)
    )
    totals = {scope: int(total) for scope, total in (await conn.execute(query)).all()}
    return totals.get(mine, 0), totals.get(everyone, 0)
