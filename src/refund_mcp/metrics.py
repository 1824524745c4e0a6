"""Prometheus metrics for one refund-mcp process (each replica exposes its own at /metrics).

Every label value comes from a closed set (tool names, outcome codes, processor names, operations,
verdicts, ISO currencies), so nothing a caller sends can create a new series; anything else is counted
as "unknown". The metrics library escapes label values itself.

Counters and histograms are updated where things happen (the MCP server's `call_tool`, the metered
processor wrapper, the webhook routes). Gauges that describe the database (refunds by status, amounts
reserved, the queue, approvals, the last reconciliation) are read at scrape time by
`refund_mcp.observability.state`, one cached query at a time.
"""

from __future__ import annotations

from collections import Counter as _Tally

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

TOOL_NAMES = frozenset(
    {"lookup_transaction", "create_refund", "get_refund_status", "cancel_refund", "list_refunds", "check_refund_policy"}
)
# Processors, not accounts: `stripe@eu` is counted as stripe, a UCS connector as ucs.
PROCESSOR_NAMES = frozenset({"stripe", "paypal", "adyen", "square", "sandbox", "ucs"})
PROCESSOR_OPERATIONS = frozenset(
    {"lookup_transaction", "create_refund", "get_refund", "find_refund", "cancel_refund", "list_refunds"}
)
# What a processor call meant for money (domain.errors.Delivery), plus success and rate limiting.
PROCESSOR_OUTCOMES = frozenset({"ok", "not_sent", "unknown", "declined", "rate_limited"})


def _outcome_codes() -> frozenset[str]:
    """Every [code] a tool can answer with, plus the server's own outcomes."""
    from refund_mcp.domain import errors

    codes = {"ok", "error", "internal_error", "validation_error", "forbidden", "unauthorized", "unknown_tool"}
    pending = [errors.RefundError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    # Business codes a processor refusal may carry through `code=` (see domain/errors.py).
    codes |= {"already_refunded", "not_refundable", "amount_exceeds_refundable", "currency_mismatch", "transaction_not_found"}
    return frozenset(codes)


TOOL_OUTCOMES = _outcome_codes()

TOOL_CALLS = Counter(
    "refund_mcp_tool_calls",
    "Tool calls by tool and outcome code (ok, or the [code] of the error).",
    ["tool", "outcome"],
    registry=REGISTRY,
)
TOOL_LATENCY = Histogram(
    "refund_mcp_tool_call_duration_seconds",
    "Tool call latency by tool, from the MCP request to the answer (processor calls and confirmations included).",
    ["tool"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PROCESSOR_CALLS = Counter(
    "refund_mcp_processor_calls",
    "Processor API calls by processor, operation and outcome (ok, not_sent, unknown, declined, rate_limited).",
    ["processor", "operation", "outcome"],
    registry=REGISTRY,
)
PROCESSOR_LATENCY = Histogram(
    "refund_mcp_processor_call_duration_seconds",
    "Processor API call latency by processor and operation (retries inside the adapter included).",
    ["processor", "operation"],
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_DELIVERIES = Counter(
    "refund_mcp_webhook_deliveries",
    "Webhook deliveries by processor and verdict (accepted, replay, bad_signature, malformed, unconfigured, rate_limited, too_large, error).",
    ["processor", "verdict"],
    registry=REGISTRY,
)


def closed_label(value: str, allowed: frozenset[str] | set[str]) -> str:
    """`value` when it is one of `allowed`, else "unknown": labels never carry caller-chosen text."""
    return value if value in allowed else "unknown"


def count_tool_call(tool: str, outcome: str) -> None:
    TOOL_CALLS.labels(tool=closed_label(tool, TOOL_NAMES), outcome=closed_label(outcome, TOOL_OUTCOMES)).inc()


class ToolCallCounts(_Tally[tuple[str, str]]):
    """This server's tool-call tally, `calls[(tool, outcome)] += 1`, mirrored into TOOL_CALLS.

    The tally keeps the exact names (for tests and in-process reads); the Prometheus counter gets
    closed labels only, so 2,000 junk tool names are one `tool="unknown"` series."""

    def __setitem__(self, key: tuple[str, str], value: int) -> None:
        added = value - self.get(key, 0)
        super().__setitem__(key, value)
        if added > 0:
            tool, outcome = key
            TOOL_CALLS.labels(tool=closed_label(tool, TOOL_NAMES), outcome=closed_label(outcome, TOOL_OUTCOMES)).inc(added)


def exposition(accept_header: str | None = None) -> tuple[bytes, str]:
    """The registry in the text format the scraper asked for (Prometheus text or OpenMetrics)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(REGISTRY), content_type
