"""`Database.read()` on SQLite: it waits for no writer, in this process or another, and cannot write."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import OperationalError

from refund_mcp.store import tables
from refund_mcp.store.database import Database
from tests.conftest import sqlite_url

pytestmark = pytest.mark.anyio

# Another process takes SQLite's write lock, changes the head and holds the lock until told to let go.
OTHER_WRITER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE audit_head SET seq = 99 WHERE id = 1")
    print("holding", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    """
)


@pytest.fixture
async def db(tmp_path: Path):
    database = Database(sqlite_url(tmp_path))
    await database.migrate()
    try:
        yield database
    finally:
        await database.dispose()


async def head_seq(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(tables.audit_head.c.seq))).scalar_one())


async def test_a_read_proceeds_while_this_process_writes(db):
    with anyio.fail_after(30):  # a read that waited for the writer lock would wait for itself here
        async with db.write() as conn:
            await conn.execute(update(tables.audit_head).values(seq=7))
            assert await head_seq(db) == 0  # its own snapshot: the uncommitted write is not seen
        assert await head_seq(db) == 7


async def test_a_read_proceeds_while_another_process_writes(db, tmp_path):
    path = str(tmp_path / "refunds.sqlite3")
    other = subprocess.Popen([sys.executable, "-c", OTHER_WRITER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "holding"
        with anyio.fail_after(30):
            assert await head_seq(db) == 0
    finally:
        assert other.stdin is not None
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(timeout=60) == 0
    assert await head_seq(db) == 99


async def test_a_write_inside_a_read_is_refused_and_the_connection_writes_again_afterwards(db):
    with pytest.raises(OperationalError, match="readonly"):
        async with db.read() as conn:
            await conn.execute(update(tables.audit_head).values(seq=5))
    async with db.write() as conn:  # the same pooled connection, no longer query-only
        assert (await conn.execute(text("PRAGMA query_only"))).scalar_one() == 0
        await conn.execute(update(tables.audit_head).values(seq=6))
    assert await head_seq(db) == 6


async def test_reads_run_side_by_side_with_each_other_and_a_writer(db):
    """More reads at once than there are idle connections, beside an open write: the pool serves them all."""
    with anyio.fail_after(60):
        async with db.write() as conn:
            await conn.execute(update(tables.audit_head).values(seq=3))
            entered = anyio.Event()
            inside = 0
            counts: list[int] = []

            async def one() -> None:
                nonlocal inside
                async with db.read() as read:
                    inside += 1
                    if inside == 12:
                        entered.set()
                    await entered.wait()  # all twelve hold a read transaction at once
                    counts.append(int((await read.execute(select(func.count()).select_from(tables.audit_log))).scalar_one()))

            async with anyio.create_task_group() as tg:
                for _ in range(12):
                    tg.start_soon(one)
    assert counts == [0] * 12
