"""Alembic migrations: fresh databases, databases made by refund-mcp 0.1.0, models vs head, newer databases,
downgrade, concurrent start-ups on PostgreSQL, and the `refund-mcp db` commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from refund_mcp.audit import log as audit
from refund_mcp.cli import main
from refund_mcp.store import migrations, tables
from refund_mcp.store.database import Database, create_engine
from tests.conftest import make_app, sqlite_url

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Databases made with the hand-written migrations: by release 0.1.0 (version 2) and by the last code that
# used them (version 8). Each holds one lookup, one refund and one refused call.
LEGACY_FIXTURES = {"release-0.1.0": 2, "main-v8": 8}
LEGACY_AUDIT_RECORDS = 4


def _statements(dump: str) -> list[str]:
    lines = [line for line in dump.splitlines() if not line.startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";\n") if stmt.strip()]


async def _load_legacy(url: str, fixture: str = "release-0.1.0") -> None:
    """Recreate the database an older server left behind, from its dump."""
    engine = create_engine(url)
    dialect = engine.dialect.name
    dump = (FIXTURES / f"{fixture}-{dialect}.sql").read_text()
    try:
        if dialect == "sqlite":
            import sqlite3

            path = engine.url.database
            await engine.dispose()
            with sqlite3.connect(path) as conn:
                conn.executescript(dump)
            return
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(dump)  # type: ignore[union-attr]
    finally:
        await engine.dispose()


def _schema_diff(sync_conn: Any) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(
        sync_conn, opts={"compare_type": True, "include_name": migrations.include_name}
    )
    return compare_metadata(context, tables.metadata)


async def _diff(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return await conn.run_sync(_schema_diff)


async def _counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            name: (await conn.execute(text(f"SELECT COUNT(*) FROM {name}"))).scalar_one()
            for name in ("transactions", "refunds", "idempotency_keys", "audit_log")
        }


async def test_the_audit_pending_migration_goes_down_to_0011_and_back(db_url: str) -> None:
    db = Database(db_url)
    try:
        await db.migrate()
        await migrations.downgrade(db.engine, "0011")
        async with db.engine.connect() as conn:
            names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        assert "audit_pending" not in names and "audit_log" in names
        await db.migrate()
        assert await migrations.current_revision(db.engine) == migrations.head_revision()
        assert await _diff(db.engine) == []
    finally:
        await db.dispose()


async def test_a_fresh_database_is_at_head_and_matches_the_models(db_url: str) -> None:
    db = Database(db_url)
    try:
        applied = await db.migrate()
        assert [step.revision for step in applied][0] == "0001"
        assert await migrations.current_revision(db.engine) == migrations.head_revision()
        assert await _diff(db.engine) == []
        assert await db.migrate() == []  # a second start finds nothing to do
        result = await audit.verify(db.engine)
        assert result.ok and result.records == 0
    finally:
        await db.dispose()


@pytest.mark.parametrize("fixture", sorted(LEGACY_FIXTURES))
async def test_a_database_made_by_the_hand_written_migrations_upgrades_in_place_keeping_every_row(db_url: str, fixture: str) -> None:
    await _load_legacy(db_url, fixture)
    engine = create_engine(db_url)
    try:
        assert await migrations.legacy_version(engine) == LEGACY_FIXTURES[fixture]
        before = await _counts(engine)
        async with engine.connect() as conn:
            legacy_refund = (await conn.execute(text("SELECT id FROM refunds"))).scalar_one()
        assert before["refunds"] == 1 and before["audit_log"] == LEGACY_AUDIT_RECORDS
        await migrations.upgrade(engine)
        assert await migrations.current_revision(engine) == migrations.head_revision()
        assert await _counts(engine) == before
        assert await _diff(engine) == []
        verdict = await audit.verify(engine)
        assert verdict.ok and verdict.records == LEGACY_AUDIT_RECORDS
        async with engine.connect() as conn:
            legacy = (await conn.execute(text("SELECT MAX(version) FROM schema_migrations"))).scalar_one()
        assert legacy == migrations.LEGACY_HANDOVER_VERSION  # a 0.1.0 binary now refuses this database
    finally:
        await engine.dispose()
    # The upgraded database serves: the old refund is there and new refunds chain onto the old log.
    async with make_app(db_url) as app:
        trail = await app.service.refund_with_trail(legacy_refund)
        assert trail["refund"]["status"] == "succeeded"
        from mcp import Client

        async with Client(app.server) as client:
            result = await client.call_tool(
                "create_refund", {"transaction_id": "sandbox:demo_usd_order", "reason": "duplicate", "amount_minor": 300}
            )
            assert not result.is_error, result.content
        assert (await audit.verify(app.db.engine)).ok


async def test_a_database_newer_than_the_code_is_refused_untouched(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    try:
        await db.migrate()
        async with db.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(migrations.SchemaTooNew, match="9999"):
            await db.migrate()
        async with db.engine.connect() as conn:
            assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one() == "9999"
    finally:
        await db.dispose()


async def test_downgrade_to_base_and_back(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    try:
        await db.migrate()
        await migrations.downgrade(db.engine, "base")
        async with db.engine.connect() as conn:
            names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        assert set(names) <= {"alembic_version"}
        await db.migrate()
        assert await _diff(db.engine) == []
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_concurrent_start_ups_on_postgresql_serialize(pg_database: str) -> None:
    engines = [create_engine(pg_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrations.upgrade(engine) for engine in engines))
        # One start-up applied every revision; the others waited on the lock and found nothing to do.
        assert sorted(len(applied) for applied in results)[:-1] == [0, 0, 0]
        assert len(max(results, key=len)) >= 1
        async with engines[0].connect() as conn:
            heads = (await conn.execute(select(tables.audit_head))).all()
        assert len(heads) == 1  # the genesis row was written once
        assert await _diff(engines[0]) == []
    finally:
        for engine in engines:
            await engine.dispose()


def test_db_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REFUND_MCP_DB", sqlite_url(tmp_path))
    head = migrations.head_revision()
    assert main(["db", "version"]) == 0
    assert "schema revision none" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    out = capsys.readouterr().out
    assert "applied 0001" in out and f"schema revision {head}" in out
    assert main(["db", "downgrade", "--to", "base"]) == 0
    assert "schema revision none" in capsys.readouterr().out


def test_the_head_read_from_the_revision_files_is_alembics() -> None:
    assert migrations.head_from_files() == migrations.head_revision()


def test_db_version_and_upgrade_on_a_release_0_1_0_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = sqlite_url(tmp_path)
    asyncio.run(_load_legacy(url))
    monkeypatch.setenv("REFUND_MCP_DB", url)
    assert main(["db", "version"]) == 0
    assert "schema version 2 (refund-mcp 0.1.0 migrations)" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    assert f"schema revision {migrations.head_revision()}" in capsys.readouterr().out

