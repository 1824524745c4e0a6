"""Schema migrations with Alembic. A database is never silently re-created.

The revisions live in `store/alembic/versions/`; `store/alembic/README` says how to add one
(`refund-mcp db revision -m "..."`). Everything here runs on one connection inside one transaction
that first takes the migration lock, so several replicas starting at once on a new database
serialize: one migrates, the others wait and then find nothing to do. A database whose revision this
code does not know (written by a newer refund-mcp) is refused rather than touched.

Databases made by refund-mcp 0.1.0 carry the hand-written `schema_migrations` table instead of
Alembic's `alembic_version`: they are stamped at the revision that matches their version, then
upgraded like any other, keeping every row.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger("refund_mcp.store")
# Alembic narrates every plugin and step at INFO; refund-mcp logs each applied revision itself.
logging.getLogger("alembic").setLevel(logging.WARNING)

SCRIPT_LOCATION = Path(__file__).resolve().parent / "alembic"
_MIGRATION_LOCK_KEY = 0x52464D43  # "RFMC"

# refund-mcp 0.1.0's hand-written versions and the revision that leaves the same schema.
LEGACY_VERSION_TABLE = "schema_migrations"
LEGACY_REVISIONS: dict[int, str] = {2: "0001", 8: "0002"}
# Written into the legacy table once Alembic owns the database, so a 0.1.0 binary refuses it
# ("schema version 1000 is newer") instead of running on a schema it does not know.
LEGACY_HANDOVER_VERSION = 1000
# Tables that belong to the migration machinery, not to tables.py.
BOOKKEEPING_TABLES = frozenset({"alembic_version", LEGACY_VERSION_TABLE})


class SchemaTooNew(RuntimeError):
    pass


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Applied:
    revision: str
    description: str


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate compares only the application's tables."""
    return not (type_ == "table" and name in BOOKKEEPING_TABLES)


def _config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str | None:
    return _scripts().get_current_head()


def _db_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _adopt_legacy(conn: Connection) -> None:
    """A 0.1.0 database: stamp the revision matching its hand-written version (no schema change)."""
    from alembic import command

    version = conn.execute(text(f"SELECT MAX(version) FROM {LEGACY_VERSION_TABLE}")).scalar() or 0
    if version >= LEGACY_HANDOVER_VERSION:
        return  # Alembic owns it already (alembic_version was lost?): let the caller report it
    if version == 1:
        # 0.1.0 pre-releases stopped at version 1; version 2 only added this table.
        conn.execute(
            text("CREATE TABLE webhook_events (processor VARCHAR(20) NOT NULL, event_id VARCHAR(200) NOT NULL, "
                 "received_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (processor, event_id))")
        )
        version = 2
    revision = LEGACY_REVISIONS.get(version)
    if revision is None:
        raise MigrationError(f"database schema version {version} (hand-written migrations) is not one this refund-mcp can adopt")
    command.stamp(_config(conn), revision)
    conn.execute(
        text(f"INSERT INTO {LEGACY_VERSION_TABLE} (version, description, applied_at) VALUES (:v, :d, :at)"),
        {"v": LEGACY_HANDOVER_VERSION, "d": "schema managed by Alembic (alembic_version)", "at": datetime.now(UTC)},
    )
    logger.info("adopted a refund-mcp 0.1.0 database at schema version %d as revision %s", version, revision)


def _check_known(conn: Connection) -> str | None:
    current = _db_revision(conn)
    known = {script.revision for script in _scripts().walk_revisions()}
    if current is not None and current not in known:
        raise SchemaTooNew(f"database schema revision {current} is newer than this refund-mcp (head {head_revision()}): upgrade refund-mcp")
    return current


def _revisions_between(lower: str | None, upper: str) -> list[Applied]:
    scripts = _scripts()
    steps = [script for script in scripts.iterate_revisions(upper, lower or "base")]
    return [Applied(script.revision, script.doc or "") for script in reversed(steps)]


_REVISION_LINE = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*['\"]?([^'\"\s]+)['\"]?\s*$", re.MULTILINE)


def head_from_files() -> str | None:
    """The head revision read from versions/*.py without importing Alembic (about 11 MiB and 50 ms a
    process start would pay for nothing when the database is current). None if the files do not parse
    as the revision template writes them; tests check it agrees with Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (SCRIPT_LOCATION / "versions").glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text(encoding="utf-8")))
        if "revision" not in found:
            return None
        revisions.add(found["revision"])
        if found.get("down_revision") not in (None, "None"):
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _already_current(conn: Connection, target: str) -> bool:
    if target != "head" or not inspect(conn).has_table("alembic_version"):
        return False
    head = head_from_files()
    return head is not None and conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]


def _upgrade(conn: Connection, target: str) -> list[Applied]:
    from alembic import command

    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables and LEGACY_VERSION_TABLE in tables:
        _adopt_legacy(conn)
    current = _check_known(conn)
    if current == target or (target == "head" and current == head_revision()):
        return []
    command.upgrade(_config(conn), target)
    applied = _revisions_between(current, _db_revision(conn) or "base")
    for step in applied:
        logger.info("applied schema revision %s: %s", step.revision, step.description)
    return applied


def _downgrade(conn: Connection, target: str) -> None:
    from alembic import command

    _check_known(conn)
    command.downgrade(_config(conn), target)


async def _serialize_migrators(conn: AsyncConnection) -> None:
    """Several replicas may start at once on a new database: one migrates, the others wait, then skip.

    (On SQLite the immediate transaction already serializes them.)"""
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")


async def upgrade(engine: AsyncEngine, target: str = "head") -> list[Applied]:
    """Apply pending revisions up to `target`; returns those applied. Raises SchemaTooNew for a newer database."""
    async with engine.begin() as conn:
        await _serialize_migrators(conn)
        if await conn.run_sync(_already_current, target):
            return []
        return await conn.run_sync(_upgrade, target)


async def downgrade(engine: AsyncEngine, target: str) -> None:
    async with engine.begin() as conn:
        await _serialize_migrators(conn)
        await conn.run_sync(_downgrade, target)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_db_revision)


def _legacy_version(conn: Connection) -> int | None:
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables or LEGACY_VERSION_TABLE not in tables:
        return None
    return int(conn.execute(text(f"SELECT MAX(version) FROM {LEGACY_VERSION_TABLE}")).scalar() or 0)


async def legacy_version(engine: AsyncEngine) -> int | None:
    """The hand-written schema version of a database Alembic has not adopted yet, else None."""
    async with engine.connect() as conn:
        return await conn.run_sync(_legacy_version)


def write_revision(message: str, scratch_url: str) -> Path:
    """Autogenerate a revision from the difference between the head and tables.py (developer command)."""
    import asyncio

    from alembic import command

    from refund_mcp.store.database import create_engine

    async def generate() -> Any:
        engine = create_engine(scratch_url)
        try:
            await upgrade(engine)
            async with engine.begin() as conn:
                return await conn.run_sync(
                    lambda sync: command.revision(
                        _config(sync), message=message, autogenerate=True, rev_id=f"{_next_number():04d}"
                    )
                )
        finally:
            await engine.dispose()

    script = asyncio.run(generate())
    return Path(script.path)


def _next_number() -> int:
    numbers = [int(rev.revision) for rev in _scripts().walk_revisions() if rev.revision.isdigit()]
    return max(numbers, default=0) + 1
