"""Where the model's two replicas keep their books: a fresh SQLite file per example, or one migrated
PostgreSQL database brought back to its just-migrated state before each example."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import ClassVar

from refund_mcp.store.database import Database
from tests.support.pg import ResettableDatabase


class SqliteBooks:
    def __init__(self) -> None:
        # tmpfs where there is one: durable commits (fsync) are the product's cost, not the model's.
        self.dir = tempfile.mkdtemp(prefix="money-model-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.url = f"sqlite+aiosqlite:///{self.dir}/model.sqlite3"

    async def prepare(self, db: Database) -> None:
        await db.migrate()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresBooks:
    """The database is created and migrated once per test run (tests/model/test_money_model.py sets `shared`)."""

    shared: ClassVar[ResettableDatabase | None] = None

    def __init__(self) -> None:
        if self.shared is None:
            raise RuntimeError("no PostgreSQL database for the money model: the test's fixture sets PostgresBooks.shared")
        self.database = self.shared
        self.url = self.database.url

    async def prepare(self, db: Database) -> None:
        await self.database.reset()

    def close(self) -> None:
        pass
