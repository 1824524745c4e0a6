"""INSERT ... ON CONFLICT for the connection's dialect (SQLite >= 3.24 and PostgreSQL share the syntax)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


DIALECTS = ("sqlite", "postgresql")


def insert(conn: AsyncConnection, table: Table) -> Any:
    """An insert() that has on_conflict_do_update (postgresql.Insert or sqlite.Insert)."""
    return insert_for(conn.dialect.name, table)


def insert_for(dialect: str, table: Table) -> Any:
    """The same for a dialect named ahead of any connection (statements built once, at import)."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
