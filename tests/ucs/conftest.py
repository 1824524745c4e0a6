from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from refund_mcp.processors.ucs.adapter import UcsProcessor
from tests.fakes.ucs import CONNECTOR, CONNECTOR_CONFIG, WEBHOOK_SECRET, RunningUcs, UcsFake


@pytest.fixture
def ucs() -> Iterator[RunningUcs]:
    running = RunningUcs(UcsFake())
    try:
        yield running
    finally:
        running.stop()
        assert running.fake.violations == [], running.fake.violations


def processor_for(url: str, **overrides) -> UcsProcessor:
    args = {
        "account": "checkout",
        "url": url,
        "connector": CONNECTOR,
        "connector_config": SecretStr(CONNECTOR_CONFIG),
        "webhook_secret": SecretStr(WEBHOOK_SECRET),
        "deadline_seconds": 2.0,
        "connect_seconds": 1.0,
        **overrides,
    }
    return UcsProcessor(**args)
