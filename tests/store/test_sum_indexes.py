"""The balance and the rolling daily totals cost the same whatever the history.

The balance reads the payment's running totals (no statement of its own); the daily totals and the cap
check read at most ~25 hourly buckets per scope, a primary-key range scan of cap_usage (WITHOUT ROWID on
SQLite, so the scan is the table). Only the reconcile consistency check still sums refunds, from the
covering index ix_refunds_balance. The queries are captured as the store runs them (statement and
parameters), then planned with SQLite's EXPLAIN QUERY PLAN, so a change that loses a plan fails here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from refund_mcp.domain.models import TransactionInfo
from refund_mcp.store import cap_usage, migrations, queries
from refund_mcp.store.database import Database

pytestmark = pytest.mark.anyio
NOW = datetime.now(UTC)


async def _record_payment(db: Database) -> Any:
    info = TransactionInfo(
        processor="sandbox",
        transaction_id="pay_1",
        amount_minor=1000,
        currency="USD",
        captured_minor=1000,
        refunded_minor=0,
        status="succeeded",
        created_at=NOW,
        customer_ref=None,
        description=None,
        refundable=True,
    )
    async with db.write() as conn:
        await queries.upsert_transaction(conn, "sandbox:pay_1", info, NOW)
        return await queries.get_transaction(conn, "sandbox:pay_1")


async def _plans(db: Database, run: Callable[[Any], Awaitable[Any]]) -> list[str]:
    """The SQLite plan of each SELECT `run` sends."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):  # not the BEGIN the write path sends, nor the upserts
            sent.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with db.write() as conn:
            await run(conn)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    plans = []
    async with db.read() as conn:
        for statement, parameters in sent:
            rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans.append(" | ".join(str(row[-1]) for row in rows))
    return plans


@pytest.fixture
async def db(tmp_path: Path) -> Any:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'fresh.sqlite3'}")
    await database.migrate()
    try:
        yield database
    finally:
        await database.dispose()


async def test_the_balance_sends_no_query(db: Database) -> None:
    txn = await _record_payment(db)

    async def balance(conn: Any) -> None:
        await queries.balance(conn, txn)

    assert await _plans(db, balance) == []


async def test_the_daily_totals_and_the_cap_check_are_primary_key_range_scans(db: Database) -> None:
    async def totals(conn: Any) -> None:
        await queries.daily_totals(conn, currency="USD", since=NOW - timedelta(days=1), actor="agent-1")
        everyone, mine = cap_usage.scopes("agent-1")
        await queries.take_cap_usage(conn, actor="agent-1", currency="USD", created_at=NOW, amount_minor=1, caps={everyone: 10, mine: None})

    plans = await _plans(db, totals)
    assert len(plans) == 2, plans
    for plan in plans:
        assert "SEARCH cap_usage USING PRIMARY KEY (scope=? AND currency=? AND hour_start>?)" in plan, plan
        assert "SCAN" not in plan, plan


async def test_the_consistency_check_sums_refunds_from_the_covering_index(db: Database) -> None:
    async def mismatches(conn: Any) -> None:
        await queries.running_total_mismatches(conn)

    [plan] = await _plans(db, mismatches)
    assert "USING COVERING INDEX ix_refunds_balance" in plan, plan


async def test_an_existing_database_gets_the_indexes_from_revision_0009(tmp_path: Path) -> None:
    """A database at the revision before (indexes absent) gains them on upgrade."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite3'}")
    names = text("SELECT name FROM sqlite_master WHERE type = 'index' AND name IN ('ix_refunds_balance', 'ix_refunds_daily_totals')")
    try:
        await db.migrate()
        await migrations.downgrade(db.engine, "0004")
        async with db.read() as conn:
            assert (await conn.execute(names)).all() == []
        applied = await db.migrate()
        assert "0009" in [step.revision for step in applied]
        async with db.read() as conn:
            assert sorted(row[0] for row in (await conn.execute(names)).all()) == ["ix_refunds_balance", "ix_refunds_daily_totals"]
    finally:
        await db.dispose()
