"""The metered processor wrapper: every adapter operation goes through it, outcomes are classed for money."""

from __future__ import annotations

import inspect

import pytest

from refund_mcp.domain.errors import (
    Delivery,
    NotSupported,
    ProcessorError,
    ProcessorUnavailable,
    RateLimited,
    TransactionNotFound,
)
from refund_mcp.observability.processors import MeteredProcessor, outcome_class
from refund_mcp.processors.base import Processor


def test_every_processor_operation_is_wrapped() -> None:
    """A new operation on the interface must be metered too (else the base default would answer for it)."""
    operations = {name for name, _ in inspect.getmembers(Processor, inspect.isfunction) if not name.startswith("_")}
    unwrapped = {name for name in operations if getattr(MeteredProcessor, name) is getattr(Processor, name)}
    assert unwrapped == set()


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (RateLimited("slow down", processor="stripe"), "rate_limited"),
        (ProcessorUnavailable("timeout", processor="stripe"), "unknown"),
        (ProcessorUnavailable("refused", processor="stripe", delivery=Delivery.NOT_SENT), "not_sent"),
        (ProcessorError("card expired", processor="stripe"), "declined"),
        (TransactionNotFound("no such payment"), "declined"),
        (NotSupported("no status API"), "not_sent"),
        (RuntimeError("bug"), "unknown"),
    ],
)
def test_outcome_classes(error: BaseException | None, outcome: str) -> None:
    assert outcome_class(error) == outcome


@pytest.mark.anyio
async def test_accounts_keep_their_processor_and_are_counted_as_it() -> None:
    from refund_mcp.metrics import REGISTRY
    from refund_mcp.observability.processors import metered
    from refund_mcp.processors.registry import ProcessorRegistry
    from refund_mcp.processors.sandbox import SandboxProcessor

    registry = metered(ProcessorRegistry({"stripe@eu": SandboxProcessor()}, {"stripe@eu": "stripe"}))
    assert registry.names() == ["stripe@eu"] and registry.kind("stripe@eu") == "stripe"
    labels = {"processor": "stripe", "operation": "lookup_transaction", "outcome": "ok"}
    before = REGISTRY.get_sample_value("refund_mcp_processor_calls_total", labels) or 0
    await registry.get("stripe@eu").lookup_transaction("demo_usd_order")
    assert REGISTRY.get_sample_value("refund_mcp_processor_calls_total", labels) == before + 1
