"""The database: engine set-up per dialect, the one way to write and the one way to read.

Every write runs in `Database.write()`:
- SQLite: `BEGIN IMMEDIATE` takes the database's write lock at the start (not at the first
  write), so a balance read inside the transaction cannot be invalidated by another process;
  an in-process lock keeps this process's own tasks from spinning on SQLite's busy handler.
- PostgreSQL: no lock every writer shares. Each write locks the rows it is about to change
  (store/modes.py: the refund, the payment, in that order) and so waits only for writers of those
  same rows; balances are the payment row's running totals, daily caps are counted by conditional
  upserts (store/cap_usage.py), and the audit chain takes no lock in the writer's transaction:
  records go to `audit_pending` and are sealed into the chain after commit (audit/sealing.py).
  Writes are short (no network call is ever made inside one).

After a PostgreSQL write commits, the callables its statements registered under
`conn.info[AFTER_COMMIT]` run (the audit sealer registers itself there when a record is appended).

Reads run in `Database.read()`, which never waits for a writer and cannot write:
- SQLite: a deferred `BEGIN` (WAL gives it a snapshot at its first read) with `PRAGMA query_only`
  on, without the in-process writer lock.
- PostgreSQL: `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`: one snapshot for the whole read, like
  SQLite's, and a read-only transaction never fails to serialize or waits on a row lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from refund_mcp.store import migrations, modes


SQLITE_SYNCHRONOUS = "FULL"
# conn.info key of a PostgreSQL write transaction: {name: async callable} to run once it has committed.
AFTER_COMMIT = "refund_mcp.after_commit"
# One connection writes at a time (the in-process writer lock); the others serve reads, which now run
# beside it. Each connection gets its own PRAGMAs when it is opened (the "connect" listener).
SQLITE_POOL_SIZE = 8
SQLITE_POOL_OVERFLOW = 16


def _sqlite_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    in_memory = not parsed.database or parsed.database == ":memory:"
    if not in_memory:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # In memory, SQLAlchemy keeps the one connection the database lives in (a static pool): no sizes there.
    pool_args = {} if in_memory else {"pool_size": SQLITE_POOL_SIZE, "max_overflow": SQLITE_POOL_OVERFLOW}
    engine = create_async_engine(url, connect_args={"timeout": 60}, **pool_args)

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
        # Chosen per transaction: Database.read() marks its connections; everything else (writes,
        # migrations, tools on the bare engine) takes the write lock up front as before.
        reading = conn.get_execution_options().get(modes.MODE) == modes.READ
        # query_only is a setting of the connection, not of the transaction: switched only when it changes
        # (conn.info lives as long as the driver's connection), so a pooled connection never carries a
        # read's refusal into a write.
        if conn.info.get("query_only", False) != reading:
            conn.exec_driver_sql(f"PRAGMA query_only={int(reading)}")
            conn.info["query_only"] = reading
        conn.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if parsed.get_backend_name() == "postgresql":
        return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite+aiosqlite:// or postgresql+asyncpg://")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        self.dialect = self.engine.dialect.name
        self._local_writer = asyncio.Lock() if self.dialect == "sqlite" else None
        # Views of the one engine (one pool) whose connections carry the kind of transaction they are for.
        self._writer = self.engine.execution_options(**{modes.MODE: modes.WRITE})
        reader_options: dict[str, object] = {modes.MODE: modes.READ}
        if self.dialect == "postgresql":
            # asyncpg opens the transaction as BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY: no extra
            # round trip; both settings are reset when the connection goes back to the pool.
            reader_options |= {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        self._reader = self.engine.execution_options(**reader_options)
        # An in-memory SQLite database is one shared connection: a read cannot run beside a write there.
        self._reads_share_writer = self.dialect == "sqlite" and isinstance(self.engine.pool, StaticPool)

    async def migrate(self) -> list[migrations.Applied]:
        return await migrations.upgrade(self.engine)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; commits on success, rolls back on any exception.

        Rows read in it before they are changed are locked by the queries that read them (store/modes.py)."""
        if self._local_writer is not None:
            async with self._local_writer, self._writer.begin() as conn:
                yield conn
            return
        async with self._writer.begin() as conn:
            conn.info[AFTER_COMMIT] = {}
            yield conn
            after_commit = conn.info.pop(AFTER_COMMIT)
        for hook in after_commit.values():
            await hook()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction on one snapshot; it waits for no writer, and any write in it fails."""
        if self._reads_share_writer:
            assert self._local_writer is not None
            async with self._local_writer, self._reader.begin() as conn:
                yield conn
            return
        async with self._reader.begin() as conn:
            yield conn

    async def dispose(self) -> None:
        from refund_mcp.audit import sealing  # the audit package builds on this module

        await sealing.settle(self.engine)
        await self.engine.dispose()
