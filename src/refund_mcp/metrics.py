"""Prometheus metrics for one refund-mcp process (each replica exposes its own at /metrics).

Every label value comes from a closed set (tool names, outcome codes, processor names, verdicts), so
nothing a caller sends can create a new series; anything else is counted as "unknown". The metrics
library escapes label values itself.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

REGISTRY = CollectorRegistry(auto_describe=True)

WEBHOOK_DELIVERIES = Counter(
    "refund_mcp_webhook_deliveries",
    "Webhook deliveries by processor and verdict (accepted, replay, bad_signature, malformed, unconfigured, rate_limited, too_large, error).",
    ["processor", "verdict"],
    registry=REGISTRY,
)


def closed_label(value: str, allowed: frozenset[str] | set[str]) -> str:
    """`value` when it is one of `allowed`, else "unknown": labels never carry caller-chosen text."""
    return value if value in allowed else "unknown"
