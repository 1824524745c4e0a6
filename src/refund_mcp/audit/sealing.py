"""Sealing (PostgreSQL): committed `audit_pending` records join the hash chain in `audit_log`.

One sealing transaction locks the chain's head row, takes up to BATCH pending records in id order
(only committed ones are visible), gives each the next seq, its prev_hash and hash (the same
canonical body and hash as an inline append), writes the notifications they call for with that seq,
moves the head and deletes the pending rows: all or nothing. Two sealers never seal one record twice:
the head lock orders them, and each reads the pending rows after taking it. A sealer that is not
willing to wait (after a write, in the worker) skips the round when another one holds the lock
(`FOR UPDATE SKIP LOCKED`) instead of queueing behind it.

Sealing runs in the background right after a write that appended commits (store/database.py's
after-commit hooks start BackgroundSealer, which coalesces a burst of writes into a few passes),
every SEAL_INTERVAL_SECONDS from the worker, and before `audit verify`/`checkpoint`/`export`.
A record committed while a seal was running waits for the next one, so it is normally sealed well
within a second; STALE_AFTER is the age at which `audit verify` reports that nothing is sealing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from refund_mcp.audit.chain import canonical_json, record_hash
from refund_mcp.notify.outbox import PendingNotification, outbox_row
from refund_mcp.store import tables

logger = logging.getLogger("refund_mcp.audit")

BATCH = 500
SEAL_INTERVAL_SECONDS = 0.5
STALE_AFTER = timedelta(seconds=60)


class SealError(RuntimeError):
    """The pending rows changed under a sealer holding the head lock: nothing was sealed."""


def _uses_pending(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


def _sealed(row: Any, seq: int, prev_hash: str) -> dict[str, Any]:
    text = canonical_json({**json.loads(row.body), "seq": seq})
    return {
        "seq": seq,
        "at": row.at,
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "outcome": row.outcome,
        "error_code": row.error_code,
        "body": text,
        "prev_hash": prev_hash,
        "hash": record_hash(prev_hash, text),
    }


async def seal(engine: AsyncEngine, *, wait: bool = False, batch: int = BATCH) -> int:
    """Seal up to `batch` committed pending records; how many were sealed. Without `wait`, returns 0
    at once when another sealer holds the head."""
    if not _uses_pending(engine):
        return 0
    head_table, pending = tables.audit_head, tables.audit_pending
    async with engine.begin() as conn:
        head_query = select(head_table.c.seq, head_table.c.hash).where(head_table.c.id == 1).with_for_update(skip_locked=not wait)
        head = (await conn.execute(head_query)).first()
        if head is None:
            return 0
        rows = (await conn.execute(select(pending).order_by(pending.c.id).limit(batch))).all()
        if not rows:
            return 0
        records, notifications = [], []
        seq, prev_hash = head.seq, head.hash
        for row in rows:
            seq += 1
            record = _sealed(row, seq, prev_hash)
            records.append(record)
            prev_hash = record["hash"]
            if row.notification is not None:
                notifications.append(outbox_row(PendingNotification.from_json(row.notification), seq=seq, at=row.at))
        await conn.execute(insert(tables.audit_log), records)
        if notifications:
            await conn.execute(insert(tables.notifications), notifications)
        await conn.execute(update(head_table).where(head_table.c.id == 1).values(seq=seq, hash=prev_hash))
        deleted = await conn.execute(delete(pending).where(pending.c.id.in_([row.id for row in rows])))
        if deleted.rowcount != len(rows):
            raise SealError(f"{len(rows)} pending audit records read, {deleted.rowcount} deleted: rolled back")
    return len(rows)


async def seal_all(engine: AsyncEngine, batch: int = BATCH) -> int:
    """Seal every record committed before this call, waiting for any sealer in progress."""
    total = 0
    while (sealed := await seal(engine, wait=True, batch=batch)) > 0:
        total += sealed
        if sealed < batch:
            break
    return total


class BackgroundSealer:
    """Seals after writes without making them wait: the after-commit hook only pokes it.

    One task per engine and event loop seals while pokes keep arriving, so a burst of writes costs one
    or a few sealing transactions rather than one each, and a write's caller gets its answer without
    the sealing round trips (they matter with a database across a network). Best effort, as before: a
    round skipped because another sealer holds the head is left to the next poke or to the worker."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def poke(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            self._again = True
            return
        self._again = False
        self._task = loop.create_task(self._run(), name="refund-mcp audit sealer")

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                while await seal(self.engine) == BATCH:
                    pass
            except Exception:
                logger.warning("sealing audit records after a write failed; the worker will seal them", exc_info=True)
            if not self._again:
                return

    async def settle(self) -> None:
        """Wait for the sealing the last writes started (tests, shutdown)."""
        while self._task is not None and not self._task.done() and self._task.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(self._task)


_background: weakref.WeakKeyDictionary[Any, BackgroundSealer] = weakref.WeakKeyDictionary()


def background_sealer(engine: AsyncEngine) -> BackgroundSealer:
    # Keyed by the connection pool: the engine and its execution-option variants (Database's writer and
    # reader) share it, and so share one sealer.
    pool = engine.sync_engine.pool
    sealer = _background.get(pool)
    if sealer is None:
        sealer = _background[pool] = BackgroundSealer(engine)
    return sealer


async def seal_after_commit(engine: AsyncEngine) -> None:
    """The after-commit hook: start (or extend) the background seal and return at once."""
    background_sealer(engine).poke()


async def settle(engine: AsyncEngine) -> None:
    """Wait until the background seal started by this loop's writes is done (no-op on SQLite)."""
    if _uses_pending(engine):
        await background_sealer(engine).settle()


async def seal_forever(engine: AsyncEngine, stop: Any, interval_seconds: float = SEAL_INTERVAL_SECONDS) -> None:
    """The worker's loop (PostgreSQL only): seal what is pending every `interval_seconds` until `stop`
    (an anyio.Event) is set. Full batches are followed at once by the next."""
    import anyio

    if not _uses_pending(engine):
        return
    while not stop.is_set():
        try:
            while await seal(engine) == BATCH:
                pass
        except Exception:  # a database restart must not end the loop
            logger.exception("sealing audit records failed; trying again")
        with anyio.move_on_after(interval_seconds):
            await stop.wait()


async def count_unsealed(engine: AsyncEngine, older_than: datetime | None = None) -> int:
    """Committed records not sealed yet (appended before `older_than`, when given)."""
    if not _uses_pending(engine):
        return 0
    query = select(func.count()).select_from(tables.audit_pending)
    if older_than is not None:
        query = query.where(tables.audit_pending.c.at < older_than)
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())
