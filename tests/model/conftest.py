"""The PostgreSQL books of the money model: one database per test module, migrated once, reset per example."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from refund_mcp.store.database import Database
from tests.conftest import pg_url
from tests.model.storage import PostgresBooks
from tests.support.pg import ResettableDatabase, create_database, drop_database


async def _migrated(base: str) -> ResettableDatabase:
    url = await create_database(base)
    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.dispose()
    database = ResettableDatabase(url)
    await database.capture()
    return database


@pytest.fixture(scope="module")
def model_pg_database() -> Iterator[None]:
    base = pg_url()
    if base is None:
        pytest.skip("REFUND_MCP_TEST_PG_URL is not set: the money model on PostgreSQL needs a reachable server")
    database = asyncio.run(_migrated(base))
    PostgresBooks.shared = database
    try:
        yield
    finally:
        PostgresBooks.shared = None
        asyncio.run(drop_database(base, database.url))
