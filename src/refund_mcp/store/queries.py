"""Queries over transactions and refunds. Functions take the caller's connection (its transaction).

The statements of the hot paths are built once, at import, with bound parameters (`_UPPER_CASE` names):
SQLAlchemy then finds their compiled form in its cache without building and hashing a new construct per call."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, insert, literal, or_, select, true, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from refund_mcp.domain.models import RESERVING_STATUSES, RefundStatus, TransactionInfo
from refund_mcp.store import cap_usage, tables, upsert
from refund_mcp.store.modes import locked_when_writing, wants_lock

R = tables.refunds
T = tables.transactions
_RESERVING = [status.value for status in RESERVING_STATUSES]
_AT_PROCESSOR = [RefundStatus.PENDING.value, RefundStatus.REQUIRES_ACTION.value]


_TRANSACTION_FIELDS = (
    "processor", "processor_transaction_id", "amount_minor", "currency", "captured_minor", "processor_refunded_minor",
    "status", "refundable", "customer_ref", "description", "created_at", "updated_at",
)


def _upsert_transaction_statement(dialect: str) -> Any:
    """Record the processor's answer about a payment and return the row, in one statement.

    One statement, so two writers recording a new payment at once cannot both insert it (no global writer
    lock orders them). On PostgreSQL INSERT ... ON CONFLICT DO UPDATE locks the row until commit: it is the
    payment's lock. It sets only what the processor says: never first_seen_at, and never the running totals
    (reserved_minor, ...), which only the triggers on refunds write. Built once per dialect, with bound
    parameters, so every call reuses the compiled statement."""
    columns = ("id", "first_seen_at", *_TRANSACTION_FIELDS)
    statement = upsert.insert_for(dialect, T).values({name: bindparam(name, type_=T.c[name].type) for name in columns})
    excluded = {name: statement.excluded[name] for name in _TRANSACTION_FIELDS}
    return statement.on_conflict_do_update(index_elements=[T.c.id], set_=excluded).returning(*T.c)


_UPSERT_TRANSACTION = {dialect: _upsert_transaction_statement(dialect) for dialect in upsert.DIALECTS}
_GET_TRANSACTION = select(T).where(T.c.id == bindparam("id"))
_GET_TRANSACTION_LOCKED = _GET_TRANSACTION.with_for_update()


async def upsert_transaction(conn: AsyncConnection, canonical_id: str, info: TransactionInfo, now: datetime) -> Row[Any]:
    """Write what the processor says about the payment; the row as it now is (locked on PostgreSQL)."""
    params = {"id": canonical_id, "first_seen_at": now, **_transaction_values(info, now)}
    return (await conn.execute(_UPSERT_TRANSACTION[conn.dialect.name], params)).one()


def _transaction_values(info: TransactionInfo, now: datetime) -> dict[str, Any]:
    return {
        "processor": info.processor,
        "processor_transaction_id": info.transaction_id,
        "amount_minor": info.amount_minor,
        "currency": info.currency,
        "captured_minor": info.captured_minor,
        "processor_refunded_minor": info.refunded_minor,
        "status": info.status,
        "refundable": info.refundable,
        "customer_ref": info.customer_ref,
        "description": info.description,
        "created_at": info.created_at,
        "updated_at": now,
    }


async def insert_transaction_if_absent(conn: AsyncConnection, canonical_id: str, info: TransactionInfo, now: datetime) -> Row[Any]:
    """Record a payment unless it is on record already, then read it locked (store/modes.py).

    A concurrent first recording of the same payment waits for the other to commit and then reads its row."""
    values = _transaction_values(info, now)
    statement = upsert.insert(conn, T).values(id=canonical_id, first_seen_at=now, **values).on_conflict_do_nothing(index_elements=[T.c.id])
    await conn.execute(statement)
    row = await get_transaction(conn, canonical_id)
    assert row is not None
    return row


async def get_transaction(conn: AsyncConnection, canonical_id: str, *, lock: bool | None = None) -> Row[Any] | None:
    """The payment; locked (PostgreSQL) inside a write transaction unless `lock=False` (store/modes.py)."""
    query = _GET_TRANSACTION_LOCKED if wants_lock(conn, lock) else _GET_TRANSACTION
    return (await conn.execute(query, {"id": canonical_id})).first()


async def find_transactions_by_bare_id(conn: AsyncConnection, bare_id: str) -> list[Row[Any]]:
    return list((await conn.execute(select(T).where(T.c.processor_transaction_id == bare_id).limit(5))).all())


@dataclass(frozen=True)
class Balance:
    captured_minor: int
    succeeded_minor: int  # ours + external refunds recorded as succeeded
    reserved_minor: int
    external_unrecorded_minor: int  # refunded at the processor but unknown to our records
    active_refunds: int  # refunds that are not failed/cancelled

    @property
    def refunded_minor(self) -> int:
        return self.succeeded_minor + self.external_unrecorded_minor

    @property
    def refundable_minor(self) -> int:
        return max(0, self.captured_minor - self.refunded_minor - self.reserved_minor)


async def balance(conn: AsyncConnection, txn: Row[Any]) -> Balance:
    """The balance of a payment row read in this transaction (locked by the caller when it decides on it).

    O(1): the refund sums are the payment's running totals, which triggers on `refunds` keep (revision 0011)."""
    succeeded, reserved, at_processor = int(txn.succeeded_minor), int(txn.reserved_minor), int(txn.at_processor_minor)
    # The processor's "refunded so far" includes ours, those it holds or may hold (an attempt with an unknown
    # outcome) included; whatever it reports beyond what we know of was refunded elsewhere (a dashboard,
    # another tool) and must count too.
    external = max(0, int(txn.processor_refunded_minor) - succeeded - at_processor)
    return Balance(int(txn.captured_minor), succeeded, reserved, external, int(txn.active_refunds))


def _refund_sums() -> Any:
    """Per payment, the running totals recomputed from its refunds (what the triggers must agree with)."""
    amount = R.c.amount_minor
    at_processor = or_(R.c.status.in_(_AT_PROCESSOR), and_(R.c.status == RefundStatus.QUEUED.value, R.c.maybe_sent.is_(True)))
    return (
        select(
            R.c.transaction_id,
            func.sum(case((R.c.status.in_(_RESERVING), amount), else_=0)).label("reserved_minor"),
            func.sum(case((R.c.status == RefundStatus.SUCCEEDED.value, amount), else_=0)).label("succeeded_minor"),
            func.sum(case((at_processor, amount), else_=0)).label("at_processor_minor"),
            func.sum(case((R.c.status.in_([RefundStatus.FAILED.value, RefundStatus.CANCELLED.value]), 0), else_=1)).label("active_refunds"),
        )
        .group_by(R.c.transaction_id)
        .subquery()
    )


RUNNING_TOTALS = ("reserved_minor", "succeeded_minor", "at_processor_minor", "active_refunds")


async def running_total_mismatches(conn: AsyncConnection, limit: int = 100) -> list[Row[Any]]:
    """Payments whose running totals differ from a fresh sum of their refunds: (id, then each total as
    stored and as summed). Empty when the triggers kept every total right."""
    sums = _refund_sums()
    stored = [T.c[name] for name in RUNNING_TOTALS]
    summed = [func.coalesce(sums.c[name], 0).label(f"summed_{name}") for name in RUNNING_TOTALS]
    query = (
        select(T.c.id, *stored, *summed)
        .select_from(T.outerjoin(sums, sums.c.transaction_id == T.c.id))
        .where(or_(*(stored_col != summed_col for stored_col, summed_col in zip(stored, summed, strict=True))))
        .order_by(T.c.id)
        .limit(limit)
    )
    return list((await conn.execute(query)).all())


async def daily_totals(conn: AsyncConnection, *, currency: str, since: datetime, actor: str) -> tuple[int, int]:
    """(this actor's, everyone's) agent refunds in `currency` that count against the daily caps (reserved or
    succeeded), created since the start of `since`'s hour: the window is up to one hour longer than asked,
    never shorter, so a cap checked on it is never exceeded. Sums about 25 cap_usage rows per scope."""
    return await cap_usage.window_sums(conn, currency=currency, since=since, actor=actor)


async def daily_window(conn: AsyncConnection, *, currency: str, at: datetime, actor: str) -> cap_usage.WindowRead:
    """The daily caps' window for a refund created at `at` (its hour and the 24 before it), both scopes, as read
    now: the same numbers as `daily_totals(since=at - 24 h)`, kept so the cap take can reuse them where safe."""
    return await cap_usage.read_window(conn, actor=actor, currency=currency, created_at=at)


async def take_cap_usage(
    conn: AsyncConnection, *, actor: str, currency: str, created_at: datetime, amount_minor: int, caps: dict[str, int | None],
    seen: cap_usage.WindowRead | None = None,
) -> str | None:
    """Count a new agent refund against the daily caps if it fits (store/cap_usage.py take): None, or the
    scope whose cap it would exceed."""
    return await cap_usage.take(
        conn, actor=actor, currency=currency, created_at=created_at, amount_minor=amount_minor, caps=caps, seen=seen
    )


_GET_REFUND = select(R).where(R.c.id == bindparam("id"))
_GET_REFUND_LOCKED = _GET_REFUND.with_for_update()


async def get_refund(conn: AsyncConnection, refund_id: str, *, lock: bool | None = None) -> Row[Any] | None:
    """The refund; locked (PostgreSQL) inside a write transaction unless `lock=False` (store/modes.py).

    Lock order: a refund before its payment, wherever a transaction takes both."""
    return (await conn.execute(_GET_REFUND_LOCKED if wants_lock(conn, lock) else _GET_REFUND, {"id": refund_id})).first()


async def get_refund_by_processor_id(
    conn: AsyncConnection, processor: str, processor_refund_id: str, *, lock: bool | None = None
) -> Row[Any] | None:
    query = select(R).where(R.c.processor == processor, R.c.processor_refund_id == processor_refund_id)
    return (await conn.execute(locked_when_writing(conn, query, lock=lock))).first()


_REFUNDS_FOR_TRANSACTION = (
    select(R).where(R.c.transaction_id == bindparam("transaction_id")).order_by(R.c.created_at.desc(), R.c.id.desc()).limit(bindparam("limit"))
)


async def refunds_for_transaction(conn: AsyncConnection, transaction_id: str, limit: int = 50) -> list[Row[Any]]:
    return list((await conn.execute(_REFUNDS_FOR_TRANSACTION, {"transaction_id": transaction_id, "limit": limit})).all())


async def find_duplicate(conn: AsyncConnection, fingerprint: str, since: datetime) -> Row[Any] | None:
    query = (
        select(R)
        .where(
            R.c.fingerprint == fingerprint,
            R.c.created_at >= since,
            R.c.status.not_in([RefundStatus.FAILED.value, RefundStatus.CANCELLED.value]),
        )
        .order_by(R.c.created_at.desc())
        .limit(1)
    )
    return (await conn.execute(query)).first()


async def record_event(conn: AsyncConnection, processor: str, event_id: str, now: datetime) -> bool:
    """Record a webhook event as received; False when it already was (a replay).

    On PostgreSQL an insert of the same key by a transaction still open waits for it: a replay is only ever
    decided against a committed record."""
    W = tables.webhook_events
    statement = upsert.insert(conn, W).values(processor=processor, event_id=event_id, received_at=now)
    inserted = await conn.execute(statement.on_conflict_do_nothing(index_elements=[W.c.processor, W.c.event_id]).returning(W.c.event_id))
    return inserted.first() is not None


async def forget_event(conn: AsyncConnection, processor: str, event_id: str) -> None:
    W = tables.webhook_events
    await conn.execute(delete(W).where(W.c.processor == processor, W.c.event_id == event_id))


_K = tables.idempotency_keys
_GET_IDEMPOTENCY = select(_K).where(_K.c.actor == bindparam("actor"), _K.c.key == bindparam("key"))
_INSERT_IDEMPOTENCY = insert(_K)


async def get_idempotency(conn: AsyncConnection, actor: str, key: str) -> Row[Any] | None:
    return (await conn.execute(_GET_IDEMPOTENCY, {"actor": actor, "key": key})).first()


async def insert_idempotency(conn: AsyncConnection, actor: str, key: str, request_hash: str, refund_id: str, now: datetime) -> None:
    await conn.execute(_INSERT_IDEMPOTENCY, {"actor": actor, "key": key, "request_hash": request_hash, "refund_id": refund_id, "created_at": now})


_INSERT_REFUND = insert(R).returning(*R.c)


async def insert_refund(conn: AsyncConnection, **values: Any) -> Row[Any]:
    """Insert a refund and return it as stored (defaults filled in), in one statement."""
    return (await conn.execute(_INSERT_REFUND, values)).one()


async def update_refund(conn: AsyncConnection, refund_id: str, **values: Any) -> None:
    await conn.execute(update(R).where(R.c.id == refund_id).values(**values))


async def update_refund_returning(conn: AsyncConnection, refund_id: str, **values: Any) -> Row[Any]:
    """Update and read back in one statement (RETURNING: SQLite >= 3.35 and PostgreSQL)."""
    return (await conn.execute(update(R).where(R.c.id == refund_id).values(**values).returning(*R.c))).one()


async def claim_due(conn: AsyncConnection, now: datetime, claim_until: datetime, limit: int) -> list[Row[Any]]:
    """Take queued refunds whose next attempt is due and which nobody is submitting; mark them in flight.

    Each claim takes a new fencing token (claim_token + 1); the rows returned carry it."""
    query = (
        select(R.c.id, R.c.claimed_until)
        .where(
            R.c.status == RefundStatus.QUEUED.value,
            R.c.next_attempt_at.is_not(None),
            R.c.next_attempt_at <= now,
            or_(R.c.claimed_until.is_(None), R.c.claimed_until < now),
        )
        .order_by(R.c.next_attempt_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    claimed = []
    for refund_id, claimed_until in (await conn.execute(query)).all():
        values: dict[str, Any] = {"claimed_until": claim_until, "claim_token": R.c.claim_token + 1}
        if claimed_until is not None:
            # A lapsed claim means its submitter died or stalled mid-call: that attempt may have reached the processor.
            values["maybe_sent"] = True
        claimed.append(await claim(conn, refund_id, now, **values))
    return claimed


async def claim(conn: AsyncConnection, refund_id: str, now: datetime, **values: Any) -> Row[Any]:
    """Take a new claim on a refund (a new fencing token) and note when its current key is first possibly sent."""
    values.setdefault("claim_token", R.c.claim_token + 1)
    values["key_first_sent_at"] = func.coalesce(R.c.key_first_sent_at, literal(now, R.c.key_first_sent_at.type))
    return await update_refund_returning(conn, refund_id, **values)


async def update_claimed(
    conn: AsyncConnection, refund_id: str, claim_token: int, *, in_status: str = RefundStatus.QUEUED.value, **values: Any
) -> Row[Any] | None:
    """A write after a processor call: applied only if the attempt still holds its claim (its fencing token
    is current) and the refund is still in status `in_status` (by default queued; the status the attempt last
    saw when it records an answer). None: nothing was written."""
    conditions = (R.c.id == refund_id, R.c.claim_token == claim_token, R.c.status == in_status)
    return (await conn.execute(update(R).where(*conditions).values(**values).returning(*R.c))).first()


async def due_for_sync(conn: AsyncConnection, now: datetime, processors: list[str], limit: int) -> list[Row[Any]]:
    """Refunds the processor accepted but has not finished, on processors with a status API."""
    query = (
        select(R)
        .where(
            R.c.status.in_(_AT_PROCESSOR),
            R.c.processor.in_(processors),
            R.c.processor_refund_id.is_not(None),
            or_(R.c.next_attempt_at.is_(None), R.c.next_attempt_at <= now),
        )
        .order_by(R.c.updated_at)
        .limit(limit)
    )
    return list((await conn.execute(query)).all())


async def list_refunds(
    conn: AsyncConnection,
    *,
    status: str | None,
    processor: str | list[str] | None,
    transaction_ids: list[str] | None,
    since: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
    approval_state: str | None = None,
) -> list[Row[Any]]:
    conditions = []
    if status:
        conditions.append(R.c.status == status)
    if isinstance(processor, list):  # every account of one processor
        conditions.append(R.c.processor.in_(processor))
    elif processor:
        conditions.append(R.c.processor == processor)
    if transaction_ids is not None:
        conditions.append(R.c.transaction_id.in_(transaction_ids))
    if since:
        conditions.append(R.c.created_at >= since)
    if approval_state:
        conditions.append(R.c.approval_state == approval_state)
    if after:
        created, refund_id = after
        conditions.append(or_(R.c.created_at < created, and_(R.c.created_at == created, R.c.id < refund_id)))
    query = select(R).where(true(), *conditions).order_by(R.c.created_at.desc(), R.c.id.desc()).limit(limit)
    return list((await conn.execute(query)).all())


async def expired_approvals(conn: AsyncConnection, now: datetime) -> list[Row[Any]]:
    """Pending approvals past their deadline (candidates: each is read again, locked, before it is expired)."""
    query = select(R).where(
        R.c.status == RefundStatus.PENDING_APPROVAL.value,
        R.c.approval_expires_at.is_not(None),
        R.c.approval_expires_at <= now,
    ).order_by(R.c.id)
    return list((await conn.execute(query)).all())
