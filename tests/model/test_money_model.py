"""The model-based hunt for money errors (tests/model/machine.py), on SQLite and on PostgreSQL: a bounded run of
each here, long ones under -m slow. The PostgreSQL runs need REFUND_MCP_TEST_PG_URL; one database is created and
migrated per module (tests/model/conftest.py) and reset before every example."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.model.machine import MoneyMachine, PostgresMoneyMachine

_COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


class TestMoneyModel(MoneyMachine.TestCase):
    settings = settings(max_examples=30, stateful_step_count=30, derandomize=True, **_COMMON)


@pytest.mark.slow
class TestMoneyModelLong(MoneyMachine.TestCase):
    settings = settings(max_examples=500, stateful_step_count=40, **_COMMON)


@pytest.mark.postgres
@pytest.mark.usefixtures("model_pg_database")
class TestMoneyModelPostgres(PostgresMoneyMachine.TestCase):
    settings = settings(max_examples=10, stateful_step_count=25, derandomize=True, **_COMMON)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("model_pg_database")
class TestMoneyModelPostgresLong(PostgresMoneyMachine.TestCase):
    settings = settings(max_examples=100, stateful_step_count=40, **_COMMON)
