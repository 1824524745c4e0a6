"""Every processor call, metered (and traced when tracing is on) at the one place the service calls adapters.

`metered(registry)` wraps each configured adapter in a `MeteredProcessor` that counts the call by
processor, operation and outcome class and times it; adapters themselves stay untouched.

Outcome classes say what the call meant for money (domain.errors.Delivery):
ok, declined (the processor answered and refused, "not found" included), not_sent (it never acted),
unknown (it may have acted: keep the reservation) and rate_limited.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from refund_mcp.domain.errors import Delivery, NotSupported, ProcessorCallError, RateLimited, RefundError
from refund_mcp.domain.models import ProcessorRefund, ProcessorRefundRequest, TransactionInfo
from refund_mcp.metrics import PROCESSOR_CALLS, PROCESSOR_LATENCY, PROCESSOR_NAMES, closed_label
from refund_mcp.observability import tracing
from refund_mcp.processors.base import Processor
from refund_mcp.processors.registry import ProcessorRegistry

T = TypeVar("T")

_DELIVERY_OUTCOMES = {Delivery.NOT_SENT: "not_sent", Delivery.OUTCOME_UNKNOWN: "unknown", Delivery.DECLINED: "declined"}


def outcome_class(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, ProcessorCallError):
        return _DELIVERY_OUTCOMES[exc.delivery]
    if isinstance(exc, NotSupported):
        return "not_sent"  # refused by the adapter before any request
    if isinstance(exc, RefundError):
        # Raised by the adapter from an answer (not found, not supported, already refunded): nothing was done.
        return "declined"
    return "unknown"


class MeteredProcessor(Processor):
    def __init__(self, inner: Processor, kind: str | None = None) -> None:
        """`kind` is the processor behind the account (stripe for `stripe@eu`): the metrics' label."""
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self._label = closed_label(kind or inner.name, PROCESSOR_NAMES)

    def __getattr__(self, attribute: str) -> Any:
        # Adapter-specific helpers (e.g. PayPal's webhook verification) are reached through the wrapper.
        return getattr(self.inner, attribute)

    @contextmanager
    def _observe(self, operation: str, **attributes: Any) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        with tracing.span(f"processor.{operation}", {"refund_mcp.processor": self.name, **attributes}) as span:
            try:
                yield span
            except BaseException as exc:
                error = exc
                if isinstance(exc, ProcessorCallError) and exc.request_id:
                    span.set_attribute("refund_mcp.processor_request_id", exc.request_id)
                raise
            finally:
                outcome = outcome_class(error)
                span.set_attribute("refund_mcp.outcome", outcome)
                PROCESSOR_CALLS.labels(self._label, operation, outcome).inc()
                PROCESSOR_LATENCY.labels(self._label, operation).observe(time.perf_counter() - started)

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]], **attributes: Any) -> T:
        with self._observe(operation, **attributes) as span:
            result = await call()
            request_id = getattr(result, "request_id", None)
            if request_id:
                span.set_attribute("refund_mcp.processor_request_id", request_id)
            return result

    async def lookup_transaction(self, transaction_id: str) -> TransactionInfo:
        return await self._call("lookup_transaction", lambda: self.inner.lookup_transaction(transaction_id))

    async def create_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund:
        return await self._call(
            "create_refund", lambda: self.inner.create_refund(request), **{"refund_mcp.refund_id": request.refund_id}
        )

    async def get_refund(self, processor_refund_id: str) -> ProcessorRefund:
        return await self._call("get_refund", lambda: self.inner.get_refund(processor_refund_id))

    async def find_refund(self, request: ProcessorRefundRequest) -> ProcessorRefund | None:
        return await self._call("find_refund", lambda: self.inner.find_refund(request), **{"refund_mcp.refund_id": request.refund_id})

    async def cancel_refund(self, processor_refund_id: str) -> ProcessorRefund:
        return await self._call("cancel_refund", lambda: self.inner.cancel_refund(processor_refund_id))

    def check_amount(self, amount_minor: int, currency: str) -> None:
        # No call is made: nothing to meter, but the base class's no-op must not hide the adapter's check.
        self.inner.check_amount(amount_minor, currency)

    async def list_refunds(self, since: datetime) -> AsyncIterator[ProcessorRefund]:
        # One observation for the whole listing (every page), as reconciliation sees it.
        with self._observe("list_refunds"):
            async for refund in self.inner.list_refunds(since):
                yield refund

    async def aclose(self) -> None:
        await self.inner.aclose()


def metered(registry: ProcessorRegistry) -> ProcessorRegistry:
    """The same accounts, each adapter wrapped; labelled by processor, not account, to keep series few."""
    names = registry.names()
    kinds = {name: registry.kind(name) for name in names}
    return ProcessorRegistry({name: MeteredProcessor(registry.get(name), kinds[name]) for name in names}, kinds)  # type: ignore[arg-type]
