"""The model-based hunt for money errors (tests/model/machine.py): a bounded run here, a long one under -m slow."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.model.machine import MoneyMachine

_COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


class TestMoneyModel(MoneyMachine.TestCase):
    settings = settings(max_examples=30, stateful_step_count=30, derandomize=True, **_COMMON)


@pytest.mark.slow
class TestMoneyModelLong(MoneyMachine.TestCase):
    settings = settings(max_examples=500, stateful_step_count=40, **_COMMON)
