"""The balance and the rolling daily totals are answered from their covering indexes, not the table.

The queries are captured as the store runs them (statement and parameters), then planned with SQLite's
EXPLAIN QUERY PLAN, so a change to either query or either index that loses the index-only scan fails here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from refund_mcp.domain.models import TransactionInfo
from refund_mcp.store import migrations, queries
from refund_mcp.store.database import Database

pytestmark = pytest.mark.anyio


async def _record_payment(db: Database) -> Any:
    now = datetime.now(UTC)
    info = TransactionInfo(
        processor="sandbox",
        transaction_id="pay_1",
        amount_minor=1000,
        currency="USD",
        captured_minor=1000,
        refunded_minor=0,
        status="succeeded",
        created_at=now,
        customer_ref=None,
        description=None,
        refundable=True,
    )
    async with db.write() as conn:
        await queries.upsert_transaction(conn, "sandbox:pay_1", info, now)
        return await queries.get_transaction(conn, "sandbox:pay_1")


async def _plans(db: Database) -> list[str]:
    """The SQLite plan of each statement queries.balance and queries.daily_totals send."""
    txn = await _record_payment(db)
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):  # not the BEGIN the write path sends
            sent.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    async with db.read() as conn:
        await queries.balance(conn, txn)
        await queries.daily_totals(conn, currency="USD", since=datetime.now(UTC) - timedelta(days=1), actor="agent-1")
    event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    plans = []
    async with db.read() as conn:
        for statement, parameters in sent:
            rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plans.append(" | ".join(str(row[-1]) for row in rows))
    return plans


async def test_balance_and_daily_totals_are_index_only_scans(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'fresh.sqlite3'}")
    try:
        await db.migrate()
        balance_plan, totals_plan = await _plans(db)
    finally:
        await db.dispose()
    assert "USING COVERING INDEX ix_refunds_balance" in balance_plan, balance_plan
    assert "USING COVERING INDEX ix_refunds_daily_totals" in totals_plan, totals_plan


async def test_an_existing_database_gets_the_indexes_from_revision_0009(tmp_path: Path) -> None:
    """A database at the revision before (indexes absent) gains them on upgrade, and loses them on downgrade."""
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.sqlite3'}")
    try:
        await db.migrate()
        await migrations.downgrade(db.engine, "0004")
        balance_plan, totals_plan = await _plans(db)
        assert "ix_refunds_balance" not in balance_plan and "ix_refunds_daily_totals" not in totals_plan
        applied = await db.migrate()
        assert "0009" in [step.revision for step in applied]
        balance_plan, totals_plan = await _plans(db)
    finally:
        await db.dispose()
    assert "USING COVERING INDEX ix_refunds_balance" in balance_plan, balance_plan
    assert "USING COVERING INDEX ix_refunds_daily_totals" in totals_plan, totals_plan
