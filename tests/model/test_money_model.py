"""The model-based hunt for money errors (tests/model/machine.py), on SQLite and on PostgreSQL: a bounded run of
each here, long ones under -m slow. The PostgreSQL runs need REFUND_MCP_TEST_PG_URL; one database is created and
migrated per module and reset before every example."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from refund_mcp.store.database import Database
from tests.conftest import pg_url
from tests.model.machine import MoneyMachine, PostgresMoneyMachine
from tests.model.storage import PostgresBooks
from tests.support.pg import ResettableDatabase, create_database, drop_database

_COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


class TestMoneyModel(MoneyMachine.TestCase):
    settings = settings(max_examples=30, stateful_step_count=30, derandomize=True, **_COMMON)


@pytest.mark.slow
class TestMoneyModelLong(MoneyMachine.TestCase):
    settings = settings(max_examples=500, stateful_step_count=40, **_COMMON)


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


@pytest.mark.postgres
@pytest.mark.usefixtures("model_pg_database")
class TestMoneyModelPostgres(PostgresMoneyMachine.TestCase):
    settings = settings(max_examples=10, stateful_step_count=25, derandomize=True, **_COMMON)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("model_pg_database")
class TestMoneyModelPostgresLong(PostgresMoneyMachine.TestCase):
    settings = settings(max_examples=150, stateful_step_count=40, **_COMMON)
