"""Fixtures shared by the store's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import pg_url, sqlite_url


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An empty database on each dialect (PostgreSQL: a fresh one, dropped afterwards)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    base = pg_url()
    if base is None:
        pytest.skip("REFUND_MCP_TEST_PG_URL is not set: PostgreSQL tests need a reachable server")
    from tests.support.pg import temporary_database

    async with temporary_database(base) as url:
        yield url
