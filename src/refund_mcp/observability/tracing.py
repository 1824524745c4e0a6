"""OpenTelemetry tracing, optional: `pip install 'refund-mcp[otel]'`, on when OTEL_EXPORTER_OTLP_ENDPOINT is
set or REFUND_MCP_OTEL=1.

Spans: one per tool call, policy decision, reservation, processor call (with the processor's request
id) and webhook delivery. They nest under the MCP SDK's own server span, which continues the
`traceparent` a client puts in the request's `_meta`; when tracing is on, the SDK's spans are exported
too (the provider is installed globally).

Off (the default), `span()` hands back a shared no-op object and nothing of OpenTelemetry is imported by
refund-mcp. Span attributes are ids, names and outcome classes only: never amounts' owners, notes,
customer references or anything secret.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

logger = logging.getLogger("refund_mcp.tracing")

P = ParamSpec("P")
T = TypeVar("T")

_tracer: Any = None  # an opentelemetry Tracer once enabled


class _NoSpan:
    """What `span()` yields while tracing is off: accepts and drops everything."""

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None


NO_SPAN = _NoSpan()


def wanted(env: Mapping[str, str]) -> bool:
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")) or env.get("REFUND_MCP_OTEL", "").strip().lower() in {"1", "true", "yes"}


def enabled() -> bool:
    return _tracer is not None


def configure_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Switch tracing on when the environment asks for it; True when on. Exports with OTLP/HTTP."""
    env = os.environ if env is None else env
    if _tracer is not None or not wanted(env):
        return _tracer is not None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning("tracing was asked for but OpenTelemetry is not installed: pip install 'refund-mcp[otel]'")
        return False
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES still apply; this is only the default name.
    provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "refund-mcp")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    use_provider(provider)
    logger.info("OpenTelemetry tracing on (OTLP/HTTP to %s)", env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "the default endpoint"))
    return True


def use_provider(provider: Any) -> None:
    """Trace into `provider` (an opentelemetry TracerProvider); None switches tracing off."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("refund_mcp")


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A span named `name` under the current one, or NO_SPAN while tracing is off. Errors mark it failed."""
    if _tracer is None:
        yield NO_SPAN
        return
    with _tracer.start_as_current_span(name, attributes=dict(attributes or {})) as current:
        yield current


def traced(name: str, describe: Callable[[Any], Mapping[str, Any]] | None = None) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorate a function with a span; `describe(result)` adds attributes from what it returned."""

    def wrap(function: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(function)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            if _tracer is None:
                return function(*args, **kwargs)
            with span(name) as current:
                result = function(*args, **kwargs)
                if describe is not None:
                    current.set_attributes(describe(result))
                return result

        return inner

    return wrap


def traced_async(
    name: str, describe: Callable[[Any], Mapping[str, Any]] | None = None
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    def wrap(function: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(function)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            if _tracer is None:
                return await function(*args, **kwargs)
            with span(name) as current:
                result = await function(*args, **kwargs)
                if describe is not None:
                    current.set_attributes(describe(result))
                return result

        return inner

    return wrap


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, for log lines; None when tracing is off or outside a span."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
