"""Append-only audit log, written in the caller's transaction so it commits with the change it records.

How a record joins the hash chain depends on the database:
- SQLite has one writer at a time (`BEGIN IMMEDIATE`), so `append` extends the chain at once: find
  the head, move it to seq+1 and the record's hash, insert the record.
- PostgreSQL: "sealed in sequence". `append` inserts the record into `audit_pending` (no seq, no
  hash), touching no row another writer needs: the chain never makes writers wait. A sealer
  (audit/sealing.py: right after such a write commits, every ~0.5 s from the worker, and before
  `audit verify`/`checkpoint`/`export`) moves committed pending records into `audit_log` in
  pending-id order, giving each its seq, prev_hash and hash exactly as SQLite would. So seq stays
  dense and the stored chain, `audit verify` and signed checkpoints are unchanged for sealed records.

The window: a record commits atomically with the business change it records, but until it is
sealed (normally well under a second; bounded by the worker's sealing interval) it has no seq and
is not tamper-evident: the hash chain does not cover it yet. A record whose transaction commits
after a later one has been sealed is sealed in a later batch, so its seq is later than records
committed before it: seq is the chain's order, not the order in which transactions began.
Readers (`trail`, `latest`) show pending records after sealed ones, so nothing is hidden meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, Select, bindparam, insert, literal, select, union_all, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from refund_mcp.audit import sealing
from refund_mcp.audit.chain import ChainWalker, StoredRecord, VerifyResult, canonical_json, record_hash
from refund_mcp.audit.redact import redact
from refund_mcp.notify.outbox import PendingNotification, notification_for, outbox_row
from refund_mcp.store import tables
from refund_mcp.store.database import AFTER_COMMIT


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


def _body(entry: AuditEntry) -> dict[str, Any]:
    """The record's canonical fields, all but its seq (given when it joins the chain)."""
    return {
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


def _columns(entry: AuditEntry) -> dict[str, Any]:
    """The record's indexed columns (chain.INDEXED_FIELDS but seq)."""
    return {
        "at": entry.at, "actor": entry.actor, "action": entry.action, "target": entry.target,
        "outcome": entry.outcome, "error_code": entry.error_code,
    }


async def append(conn: AsyncConnection, entry: AuditEntry) -> int | None:
    """Append one record inside `conn`'s transaction; its seq, or None on PostgreSQL (given when sealed).

    Records a human must hear about (approval wanted, decided, stuck, failed) also go to the
    notifications outbox: decided here, from the state this transaction sees, and written with the
    record's seq (at once on SQLite, by the sealer on PostgreSQL)."""
    notification = await notification_for(
        conn, at=entry.at, actor=entry.actor, action=entry.action, target=entry.target, outcome=entry.outcome, detail=entry.detail
    )
    if conn.dialect.name == "postgresql":
        await _append_pending(conn, entry, notification)
        return None
    return await _append_to_chain(conn, entry, notification)


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str


# The chain's head as this process last moved it, per engine: a guess that saves reading the head. Moving the
# head is conditional on it still being exactly that (seq and hash), so a head another process moved, or one
# a rolled-back transaction of ours left behind, is simply read again.
_last_heads: WeakKeyDictionary[Engine, _Head] = WeakKeyDictionary()
_H = tables.audit_head
_READ_HEAD = select(_H.c.seq, _H.c.hash).where(_H.c.id == 1)
_MOVE_HEAD = (
    update(_H)
    .where(_H.c.id == 1, _H.c.seq == bindparam("prev_seq"), _H.c.hash == bindparam("prev_hash"))
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_INSERT_RECORD = insert(tables.audit_log)
_INSERT_NOTIFICATION = insert(tables.notifications)
_INSERT_PENDING = insert(tables.audit_pending)


async def _append_to_chain(conn: AsyncConnection, entry: AuditEntry, notification: PendingNotification | None) -> int:
    """SQLite: the caller's transaction began with BEGIN IMMEDIATE, so nobody can append between finding
    the head and moving it. Two statements when the head is where this process left it (move it, insert the
    record); otherwise the head is read first."""
    body = _body(entry)
    guess = _last_heads.get(conn.sync_engine)
    if guess is None or (moved := await _move_head(conn, guess, body)) is None:
        row = (await conn.execute(_READ_HEAD)).one()
        moved = await _move_head(conn, _Head(int(row.seq), row.hash), body)
        assert moved is not None, "the head read in this write transaction moved under it"
    head, text, digest = moved
    seq = head.seq + 1
    await conn.execute(_INSERT_RECORD, {"seq": seq, **_columns(entry), "body": text, "prev_hash": head.hash, "hash": digest})
    _last_heads[conn.sync_engine] = _Head(seq, digest)
    if notification is not None:
        await conn.execute(_INSERT_NOTIFICATION, outbox_row(notification, seq=seq, at=entry.at))
    return seq


async def _move_head(conn: AsyncConnection, head: _Head, body: dict[str, Any]) -> tuple[_Head, str, str] | None:
    """Move the head past the record `body` if it is still `head`: (that head, the record's text, its hash), or None."""
    seq = head.seq + 1
    text = canonical_json({"seq": seq, **body})
    digest = record_hash(head.hash, text)
    params = {"prev_seq": head.seq, "prev_hash": head.hash, "new_seq": seq, "new_hash": digest}
    return (head, text, digest) if (await conn.execute(_MOVE_HEAD, params)).rowcount == 1 else None


async def _append_pending(conn: AsyncConnection, entry: AuditEntry, notification: PendingNotification | None) -> None:
    """PostgreSQL: one insert; the sealer runs once this transaction commits (Database.write)."""
    await conn.execute(
        _INSERT_PENDING,
        {**_columns(entry), "body": canonical_json(_body(entry)), "notification": notification.to_json() if notification is not None else None},
    )
    hooks = conn.info.get(AFTER_COMMIT)
    if hooks is not None:
        engine = conn.engine
        hooks.setdefault("audit.seal", lambda: sealing.seal_after_commit(engine))


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


async def verify(engine: AsyncEngine, anchors: Mapping[int, str] | None = None, now: datetime | None = None) -> VerifyResult:
    """Seal what is pending, then walk the chain up to its head; `anchors` ({seq: hash} from signed
    checkpoints) must match too. Pending records that waited longer than sealing.STALE_AFTER are
    reported (`stale_unsealed`): nothing was sealing them."""
    stale = await sealing.count_unsealed(engine, older_than=(now or datetime.now(UTC)) - sealing.STALE_AFTER)
    await sealing.seal_all(engine)
    async with engine.connect() as conn:
        head = (await conn.execute(select(tables.audit_head).where(tables.audit_head.c.id == 1))).one()
    walker = ChainWalker(anchors)
    # Only up to the head read above: records appended while verifying belong to the next run.
    async for record in _stream(engine, upto=head.seq):
        if not walker.feed(record):
            break
    result = walker.finish(head.seq, head.hash)
    unsealed = await sealing.count_unsealed(engine)
    return dataclasses.replace(result, unsealed=unsealed, stale_unsealed=stale)


def unsealed_findings(result: VerifyResult) -> list[str]:
    """What `audit verify` says about records outside the chain (PostgreSQL); not chain breaks."""
    window = int(sealing.STALE_AFTER.total_seconds())
    findings = []
    if result.stale_unsealed:
        findings.append(
            f"finding: {result.stale_unsealed} record(s) not sealed for more than {window} s (sealed now) — is a worker running?"
        )
    if result.unsealed:
        findings.append(
            f"{result.unsealed} record(s) committed since are not sealed yet: they are not tamper-evident until the next seal."
        )
    return findings


async def export(engine: AsyncEngine) -> AsyncIterator[dict[str, Any]]:
    """Every sealed record as a dict (the body plus its hashes), in chain order, for JSONL export.
    What is pending is sealed first, so the export ends with the records committed before it began."""
    await sealing.seal_all(engine)
    async for record in _stream(engine):
        yield {**json.loads(record.body), "prev_hash": record.prev_hash, "hash": record.hash}


def _sealed_then_pending(sealed: Select[Any], pending: Select[Any]) -> Any:
    """One statement (one snapshot), so a record sealed meanwhile is neither missed nor shown twice."""
    return union_all(
        sealed.add_columns(literal(0).label("is_pending"), tables.audit_log.c.seq.label("position")),
        pending.add_columns(literal(1).label("is_pending"), tables.audit_pending.c.id.label("position")),
    ).subquery()


async def trail(conn: AsyncConnection, target: str, limit: int = 200) -> list[dict[str, Any]]:
    """The records about `target` in chain order: sealed ones by seq, then pending ones (seq None) by id."""
    log, pending = tables.audit_log, tables.audit_pending
    if conn.dialect.name != "postgresql":  # SQLite appends straight to the chain
        rows = (await conn.execute(select(log.c.body).where(log.c.target == target).order_by(log.c.seq).limit(limit))).all()
        return [json.loads(row.body) for row in rows]
    both = _sealed_then_pending(select(log.c.body).where(log.c.target == target), select(pending.c.body).where(pending.c.target == target))
    rows = (await conn.execute(select(both.c.body, both.c.is_pending).order_by(both.c.is_pending, both.c.position).limit(limit))).all()
    return [{"seq": None, **json.loads(row.body)} if row.is_pending else json.loads(row.body) for row in rows]


async def latest(conn: AsyncConnection, *, action: str, target: str | None = None) -> Any:
    """The newest record of `action` about `target` (None: about nothing in particular), pending ones
    included; a row with `at`, `outcome` and `body`, or None."""
    log, pending = tables.audit_log, tables.audit_pending

    def about(table: Any) -> Any:
        return table.c.target.is_(None) if target is None else table.c.target == target

    sealed = select(log.c.at, log.c.outcome, log.c.body).where(about(log), log.c.action == action)
    if conn.dialect.name != "postgresql":
        return (await conn.execute(sealed.order_by(log.c.seq.desc()).limit(1))).first()
    both = _sealed_then_pending(sealed, select(pending.c.at, pending.c.outcome, pending.c.body).where(about(pending), pending.c.action == action))
    query = select(both.c.at, both.c.outcome, both.c.body).order_by(both.c.is_pending.desc(), both.c.position.desc()).limit(1)
    return (await conn.execute(query)).first()
