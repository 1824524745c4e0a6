"""Append-only audit log, written in the caller's transaction so it commits with the change it records."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from refund_mcp.audit.chain import ChainWalker, StoredRecord, VerifyResult, canonical_json, record_hash
from refund_mcp.audit.redact import redact
from refund_mcp.notify.outbox import enqueue_for
from refund_mcp.store import tables


@dataclass
class AuditEntry:
    actor: str
    action: str  # e.g. refund.create, refund.denied, refund.submitted, transaction.lookup
    outcome: str  # ok | denied | error | queued | ...
    target: str | None = None  # refund id or transaction id
    request: Mapping[str, Any] | None = None
    decision: Mapping[str, Any] | None = None  # {"outcome", "rules": [names], "policy_version"}
    error_code: str | None = None
    processor_request_id: str | None = None
    detail: Mapping[str, Any] | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def append(conn: AsyncConnection, entry: AuditEntry) -> int:
    """Append one record to the chain inside `conn`'s transaction; returns its seq.

    The head is read locked (FOR UPDATE on PostgreSQL; SQLite's writer lock is the database's), so reading
    it and inserting after it cannot interleave with another writer even without Database.write()'s
    global writer lock (already held then: locking it again costs nothing).
    """
    query = select(tables.audit_head.c.seq, tables.audit_head.c.hash).where(tables.audit_head.c.id == 1)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    head = (await conn.execute(query)).one()
    seq = head.seq + 1
    body: dict[str, Any] = {
        "seq": seq,
        "at": _iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "outcome": entry.outcome,
        "error_code": entry.error_code,
        "request": redact(entry.request) if entry.request is not None else None,
        "decision": entry.decision,
        "processor_request_id": entry.processor_request_id,
        "detail": redact(entry.detail) if entry.detail is not None else None,
    }
    text = canonical_json(body)
    digest = record_hash(head.hash, text)
    await conn.execute(
        insert(tables.audit_log).values(
            seq=seq,
            at=entry.at,
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            outcome=entry.outcome,
            error_code=entry.error_code,
            body=text,
            prev_hash=head.hash,
            hash=digest,
        )
    )
    await conn.execute(update(tables.audit_head).where(tables.audit_head.c.id == 1).values(seq=seq, hash=digest))
    # Records a human must hear about (approval wanted, decided, stuck, failed) also go to the
    # notifications outbox, in this same transaction.
    await enqueue_for(conn, seq=seq, at=entry.at, actor=entry.actor, action=entry.action, target=entry.target, outcome=entry.outcome, detail=entry.detail)
    return seq


def _stored(row: Any) -> StoredRecord:
    return StoredRecord(
        seq=row.seq,
        columns={
            "seq": row.seq,
            "at": _iso(row.at),
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "outcome": row.outcome,
            "error_code": row.error_code,
        },
        body=row.body,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


async def _stream(engine: AsyncEngine, batch: int = 5000, upto: int | None = None) -> AsyncIterator[StoredRecord]:
    last = 0
    log = tables.audit_log
    while True:
        query = select(log).where(log.c.seq > last)
        if upto is not None:
            query = query.where(log.c.seq <= upto)
        async with engine.connect() as conn:
            rows = (await conn.execute(query.order_by(log.c.seq).limit(batch))).all()
        if not rows:
            return
        for row in rows:
            yield _stored(row)
        last = rows[-1].seq


async def verify(engine: AsyncEngine, anchors: Mapping[int, str] | None = None) -> VerifyResult:
    """Walk the chain up to its head; `anchors` ({seq: hash} from signed checkpoints) must match too."""
    async with engine.connect() as conn:
        head = (await conn.execute(select(tables.audit_head).where(tables.audit_head.c.id == 1))).one()
    walker = ChainWalker(anchors)
    # Only up to the head read above: records appended while verifying belong to the next run.
    async for record in _stream(engine, upto=head.seq):
        if not walker.feed(record):
            break
    return walker.finish(head.seq, head.hash)


async def export(engine: AsyncEngine) -> AsyncIterator[dict[str, Any]]:
    """Every record as a dict (the body plus its hashes), in chain order, for JSONL export."""
    async for record in _stream(engine):
        yield {**json.loads(record.body), "prev_hash": record.prev_hash, "hash": record.hash}


async def trail(conn: AsyncConnection, target: str, limit: int = 200) -> list[dict[str, Any]]:
    rows = (
        await conn.execute(
            select(tables.audit_log.c.body).where(tables.audit_log.c.target == target).order_by(tables.audit_log.c.seq).limit(limit)
        )
    ).all()
    return [json.loads(row.body) for row in rows]
