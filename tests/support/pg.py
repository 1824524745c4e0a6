"""Fresh PostgreSQL databases for tests (one per test, random name, dropped at the end), and a migrated one reset
between the examples of a property-based run."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import make_url


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_database(base_url: str) -> str:
    """A new, empty database on the server of `base_url`; returns its URL."""
    import asyncpg

    name = f"refund_mcp_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(base_url: str, url: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def temporary_database(base_url: str) -> AsyncIterator[str]:
    url = await create_database(base_url)
    try:
        yield url
    finally:
        await drop_database(base_url, url)


class ResettableDatabase:
    """One migrated PostgreSQL database reused by many short runs: `reset()` brings it back to the state it had
    right after migrating (every table emptied, the rows the migrations seed put back, sequences rewound).

    Creating and migrating a database costs about a second; a reset costs a few tens of milliseconds, which is
    what a property-based test running hundreds of examples can afford. Rows are deleted, children before
    parents, rather than truncated: on tables this small TRUNCATE (new files for every table) is about eight
    times slower. Generic over the schema, so tables added by later revisions are covered without listing them here."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._seeded: dict[str, list[Any]] = {}
        self._sequences: dict[str, int | None] = {}

    async def capture(self) -> None:
        """Record the freshly migrated state; call once, right after migrating."""
        import asyncpg

        conn = await asyncpg.connect(_asyncpg_dsn(self.url))
        try:
            for table in await _tables_children_first(conn):
                self._seeded[table] = list(await conn.fetch(f'SELECT * FROM "{table}"'))
            for row in await conn.fetch("SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = current_schema()"):
                self._sequences[row["sequencename"]] = row["last_value"]
        finally:
            await conn.close()

    async def reset(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(_asyncpg_dsn(self.url))
        try:
            async with conn.transaction():
                for table in self._seeded:
                    await conn.execute(f'DELETE FROM "{table}"')
                for table, rows in reversed(self._seeded.items()):
                    if rows:
                        await conn.copy_records_to_table(table, records=[tuple(r) for r in rows], columns=list(rows[0].keys()))
                for sequence, last_value in self._sequences.items():
                    if last_value is None:
                        await conn.execute(f'ALTER SEQUENCE "{sequence}" RESTART')
                    else:
                        await conn.execute(f"SELECT setval('\"{sequence}\"', {int(last_value)}, true)")
        finally:
            await conn.close()


async def _tables_children_first(conn: Any) -> list[str]:
    """The schema's tables (not Alembic's), each before every table it references."""
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'alembic_version' ORDER BY tablename"
    )
    references = await conn.fetch(
        "SELECT conrelid::regclass::text AS child, confrelid::regclass::text AS parent FROM pg_constraint "
        "WHERE contype = 'f' AND connamespace = current_schema()::regnamespace"
    )
    parents: dict[str, set[str]] = {row["tablename"]: set() for row in rows}
    for ref in references:
        child, parent = ref["child"].strip('"'), ref["parent"].strip('"')
        if child != parent and child in parents and parent in parents:
            parents[child].add(parent)
    ordered: list[str] = []  # parents first, then reversed
    while parents:
        ready = sorted(table for table, needs in parents.items() if not needs - set(ordered))
        if not ready:
            raise RuntimeError(f"foreign keys form a cycle among {sorted(parents)}")
        ordered.extend(ready)
        for table in ready:
            del parents[table]
    return ordered[::-1]
