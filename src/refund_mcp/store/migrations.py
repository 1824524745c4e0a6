"""Explicit, ordered schema migrations. A database is never silently re-created.

Each step runs once, in its own transaction, and is recorded in `schema_migrations`.
A database whose version is newer than this code is refused rather than touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from refund_mcp.store import tables

logger = logging.getLogger("refund_mcp.store")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    for table in (
        tables.transactions,
        tables.refunds,
        tables.idempotency_keys,
        tables.audit_log,
        tables.audit_head,
    ):
        table.create(conn)
    conn.execute(insert(tables.audit_head).values(id=1, seq=0, hash="0" * 64))


def _v2_webhook_events(conn: Connection) -> None:
    tables.webhook_events.create(conn)


def _v8_refund_metadata(conn: Connection) -> None:
    # A fresh database got the column from tables.py in step 1 already.
    if "refund_metadata" not in {column["name"] for column in inspect(conn).get_columns("refunds")}:
        conn.execute(text("ALTER TABLE refunds ADD COLUMN refund_metadata TEXT"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "transactions, refunds, idempotency keys, audit log", _v1_initial),
    Migration(2, "processed webhook events (replay protection)", _v2_webhook_events),
    Migration(8, "refund metadata given by the caller (JSON object of strings)", _v8_refund_metadata),
)
LATEST_VERSION = MIGRATIONS[-1].version
_MIGRATION_LOCK_KEY = 0x52464D43  # "RFMC"


class SchemaTooNew(RuntimeError):
    pass


def _current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_migrations"):
        tables.schema_migrations.create(conn)
        return 0
    versions = conn.execute(select(tables.schema_migrations.c.version)).scalars().all()
    return max(versions, default=0)


async def _serialize_migrators(conn: AsyncConnection) -> None:
    """Several replicas may start at once on a new database: one migrates, the others wait, then skip.

    (On SQLite the immediate transaction already serializes them.)"""
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")


async def current_version(engine: AsyncEngine) -> int:
    async with engine.begin() as conn:
        return await conn.run_sync(_current_version)


async def upgrade(engine: AsyncEngine) -> list[Migration]:
    """Apply pending migrations; returns those applied. Raises SchemaTooNew for a newer database."""
    applied: list[Migration] = []
    async with engine.begin() as conn:
        await _serialize_migrators(conn)
        version = await conn.run_sync(_current_version)
    if version > LATEST_VERSION:
        raise SchemaTooNew(f"database schema version {version} is newer than this refund-mcp ({LATEST_VERSION})")
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        async with engine.begin() as conn:
            await _serialize_migrators(conn)
            # Re-check inside the transaction: another process may have migrated meanwhile.
            if await conn.run_sync(_current_version) >= migration.version:
                continue
            await conn.run_sync(migration.apply)
            await conn.execute(
                insert(tables.schema_migrations).values(
                    version=migration.version, description=migration.description, applied_at=datetime.now(UTC)
                )
            )
        logger.info("applied schema migration %d: %s", migration.version, migration.description)
        applied.append(migration)
    return applied
