"""Reconciliation runs against the same world as the webhook tests: an App on all four fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.webhooks.world import World, open_world


@pytest.fixture
async def world(tmp_path) -> AsyncIterator[World]:
    async with open_world(tmp_path) as opened:
        yield opened
