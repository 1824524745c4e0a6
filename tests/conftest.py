"""Shared fixtures: an App on a fresh SQLite file (or a fresh PostgreSQL database) with a chosen policy."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from refund_mcp.app import App
from refund_mcp.settings import Settings

POLICY_DIR = Path(__file__).resolve().parents[1] / "src" / "refund_mcp" / "policies"
TEST_POLICY = Path(__file__).resolve().parent / "support" / "test_policy.yaml"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'refunds.sqlite3'}"


@asynccontextmanager
async def make_app(db_url: str, *, policy: Path = TEST_POLICY, env: dict[str, str] | None = None, http: Any = None, **overrides: Any) -> AsyncIterator[App]:
    settings = Settings.from_env({"REFUND_MCP_SANDBOX": "1", **(env or {})})
    settings = replace(settings, db_url=db_url, policy_path=policy, actor=overrides.pop("actor", "agent-1"), **overrides)
    app = await App.create(settings, http=http)
    try:
        yield app
    finally:
        await app.aclose()


@pytest.fixture
def app_factory(tmp_path: Path) -> Callable[..., Any]:
    def factory(**kwargs: Any) -> Any:
        return make_app(kwargs.pop("db_url", sqlite_url(tmp_path)), **kwargs)

    return factory


def pg_url() -> str | None:
    return os.environ.get("REFUND_MCP_TEST_PG_URL") or None


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """A brand-new PostgreSQL database for one test, dropped afterwards, so runs never see each other's rows."""
    base = pg_url()
    if base is None:
        pytest.skip("REFUND_MCP_TEST_PG_URL is not set: PostgreSQL tests need a reachable server")
    from tests.support.pg import temporary_database

    async with temporary_database(base) as url:
        yield url
