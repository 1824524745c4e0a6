"""The audit chain sealed in sequence (PostgreSQL): writers append to audit_pending, sealers chain them.

Writers here use their own connections (engine.begin()), not Database.write(), so nothing below relies
on a lock shared by writers: only the sealers' lock on the chain's head orders the chain."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from refund_mcp.audit import log as audit
from refund_mcp.audit import sealing
from refund_mcp.audit.log import AuditEntry
from refund_mcp.store import migrations, tables
from refund_mcp.store.database import Database
from tests.conftest import sqlite_url

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)


@pytest.fixture
async def db(pg_database: str) -> AsyncIterator[Database]:
    database = Database(pg_database)
    await database.migrate()
    try:
        yield database
    finally:
        await database.dispose()


def entry(target: str, *, action: str = "refund.read", outcome: str = "ok", at: datetime = NOW, detail: Any = None) -> AuditEntry:
    return AuditEntry(actor="agent-1", action=action, outcome=outcome, target=target, at=at, detail=detail)


def attention(target: str) -> AuditEntry:
    """A record that calls for a notification without needing a refund row."""
    return entry(target, action="reconcile.run", outcome="attention", detail={"summary": {"missing_locally": 1}})


async def append_alone(db: Database, record: AuditEntry) -> None:
    async with db.engine.begin() as conn:
        assert await audit.append(conn, record) is None  # no seq yet: it is pending


async def chain(db: Database) -> list[Any]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(select(tables.audit_log).order_by(tables.audit_log.c.seq))).all())


async def pending_count(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(tables.audit_pending))).scalar_one())


async def notifications(db: Database) -> list[Any]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(select(tables.notifications))).all())


@pytest.mark.postgres
async def test_many_concurrent_writers_end_up_in_one_dense_verified_chain(db: Database) -> None:
    writers = 60
    await asyncio.gather(*(append_alone(db, entry(f"t{index}")) for index in range(writers)))
    assert await pending_count(db) == writers  # nothing sealed them: no write() hook ran
    assert await sealing.seal_all(db.engine) == writers
    records = await chain(db)
    assert [row.seq for row in records] == list(range(1, writers + 1))
    assert sorted(row.target for row in records) == sorted(f"t{index}" for index in range(writers))
    assert await pending_count(db) == 0
    result = await audit.verify(db.engine)
    assert result.ok and result.records == writers and result.unsealed == 0


@pytest.mark.postgres
async def test_a_write_through_database_write_is_sealed_when_it_commits(db: Database) -> None:
    async with db.write() as conn:
        await audit.append(conn, entry("r1"))
        await audit.append(conn, entry("r1", action="refund.status"))
    await sealing.settle(db.engine)  # the commit started the background seal; the write did not wait for it
    assert await pending_count(db) == 0
    assert [(row.seq, row.action) for row in await chain(db)] == [(1, "refund.read"), (2, "refund.status")]


@pytest.mark.postgres
async def test_concurrent_writes_seal_themselves_and_the_chain_stays_dense(db: Database) -> None:
    writes = 40
    await asyncio.gather(*(_write_one(db, f"w{index}") for index in range(writes)))
    await sealing.seal_all(db.engine)  # what a write's own seal skipped while another sealer ran
    rows = await chain(db)
    assert [row.seq for row in rows] == list(range(1, writes + 1))
    assert sorted(row.target for row in rows) == sorted(f"w{index}" for index in range(writes))
    assert (await audit.verify(db.engine)).ok


@pytest.mark.postgres
async def test_metrics_show_unsealed_records_and_the_oldest_ones_age(db: Database) -> None:
    from refund_mcp.observability.state import read_snapshot

    await append_alone(db, entry("m", at=NOW - timedelta(seconds=30)))
    snap = await read_snapshot(db, NOW)
    assert (snap.audit_unsealed, snap.audit_unsealed_oldest_age_seconds) == (1, 30.0)
    await sealing.seal(db.engine)
    snap = await read_snapshot(db, NOW)
    assert (snap.audit_unsealed, snap.audit_unsealed_oldest_age_seconds) == (0, 0.0)


@pytest.mark.postgres
async def test_a_write_does_not_wait_for_the_chains_head(db: Database) -> None:
    async with db.engine.begin() as sealer:  # a sealer at work holds the head row
        await sealer.execute(select(tables.audit_head).where(tables.audit_head.c.id == 1).with_for_update())
        # Bounded only so that a regression fails instead of hanging the run.
        await asyncio.wait_for(_write_one(db, "r2"), timeout=60)
        await sealing.settle(db.engine)  # the background seal the commit started, while the head is still held
    assert await pending_count(db) == 1  # its own seal skipped the locked head; the next one takes it
    assert await sealing.seal(db.engine) == 1


async def _write_one(db: Database, target: str) -> None:
    async with db.write() as conn:
        await audit.append(conn, entry(target))


@pytest.mark.postgres
async def test_a_transaction_committing_late_is_sealed_in_the_next_pass_with_a_later_seq(db: Database) -> None:
    async with db.engine.connect() as late:
        await late.begin()
        await audit.append(late, entry("late"))  # its pending id is the smallest
        await append_alone(db, entry("early-1"))
        await append_alone(db, entry("early-2"))
        assert await sealing.seal(db.engine) == 2  # the open transaction's record is invisible
        await late.commit()
    assert await sealing.seal(db.engine) == 1
    assert [(row.seq, row.target) for row in await chain(db)] == [(1, "early-1"), (2, "early-2"), (3, "late")]
    assert (await audit.verify(db.engine)).ok


@pytest.mark.postgres
async def test_sealers_running_at_once_never_seal_a_record_twice_and_never_deadlock(db: Database) -> None:
    records = 300
    for start in range(0, records, 50):
        async with db.engine.begin() as conn:
            for index in range(start, start + 50):
                await audit.append(conn, attention(f"t{index}") if index % 10 == 0 else entry(f"t{index}"))
    sealed = await asyncio.gather(
        sealing.seal_all(db.engine, batch=7),
        sealing.seal_all(db.engine, batch=11),
        *(sealing.seal(db.engine, batch=13) for _ in range(4)),
        *(sealing.seal(db.engine, wait=True, batch=17) for _ in range(4)),
    )
    assert sum(sealed) == records
    assert await sealing.seal_all(db.engine) == 0
    rows = await chain(db)
    assert [row.seq for row in rows] == list(range(1, records + 1))
    assert sorted(row.target for row in rows) == sorted(f"t{index}" for index in range(records))
    assert (await audit.verify(db.engine)).ok
    # One notification per record that calls for one, carrying that record's sealed seq.
    seq_of = {row.target: row.seq for row in rows}
    sent = await notifications(db)
    assert len(sent) == records // 10
    for note in sent:
        body = json.loads(note.body)
        assert note.audit_seq == body["audit_seq"]
    assert sorted(note.audit_seq for note in sent) == sorted(seq_of[f"t{index}"] for index in range(0, records, 10))


@pytest.mark.postgres
async def test_a_notification_is_written_when_its_record_is_sealed_exactly_once(db: Database) -> None:
    await append_alone(db, entry("other"))
    await append_alone(db, attention("reconcile"))
    assert await notifications(db) == []  # not before the record has a seq
    assert await sealing.seal(db.engine) == 2
    assert await sealing.seal(db.engine) == 0
    [note] = await notifications(db)
    assert note.audit_seq == 2 and json.loads(note.body)["audit_seq"] == 2
    assert json.loads(note.body)["summary"] == {"missing_locally": 1}


@pytest.mark.postgres
async def test_the_trail_shows_pending_records_after_sealed_ones(db: Database) -> None:
    await append_alone(db, entry("r9", action="refund.create"))
    await sealing.seal(db.engine)
    await append_alone(db, entry("r9", action="refund.status"))
    await append_alone(db, entry("elsewhere"))
    await append_alone(db, entry("r9", action="refund.read"))
    async with db.engine.connect() as conn:
        trail = await audit.trail(conn, "r9")
        newest = await audit.latest(conn, action="refund.read", target="r9")
    assert [(record["seq"], record["action"]) for record in trail] == [(1, "refund.create"), (None, "refund.status"), (None, "refund.read")]
    assert newest is not None and json.loads(newest.body)["action"] == "refund.read"
    await sealing.seal_all(db.engine)
    async with db.engine.connect() as conn:
        sealed = await audit.trail(conn, "r9")
    assert [(record["seq"], record["action"]) for record in sealed] == [(1, "refund.create"), (2, "refund.status"), (4, "refund.read")]
    assert [{k: v for k, v in record.items() if k != "seq"} for record in sealed] == [
        {k: v for k, v in record.items() if k != "seq"} for record in trail
    ]


@pytest.mark.postgres
async def test_verify_seals_first_and_reports_records_left_unsealed_too_long(db: Database) -> None:
    await append_alone(db, entry("old", at=NOW - timedelta(seconds=61)))
    await append_alone(db, entry("new", at=NOW - timedelta(seconds=5)))
    result = await audit.verify(db.engine, now=NOW)
    assert result.ok and result.records == 2  # not a chain break
    assert result.stale_unsealed == 1
    findings = audit.unsealed_findings(result)
    assert any("1 record(s) not sealed for more than 60 s" in finding and "worker" in finding for finding in findings)
    assert await pending_count(db) == 0
    assert audit.unsealed_findings(await audit.verify(db.engine, now=NOW)) == []


@pytest.mark.postgres
async def test_export_seals_first(db: Database) -> None:
    await append_alone(db, entry("x"))
    exported = [record async for record in audit.export(db.engine)]
    assert [(record["seq"], record["target"]) for record in exported] == [(1, "x")]


async def test_sqlite_appends_straight_to_the_chain(tmp_path: Path) -> None:
    database = Database(sqlite_url(tmp_path))
    try:
        await database.migrate()
        async with database.write() as conn:
            assert await audit.append(conn, entry("s1")) == 1
            assert await audit.append(conn, attention("s2")) == 2
        assert await pending_count(database) == 0
        assert await sealing.seal(database.engine) == 0
        [note] = await notifications(database)
        assert note.audit_seq == 2
        async with database.read() as conn:
            assert [record["seq"] for record in await audit.trail(conn, "s1")] == [1]
            assert (await audit.latest(conn, action="reconcile.run", target="s2")).outcome == "attention"
        assert (await audit.verify(database.engine)).ok
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_the_migration_refuses_to_drop_unsealed_records(db: Database) -> None:
    await append_alone(db, entry("kept"))
    with pytest.raises(Exception, match="not sealed yet"):
        await migrations.downgrade(db.engine, "0010")
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT COUNT(*) FROM audit_pending"))).scalar_one() == 1


@pytest.mark.postgres
async def test_cli_verify_names_records_left_unsealed_as_a_finding_not_a_break(db: Database, pg_database: str) -> None:
    import os
    import subprocess
    import sys

    await append_alone(db, entry("forgotten", at=datetime.now(UTC) - timedelta(minutes=5)))
    env = {"REFUND_MCP_DB": pg_database, "PATH": "/usr/bin:/bin", **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "refund_mcp", "audit", "verify"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "audit chain OK: 1 record(s)" in done.stdout
    assert "1 record(s) not sealed for more than 60 s" in done.stdout and "is a worker running?" in done.stdout
    assert await pending_count(db) == 0
