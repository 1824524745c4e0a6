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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, bindparam, case, delete, func, select
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


@dataclass(frozen=True)
class WindowRead:
    """One read of both scopes' buckets in a window: per scope, the window's total and the current hour's bucket."""

    scopes: tuple[str, str]  # (everyone's, the actor's)
    currency: str
    start: datetime  # the window's first bucket
    current: datetime  # the current hour's bucket (the last of the window)
    totals: Mapping[str, int]
    this_hour: Mapping[str, int]

    def total(self, scope: str) -> int:
        return self.totals.get(scope, 0)

    def before_this_hour(self, scope: str) -> int:
        return self.total(scope) - self.this_hour.get(scope, 0)


# Built once with bound parameters: the same compiled statement serves every read of the window.
_WINDOW = (
    select(
        C.c.scope,
        func.coalesce(func.sum(C.c.amount_minor), 0),
        func.coalesce(func.sum(case((C.c.hour_start == bindparam("current"), C.c.amount_minor), else_=0)), 0),
    )
    .where(C.c.scope.in_(bindparam("scopes", expanding=True)), C.c.currency == bindparam("currency"), C.c.hour_start >= bindparam("start"))
    .group_by(C.c.scope)
)


async def read_window(conn: AsyncConnection, *, actor: str, currency: str, created_at: datetime, window: timedelta = DAY) -> WindowRead:
    """Both scopes' buckets for a refund created at `created_at`: the window's hours up to and including its own."""
    return await _read(conn, scopes(actor), currency, start=hour_of(created_at - window), current=hour_of(created_at))


async def _read(conn: AsyncConnection, ordered: tuple[str, str], currency: str, *, start: datetime, current: datetime) -> WindowRead:
    params = {"scopes": list(ordered), "currency": currency, "start": start, "current": current}
    rows = (await conn.execute(_WINDOW, params)).all()
    return WindowRead(
        scopes=ordered,
        currency=currency,
        start=start,
        current=current,
        totals={scope: int(total) for scope, total, _ in rows},
        this_hour={scope: int(this_hour) for scope, _, this_hour in rows},
    )


def _upsert_statements(dialect: str) -> tuple[Any, Any]:
    """(without a cap, with one): add to the current hour's bucket; with a cap only while it still fits."""
    statement = upsert.insert_for(dialect, C).values(
        scope=bindparam("scope"), currency=bindparam("currency"),
        hour_start=bindparam("hour_start", type_=C.c.hour_start.type), amount_minor=bindparam("amount_minor", type_=C.c.amount_minor.type),
    )
    added = C.c.amount_minor + statement.excluded.amount_minor
    index = [C.c.scope, C.c.currency, C.c.hour_start]
    uncapped = statement.on_conflict_do_update(index_elements=index, set_={"amount_minor": added})
    # Checked on the row's latest version, locked; `past` is the rest of the window, read under the scope's lock.
    fits = added + bindparam("past", type_=BigInteger) <= bindparam("cap", type_=BigInteger)
    capped = statement.on_conflict_do_update(index_elements=index, set_={"amount_minor": added}, where=fits)
    return uncapped.returning(C.c.amount_minor), capped.returning(C.c.amount_minor)


_UPSERT = {dialect: _upsert_statements(dialect) for dialect in upsert.DIALECTS}


async def take(
    conn: AsyncConnection,
    *,
    actor: str,
    currency: str,
    created_at: datetime,
    amount_minor: int,
    caps: Mapping[str, int | None],
    window: timedelta = DAY,
    seen: WindowRead | None = None,
) -> str | None:
    """Add a new agent refund to its hour's buckets, both scopes, if it fits under `caps` ({scope: cap or
    None}, a missing scope has no cap). Returns None when added, else the first scope whose cap it would
    exceed (nothing is added then; the caller must roll its transaction back).

    `seen`: the same window as read earlier in this transaction (the policy's daily totals). On SQLite the
    transaction has held the database's write lock since then (BEGIN IMMEDIATE), so those numbers are still
    the buckets' and are used instead of reading them again; on PostgreSQL they are read again here, under
    the scopes' locks, which is what makes the check race-free. Nothing is read when no cap applies."""
    ordered = scopes(actor)
    current = hour_of(created_at)
    start = hour_of(created_at - window)
    await _lock_scopes(conn, currency, list(ordered))
    read: WindowRead | None = None
    if any(caps.get(scope) is not None for scope in ordered):
        unchanged_since_seen = (
            seen is not None and conn.dialect.name == "sqlite"
            and (seen.scopes, seen.currency, seen.start, seen.current) == (ordered, currency, start, current)
        )
        read = seen if unchanged_since_seen else await _read(conn, ordered, currency, start=start, current=current)
    uncapped, capped = _UPSERT[conn.dialect.name]
    for scope in ordered:
        cap = caps.get(scope)
        params: dict[str, Any] = {"scope": scope, "currency": currency, "hour_start": current, "amount_minor": amount_minor}
        if cap is None:
            statement = uncapped
        else:
            assert read is not None
            # Every bucket of the window but the current hour's.
            past = read.before_this_hour(scope)
            if past + amount_minor > cap:  # the INSERT path (no row for this hour yet) does not check
                return scope
            statement = capped
            params |= {"past": past, "cap": cap}
        if (await conn.execute(statement, params)).first() is None:
            return scope
    return None


async def window_sums(conn: AsyncConnection, *, currency: str, since: datetime, actor: str) -> tuple[int, int]:
    """(the actor's, everyone's) counted amount in `currency` since the start of `since`'s hour."""
    everyone, mine = scopes(actor)
    read = await _read(conn, (everyone, mine), currency, start=hour_of(since), current=hour_of(since + DAY))
    return read.total(mine), read.total(everyone)


# Counters older than this are never read again (the window reaches back 25 hours at most); a day more is kept so
# an operator can still see yesterday's use.
KEEP = timedelta(hours=49)


async def prune(conn: AsyncConnection, *, now: datetime) -> int:
    """Delete the counters of hours that no window can reach any more; how many were deleted.

    A refund older than that which is released later (e.g. a failure reported days after) recreates its hour's
    counter with a negative amount: outside every window, and deleted by the next prune."""
    result = await conn.execute(delete(C).where(C.c.hour_start < hour_of(now - KEEP)))
    return int(result.rowcount or 0)
