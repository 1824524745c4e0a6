"""One payment, one identity, however it is named.

A processor may know one payment by several ids (Stripe: a payment intent `pi_…`, its charge `ch_…`,
`py_…` for some methods). Refunds, the refundable balance, `max_refunds_per_transaction`, the
duplicate window and reservations are all counted per transaction record, so two names for one
payment would be two budgets. The processor's lookup names the canonical id (`TransactionInfo.
transaction_id`) and the others (`aliases`); every lookup records them in `transaction_aliases`, and
every name a caller or a webhook uses is resolved through that table before anything is counted.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.domain.models import TransactionInfo
from refund_mcp.store import tables, upsert

A = tables.transaction_aliases


def with_requested_name(info: TransactionInfo, requested_bare_id: str) -> TransactionInfo:
    """The processor's answer, with the id it was asked about among the aliases when that is not the canonical one."""
    if requested_bare_id == info.transaction_id or requested_bare_id in info.aliases:
        return info
    return dataclasses.replace(info, aliases=(*info.aliases, requested_bare_id))


_CANONICAL_OF = select(A.c.transaction_id).where(A.c.alias == bindparam("alias"))  # built once: every call checks a name


async def canonical_of(conn: AsyncConnection, processor: str, bare_id: str) -> str | None:
    """The canonical "processor:id" that this name is an alias of, or None when it is no known alias."""
    row = (await conn.execute(_CANONICAL_OF, {"alias": f"{processor}:{bare_id}"})).first()
    return None if row is None else str(row.transaction_id)


async def canonical_ids_of_bare(conn: AsyncConnection, bare_id: str) -> list[str]:
    """Canonical ids of every payment known by this bare id as an alias, whatever the processor."""
    rows = (await conn.execute(select(A.c.transaction_id).where(A.c.bare_id == bare_id).limit(5))).all()
    return sorted({str(row.transaction_id) for row in rows})


async def record_aliases(conn: AsyncConnection, processor: str, info: TransactionInfo, now: datetime) -> None:
    """Point every other name of this payment at its canonical id (the processor's latest word wins)."""
    canonical = f"{processor}:{info.transaction_id}"
    for bare in dict.fromkeys(info.aliases):
        alias = f"{processor}:{bare}"
        if not bare or alias == canonical or len(alias) > 200:
            continue
        # One upsert (not read, then insert or update): two lookups recording the same name at the same moment
        # on PostgreSQL both succeed, and the later word wins as before.
        values = {"transaction_id": canonical, "recorded_at": now}
        statement = upsert.insert(conn, A).values(alias=alias, bare_id=bare, **values)
        await conn.execute(
            statement.on_conflict_do_update(index_elements=[A.c.alias], set_=values, where=A.c.transaction_id != canonical)
        )
