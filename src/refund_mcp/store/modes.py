"""Which kind of transaction a connection is in, and the row locks that follow from it.

`Database.write()` and `Database.read()` mark their connections with an execution option. Queries that
read one existing row a write transaction is about to change use `locked_when_writing` on it: on
PostgreSQL (READ COMMITTED, several processes) that row is then read `FOR UPDATE`, so two writers of the
same refund or payment take turns instead of both acting on what they read before the other committed.
On SQLite every write transaction already holds the database's write lock (`BEGIN IMMEDIATE`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncConnection

MODE = "refund_mcp_transaction"
READ = "read"
WRITE = "write"

S = TypeVar("S", bound=Select[Any])


def mode_of(conn: AsyncConnection) -> str | None:
    return conn.sync_connection.get_execution_options().get(MODE) if conn.sync_connection is not None else None


def is_writing(conn: AsyncConnection) -> bool:
    return mode_of(conn) == WRITE


def locked_when_writing(conn: AsyncConnection, query: S, *, lock: bool | None = None) -> S:
    """`query` with `FOR UPDATE` on PostgreSQL inside `Database.write()`.

    `lock=False` leaves a read that only looks (and must not wait, or must not take a lock out of order)
    unlocked; `lock=True` asks for the lock whatever the transaction (never inside `read()`, which refuses it)."""
    return query.with_for_update() if wants_lock(conn, lock) else query


def wants_lock(conn: AsyncConnection, lock: bool | None = None) -> bool:
    """Whether `locked_when_writing` would lock: for a query built once in both forms (plain and FOR UPDATE)."""
    wanted = is_writing(conn) if lock is None else lock
    return wanted and conn.dialect.name == "postgresql"
