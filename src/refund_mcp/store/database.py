"""The database: engine set-up per dialect and the one way to write.

Every write runs in `Database.write()`, which serializes writers:
- SQLite: `BEGIN IMMEDIATE` takes the database's write lock at the start (not at the first
  write), so a balance read inside the transaction cannot be invalidated by another process;
  an in-process lock keeps this process's own tasks from spinning on SQLite's busy handler.
- PostgreSQL: the audit chain takes no lock in the writer's transaction: records go to
  `audit_pending` and are sealed into the chain after commit (audit/sealing.py). Balances and daily
  caps do not depend on a global lock either (the payment's row lock and running totals, and
  store/cap_usage.py). `serialize_writers=True` still takes one transaction-level advisory lock
  (BUSINESS_WRITE_LOCK) in every write, ordering all writers across replicas.

After a PostgreSQL write commits, the callables its statements registered under
`conn.info[AFTER_COMMIT]` run (the audit sealer registers itself there when a record is appended).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from refund_mcp.store import migrations


SQLITE_SYNCHRONOUS = "FULL"
# conn.info key of a PostgreSQL write transaction: {name: async callable} to run once it has committed.
AFTER_COMMIT = "refund_mcp.after_commit"
# PostgreSQL advisory lock every write transaction holds to COMMIT: serializes balance checks and daily
# caps (not the audit chain). Goes away once those serialize on the payment's row and cap counters.
BUSINESS_WRITE_LOCK = 0x72656675  # "refu"


def _sqlite_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event, not the driver, decide how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is on disk before it returns. NORMAL (WAL's usual choice) may lose the last
        # commits on power loss, e.g. a reservation whose refund the processor already received. Measured in
        # bench/durability.py.
        cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.get_backend_name() == "postgresql":
        return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://")


class Database:
    def __init__(self, url: str, *, serialize_writers: bool = True) -> None:
        """`serialize_writers=False` (PostgreSQL): no global writer lock. Balances and daily caps stay
        race-free without it (row locks, the running totals' triggers, store/cap_usage.py) and the audit
        chain locks its head itself; tests use it to prove that."""
        self.url = url
        self.serialize_writers = serialize_writers
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        self._local_writer = asyncio.Lock() if self.dialect == "sqlite" else None

    async def migrate(self) -> list[migrations.Applied]:
        return await migrations.upgrade(self.engine)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A serialized write transaction; commits on success, rolls back on any exception."""
        if self._local_writer is not None:
            async with self._local_writer, self.engine.begin() as conn:
                yield conn
            return
        async with self.engine.begin() as conn:
            conn.info[AFTER_COMMIT] = {}
            if self.serialize_writers:
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BUSINESS_WRITE_LOCK})
            yield conn
            after_commit = conn.info.pop(AFTER_COMMIT)
        for hook in after_commit.values():
            await hook()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only view. On SQLite this is still an immediate transaction (one code path)."""
        async with self.write() as conn:
            yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
